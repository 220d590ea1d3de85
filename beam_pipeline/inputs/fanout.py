"""Folders and globs expanded by many workers: the listing split by sub-prefix, emitted in pages of URIs.

The worker that takes a spec lists its root's own level (`listing.level_pages`: a folder's files and subfolders, in
pages), emitting the kept files as pages of URIs and each subfolder (a GCS delimiter prefix) as a `Prefix` element.
The Prefixes are reshuffled, so that whichever worker gets one lists it: for LEVELS tiers one level at a time (its
files, then its subfolders as Prefixes again), and below that whole (`Listing.files`, in pages). Each file is listed
by exactly one element: a folder's own files by that folder's element, a subfolder's by its own. No step holds more
than a page of names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import apache_beam as beam
import fsspec
import pyarrow as pa
from apache_beam.pvalue import TaggedOutput

from beam_pipeline.inputs.specs import InputSpec, Listing, as_uri, listing_of
from beam_pipeline.listing import level_pages

LEVELS = 2  # levels of folders listed one level at a time (the root's, then its sub-prefixes'), before the rest
# are listed whole, a sub-prefix each
PREFIX_TAG = "prefixes"


@dataclasses.dataclass(frozen=True)
class Prefix:
    """A folder of a spec's listing, `depth` levels below the listing's root (its own files are at depth + 1)."""

    spec: InputSpec
    listing: Listing
    folder: str
    depth: int


class ListInPages(beam.PTransform):
    """InputSpecs of image folders, globs or files -> pages of URIs (lists of at most PAGE_SIZE), the spec's listing
    spread over workers by sub-prefix: each tier of sub-prefixes is reshuffled before it is listed."""

    def expand(self, specs):
        listed = specs | "ListRoots" >> beam.FlatMap(root_pages).with_outputs(PREFIX_TAG, main="pages")
        pages = [listed.pages]
        for level in range(1, LEVELS):
            listed = (
                listed[PREFIX_TAG]
                | f"SpreadLevel{level}" >> beam.Reshuffle()
                | f"ListLevel{level}" >> beam.FlatMap(level_pages_of).with_outputs(PREFIX_TAG, main="pages")
            )
            pages.append(listed.pages)
        prefixes = listed[PREFIX_TAG] | "SpreadPrefixes" >> beam.Reshuffle()
        deeper = prefixes | "ListPrefixes" >> beam.FlatMap(prefix_pages)
        return [*pages, deeper] | "AllPages" >> beam.Flatten()


def root_pages(spec: InputSpec) -> Iterator[list[str] | TaggedOutput]:
    """The one file a spec names, or the pages of its root's own level and a Prefix for each of its subfolders."""
    fs, path, listing = listing_of(spec)
    if listing is None:
        yield [as_uri(spec, fs, path)]
    elif fs.isdir(listing.root):
        yield from level_pages_of(Prefix(spec, listing, listing.root, 0))


def level_pages_of(prefix: Prefix) -> Iterator[list[str] | TaggedOutput]:
    """A folder's own kept files, in pages, and a Prefix (tagged PREFIX_TAG) for each subfolder the listing enters."""
    spec, listing = prefix.spec, prefix.listing
    fs, _ = fsspec.core.url_to_fs(spec.path)
    for files, folders in level_pages(fs, prefix.folder):
        if _within(listing, prefix.depth):
            page = [as_uri(spec, fs, name) for name in files if listing.keeps(name)]
            if page:
                yield page
        if _within(listing, prefix.depth + 1):
            for sub in folders:
                yield TaggedOutput(PREFIX_TAG, Prefix(spec, listing, sub, prefix.depth + 1))


def prefix_pages(prefix: Prefix) -> Iterator[list[str]]:
    """Everything under a Prefix below the tiers listed a level at a time that its spec keeps, in pages."""
    fs, _ = fsspec.core.url_to_fs(prefix.spec.path)
    maxdepth = None if prefix.listing.maxdepth is None else prefix.listing.maxdepth - prefix.depth
    below = dataclasses.replace(prefix.listing, root=prefix.folder, maxdepth=maxdepth)
    for page in below.files(fs):
        if page:
            yield [as_uri(prefix.spec, fs, name) for name in page]


def page_rows(page: list[str], *, carried: pa.Schema) -> Iterator[dict]:
    """The rows of a page of URIs (the carried columns empty: a folder has none)."""
    empty = dict.fromkeys(carried.names)
    for uri in page:
        yield {"uri": uri, **empty}


def _within(listing: Listing, depth: int) -> bool:
    """Whether the files of a folder `depth` levels below the root are listed (they are at depth + 1)."""
    return listing.maxdepth is None or depth + 1 <= listing.maxdepth
