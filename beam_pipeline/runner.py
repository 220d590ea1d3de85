"""Runs the labelling pipeline with the given Beam options, then summarises it and marks it done."""

from __future__ import annotations

import datetime
import time

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from beam_pipeline import outputs, pipeline
from beam_pipeline.job import JobConfig
from beam_pipeline.summary import RunSummary, summarize


def run(job: JobConfig, beam_args: list[str]) -> RunSummary:
    """Builds and runs the pipeline, waits for it, writes _SUCCESS and returns the run's summary."""
    started = time.monotonic()
    with beam.Pipeline(options=PipelineOptions(beam_args)) as p:
        pipeline.build(p, job)
    shards = outputs.final_shards(job.output)
    summary = summarize(p.result, shards, time.monotonic() - started)
    finished_at = datetime.datetime.now(datetime.timezone.utc)
    outputs.write_success(
        job.output,
        {
            "run_id": job.run_id,
            "started_at": job.started_at.isoformat(),
            "finished_at": finished_at.isoformat(),
            "rows": summary.images_read,
            "status_counts": {"ok": summary.images_labelled, "error": summary.images_failed},
            "errors_by_type": summary.errors_by_type,
            "rows_skipped": summary.rows_skipped,
            "images_per_second": round(summary.images_per_second, 2),
            "model": job.model.model_id,
            "model_spec": job.model.spec,
            "model_revision": job.model.revision,
            "output_prefix": job.output,
            "shards": shards,
        },
    )
    return summary
