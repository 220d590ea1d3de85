"""Where a run's output lives: its prefix (with {date}/{run_id} filled in), its final shards, its _SUCCESS file."""

from __future__ import annotations

import datetime
import json
import uuid

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

SHARD_SUFFIX = ".parquet"
SUCCESS_FILE = "_SUCCESS"


def new_run_id(now: datetime.datetime) -> str:
    """A sortable, unique run id such as 20261126T135501Z-3f2a9c."""
    return f"{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"


def expand_prefix(output: str, *, now: datetime.datetime, run_id: str) -> str:
    """Fills the {date} and {run_id} placeholders; a prefix ending in / gets the file name `labels`."""
    prefix = output.replace("{date}", f"{now:%Y-%m-%d}").replace("{run_id}", run_id)
    return prefix + "labels" if prefix.endswith("/") else prefix


def final_shards(prefix: str) -> list[str]:
    """The final shards at a prefix (Beam's sink renames them into place only when every bundle is done)."""
    pattern = f"{prefix}-*-of-*{SHARD_SUFFIX}"
    return sorted(m.path for r in FileSystems.match([pattern]) for m in r.metadata_list)


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


def remove_previous_output(prefix: str) -> None:
    """Deletes an earlier run's shards and _SUCCESS at this prefix (for --overwrite)."""
    old = final_shards(prefix)
    if FileSystems.exists(success_path(prefix)):
        old.append(success_path(prefix))
    if old:
        FileSystems.delete(old)
