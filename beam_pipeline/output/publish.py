"""Publishing a run's output: its final shards, the staged shards renamed into place, and the `_SUCCESS` record.

Beam's own sink would delete any `PREFIX-*-of-NNNNN` file at the destination, including another prefix's shards,
before the run has succeeded; shards are therefore staged (see `beam_pipeline.layout`) and renamed here only when
every row is accounted for.
"""

from __future__ import annotations

import json

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from beam_pipeline.layout import (
    SHARD_SUFFIX,
    STAGING_FOLDER,
    folder_of,
    is_shard_of,
    shard_names,
    shard_prefix,
    staging_folder,
    success_path,
)


def final_shards(prefix: str) -> list[str]:
    """The final shards at a prefix."""
    pattern = f"{prefix}-*-of-*{SHARD_SUFFIX}"
    matches = (m.path for r in FileSystems.match([pattern]) for m in r.metadata_list)
    return sorted(path for path in matches if is_shard_of(path, prefix))


def other_prefixes(prefix: str) -> list[str]:
    """Other output prefixes whose shards or _SUCCESS share PREFIX's folder (a folder holds one prefix's output)."""
    folder, name = FileSystems.split(prefix)
    pattern = FileSystems.join(folder, f"*-*-of-*{SHARD_SUFFIX}")
    names = {FileSystems.split(m.path)[1] for r in FileSystems.match([pattern]) for m in r.metadata_list}
    found = {shard_prefix(n) for n in names} - {name, None}
    success = read_success(prefix)
    if success and success.get("output_prefix") not in (None, prefix):
        found.add(FileSystems.split(success["output_prefix"])[1])
    return sorted(found)


def publish(staged: list[str], prefix: str, *, run_id: str, replace: bool) -> list[str]:
    """Renames staged files (in sorted order) to PREFIX-SSSSS-of-NNNNN.parquet and returns the new names.

    Then removes the staging folders of runs that started before this one (left by killed runs; a run still going
    finds its files gone and fails instead of publishing), and with `replace` PREFIX's other shards and every other
    staging folder. Safe to repeat after a partial attempt: a file already moved is skipped.
    """
    staged = sorted(staged)
    final = shard_names(prefix, len(staged))
    pending = [(src, dst) for src, dst in zip(staged, final) if FileSystems.exists(src) or not FileSystems.exists(dst)]
    if pending:
        FileSystems.rename([src for src, _ in pending], [dst for _, dst in pending])
    folder = folder_of(prefix)
    own = staging_folder(prefix, run_id)
    for staging in _staging_folders(folder):
        if staging != own and (replace or staging < own):  # run ids sort by start time
            _delete_folder(staging)
    if replace:
        stale = sorted(set(final_shards(prefix)) - set(final))
        if stale:
            FileSystems.delete(stale)
    return final


def _staging_folders(folder: str) -> set[str]:
    """The staging folders beside the output, found through their files (object stores have no folders)."""
    files = FileSystems.match([FileSystems.join(folder, f"{STAGING_FOLDER}*", "*")])[0].metadata_list
    return {FileSystems.split(m.path)[0] for m in files}


def _delete_folder(path: str) -> None:
    """Deletes a (flat) folder's files, then the folder itself where the filesystem has folders."""
    files = [m.path for m in FileSystems.match([FileSystems.join(path, "*")])[0].metadata_list]
    if files:
        FileSystems.delete(files)
    if FileSystems.exists(path):
        FileSystems.delete([path])


def remove_staging(prefix: str, run_id: str) -> None:
    """Deletes this run's staging folder (what is left of it after publishing, or all of it after a failure)."""
    _delete_folder(staging_folder(prefix, run_id))


def write_success(prefix: str, summary: dict) -> str:
    """Writes _SUCCESS (a JSON summary) beside the shards, last, so schedulers can wait for it."""
    path = success_path(prefix)
    with FileSystems.create(path) as f:
        f.write(json.dumps(summary, indent=2, sort_keys=True).encode())
    return path


def read_success(prefix: str) -> dict | None:
    """The `_SUCCESS` record beside the shards at `prefix`, or None when there is none."""
    path = success_path(prefix)
    if not FileSystems.exists(path):
        return None
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return json.loads(f.read())
