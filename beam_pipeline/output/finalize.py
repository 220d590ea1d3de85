"""The run's final step, inside the pipeline: reconcile rows in against rows written, publish, write `_SUCCESS`.

It runs after the sink (sink.py) has finished its files in the run's staging folder, from their names and row counts
(a side input) and counts the pipeline computed itself, so a run finishes properly even when its launcher is gone
(Dataflow, schedulers). Shards are published (renamed into place) only when every input row is accounted for, then
committed to the Iceberg table if one is given; otherwise the staged files are kept in `_failed-RUNID/`. `_SUCCESS`
is written either way, last, with `status` ok or failed and the problems found.

The step can run again, and beside itself (Dataflow retries a failed work item up to 4 times, and a worker presumed
lost may still be running). It decides once, and writes what it decided before it moves any file: the publish
intent (the run id, each staged file's move and row count, the `_SUCCESS` record to write). An attempt that finds
the intent carries it out instead of deciding again (a file counts from its source or its destination; the Iceberg
commit finds the run's snapshot); one that finds this run's `_SUCCESS` leaves it as it is. A decision depends only on
the step's inputs, so two attempts deciding at once decide alike (short of another run publishing at the same
prefix between the two).
"""

from __future__ import annotations

import collections
import dataclasses
import datetime

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystems import FileSystems

from beam_pipeline.layout import failed_folder, intent_path, shard_names, staging_folder, staging_prefix
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

    Inputs (a dict of PCollections): `shards` ((name, rows) of each staged file the sink wrote), `rows_in` (rows
    entering the job after expansion), `rows_skipped` (left out by --skip-labelled), `rows_skipped_failed` (of
    those, the ones that had failed for good), `earlier_shards` (how many earlier shards --skip-labelled matched,
    None without it), `row_stats` (RowStats of each branch of rows sent to the sink).
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
                rows_skipped_failed=beam.pvalue.AsSingleton(inputs["rows_skipped_failed"]),
                earlier_shards=beam.pvalue.AsSingleton(inputs["earlier_shards"]),
                row_stats=beam.pvalue.AsList(inputs["row_stats"]),
            )
        )


def finalize_run(
    _,
    *,
    info: RunInfo,
    shards: list[tuple[str, int]],
    rows_in: int,
    rows_skipped: int,
    row_stats: list[dict],
    rows_skipped_failed: int = 0,
    earlier_shards: int | None = None,
) -> dict:
    """Decides (or finds what an earlier attempt decided), carries it out, writes `_SUCCESS`; returns that record."""
    intent = publish.read_record(intent_path(info.output, info.run_id))
    if intent is None:
        done = publish.read_success(info.output)
        if done is not None and done.get("run_id") == info.run_id:  # an earlier attempt finished
            publish.remove_staging(info.output, info.run_id)
            return done
        staged = sorted((str(path), int(rows)) for path, rows in shards)
        intent = decide(info, staged, rows_in=rows_in, rows_skipped=rows_skipped, stats=merge_stats(row_stats))
        intent["record"].update(rows_skipped_failed=rows_skipped_failed, earlier_shards_matched=earlier_shards)
        publish.write_record(intent_path(info.output, info.run_id), intent, scratch=_scratch(info))
    return carry_out(info, intent)


def resume(info: RunInfo) -> dict | None:
    """Finishes what an attempt that failed had decided (its intent), as a retry would; None if it decided nothing.
    For runners that do not retry a failed step (the local one): the launcher calls it."""
    intent = publish.read_record(intent_path(info.output, info.run_id))
    return None if intent is None else carry_out(info, intent)


