"""Model staging: the launcher copies the resolved model once to a location every worker reads (under
--temp_location, or --model-staging), named by its content checksum; workers fetch that copy and verify it.

So workers never call a model hub (no rate limits, no token on workers, no second resolution that could see another
revision), and every worker provably runs the same bytes. A local run loads the model in place.
"""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import fsspec

COMPLETE_MARKER = "_STAGED"  # written last into a staged copy: its presence means the copy is whole


class StagingError(Exception):
    """A staged model is missing or its content does not match its checksum."""


def content_checksum(path: str | Path) -> str:
    """sha256 over a file's bytes, or over a folder's files (relative names and contents, in sorted order)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if file.name == COMPLETE_MARKER:
            continue
        digest.update(file.relative_to(path).as_posix().encode() if file != path else b"")
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def stage(local: str, location: str) -> tuple[str, str]:
    """Copies a local model (a SavedModel folder or a .tflite file) to LOCATION/CHECKSUM/ unless a complete copy of
    the same content is there already; returns (the staged URL, the checksum)."""
    source = Path(local)
    checksum = content_checksum(source)
    folder = f"{location.rstrip('/')}/{checksum}"
    fs, path = fsspec.core.url_to_fs(folder)
    if not fs.exists(f"{path}/{COMPLETE_MARKER}"):
        fs.makedirs(path, exist_ok=True)
        if source.is_file():
            fs.put_file(str(source), f"{path}/{source.name}")
        else:
            fs.put(str(source).rstrip("/") + "/", path, recursive=True)
        fs.pipe_file(f"{path}/{COMPLETE_MARKER}", checksum.encode())
    return (f"{folder}/{source.name}" if source.is_file() else folder), checksum


@contextlib.contextmanager
def fetched(staged: str, checksum: str) -> Iterator[str]:
    """A verified local copy of a staged model, removed when the block ends (the runtime has loaded it by then)."""
    with tempfile.TemporaryDirectory(prefix="beam-image-labeller-model-") as local:
        fs, path = fsspec.core.url_to_fs(staged)
        if fs.isdir(path):
            fs.get(path.rstrip("/") + "/", local, recursive=True)
            copy = Path(local)
        else:
            copy = Path(local) / Path(path).name
            fs.get_file(path, str(copy))
        (copy / COMPLETE_MARKER if copy.is_dir() else Path(local) / COMPLETE_MARKER).unlink(missing_ok=True)
        found = content_checksum(copy)
        if found != checksum:
            raise StagingError(
                f"the staged model at {staged} has checksum {found[:12]}..., expected {checksum[:12]}..."
            )
        yield str(copy)
