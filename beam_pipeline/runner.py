"""Runs the labelling pipeline with the given Beam options and returns the summary its final step wrote."""

from __future__ import annotations

import apache_beam as beam
from apache_beam.options.pipeline_options import DirectOptions, PipelineOptions, StandardOptions

from beam_pipeline import outputs, pipeline
from beam_pipeline.job import JobConfig

LOCAL_RUNNERS = ("FnApiRunner", "DirectRunner", "BundleBasedDirectRunner")


class RunError(Exception):
    """The pipeline finished without a summary of this run (its final step did not run)."""


def run(job: JobConfig, beam_args: list[str]) -> dict:
    """Builds and runs the pipeline, waits for it and returns the `_SUCCESS` record its final step wrote."""
    options = PipelineOptions(beam_args)
    with beam.Pipeline(options=options) as p:
        pipeline.build(p, job, spread_rows=rows_need_spreading(options))
    record = outputs.read_success(job.output)
    if record is None or record.get("run_id") != job.run_id:
        raise RunError(f"the pipeline finished but wrote no _SUCCESS for run {job.run_id} beside {job.output}")
    return record


def rows_need_spreading(options: PipelineOptions) -> bool:
    """False only on the local runner's single in-memory worker, where a Reshuffle moves rows nowhere."""
    runner = options.view_as(StandardOptions).runner
    mode = options.view_as(DirectOptions).direct_running_mode
    return not (runner in LOCAL_RUNNERS and mode == "in_memory")
