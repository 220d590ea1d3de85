"""What an `--input` names (an InputSpec), and listing it lazily: a folder's image files, a glob's matches, a
manifest glob's files.

fsspec's own `glob` and `walk` list each folder whole (gcsfs and s3fs keep every listing in their cache), so a
flat prefix of a million objects is a million entries in memory before the first is seen. These list in pages
(`beam_pipeline.listing`: os.scandir on local disks, the JSON API's pages on GCS, ListObjectsV2's on S3) and yield
as they go: a check for "is there anything" reads one page, and memory does not grow with the number of objects.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Iterator
from pathlib import PurePosixPath

import fsspec
from fsspec.core import split_protocol
from fsspec.utils import glob_translate

from beam_pipeline.listing import listing_pages

MANIFEST_FORMATS = {".txt": "txt", ".csv": "csv", ".jsonl": "jsonl", ".parquet": "parquet"}
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
GLOB_CHARS = frozenset("*?[")


class InputError(ValueError):
    """An `--input` (or `--uri-column`) that cannot be used; the message names the problem."""


@dataclasses.dataclass(frozen=True)
class InputSpec:
    """One `--input` value: a path or glob, its manifest format (None for images), and whether it names an existing
    file or folder (then `[`, `?` and `*` in it are part of its name, not a pattern)."""

    path: str
    manifest_format: str | None
    literal: bool = False

    @classmethod
    def parse(cls, value: str) -> InputSpec:
        suffix = PurePosixPath(split_protocol(value)[1]).suffix.lower()
        return cls(value, MANIFEST_FORMATS.get(suffix))

    @property
    def is_glob(self) -> bool:
        return not self.literal and has_glob(self.path)


def has_glob(path: str) -> bool:
    return any(c in path for c in GLOB_CHARS)


def _glob_root(path: str) -> str:
    """The folder a glob starts from: everything before the first segment with a pattern character."""
    return path[: min(path.index(c) for c in GLOB_CHARS if c in path)].rsplit("/", 1)[0] or "/"


@dataclasses.dataclass(frozen=True)
class Listing:
    """What a folder or glob input lists: the files under `root` to `maxdepth` levels (None: every level) that
    match `pattern` (a glob's regex), or that have an image suffix when there is no pattern."""

    root: str
    maxdepth: int | None = None
    pattern: str | None = None

    @classmethod
    def of_glob(cls, path: str) -> Listing:
        root = _glob_root(path)
        depth = None if "**" in path else path[len(root) :].strip("/").count("/") + 1
        return cls(root, depth, glob_translate(path))

    def keeps(self, name: str) -> bool:
        if self.pattern is not None:
            return _compiled(self.pattern).match(name) is not None
        return PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES

    def files(self, fs: fsspec.AbstractFileSystem) -> Iterator[list[str]]:
        """The kept files, in pages (some may be empty), listed from the root in pages."""
        for page in listing_pages(fs, self.root, maxdepth=self.maxdepth):
            yield [name for name in page if self.keeps(name)]


@functools.lru_cache(maxsize=64)
def _compiled(pattern: str) -> re.Pattern:
    return re.compile(pattern)


def lazy_glob(fs: fsspec.AbstractFileSystem, path: str) -> Iterator[str]:
    """Files matching a glob, found by listing from its root folder in pages (fsspec's glob lists every match first)."""
    listing = Listing.of_glob(path)
    if fs.isdir(listing.root):
        for page in listing.files(fs):
            yield from page


def walk_images(fs: fsspec.AbstractFileSystem, path: str) -> Iterator[str]:
    """A folder's image files, recursively, by suffix."""
    for page in Listing(path).files(fs):
        yield from page


def image_uris(spec: InputSpec) -> Iterator[str]:
    """A directory's image files (recursively, by suffix), a glob's matching files, or the one file named."""
    fs, path = fsspec.core.url_to_fs(spec.path)
    if spec.is_glob:
        files = lazy_glob(fs, path)
    elif fs.isdir(path):
        files = walk_images(fs, path)
    else:
        files = iter([path])
    for name in files:
        yield as_uri(spec, fs, name)


def listing_of(spec: InputSpec) -> tuple[fsspec.AbstractFileSystem, str, Listing | None]:
    """The spec's filesystem, its path there, and what image_uris lists for it (None: the one file named)."""
    fs, path = fsspec.core.url_to_fs(spec.path)
    if spec.is_glob:
        return fs, path, Listing.of_glob(path)
    return fs, path, Listing(path) if fs.isdir(path) else None


def as_uri(spec: InputSpec, fs: fsspec.AbstractFileSystem, name: str) -> str:
    """A name the spec's filesystem listed, as the URI image_uris gives for it (with the spec's protocol, if any)."""
    return fs.unstrip_protocol(name) if split_protocol(spec.path)[0] else name


def matching_files(spec: InputSpec) -> list[str]:
    """The manifest files an InputSpec names (a glob may name several), as URLs."""
    if not spec.is_glob:
        return [spec.path]
    fs, path = fsspec.core.url_to_fs(spec.path)
    protocol, _ = split_protocol(spec.path)
    return [fs.unstrip_protocol(p) if protocol else p for p in lazy_glob(fs, path)]
