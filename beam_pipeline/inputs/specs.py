"""What an `--input` names (an InputSpec), and listing it lazily: a folder's image files, a glob's matches, a
manifest glob's files.

fsspec's own `glob` and `walk` list each folder whole (gcsfs and s3fs keep every listing in their cache), so a
flat prefix of a million objects is a million entries in memory before the first is seen. These list in pages
(`listing_pages`: os.scandir on local disks, the JSON API's pages on GCS, ListObjectsV2's on S3) and yield as they
go: a check for "is there anything" reads one page, and memory does not grow with the number of objects.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from collections.abc import Iterator
from pathlib import PurePosixPath

import fsspec
import fsspec.asyn
from fsspec.core import split_protocol
from fsspec.utils import glob_translate

MANIFEST_FORMATS = {".txt": "txt", ".csv": "csv", ".jsonl": "jsonl", ".parquet": "parquet"}
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
GLOB_CHARS = frozenset("*?[")
PAGE_SIZE = 1000  # names per listing page (the most GCS's JSON API returns in one)


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


def listing_pages(fs: fsspec.AbstractFileSystem, path: str, *, maxdepth: int | None = None) -> Iterator[list[str]]:
    """The files under a folder (to `maxdepth` levels), in pages of at most PAGE_SIZE sorted names.

    Local folders are read with os.scandir, GCS and S3 prefixes a page of the store's listing API at a time, so
    memory holds one page; other stores fall back to fsspec's walk, a folder at a time.
    """
    if "file" in fs.protocol or "local" in fs.protocol:
        yield from _pages(_scandir_files(path.rstrip("/") or "/", maxdepth))
    elif _lists_in_pages(fs):
        yield from _pages(_object_files(fs, path.rstrip("/"), maxdepth))
    else:
        for root, _, names in fs.walk(path, maxdepth=maxdepth):
            for start in range(0, len(names), PAGE_SIZE):
                yield [f"{root.rstrip('/')}/{name}" for name in sorted(names)[start : start + PAGE_SIZE]]


def _pages(names: Iterator[str]) -> Iterator[list[str]]:
    page: list[str] = []
    for name in names:
        page.append(name)
        if len(page) == PAGE_SIZE:
            yield sorted(page)
            page = []
    if page:
        yield sorted(page)


def _scandir_files(folder: str, maxdepth: int | None) -> Iterator[str]:
    """Files under a local folder, depth first, from os.scandir's lazy iterator (one entry at a time)."""
    stack = [(folder, 1)]
    while stack:
        current, depth = stack.pop()
        try:
            entries = os.scandir(current)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        with entries:
            for entry in entries:
                if entry.is_dir():
                    if maxdepth is None or depth < maxdepth:
                        stack.append((entry.path, depth + 1))
                else:
                    yield entry.path


def _lists_in_pages(fs: fsspec.AbstractFileSystem) -> bool:
    """GCS (gcsfs) or S3 (s3fs, without object versions): stores whose listing API this module pages itself."""
    return hasattr(fs, "_call_list_objects") or (hasattr(fs, "_list_pages") and not getattr(fs, "version_aware", True))


def _object_files(fs: fsspec.AbstractFileSystem, path: str, maxdepth: int | None) -> Iterator[str]:
    """Objects under a GCS or S3 prefix, a page at a time (gcsfs's and s3fs's own listings fetch every page and
    cache them all). One level deep is listed with a delimiter; deeper, everything under the prefix, flat."""
    bucket, key, _ = fs.split_path(path)
    prefix = f"{key}/" if key else ""
    for names, _ in _object_pages(fs, bucket, prefix, "/" if maxdepth == 1 else None):
        for name in names:
            relative = name[len(prefix) :]
            if name.endswith("/") or (maxdepth is not None and relative.count("/") >= maxdepth):
                continue  # a folder marker, or deeper than asked
            yield f"{bucket}/{name}"


