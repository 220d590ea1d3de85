"""Publishing a run's output through Beam's filesystems: its final shards, moving staged files to where they go, the
clean-up around them, and the run's JSON records (`_SUCCESS`, the publish intent).

Beam's own sink would delete any `PREFIX-*-of-NNNNN` file at the destination, including another prefix's shards,
before the run has succeeded; shards are therefore staged (see `beam_pipeline.layout`) and moved here only when
every row is accounted for.

Every function here is safe to repeat after it was cut short, and to run beside another attempt of the same final
step (Dataflow retries a failed work item, and a worker presumed lost may still be running): a move that is already
done is skipped, a file already deleted is not an error. Object stores have no atomic folder rename and Beam's
filesystems no conditional create (a GCS rename is a copy, then a delete), so nothing relies on either; every write
is idempotent instead, and each record is written whole under a temporary name, then renamed into place.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable

from apache_beam.io.filesystem import BeamIOError, CompressionTypes
from apache_beam.io.filesystems import FileSystems

from beam_pipeline.layout import (
    STAGING_FOLDER,
    folder_of,
    is_shard_of,
    shard_prefix,
    staging_folder,
    success_path,
)
from beam_pipeline.listing import folder_entries


class PublishError(Exception):
    """A staged file is neither where it was nor where it was to be moved."""


def final_shards(prefix: str) -> list[str]:
    """The final shards at a prefix."""
    return sorted(path for path in folder_entries(folder_of(prefix))[0] if is_shard_of(path, prefix))


def other_prefixes(prefix: str) -> list[str]:
    """Other output prefixes whose shards or _SUCCESS share PREFIX's folder (a folder holds one prefix's output).

    The `_SUCCESS` record found is the one in PREFIX's folder, so its prefix is resolved against that folder: only
    its name can differ from PREFIX's (a run that spelt the folder `n/`, `./n/` or `/abs/n/` wrote the same one).
    """
    folder, name = FileSystems.split(prefix)
    names = {FileSystems.split(path)[1] for path in folder_entries(folder)[0]}
    found = {shard_prefix(n) for n in names} - {name, None}
    success = read_success(prefix)
    if success and success.get("output_prefix"):
        found |= {FileSystems.split(success["output_prefix"])[1]} - {name}
    return sorted(found)


def existing(paths: Iterable[str]) -> set[str]:
    """Which of `paths` exist, from one listing per folder (not a request per file)."""
    by_folder: dict[str, set[str]] = {}
    for path in paths:
        by_folder.setdefault(FileSystems.split(path)[0], set()).add(path)
    found = set()
    for folder, wanted in by_folder.items():
        found |= wanted & set(folder_entries(folder)[0])
    return found


def move(pairs: list[tuple[str, str]]) -> None:
    """Renames each (source, destination) pair that is not moved yet: safe to repeat, and beside another attempt.

    A pair is moved once its source is gone and its destination exists; a source that still exists is renamed
    again (on GCS a rename that stopped between its copy and its delete leaves both). Raises PublishError when a
    file is at neither end.
    """
    if not pairs:
        return
    present = existing(src for src, _ in pairs)
    pending = [(src, dst) for src, dst in pairs if src in present]
    failure = None
    if pending:
        for folder in {FileSystems.split(dst)[0] for _, dst in pending}:
            _mkdirs(folder)
        try:
            FileSystems.rename([src for src, _ in pending], [dst for _, dst in pending])
        except BeamIOError as exc:  # another attempt may have moved some of them first: checked below
            failure = exc
    present = existing(p for pair in pairs for p in pair)
    unfinished = [(src, dst) for src, dst in pairs if src in present or dst not in present]
    if unfinished:
        src, dst = unfinished[0]
        where = "still at its source" if src in present else "at neither its source nor its destination"
        message = f"{len(unfinished)} of {len(pairs)} files not moved, e.g. {src} -> {dst} ({where})"
        raise PublishError(message) from failure


def remove_replaced(prefix: str, run_id: str, *, keep: list[str], replace: bool) -> None:
    """After publishing: removes the staging folders of runs that started before this one (left by killed runs; a
    run still going finds its files gone and fails instead of publishing), and with `replace` PREFIX's shards other
    than `keep` and every other staging folder."""
    own = staging_folder(prefix, run_id)
    for staging in _staging_folders(folder_of(prefix)):
        if staging != own and (replace or staging < own):  # run ids sort by start time
            _delete_folder(staging)
    if replace:
        _delete(sorted(set(final_shards(prefix)) - set(keep)))


def remove_staging(prefix: str, run_id: str) -> None:
    """Deletes this run's staging folder (what is left of it after publishing, or all of it after a failure)."""
    _delete_folder(staging_folder(prefix, run_id))


def _staging_folders(folder: str) -> set[str]:
    """The staging folders beside the output (on object stores, the prefixes that hold their files)."""
    return {path for path in folder_entries(folder)[1] if FileSystems.split(path)[1].startswith(STAGING_FOLDER)}


def _delete_folder(path: str) -> None:
    """Deletes a (flat) folder's files, then the folder itself where the filesystem has folders."""
    _delete(folder_entries(path)[0])
    if FileSystems.exists(path):
        _delete([path])


def _delete(paths: list[str]) -> None:
    """Deletes files; one that another attempt deleted first is not an error (Beam's local filesystem says it is)."""
    if not paths:
        return
    try:
        FileSystems.delete(paths)
    except BeamIOError:
        left = existing(paths)
        if left:
            raise


def _mkdirs(folder: str) -> None:
    """The destination folder, where the filesystem has folders (local renames need it; object stores have none)."""
    if not FileSystems.exists(folder):
        try:
            FileSystems.mkdirs(folder)
        except OSError:  # made meanwhile by another attempt; a rename into a folder still missing fails in move()
            pass


def write_record(path: str, record: dict, *, scratch: str) -> None:
    """Writes a JSON record whole: to a unique name in the folder `scratch`, then renamed to `path`, so that no
    reader (nor a concurrent attempt) sees half of it. Identical records are identical bytes (sorted keys)."""
    temporary = FileSystems.join(scratch, f"_record-{uuid.uuid4().hex}.tmp")
    with FileSystems.create(temporary) as f:
        f.write(json.dumps(record, indent=2, sort_keys=True).encode())
    try:
        FileSystems.rename([temporary], [path])
    except BeamIOError:
        # Another attempt that had written its own record cleaned `scratch` up, this file with it.
        if existing([temporary]) or not FileSystems.exists(path):
            raise


def read_record(path: str) -> dict | None:
    """A JSON record, or None when there is none."""
    if not FileSystems.exists(path):
        return None
    try:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            return json.loads(f.read())
    except Exception:  # noqa: BLE001 - each filesystem has its own not-found error; existence tells them apart
        if FileSystems.exists(path):
            raise
        return None  # deleted meanwhile by another attempt of the final step


def write_success(prefix: str, summary: dict, *, scratch: str) -> str:
    """Writes _SUCCESS (a JSON summary) beside the shards, last, so schedulers can wait for it."""
    path = success_path(prefix)
    write_record(path, summary, scratch=scratch)
    return path


def read_success(prefix: str) -> dict | None:
    """The `_SUCCESS` record beside the shards at `prefix`, or None when there is none."""
    return read_record(success_path(prefix))