def decide(info: RunInfo, staged: list[tuple[str, int]], *, rows_in: int, rows_skipped: int, stats: dict) -> dict:
    """The publish intent: whether to publish, every move (staged file -> shard, or -> `_failed-RUNID/`) with its
    row count, and the `_SUCCESS` record, from the step's inputs and what is in storage now."""
    written = sum(rows for _, rows in staged)
    problems = reconcile(rows_in=rows_in, rows_skipped=rows_skipped, rows_sent=stats["rows"], written=written)
    targets = shard_names(info.output, max(1, len(staged)))
    kept = failed_folder(info.output, info.run_id)
    keep_at = [FileSystems.join(kept, FileSystems.split(path)[1]) for path, _ in staged]
    present = publish.existing([*(path for path, _ in staged), *targets, *keep_at])
    gone = {path for (path, _), *ends in zip(staged, targets, keep_at) if not present.intersection([path, *ends])}
    if gone:
        problems.append(
            f"{len(gone)} of the run's {len(staged)} staged files are gone (removed by another run at this prefix?), "
            f"e.g. {min(gone)}"
        )
    if not problems and not info.overwrite and set(publish.final_shards(info.output)) - set(targets):
        problems.append(f"another run published shards at {info.output} while this one ran (--overwrite replaces)")
    publishing = not problems
    if publishing:
        if not staged:  # a run over an empty input still publishes one (empty) shard
            staged = [(write_empty_file(staging_prefix(info.output, info.run_id) + "-empty.parquet", info.schema), 0)]
        moves = [(path, target, rows) for (path, rows), target in zip(staged, targets)]
    else:
        moves = [(path, keep, rows) for (path, rows), keep in zip(staged, keep_at) if path not in gone]
    failed = stats["status_counts"][STATUS_ERROR]
    if written and failed / written > info.max_error_fraction:
        limit = info.max_error_fraction
        problems.append(f"{failed / written:.1%} of inputs failed, over --max-error-fraction {limit:g}")
    finished_at = datetime.datetime.now(datetime.timezone.utc)
    seconds = (finished_at - info.started_at).total_seconds()
    record = {
        "status": STATUS_FAILED if problems else STATUS_OK,
        "problems": problems,
        "published": publishing,
        "run_id": info.run_id,
        "started_at": info.started_at.isoformat(),
        "finished_at": finished_at.isoformat(),
        "rows_in": rows_in,
        "rows": written,
        "rows_skipped": rows_skipped,
        "status_counts": stats["status_counts"],
        "errors_by_type": stats["errors_by_type"],
        "top_labels": [list(pair) for pair in stats["top_labels"]],  # as JSON has them
        "images_per_second": round(written / seconds, 2) if seconds > 0 else None,
        "model": info.model_id,
        "model_spec": info.model_spec,
        "model_revision": info.model_revision,
        "backend": info.backend,
        "output_prefix": info.output,
        "shards": targets if publishing else [],
        "failed_folder": kept if moves and not publishing else None,
        "iceberg": {"table": info.iceberg.table, "snapshot_id": None} if info.iceberg else None,
    }
    return {
        "run_id": info.run_id,
        "publish": publishing,
        "moves": [{"from": path, "to": target, "rows": rows} for path, target, rows in moves],
        "record": record,
    }


def carry_out(info: RunInfo, intent: dict) -> dict:
    """Moves the staged files as the intent says, commits to Iceberg, writes `_SUCCESS` and removes the staging
    folder; each step is safe to repeat (see publish.py and iceberg.py). Returns the `_SUCCESS` record."""
    publish.move([(m["from"], m["to"]) for m in intent["moves"]])
    record = dict(intent["record"])
    if intent["publish"]:
        publish.remove_replaced(info.output, info.run_id, keep=record["shards"], replace=info.overwrite)
        if info.iceberg is not None:
            try:
                snapshot = info.iceberg.commit(record["shards"], info.schema, info.run_id)
            except Exception as exc:  # noqa: BLE001 - the run's shards stay published; the failure is the run's status
                problem = f"commit to Iceberg table {info.iceberg.table} failed: {type(exc).__name__}: {exc}"
                record.update(status=STATUS_FAILED, problems=[*record["problems"], problem])
            else:
                record["iceberg"] = {"table": info.iceberg.table, "snapshot_id": snapshot}
    publish.write_success(info.output, record, scratch=_scratch(info))
    publish.remove_staging(info.output, info.run_id)
    return record


def _scratch(info: RunInfo) -> str:
    """Where records are written before being renamed into place: the run's staging folder (removed last)."""
    return staging_folder(info.output, info.run_id)


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
