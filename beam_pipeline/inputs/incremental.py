"""Incremental runs: leave out input rows whose URI an earlier run already finished with the same model.

Finished means labelled (`ok`) or failed for good (a permanent error); rows that failed transiently (a timeout, an
HTTP 503, a failed inference batch) are labelled again, and `--relabel-errors` retries every failure. A run with
`--embeddings` counts an `ok` row as finished only where it has an embedding (in a shard, or a table, that has the
`embedding` column), so rows labelled before embeddings were asked for are labelled again. Rows without a
usable URI never take part: each of them comes out as its own error row, every night.

What it costs follows tonight's rows, not the history: the launcher looks at the first earlier shard only; the
shards are listed inside the pipeline (their paths are never part of the job graph); tonight's rows are taken in
chunks, and for each chunk one pass over the earlier shards reads only the join columns, keeping the rows of the
chunk's URIs (row groups whose URI statistics exclude them are skipped), so no process ever holds more of the
history than the earlier rows of one chunk's URIs.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.metrics import Metrics
from fsspec.core import split_protocol

from beam_pipeline import errors
from beam_pipeline.inputs.specs import has_glob, lazy_glob
from beam_pipeline.layout import shard_prefix
from beam_pipeline.records import (
    EMBEDDING,
    ERROR_KIND_PERMANENT,
    ERROR_KIND_TRANSIENT,
    MANIFEST_ERROR_KEY,
    METRICS_NAMESPACE,
    STATUS_ERROR,
    STATUS_OK,
    model_identity,
)

SKIPPED_TAG = "skipped"
NEEDED_COLUMNS = ("uri", "status", "model", "error_type")
# The join columns as read: error_kind is absent from the output of runs before it existed (read as null).
EARLIER_SCHEMA = pa.schema([(name, pa.string()) for name in (*NEEDED_COLUMNS, "error_kind")])
# Tonight's rows per scan of the history: one scan for a nightly run of new rows, and a chunk of rows (small dicts)
# is all a worker holds.
CHUNK_ROWS = 10_000
SCAN_THREADS = 8  # shards read at once by one scan


class EarlierOutputError(ValueError):
    """--skip-labelled names something that is not this job's output; the message says what."""


def matching_files(location: str) -> Iterator[str]:
    """Every file under a folder or matching a glob (or the one file named), as URLs, found lazily."""
    fs, path = fsspec.core.url_to_fs(location)
    protocol, _ = split_protocol(location)
    if has_glob(path) and not fs.exists(path):
        files = lazy_glob(fs, path)
    elif fs.isdir(path):
        files = (f"{root.rstrip('/')}/{name}" for root, _, names in fs.walk(path) for name in sorted(names))
    else:
        files = iter([path] if fs.exists(path) else [])
    for name in files:
        yield fs.unstrip_protocol(name) if protocol else name


def earlier_shards(location: str) -> Iterator[str]:
    """This job's published Parquet shards among `matching_files(location)`.

    Only files named PREFIX-SSSSS-of-NNNNN.parquet outside `_`/`.` folders count: `_SUCCESS`, `.crc` files, Beam's
    temp folders and the staging folders of unfinished runs are ignored.
    """
    return (path for path in matching_files(location) if is_published_shard(path))


def check_earlier_output(location: str) -> str | None:
    """The launch check of --skip-labelled: reads the first shard's footer only (the pipeline lists the rest).

    Raises EarlierOutputError when the location matches files but no shard (a typo, a manifest, `_SUCCESS` alone),
    or the first shard lacks the job's columns. Returns a one-line note when it matches nothing at all (the first
    night of a schedule), else None.
    """
    matched = False
    for path in matching_files(location):
        matched = True
        if is_published_shard(path):
            with fsspec.open(path, "rb") as f:
                names = pq.read_schema(f).names
            missing = [name for name in NEEDED_COLUMNS if name not in names]
            if missing:
                raise EarlierOutputError(f"{path} is not this job's output: it has no column {missing[0]!r}")
            return None
    if matched:
        raise EarlierOutputError(
            f"{location!r} matches files but no output shard (PREFIX-SSSSS-of-NNNNN.parquet outside _ and . folders)"
        )
    return f"--skip-labelled: nothing matches {location!r} yet (a first run?): every input will be labelled"


def is_published_shard(path: str) -> bool:
    parts = path.rstrip("/").split("/")
    hidden = any(part.startswith(("_", ".")) or part.startswith("beam-temp-") for part in parts[:-1] if part)
    return not hidden and shard_prefix(parts[-1]) is not None


