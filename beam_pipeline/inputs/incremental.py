"""Incremental runs: leave out input rows whose URI an earlier run already finished with the same model.

Finished means labelled (`ok`) or failed for good (a permanent error); rows that failed transiently (a timeout, an
HTTP 503, a failed inference batch) are labelled again, and `--relabel-errors` retries every failure. A run with
`--embeddings` counts an `ok` row as finished only where it has an embedding (in a shard, or a table, that has the
`embedding` column), so rows labelled before embeddings were asked for are labelled again. Rows without a
usable URI never take part: each of them comes out as its own error row, every night.

What it costs follows tonight's rows, not the history: the launcher looks at the first earlier shard only; the
shards are listed inside the pipeline (their paths are never part of the job graph). Each worker process reads the
history's metadata once per side input (`ShardIndex`: every shard's footer, kept as a URI range per row group;
`TableIndex`: the table's snapshot and its planned data files, with their URI bounds); tonight's rows are then taken
in chunks, and each chunk reads only the join columns of the row groups (or data files) whose range holds one of its
URIs, keeping the rows of its URIs, so no process holds more of the history than the index and one chunk's rows.
"""

from __future__ import annotations

import bisect
import concurrent.futures
import dataclasses
import hashlib
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.metrics import Metrics
from apache_beam.utils.shared import Shared
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
    same model identity (records.model_identity of `model_id`) count. `chunk_rows`: tonight's rows per chunk.
    """

    def __init__(
        self,
        location: str | EarlierTable,
        model_id: str,
        relabel_errors: bool,
        *,
        embeddings: bool = False,
        chunk_rows: int = CHUNK_ROWS,
    ):
        super().__init__()
        self._location = location
        self._model_id = model_id
        self._relabel_errors = relabel_errors
        self._embeddings = embeddings
        self._chunk_rows = chunk_rows

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
            | "Chunks" >> beam.BatchElements(min_batch_size=self._chunk_rows, max_batch_size=self._chunk_rows)
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
    """A chunk of rows -> the rows not finished earlier; the others on SKIPPED_TAG as their earlier status.

    The history's index is built on the first chunk and shared by every instance in the worker process (Beam's
    Shared, tagged with a digest of the side input: another side input builds another index, in its place)."""

    def __init__(self, model_id: str, relabel_errors: bool, *, embeddings: bool = False):
        self._identity = model_identity(model_id)
        self._relabel_errors = relabel_errors
        self._embeddings = embeddings
        self._shared = Shared()
        self._index: ShardIndex | TableIndex | None = None  # held, so that Shared keeps it
        self._scans = Metrics.counter(METRICS_NAMESPACE, "skip_labelled_scans")
        self._indexes = Metrics.counter(METRICS_NAMESPACE, "skip_labelled_indexes_built")
        self._footers = Metrics.counter(METRICS_NAMESPACE, "skip_labelled_footers_read")
        self._shards_read = Metrics.counter(METRICS_NAMESPACE, "skip_labelled_shards_read")

    def process(self, chunk: list[dict], shards: list) -> Iterator:
        keyed = [row for row in chunk if has_join_key(row)]
        done = {}
        if shards and keyed:
            self._scans.inc()
            self._index = self._shared.acquire(lambda: self._build(shards), tag=side_input_key(shards))
            earlier, opened = self._index.rows({row["uri"] for row in keyed})
            self._shards_read.inc(opened)
            done = finished_uris(earlier, self._identity, self._relabel_errors)
        for row in chunk:
            status = done.get(row["uri"]) if has_join_key(row) else None
            yield row if status is None else beam.pvalue.TaggedOutput(SKIPPED_TAG, status)

    def _build(self, shards: list) -> ShardIndex | TableIndex:
        if isinstance(shards[0], EarlierTable):
            index: ShardIndex | TableIndex = TableIndex(shards[0], self._embeddings)
        else:
            index = ShardIndex(shards, embeddings=self._embeddings)
        self._indexes.inc()
        self._footers.inc(index.footers_read)
        return index


def side_input_key(shards: list) -> str:
    """A digest of the side input (shard paths, or the table at its snapshot): the index's tag."""
    return hashlib.sha256("\n".join(map(repr, shards)).encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class _Shard:
    """What the index keeps of one shard: a few strings per row group."""

    path: str
    columns: tuple[str, ...]  # of EARLIER_SCHEMA, as the shard has them
    has_embedding: bool
    groups: tuple[tuple[int, str | None, str | None], ...]  # (row group, min URI, max URI); None: no statistics


class ShardIndex:
    """Earlier shards' footers, read once (a few at a time): each row group's URI range, for the chunks to come."""

    def __init__(self, paths: list[str], *, embeddings: bool = False):
        self._embeddings = embeddings
        with concurrent.futures.ThreadPoolExecutor(SCAN_THREADS) as pool:
            self._shards = list(pool.map(_read_footer, paths))
        self.footers_read = len(self._shards)

    def rows(self, uris: set[str]) -> tuple[pa.Table, int]:
        """The join columns (EARLIER_SCHEMA) of the earlier rows whose URI is in `uris` (with `embeddings`, no `ok`
        rows of shards without the embedding column: they are to be labelled again), and how many shards were
        opened for them: only those with a row group whose URI range holds one of `uris`, filtered a record batch
        at a time. pyarrow's own dataset scanner does the same in one call but held ~50 MiB more for a year of
        shards."""
        wanted = sorted(uris)
        reads = [(shard, groups) for shard in self._shards if (groups := _groups_holding(shard, wanted))]
        value_set = pa.array(wanted, pa.string())
        with concurrent.futures.ThreadPoolExecutor(SCAN_THREADS) as pool:
            tables = [
                table
                for table in pool.map(lambda read: _matching_rows(*read, value_set, self._embeddings), reads)
                if table.num_rows
            ]
        return (pa.concat_tables(tables) if tables else EARLIER_SCHEMA.empty_table()), len(reads)


class TableIndex:
    """The Iceberg table at the launch's snapshot, loaded and its data files planned once (with their URI bounds):
    each chunk reads, through pyiceberg's ArrowScan (which applies delete files), only the files whose bounds hold
    one of its URIs, for the join columns and the rows of its URIs.

    With `embeddings`, an ok row counts only where it has one. pyiceberg can neither filter on nor project a list
    column, so the data files are read as shards are (a file written before the table gained the column has none;
    their footers are read here, once); a file with delete files gives no ok rows, so that nothing a delete removed
    counts as finished."""

    def __init__(self, earlier: EarlierTable, embeddings: bool = False):
        self.footers_read = 0
        self._files: list[tuple[Any, str | None, str | None]] = []  # (FileScanTask, lower URI, upper URI)
        self._shards = self._with_deletes = None
        if earlier.snapshot_id is None:
            return
        table = earlier.target.load_catalog().load_table(earlier.target.table)
        names = set(table.schema().column_names)
        fields = tuple(name for name in EARLIER_SCHEMA.names if name in names)
        scan = table.scan(selected_fields=fields, snapshot_id=earlier.snapshot_id)
        self._metadata, self._io, self._projection = scan.table_metadata, scan.io, scan.projection()
        uri_id = table.schema().find_field("uri").field_id
        tasks = list(scan.plan_files())
        if embeddings:
            self._shards = ShardIndex([t.file.file_path for t in tasks if not t.delete_files], embeddings=True)
            self._with_deletes = ShardIndex([t.file.file_path for t in tasks if t.delete_files])
            self.footers_read = self._shards.footers_read + self._with_deletes.footers_read
            return
        for task in tasks:
            lower, upper = (task.file.lower_bounds or {}).get(uri_id), (task.file.upper_bounds or {}).get(uri_id)
            # String bounds are UTF-8; truncated ones still bound (a shorter lower, an incremented upper).
            self._files.append((task, lower and lower.decode(), upper and upper.decode()))

    def rows(self, uris: set[str]) -> tuple[pa.Table, int]:
        """The join columns of the table's rows whose URI is in `uris`, and how many data files were read."""
        if self._shards is not None:
            earlier, opened = self._shards.rows(uris)
            failed, opened_too = self._with_deletes.rows(uris)
            failed = failed.filter(pc.not_equal(failed.column("status"), STATUS_OK))
            return pa.concat_tables([earlier, failed]), opened + opened_too
        from pyiceberg.expressions import In
        from pyiceberg.io.pyarrow import ArrowScan

        wanted = sorted(uris)
        tasks = [task for task, lower, upper in self._files if _range_holds(wanted, lower, upper)]
        if not tasks:
            return EARLIER_SCHEMA.empty_table(), 0
        scan = ArrowScan(self._metadata, self._io, self._projection, In("uri", uris))
        return _as_earlier(scan.to_table(tasks)), len(tasks)


def has_join_key(row: dict) -> bool:
    """Whether a row can be matched against earlier output: it has a URI and parsed as a manifest row."""
    uri = row.get("uri")
    return isinstance(uri, str) and bool(uri.strip()) and MANIFEST_ERROR_KEY not in row


def finished_uris(earlier: pa.Table, identity: str, relabel_errors: bool) -> dict[str, str]:
    """Of the earlier rows (EARLIER_SCHEMA), the URIs finished with the model of this identity: {uri: status}."""
    same_model = {name for name in earlier.column("model").unique().to_pylist() if model_identity(name) == identity}
    done: dict[str, str] = {}
    for row in earlier.filter(pc.is_in(earlier.column("model"), pa.array(sorted(same_model), pa.string()))).to_pylist():
        if _finished(row, relabel_errors):
            # An ok row anywhere in the history wins over a failure (a row labelled after failing).
            done[row["uri"]] = STATUS_OK if done.get(row["uri"]) == STATUS_OK else row["status"]
    return done


def _read_footer(path: str) -> _Shard:
    """A shard's columns and the URI range of each row group, from its footer."""
    with fsspec.open(path, "rb") as f:
        parquet = pq.ParquetFile(f)
        names = parquet.schema_arrow.names
        uri_index = parquet.schema_arrow.get_field_index("uri")
        groups = []
        for i in range(parquet.num_row_groups):
            statistics = parquet.metadata.row_group(i).column(uri_index).statistics
            known = statistics is not None and statistics.has_min_max
            groups.append((i, statistics.min if known else None, statistics.max if known else None))
    columns = tuple(name for name in EARLIER_SCHEMA.names if name in names)
    return _Shard(path, columns, EMBEDDING in names, tuple(groups))


def _groups_holding(shard: _Shard, wanted: list[str]) -> list[int]:
    """The shard's row groups whose URI range holds one of `wanted` (sorted)."""
    return [group for group, low, high in shard.groups if _range_holds(wanted, low, high)]


def _range_holds(wanted: list[str], low: str | None, high: str | None) -> bool:
    """Whether one of `wanted` (sorted) lies between `low` and `high` (None: unbounded)."""
    i = bisect.bisect_left(wanted, low) if low is not None else 0
    return i < len(wanted) and (high is None or wanted[i] <= high)


def _matching_rows(shard: _Shard, groups: list[int], wanted: pa.Array, embeddings: bool = False) -> pa.Table:
    """The join columns (EARLIER_SCHEMA) of the rows of a shard's `groups` whose URI is in `wanted`; with
    `embeddings`, no ok rows if the shard has no embedding column. pyarrow reads the footer again to read them
    (counted as skip_labelled_shards_read): keeping every shard's whole footer would cost kilobytes a shard."""
    batches = []
    with fsspec.open(shard.path, "rb") as f:
        for batch in pq.ParquetFile(f).iter_batches(row_groups=groups, columns=list(shard.columns)):
            kept = batch.filter(pc.is_in(batch.column("uri"), value_set=wanted))
            if embeddings and not shard.has_embedding:
                kept = kept.filter(pc.not_equal(kept.column("status"), STATUS_OK))
            if kept.num_rows:
                batches.append(kept)
    return _as_earlier(pa.Table.from_batches(batches) if batches else pa.table({name: [] for name in shard.columns}))


def _as_earlier(table: pa.Table) -> pa.Table:
    return pa.table({name: _column(table, name) for name in EARLIER_SCHEMA.names}, schema=EARLIER_SCHEMA)


def _column(table: pa.Table, name: str) -> pa.ChunkedArray | pa.Array:
    if name not in table.column_names:  # error_kind in older output
        return pa.nulls(table.num_rows, pa.string())
    return table.column(name).cast(pa.string())


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
