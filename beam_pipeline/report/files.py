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
        raise ReportError(f"no Parquet files match {output!r}{_runs_below_hint(fs, path, output)}")
    return fs, files


def _runs_below_hint(fs: fsspec.AbstractFileSystem, path: str, output: str) -> str:
    """A hint when ``path`` is a folder whose subfolders are runs' outputs (each with its _SUCCESS), else ""."""
    if _has_magic(path) or not fs.isdir(path):
        return ""
    runs = sorted(posixpath.dirname(p) for p in fs.glob(path.rstrip("/") + "/*/" + SUCCESS_FILE))
    if not runs:
        return ""
    example = fs.unstrip_protocol(runs[0]) if "://" in output else runs[0]
    return (
        f"; it holds the output folders of {len(runs)} run(s), such as {example!r}: pass one of them, or a glob"
        f" such as {output.rstrip('/') + '/*/*.parquet'!r} for all of them"
    )


def missing_shards(files: list[str], success: list[tuple[str, dict[str, Any] | str]]) -> list[str]:
    """A warning for each folder whose _SUCCESS lists shards that are not among ``files`` (the ones read)."""
    warnings = []
    for directory, record in success:
        if not isinstance(record, dict) or not isinstance(record.get("shards"), list):
            continue
        read = {posixpath.basename(p) for p in files if posixpath.dirname(p) == directory}
        listed = {posixpath.basename(str(s)) for s in record["shards"]}
        if listed - read:
            warnings.append(
                f"{len(listed & read)} of the {len(listed)} shards {posixpath.join(directory, SUCCESS_FILE)} lists"
                f" are read (it records {record.get('rows', '?')} rows): the report shows only those; pass the"
                " output folder or --output prefix for the whole run"
            )
    return warnings


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