@dataclasses.dataclass(frozen=True)
class EarlierTable:
    """--skip-labelled naming the --iceberg-table: `target` (anything with `table` and `load_catalog()`, the
    launcher's IcebergTarget) at the snapshot current at launch, which holds `files` data files."""

    target: Any
    snapshot_id: int | None  # None: the table has no snapshot yet (a first night)
    files: int


class SkipLabelled(beam.PTransform):
    """Rows -> (rows still to label, the rows left out as their earlier status (`ok` or `error`), shards matched).

    `location` is a folder or glob of earlier output, listed on a worker, or an EarlierTable; only rows of the
    same model identity (records.model_identity of `model_id`) count.
    """

    def __init__(self, location: str | EarlierTable, model_id: str, relabel_errors: bool, *, embeddings: bool = False):
        super().__init__()
        self._location = location
        self._model_id = model_id
        self._relabel_errors = relabel_errors
        self._embeddings = embeddings

    def expand(self, rows):
        if isinstance(self._location, EarlierTable):  # one element: the table at its snapshot
            shards = rows.pipeline | "EarlierTable" >> beam.Create([self._location])
        else:
            shards = (
                rows.pipeline
                | "EarlierOutput" >> beam.Create([self._location])
                | "MatchEarlierShards" >> beam.FlatMap(earlier_shards)
            )
        results = (
            rows
            # min = max: every chunk but a bundle's last is full (BatchElements would otherwise start at 1 row).
            | "Chunks" >> beam.BatchElements(min_batch_size=CHUNK_ROWS, max_batch_size=CHUNK_ROWS)
            | "NotYetLabelled"
            >> beam.ParDo(
                LeaveOutFinished(self._model_id, self._relabel_errors, embeddings=self._embeddings),
                beam.pvalue.AsList(shards),
            ).with_outputs(SKIPPED_TAG, main="todo")
        )
        matched = (
            shards
            | "ShardsOf" >> beam.Map(lambda source: source.files if isinstance(source, EarlierTable) else 1)
            | "CountShards" >> beam.CombineGlobally(sum)
        )
        return results.todo, results[SKIPPED_TAG], matched


class LeaveOutFinished(beam.DoFn):
    """A chunk of rows -> the rows not finished earlier; the others on SKIPPED_TAG as their earlier status."""

    def __init__(self, model_id: str, relabel_errors: bool, *, embeddings: bool = False):
        self._identity = model_identity(model_id)
        self._relabel_errors = relabel_errors
        self._embeddings = embeddings
        self._scans = Metrics.counter(METRICS_NAMESPACE, "skip_labelled_scans")

    def process(self, chunk: list[dict], shards: list) -> Iterator:
        keyed = [row for row in chunk if has_join_key(row)]
        done = {}
        if shards and keyed:
            self._scans.inc()
            uris = {row["uri"] for row in keyed}
            if isinstance(shards[0], EarlierTable):
                table = shards[0]
                earlier = (
                    EARLIER_SCHEMA.empty_table()
                    if table.snapshot_id is None
                    else table_rows(table, uris, self._embeddings)
                )
            else:
                earlier = file_rows(shards, uris, embeddings=self._embeddings)
            done = finished_uris(earlier, self._identity, self._relabel_errors)
        for row in chunk:
            status = done.get(row["uri"]) if has_join_key(row) else None
            yield row if status is None else beam.pvalue.TaggedOutput(SKIPPED_TAG, status)


def has_join_key(row: dict) -> bool:
    """Whether a row can be matched against earlier output: it has a URI and parsed as a manifest row."""
    uri = row.get("uri")
    return isinstance(uri, str) and bool(uri.strip()) and MANIFEST_ERROR_KEY not in row


def file_rows(shards: list[str], uris: set[str], *, embeddings: bool = False) -> pa.Table:
    """The join columns (EARLIER_SCHEMA) of the earlier shards' rows whose URI is in `uris` (with `embeddings`, no
    `ok` rows of shards without the embedding column: they are to be labelled again).

    Each shard is read for the join columns only, skipping row groups whose URI statistics exclude the chunk, and
    filtered to the chunk's URIs a record batch at a time, a few shards at once (over gs:// each open is a round
    trip). pyarrow's own dataset scanner does the same in one call but held ~50 MiB more for a year of shards.
    """
    wanted = pa.array(sorted(uris), pa.string())
    with concurrent.futures.ThreadPoolExecutor(SCAN_THREADS) as pool:
        tables = [t for t in pool.map(lambda shard: _matching_rows(shard, wanted, embeddings), shards) if t.num_rows]
    return pa.concat_tables(tables) if tables else EARLIER_SCHEMA.empty_table()


