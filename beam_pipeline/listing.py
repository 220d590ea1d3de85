"""Listing a folder in pages, lazily: every file under it (`listing_pages`) or its own level (`level_pages`).

fsspec's own `glob` and `walk` list each folder whole (gcsfs and s3fs keep every listing in their cache), and Beam's
`FileSystems.match` lists a pattern's whole subtree (os.walk locally, every object under the prefix on GCS and S3).
These list os.scandir's entries on local disks, the JSON API's pages on GCS and ListObjectsV2's on S3, and yield a
page at a time: memory holds one page, and a listing never reads below the level it was asked for.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import fsspec
import fsspec.asyn
from apache_beam.io.filesystems import FileSystems

PAGE_SIZE = 1000  # names per listing page (the most GCS's JSON API returns in one)


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


def folder_entries(folder: str) -> tuple[list[str], list[str]]:
    """The files and the subfolders directly in `folder` (a path or URL as Beam's FileSystems spell it), each
    joined to it as FileSystems.join does; nothing if it does not exist.

    Its own level only, in pages (`level_pages`), for the output folder's checks and clean-up: Beam's
    FileSystems.match lists everything below the folder first, which for an output folder above a large tree (a
    home folder, the photos themselves) took 9.7 s a call with 2 million files below it, several calls a run.
    """
    fs, path = fsspec.core.url_to_fs(folder or ".")
    files: list[str] = []
    folders: list[str] = []
    for page_files, page_folders in level_pages(fs, path):
        files += [FileSystems.join(folder, name.rstrip("/").rsplit("/", 1)[-1]) for name in page_files]
        folders += [FileSystems.join(folder, name.rstrip("/").rsplit("/", 1)[-1]) for name in page_folders]
    return files, folders
