"""Runs the labelling pipeline with the given Beam options and summarises the finished run."""

from __future__ import annotations

import time

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

from beam_pipeline import pipeline
from beam_pipeline.job import JobConfig
from beam_pipeline.summary import RunSummary, summarize


def output_files(job: JobConfig) -> list[str]:
    """The final shards a run wrote (Beam's sink only renames them into place once every bundle is done)."""
    pattern = f"{job.output}-*-of-*{pipeline.SHARD_SUFFIX}"
    return sorted(m.path for r in FileSystems.match([pattern]) for m in r.metadata_list)


def run(job: JobConfig, beam_args: list[str]) -> RunSummary:
    """Builds and runs the pipeline, waits for it, and returns its summary."""
    started = time.monotonic()
    with beam.Pipeline(options=PipelineOptions(beam_args)) as p:
        pipeline.build(p, job)
    result = p.result
    return summarize(result, output_files(job), time.monotonic() - started)