def _object_pages(
    fs: fsspec.AbstractFileSystem, bucket: str, prefix: str, delimiter: str | None
) -> Iterator[tuple[list[str], list[str]]]:
    """(object names, sub-prefixes) under a GCS or S3 prefix, one page of the listing API at a time."""
    if hasattr(fs, "_call_list_objects"):
        for page in _gcs_pages(fs, bucket, prefix, delimiter):
            yield [item["name"] for item in page.get("items", [])], page.get("prefixes", [])
    else:
        for page in _s3_pages(fs, bucket, prefix, delimiter):
            yield (
                [item["Key"] for item in page.get("Contents", [])],
                [sub["Prefix"] for sub in page.get("CommonPrefixes", [])],
            )


def _s3_pages(fs: fsspec.AbstractFileSystem, bucket: str, prefix: str, delimiter: str | None) -> Iterator[dict]:
    """S3's ListObjectsV2 responses for a prefix, one page (at most PAGE_SIZE keys) at a time: s3fs's own
    `_list_pages` (which retries each page as any request), pulled a page at a time from fsspec's loop."""
    kwargs = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": PAGE_SIZE, **fs.req_kw}
    if delimiter:
        kwargs["Delimiter"] = delimiter
    pages = fs._list_pages("list_objects_v2", **kwargs)
    while True:
        try:
            yield fsspec.asyn.sync(fs.loop, pages.__anext__)
        except StopAsyncIteration:
            return


def _gcs_pages(fs: fsspec.AbstractFileSystem, bucket: str, prefix: str, delimiter: str | None) -> Iterator[dict]:
    """The JSON API's objects.list responses for a prefix, one page (at most PAGE_SIZE entries) at a time."""
    token = None
    while True:
        page = fsspec.asyn.sync(
            fs.loop,
            fs._call_list_objects,
            bucket,
            prefix=prefix,
            delimiter=delimiter,
            maxResults=PAGE_SIZE,
            pageToken=token,
        )
        yield page
        token = page.get("nextPageToken")
        if not token:
            return


def level_pages(fs: fsspec.AbstractFileSystem, path: str) -> Iterator[tuple[list[str], list[str]]]:
    """One level of a folder, in pages of at most PAGE_SIZE entries: (files, subfolders), named as listing_pages
    names them. Local folders by os.scandir, GCS and S3 prefixes with a delimiter (sub-prefixes are the
    subfolders); other stores by fsspec's walk of one level (which lists the folder whole)."""
    folder = path.rstrip("/") or "/"
    if "file" in fs.protocol or "local" in fs.protocol:
        yield from _scandir_level(folder)
    elif _lists_in_pages(fs):
        bucket, key, _ = fs.split_path(folder)
        prefix = f"{key}/" if key else ""
        for names, subs in _object_pages(fs, bucket, prefix, "/"):
            files = [f"{bucket}/{name}" for name in names if not name.endswith("/")]
            yield sorted(files), sorted(f"{bucket}/{sub.rstrip('/')}" for sub in subs)
    else:
        for root, dirs, names in fs.walk(folder, maxdepth=1):
            root = root.rstrip("/")
            entries = [(f"{root}/{name}", False) for name in sorted(names)] + [(f"{root}/{d}", True) for d in dirs]
            for start in range(0, len(entries), PAGE_SIZE):
                chunk = entries[start : start + PAGE_SIZE]
                yield [name for name, is_dir in chunk if not is_dir], [name for name, is_dir in chunk if is_dir]


def _scandir_level(folder: str) -> Iterator[tuple[list[str], list[str]]]:
    files: list[str] = []
    folders: list[str] = []
    try:
        entries = os.scandir(folder)
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return
    with entries:
        for entry in entries:
            (folders if entry.is_dir() else files).append(entry.path)
            if len(files) + len(folders) == PAGE_SIZE:
                yield sorted(files), sorted(folders)
                files, folders = [], []
    if files or folders:
        yield sorted(files), sorted(folders)


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
