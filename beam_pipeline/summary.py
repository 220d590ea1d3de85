"""The end-of-run summary: counts from Beam metrics, speed, and the most frequent labels in the output."""

from __future__ import annotations

import collections
import dataclasses

import fsspec
import pyarrow.parquet as pq
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.runners.runner import PipelineResult

from beam_pipeline.records import METRICS_NAMESPACE


@dataclasses.dataclass
class RunSummary:
    """What a finished run did."""

    images_read: int
    images_labelled: int
    images_failed: int
    rows_skipped: int
    errors_by_type: dict[str, int]
    seconds: float
    top_labels: list[tuple[str, int]]

    @property
    def images_per_second(self) -> float:
        return self.images_read / self.seconds if self.seconds else 0.0

    def format(self) -> str:
        lines = [
            f"images read: {self.images_read}  labelled: {self.images_labelled}  failed: {self.images_failed}",
            f"time: {self.seconds:.1f} s  ({self.images_per_second:.1f} images/s)",
        ]
        if self.rows_skipped:
            lines.append(f"skipped (labelled by an earlier run): {self.rows_skipped}")
        if self.errors_by_type:
            lines.append("errors: " + ", ".join(f"{k} {v}" for k, v in sorted(self.errors_by_type.items())))
        if self.top_labels:
            lines.append("top labels: " + ", ".join(f"{label} ({n})" for label, n in self.top_labels))
        return "\n".join(lines)


def counters(result: PipelineResult) -> dict[str, int]:
    """The job's counters, by name (committed values where the runner has them)."""
    query = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))
    totals: dict[str, int] = collections.Counter()
    for counter in query["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[counter.key.metric.name] += value or 0
    return dict(totals)


def summarize(result: PipelineResult, output_files: list[str], seconds: float, top_n: int = 5) -> RunSummary:
    """Builds the summary from the run's metrics and the label column of its output files."""
    totals = counters(result)
    return RunSummary(
        images_read=totals.get("images_read", 0),
        images_labelled=totals.get("images_labelled", 0),
        images_failed=totals.get("images_failed", 0),
        rows_skipped=totals.get("rows_skipped", 0),
        errors_by_type={k.removeprefix("failed_"): v for k, v in totals.items() if k.startswith("failed_")},
        seconds=seconds,
        top_labels=most_frequent_labels(output_files, top_n),
    )


def most_frequent_labels(files: list[str], top_n: int) -> list[tuple[str, int]]:
    """Counts top-1 labels by streaming only the `label` column of the output shards."""
    counts: collections.Counter[str] = collections.Counter()
    for path in files:
        with fsspec.open(path, "rb") as f:
            for batch in pq.ParquetFile(f).iter_batches(columns=["label"]):
                counts.update(label for label in batch.column(0).to_pylist() if label is not None)
    return counts.most_common(top_n)
