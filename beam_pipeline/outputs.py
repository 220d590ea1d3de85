"""Where a run's output lives: its prefix (with {date}/{run_id} filled in), its staging folder, its final shards,
its _SUCCESS file, and publishing staged shards under their final names.

Beam's sink writes into a run-scoped staging folder beside the output (`_staging-RUNID/`, ignored by Spark, Hive,
pyarrow and pandas as every `_` name is); the run's final step renames the shards into place only when every row
is accounted for. Beam's own sink would otherwise delete any `PREFIX-*-of-NNNNN` file at the destination,
including another prefix's shards, before the run has succeeded.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import uuid

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

SHARD_SUFFIX = ".parquet"
SUCCESS_FILE = "_SUCCESS"
STAGING_FOLDER = "_staging-"
# Beam's default shard template: PREFIX-SSSSS-of-NNNNN.parquet
_SHARD_NAME = re.compile(r"(?P<prefix>.+)-\d{5,}-of-\d{5,}" + re.escape(SHARD_SUFFIX))


def new_run_id(now: datetime.datetime) -> str:
    """A sortable, unique run id such as 20261126T135501Z-3f2a9c."""
    return f"{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"


def expand_prefix(output: str, *, now: datetime.datetime, run_id: str) -> str:
    """Fills the {date} and {run_id} placeholders and a leading ~; a prefix ending in / gets the name `labels`."""
    prefix = output.replace("{date}", f"{now:%Y-%m-%d}").replace("{run_id}", run_id)
    if "://" not in prefix:
        prefix = os.path.expanduser(prefix)
    return prefix + "labels" if prefix.endswith("/") else prefix


def shard_prefix(name: str) -> str | None:
    """The prefix's file name part a shard file name was written for (`labels` for labels-00000-of-00002.parquet),
    or None for a name that is not a shard's."""
    match = _SHARD_NAME.fullmatch(name)
    return match["prefix"] if match else None


def is_shard_of(path: str, prefix: str) -> bool:
    """Whether `path` is a final shard PREFIX-SSSSS-of-NNNNN.parquet of exactly this prefix (not PREFIX-v2-...)."""
    return shard_prefix(FileSystems.split(path)[1]) == FileSystems.split(prefix)[1]


def final_shards(prefix: str) -> list[str]:
    """The final shards at a prefix (Beam's sink renames them into place only when every bundle is done)."""
    pattern = f"{prefix}-*-of-*{SHARD_SUFFIX}"
    matches = (m.path for r in FileSystems.match([pattern]) for m in r.metadata_list)
    return sorted(path for path in matches if is_shard_of(path, prefix))


def folder_of(prefix: str) -> str:
    return FileSystems.split(prefix)[0]


def staging_prefix(prefix: str, run_id: str) -> str:
    """Where this run's sink writes: PREFIX's folder/_staging-RUNID/PREFIX's name."""
    folder, name = FileSystems.split(prefix)
    return FileSystems.join(folder, f"{STAGING_FOLDER}{run_id}", name)


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


def shard_names(prefix: str, count: int) -> list[str]:
    """PREFIX-00000-of-NNNNN.parquet ... for `count` shards (Beam's default shard name template)."""
    return [f"{prefix}-{i:05d}-of-{count:05d}{SHARD_SUFFIX}" for i in range(count)]


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
    own = FileSystems.join(folder, f"{STAGING_FOLDER}{run_id}")
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
    _delete_folder(FileSystems.join(folder_of(prefix), f"{STAGING_FOLDER}{run_id}"))


def success_path(prefix: str) -> str:
    return FileSystems.join(FileSystems.split(prefix)[0], SUCCESS_FILE)


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