def table_rows(earlier: EarlierTable, uris: set[str], embeddings: bool = False) -> pa.Table:
    """The join columns of the Iceberg table's rows whose URI is in `uris`, at the launch's snapshot: one pyiceberg
    scan, which leaves out the data files whose URI bounds exclude them and reads only these columns.

    With `embeddings`, an ok row counts only where it has one. pyiceberg can neither filter on nor project a list
    column, so the scan's data files are read as shards are (a file written before the table gained the column has
    none); a file with delete files gives no ok rows, so that nothing a delete removed counts as finished."""
    from pyiceberg.expressions import In

    table = earlier.target.load_catalog().load_table(earlier.target.table)
    names = set(table.schema().column_names)
    fields = tuple(name for name in EARLIER_SCHEMA.names if name in names)
    scan = table.scan(row_filter=In("uri", uris), selected_fields=fields, snapshot_id=earlier.snapshot_id)
    if not embeddings:
        return _as_earlier(scan.to_arrow())
    tasks = list(scan.plan_files())
    whole = [task.file.file_path for task in tasks if not task.delete_files]
    with_deletes = [task.file.file_path for task in tasks if task.delete_files]
    failed = file_rows(with_deletes, uris, embeddings=False) if with_deletes else EARLIER_SCHEMA.empty_table()
    failed = failed.filter(pc.not_equal(failed.column("status"), STATUS_OK))
    return pa.concat_tables([file_rows(whole, uris, embeddings=True), failed])


def finished_uris(earlier: pa.Table, identity: str, relabel_errors: bool) -> dict[str, str]:
    """Of the earlier rows (EARLIER_SCHEMA), the URIs finished with the model of this identity: {uri: status}."""
    same_model = {name for name in earlier.column("model").unique().to_pylist() if model_identity(name) == identity}
    done: dict[str, str] = {}
    for row in earlier.filter(pc.is_in(earlier.column("model"), pa.array(sorted(same_model), pa.string()))).to_pylist():
        if _finished(row, relabel_errors):
            # An ok row anywhere in the history wins over a failure (a row labelled after failing).
            done[row["uri"]] = STATUS_OK if done.get(row["uri"]) == STATUS_OK else row["status"]
    return done


def _matching_rows(shard: str, wanted: pa.Array, embeddings: bool = False) -> pa.Table:
    """The join columns (EARLIER_SCHEMA) of a shard's rows whose URI is in `wanted` (sorted); with `embeddings`, no
    ok rows if the shard has no embedding column."""
    low, high = wanted[0].as_py(), wanted[-1].as_py()
    with fsspec.open(shard, "rb") as f:
        parquet = pq.ParquetFile(f)
        names = parquet.schema_arrow.names
        columns = [name for name in EARLIER_SCHEMA.names if name in names]
        uri_index = parquet.schema_arrow.get_field_index("uri")
        groups = [
            i
            for i in range(parquet.num_row_groups)
            if _may_hold(parquet.metadata.row_group(i).column(uri_index).statistics, low, high)
        ]
        batches = []
        for batch in parquet.iter_batches(row_groups=groups, columns=columns) if groups else ():
            kept = batch.filter(pc.is_in(batch.column("uri"), value_set=wanted))
            if embeddings and EMBEDDING not in names:
                kept = kept.filter(pc.not_equal(kept.column("status"), STATUS_OK))
            if kept.num_rows:
                batches.append(kept)
    return _as_earlier(pa.Table.from_batches(batches) if batches else pa.table({name: [] for name in columns}))


def _as_earlier(table: pa.Table) -> pa.Table:
    return pa.table({name: _column(table, name) for name in EARLIER_SCHEMA.names}, schema=EARLIER_SCHEMA)


def _column(table: pa.Table, name: str) -> pa.ChunkedArray | pa.Array:
    if name not in table.column_names:  # error_kind in older output
        return pa.nulls(table.num_rows, pa.string())
    return table.column(name).cast(pa.string())


def _may_hold(statistics, low: str, high: str) -> bool:
    """Whether a row group's URI column statistics allow a URI between `low` and `high`."""
    if statistics is None or not statistics.has_min_max:
        return True
    return not (statistics.max < low or statistics.min > high)


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
