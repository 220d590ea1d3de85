"""How a run's output is named in storage: its prefix (with {date}/{run_id} filled in), its shard file names, its
staging folder, its publish-intent record, the folder that keeps the rows of a run that could not publish, and its
`_SUCCESS` file. Shared by the stage that writes output, by --skip-labelled, which reads earlier output, and by the
report.

Shards are staged in a run-scoped folder beside the output (`_staging-RUNID/`, ignored by Spark, Hive, pyarrow and
pandas as every `_` name is) and renamed to PREFIX-SSSSS-of-NNNNN.parquet when the run's rows reconcile; when they do
not, they are moved to `_failed-RUNID/` instead, where no later run deletes them.
"""

from __future__ import annotations

import datetime
import os
import re
import uuid

from apache_beam.io.filesystems import FileSystems

SHARD_SUFFIX = ".parquet"
SUCCESS_FILE = "_SUCCESS"
STAGING_FOLDER = "_staging-"
FAILED_FOLDER = "_failed-"
INTENT_FILE = "_PUBLISH.json"
PLACEHOLDERS = ("{date}", "{run_id}")
_PLACEHOLDER = re.compile(r"\{[^{}]*\}")
# Beam's default shard template: PREFIX-SSSSS-of-NNNNN.parquet
_SHARD_NAME = re.compile(r"(?P<prefix>.+)-\d{5,}-of-\d{5,}" + re.escape(SHARD_SUFFIX))


def new_run_id(now: datetime.datetime) -> str:
    """A sortable, unique run id such as 20261126T135501Z-3f2a9c."""
    return f"{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"


def unknown_placeholders(output: str) -> list[str]:
    """The `{...}` parts of an --output value that are not placeholders (a misspelt `{data}` would otherwise become
    a folder of that name)."""
    return [p for p in _PLACEHOLDER.findall(output) if p not in PLACEHOLDERS]


def expand_prefix(output: str, *, now: datetime.datetime, run_id: str) -> str:
    """Fills the {date} and {run_id} placeholders; a prefix ending in / gets the name `labels`. A local prefix is
    made absolute (~ expanded), so that every spelling of one folder (`out/`, `./out/`, `/abs/out/`, or `out/` from
    another working directory) names the same output, in the check against an earlier run and in `_SUCCESS`."""
    prefix = output.replace("{date}", f"{now:%Y-%m-%d}").replace("{run_id}", run_id)
    prefix = prefix + "labels" if prefix.endswith("/") else prefix
    return prefix if "://" in prefix else os.path.abspath(os.path.expanduser(prefix))


def shard_prefix(name: str) -> str | None:
    """The prefix's file name part a shard file name was written for (`labels` for labels-00000-of-00002.parquet),
    or None for a name that is not a shard's."""
    match = _SHARD_NAME.fullmatch(name)
    return match["prefix"] if match else None


def is_shard_of(path: str, prefix: str) -> bool:
    """Whether `path` is a final shard PREFIX-SSSSS-of-NNNNN.parquet of exactly this prefix (not PREFIX-v2-...)."""
    return shard_prefix(FileSystems.split(path)[1]) == FileSystems.split(prefix)[1]


def shard_names(prefix: str, count: int) -> list[str]:
    """PREFIX-00000-of-NNNNN.parquet ... for `count` shards (Beam's default shard name template)."""
    return [f"{prefix}-{i:05d}-of-{count:05d}{SHARD_SUFFIX}" for i in range(count)]


def folder_of(prefix: str) -> str:
    return FileSystems.split(prefix)[0]


def staging_folder(prefix: str, run_id: str) -> str:
    """This run's staging folder beside the output: PREFIX's folder/_staging-RUNID."""
    return FileSystems.join(folder_of(prefix), f"{STAGING_FOLDER}{run_id}")


def staging_prefix(prefix: str, run_id: str) -> str:
    """Where this run's sink writes: PREFIX's folder/_staging-RUNID/PREFIX's name."""
    return FileSystems.join(staging_folder(prefix, run_id), FileSystems.split(prefix)[1])


def intent_path(prefix: str, run_id: str) -> str:
    """This run's publish-intent record, in its staging folder (output/finalize.py)."""
    return FileSystems.join(staging_folder(prefix, run_id), INTENT_FILE)


def failed_folder(prefix: str, run_id: str) -> str:
    """Where this run's staged files go when they are not published: PREFIX's folder/_failed-RUNID."""
    return FileSystems.join(folder_of(prefix), f"{FAILED_FOLDER}{run_id}")


def success_path(prefix: str) -> str:
    return FileSystems.join(folder_of(prefix), SUCCESS_FILE)
