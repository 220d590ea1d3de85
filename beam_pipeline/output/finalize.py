"""The run's final step, inside the pipeline: reconcile rows in against rows written, publish, write `_SUCCESS`.

It runs after the sink (sink.py) has finished its files in the run's staging folder (it takes their names as a side
input), from counts the pipeline computed itself, so a run finishes properly even when its launcher is gone
(Dataflow, schedulers). Shards are published (renamed into place) only when every input row is accounted for, then
committed to the Iceberg table if one is given; `_SUCCESS` is written either way, last, with `status` ok or failed
and the problems found.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from beam_pipeline.layout import staging_prefix
from beam_pipeline.output import publish
from beam_pipeline.output.iceberg import IcebergTarget
from beam_pipeline.output.sink import write_empty_file
from beam_pipeline.records import STATUS_ERROR, STATUS_OK

STATUS_FAILED = "failed"
TOP_LABELS = 10


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """What the final step needs to know about the run besides its counts."""

    run_id: str
    started_at: datetime.datetime
    output: str
    schema: pa.Schema
    overwrite: bool
    iceberg: IcebergTarget | None
    model_id: str
    model_spec: str
    model_revision: str | None
    backend: str
    max_error_fraction: float


class RowStats(beam.CombineFn):
    """Counts output rows by status and error type, and the top-1 labels of labelled rows."""

    def create_accumulator(self) -> dict[str, collections.Counter]:
        return {"status": collections.Counter(), "error_type": collections.Counter(), "label": collections.Counter()}

    def add_input(self, acc: dict[str, collections.Counter], row: dict) -> dict[str, collections.Counter]:
        acc["status"][row["status"]] += 1
        if row["error_type"] is not None:
            acc["error_type"][row["error_type"]] += 1
        if row["label"] is not None:
            acc["label"][row["label"]] += 1
        return acc

    def merge_accumulators(self, accumulators) -> dict[str, collections.Counter]:
        merged = self.create_accumulator()
        for acc in accumulators:
            for key, counter in acc.items():
                merged[key].update(counter)
        return merged

    def from_output(self, output: dict) -> dict[str, collections.Counter]:
        """The accumulator an extracted output came from (top labels beyond TOP_LABELS are not kept)."""
        return {
            "status": collections.Counter(output["status_counts"]),
            "error_type": collections.Counter(output["errors_by_type"]),
            "label": collections.Counter(dict(output["top_labels"])),
        }

    def extract_output(self, acc: dict[str, collections.Counter]) -> dict:
        return {
            "rows": sum(acc["status"].values()),
            "status_counts": {STATUS_OK: acc["status"][STATUS_OK], STATUS_ERROR: acc["status"][STATUS_ERROR]},
            "errors_by_type": dict(sorted(acc["error_type"].items())),
            "top_labels": acc["label"].most_common(TOP_LABELS),
        }


class FinalizeRun(beam.PTransform):
    """Writes `_SUCCESS` once the shards are final: the run's summary, with `status` ok or failed.

    Inputs (a dict of PCollections): `shards` (the staged files the rows were written to), `rows_in` (rows entering
    the job after expansion), `rows_skipped` (left out by --skip-labelled), `row_stats` (RowStats of each branch of
    rows sent to the sink).
    Output: the summary record, also written as JSON to `_SUCCESS`.
    """

    def __init__(self, info: RunInfo):
        super().__init__()
        self._info = info

    def expand(self, inputs: dict):
        return (
            inputs["shards"].pipeline
            | "Once" >> beam.Create([None])
            | "WriteSuccess"
            >> beam.Map(
                finalize_run,
                info=self._info,
                shards=beam.pvalue.AsList(inputs["shards"]),
                rows_in=beam.pvalue.AsSingleton(inputs["rows_in"]),
                rows_skipped=beam.pvalue.AsSingleton(inputs["rows_skipped"]),
                row_stats=beam.pvalue.AsList(inputs["row_stats"]),
            )
        )


def finalize_run(
    _, *, info: RunInfo, shards: list[str], rows_in: int, rows_skipped: int, row_stats: list[dict]
) -> dict:
    """Reconciles the counts, publishes the staged shards if every row is there, writes `_SUCCESS`; returns it."""
    row_stats = merge_stats(row_stats)
    staged = sorted(shards) or [
        write_empty_file(staging_prefix(info.output, info.run_id) + "-empty.parquet", info.schema)
    ]
    rows_written = count_rows(staged)
    problems = reconcile(rows_in=rows_in, rows_skipped=rows_skipped, rows_sent=row_stats["rows"], written=rows_written)
    if not problems and not info.overwrite and publish.final_shards(info.output):
        problems.append(f"another run published shards at {info.output} while this one ran (--overwrite replaces)")
    published = [] if problems else publish.publish(staged, info.output, run_id=info.run_id, replace=info.overwrite)
    snapshot = None
    if published and info.iceberg is not None:
        try:
            snapshot = info.iceberg.commit(published, info.schema, info.run_id)
        except Exception as exc:  # noqa: BLE001 - the run's shards stay published; the failure is the run's status
            problems.append(f"commit to Iceberg table {info.iceberg.table} failed: {type(exc).__name__}: {exc}")
    failed = row_stats["status_counts"][STATUS_ERROR]
    if rows_written and failed / rows_written > info.max_error_fraction:
        problems.append(
            f"{failed / rows_written:.1%} of inputs failed, over --max-error-fraction {info.max_error_fraction:g}"
        )
    finished_at = datetime.datetime.now(datetime.timezone.utc)
    seconds = (finished_at - info.started_at).total_seconds()
    record = {
        "status": STATUS_FAILED if problems else STATUS_OK,
        "problems": problems,
        "published": bool(published),
        "run_id": info.run_id,
        "started_at": info.started_at.isoformat(),
        "finished_at": finished_at.isoformat(),
        "rows_in": rows_in,
        "rows": rows_written,
        "rows_skipped": rows_skipped,
        "status_counts": row_stats["status_counts"],
        "errors_by_type": row_stats["errors_by_type"],
        "top_labels": row_stats["top_labels"],
        "images_per_second": round(rows_written / seconds, 2) if seconds > 0 else None,
        "model": info.model_id,
        "model_spec": info.model_spec,
        "model_revision": info.model_revision,
        "backend": info.backend,
        "output_prefix": info.output,
        "shards": published,
        "iceberg": {"table": info.iceberg.table, "snapshot_id": snapshot} if info.iceberg else None,
    }
    publish.write_success(info.output, record)
    publish.remove_staging(info.output, info.run_id)
    return record


def merge_stats(stats: list[dict]) -> dict:
    """RowStats outputs of several branches of rows, added up. Top labels add up exactly because only one branch
    (the labelled rows) has labels."""
    fn = RowStats()
    return fn.extract_output(fn.merge_accumulators(fn.from_output(s) for s in stats))


def reconcile(*, rows_in: int, rows_skipped: int, rows_sent: int, written: int) -> list[str]:
    """What does not add up: every input row must come out exactly once (written, or skipped as done before)."""
    problems = []
    if written + rows_skipped != rows_in:
        missing = rows_in - rows_skipped - written
        what = f"{missing} rows missing" if missing > 0 else f"{-missing} rows too many"
        problems.append(f"{what}: {rows_in} rows in, {rows_skipped} skipped, {written} written")
    if rows_sent != written:
        problems.append(f"the sink was sent {rows_sent} rows but its shards hold {written}")
    return problems


def count_rows(shards: list[str]) -> int:
    """Rows in the final shards, from their Parquet footers only."""
    total = 0
    for path in shards:
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            total += pq.ParquetFile(f).metadata.num_rows
    return total
