"""Incremental runs: leave out input rows whose URI an earlier run already finished with the same model.

Finished means labelled (`ok`) or failed for good (a permanent error); rows that failed transiently (a timeout, an
HTTP 503, a failed inference batch) are labelled again, and `--relabel-errors` retries every failure. A run with
`--embeddings` counts an `ok` row as finished only in a shard that has the `embedding` column (every ok row of a
run that wrote it has one), so rows labelled before embeddings were asked for are labelled again. The earlier
output is joined with a CoGroupByKey on the URI inside the pipeline, so a nightly run over a growing manifest never
holds the set of labelled URIs in one process. Rows without a usable URI never take part in the join: each of them
comes out as its own error row, every night.
"""

from __future__ import annotations

from collections.abc import Iterator

import apache_beam as beam
import fsspec
import pyarrow.parquet as pq
from fsspec.core import split_protocol

from beam_pipeline import errors
from beam_pipeline.inputs.specs import has_glob
from beam_pipeline.layout import shard_prefix
from beam_pipeline.records import (
    EMBEDDING,
    ERROR_KIND_PERMANENT,
    ERROR_KIND_TRANSIENT,
    MANIFEST_ERROR_KEY,
    STATUS_ERROR,
    STATUS_OK,
)

SKIPPED_TAG = "skipped"
NEEDED_COLUMNS = ("uri", "status", "model", "error_type")
OPTIONAL_COLUMNS = ("error_kind",)  # absent from the output of runs before it existed


class EarlierOutputError(ValueError):
    """--skip-labelled names something that is not this job's output; the message says what."""


def find_earlier_shards(location: str) -> list[str]:
    """This job's published Parquet shards under a folder or matching a glob, their schemas checked.

    Only files named PREFIX-SSSSS-of-NNNNN.parquet outside `_`/`.` folders count: `_SUCCESS`, `.crc` files, Beam's
    temp folders and the staging folders of unfinished runs are ignored. A shard without the job's columns is an
    error. Runs at launch: it lists file names and reads one footer per shard, never rows.
    """
    fs, path = fsspec.core.url_to_fs(location)
    protocol, _ = split_protocol(location)
    if has_glob(path) and not fs.exists(path):
        candidates = sorted(fs.glob(path))
    else:
        candidates = sorted(fs.find(path)) if fs.isdir(path) else [path] if fs.exists(path) else []
    shards = [p for p in candidates if _is_published_shard(p) and not fs.isdir(p)]
    for shard in shards:
        with fs.open(shard, "rb") as f:
            schema = pq.read_schema(f)
        missing = [name for name in NEEDED_COLUMNS if name not in schema.names]
        if missing:
            raise EarlierOutputError(f"{shard} is not this job's output: it has no column {missing[0]!r}")
    return [fs.unstrip_protocol(p) if protocol else p for p in shards]


def _is_published_shard(path: str) -> bool:
    parts = path.rstrip("/").split("/")
    hidden = any(part.startswith(("_", ".")) or part.startswith("beam-temp-") for part in parts[:-1] if part)
    return not hidden and shard_prefix(parts[-1]) is not None


class SkipLabelled(beam.PTransform):
    """Rows -> (rows still to label, a one-element PCollection: how many rows were skipped).

    `shards` are earlier output files (see find_earlier_shards); only rows of the same `model_id` count.
    """

    def __init__(self, shards: list[str], model_id: str, relabel_errors: bool, *, embeddings: bool = False):
        super().__init__()
        self._shards = shards
        self._model_id = model_id
        self._relabel_errors = relabel_errors
        self._embeddings = embeddings

    def expand(self, rows):
        done = (
            rows.pipeline
            | "EarlierShards" >> beam.Create(self._shards)
            | "ReadEarlier"
            >> beam.FlatMap(
                read_finished_uris,
                model_id=self._model_id,
                relabel_errors=self._relabel_errors,
                embeddings=self._embeddings,
            )
            | "DoneByUri" >> beam.Map(lambda uri: (uri, True))
        )
        keyed = rows | "SplitByKey" >> beam.Partition(lambda row, _: 0 if has_join_key(row) else 1, 2)
        todo = keyed[0] | "ByUri" >> beam.Map(lambda row: (row["uri"], row))
        joined = (
            {"todo": todo, "done": done}
            | "JoinOnUri" >> beam.CoGroupByKey()
            | "NotYetLabelled" >> beam.FlatMap(_rows_not_done).with_outputs(SKIPPED_TAG, main="todo")
        )
        to_label = (joined.todo, keyed[1]) | "WithRowsWithoutKey" >> beam.Flatten()
        return to_label, joined[SKIPPED_TAG] | "CountSkipped" >> beam.combiners.Count.Globally()


def has_join_key(row: dict) -> bool:
    """Whether a row can be matched against earlier output: it has a URI and parsed as a manifest row."""
    uri = row.get("uri")
    return isinstance(uri, str) and bool(uri.strip()) and MANIFEST_ERROR_KEY not in row


def read_finished_uris(shard: str, *, model_id: str, relabel_errors: bool, embeddings: bool = False) -> Iterator[str]:
    """URIs an earlier shard finished with `model_id`: ok rows (with `embeddings`, only in a shard that has them),
    and permanent failures unless `relabel_errors`.

    pyarrow reads the shard rather than Beam's ReadAllFromParquet because the columns to read differ between
    shards of older and newer runs (`error_kind` is newer); a shard is read a record batch at a time.
    """
    with fsspec.open(shard, "rb") as f:
        parquet = pq.ParquetFile(f)
        columns = [*NEEDED_COLUMNS, *(c for c in OPTIONAL_COLUMNS if c in parquet.schema_arrow.names)]
        ok_is_done = not embeddings or EMBEDDING in parquet.schema_arrow.names
        for batch in parquet.iter_batches(columns=columns):
            for row in batch.to_pylist():
                if row["model"] == model_id and (row["uri"] or "").strip() and _finished(row, relabel_errors):
                    if ok_is_done or row["status"] != STATUS_OK:
                        yield row["uri"]


def _finished(row: dict, relabel_errors: bool) -> bool:
    if row["status"] == STATUS_OK:
        return True
    if row["status"] != STATUS_ERROR or relabel_errors:
        return False
    return (row.get("error_kind") or _kind_of_older_row(row["error_type"])) == ERROR_KIND_PERMANENT


def _kind_of_older_row(error_type: str | None) -> str:
    """Rows written before `error_kind` existed: ReadError was then mostly timeouts and 5xx, so transient."""
    transient = errors.TRANSIENT_TYPES | {errors.READ_ERROR}
    return ERROR_KIND_TRANSIENT if error_type in transient else ERROR_KIND_PERMANENT


def _rows_not_done(joined: tuple) -> Iterator:
    _, groups = joined
    skip = any(True for _ in groups["done"])
    for row in groups["todo"]:
        yield beam.pvalue.TaggedOutput(SKIPPED_TAG, row["uri"]) if skip else row
