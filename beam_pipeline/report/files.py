"""The files a report reads: the Parquet shards an output names, and the _SUCCESS summaries beside them."""

from __future__ import annotations

import json
import posixpath
from typing import Any

import fsspec

from beam_pipeline.layout import SHARD_SUFFIX, SUCCESS_FILE, shard_prefix
from beam_pipeline.report.data import ReportError

MAX_SUCCESS_BYTES = 1 << 20  # a bigger _SUCCESS file is shown truncated
MAX_SUCCESS_DIRS = 10


def _has_magic(path: str) -> bool:
    return any(ch in path for ch in "*?[")


def _is_data_file(path: str) -> bool:
    name = posixpath.basename(path.rstrip("/"))
    return bool(name) and not name.startswith(("_", "."))


def resolve_inputs(output: str) -> tuple[fsspec.AbstractFileSystem, list[str]]:
    """Return the filesystem and the sorted Parquet shard paths that ``output`` names.

    ``output`` is a glob, a directory, a file, or the pipeline's ``--output`` prefix.
    Files whose name starts with ``_`` or ``.`` (``_SUCCESS``, temp files) are skipped.
    """
    fs, path = fsspec.core.url_to_fs(output)
    prefix_name = None  # set when `output` is a --output prefix: only its own shards count (not PREFIX-v2-...'s)
    if _has_magic(path):
        pattern = path
    elif fs.isdir(path):
        pattern = path.rstrip("/") + "/*"
    elif fs.isfile(path):
        return fs, [path]
    else:
        pattern = path + "*" + SHARD_SUFFIX
        prefix_name = posixpath.basename(path)
    # detail=True gives each match's type without one more request per file on object stores.
    candidates = fs.glob(pattern, detail=True)
    files = sorted(p for p, info in candidates.items() if _is_data_file(p) and info.get("type") != "directory")
    if prefix_name is not None:
        files = [p for p in files if shard_prefix(posixpath.basename(p)) == prefix_name]
    if not files:
        raise ReportError(f"no Parquet files match {output!r}")
    return fs, files


def read_success(fs: fsspec.AbstractFileSystem, files: list[str]) -> list[tuple[str, dict[str, Any] | str]]:
    """Read the ``_SUCCESS`` summary beside the shards, per directory, when present.

    Returns (directory, parsed JSON object) pairs, or (directory, raw text) when the
    file is not a JSON object. Unreadable files are reported as text, never raised.
    """
    found: list[tuple[str, dict[str, Any] | str]] = []
    for directory in sorted({posixpath.dirname(p) for p in files})[:MAX_SUCCESS_DIRS]:
        path = posixpath.join(directory, SUCCESS_FILE) if directory else SUCCESS_FILE
        try:
            if not fs.isfile(path):
                continue
            with fs.open(path, "rb") as f:
                raw = f.read(MAX_SUCCESS_BYTES + 1)
        except Exception as exc:  # noqa: BLE001 - a report shows what it cannot read
            found.append((directory, f"cannot read {SUCCESS_FILE}: {type(exc).__name__}: {exc}"))
            continue
        text = raw[:MAX_SUCCESS_BYTES].decode("utf-8", errors="replace")
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        found.append((directory, value if isinstance(value, dict) else text))
    return found
