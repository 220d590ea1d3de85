"""What an `--input` names (an InputSpec), and listing it lazily: a folder's image files, a glob's matches, a
manifest glob's files.

fsspec's own `glob` lists every match before returning the first; these walk and yield as they go, so a check
for "is there anything" stops at the first file.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from pathlib import PurePosixPath

import fsspec
from fsspec.core import split_protocol
from fsspec.utils import glob_translate

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


def lazy_glob(fs: fsspec.AbstractFileSystem, path: str) -> Iterator[str]:
    """Files matching a glob, found by walking from its root folder (fsspec's glob lists every match first)."""
    pattern = re.compile(glob_translate(path))
    root = _glob_root(path)
    if not fs.isdir(root):
        return
    depth = None if "**" in path else path[len(root) :].strip("/").count("/") + 1
    for folder, _, names in fs.walk(root, maxdepth=depth):
        for name in sorted(names):
            full = f"{folder.rstrip('/')}/{name}"
            if pattern.match(full):
                yield full


def walk_images(fs: fsspec.AbstractFileSystem, path: str) -> Iterator[str]:
    """A folder's image files, recursively, by suffix."""
    for root, _, names in fs.walk(path):
        for name in sorted(names):
            if PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES:
                yield f"{root.rstrip('/')}/{name}"  # gcsfs and s3fs keep a folder's trailing / in `root`


def image_uris(spec: InputSpec) -> Iterator[str]:
    """A directory's image files (recursively, by suffix), a glob's matching files, or the one file named."""
    fs, path = fsspec.core.url_to_fs(spec.path)
    protocol, _ = split_protocol(spec.path)
    if spec.is_glob:
        files = lazy_glob(fs, path)
    elif fs.isdir(path):
        files = walk_images(fs, path)
    else:
        files = iter([path])
    for name in files:
        yield fs.unstrip_protocol(name) if protocol else name


def matching_files(spec: InputSpec) -> list[str]:
    """The manifest files an InputSpec names (a glob may name several), as URLs."""
    if not spec.is_glob:
        return [spec.path]
    fs, path = fsspec.core.url_to_fs(spec.path)
    protocol, _ = split_protocol(spec.path)
    return [fs.unstrip_protocol(p) if protocol else p for p in lazy_glob(fs, path)]
