"""Runs the labelling pipeline with the given Beam options and returns the summary its final step wrote."""

from __future__ import annotations

import contextlib
import functools
import os

import apache_beam as beam
from apache_beam.options.pipeline_options import DirectOptions, GoogleCloudOptions, PipelineOptions, StandardOptions
from apache_beam.runners.runner import create_runner

from beam_pipeline import pipeline
from beam_pipeline.launch.progress import ProgressReporter
from beam_pipeline.output import finalize, publish
from beam_pipeline.pipeline import JobConfig
from beam_pipeline.worker import TALLY, default_num_threads


class RunError(Exception):
    """The pipeline finished without a summary of this run (its final step did not run)."""


def run(job: JobConfig, beam_args: list[str], *, progress: bool = False) -> dict:
    """Builds and runs the pipeline, waits for it and returns the `_SUCCESS` record its final step wrote.

    With `progress`, a progress line is printed to stderr every few seconds while it runs.
    """
    options = PipelineOptions(beam_args)
    TALLY.reset(inputs=len(job.inputs), expected_rows=job.expected_rows)
    with contextlib.ExitStack() as stack:
        if progress:
            stack.enter_context(ProgressReporter())
        try:
            with beam.Pipeline(options=options) as p:
                pipeline.build(p, job, spread_rows=rows_need_spreading(options))
        except Exception:
            # Dataflow retries a final step that failed (a storage error while publishing); the local runner does
            # not, so the launcher does, once, if the step had decided (then every row was in): else it stands.
            if not _runs_locally(options) or finalize.resume(pipeline.run_info(job)) is None:
                raise
    record = publish.read_success(job.output)
    if record is None or record.get("run_id") != job.run_id:
        raise RunError(f"the pipeline finished but wrote no _SUCCESS for run {job.run_id} beside {job.output}")
    return record


def settle_stopped_run(info: finalize.RunInfo) -> dict | None:
    """After a local run stopped (an error, Ctrl-C): finishes the publish if its final step had decided (renames may
    have begun: deleting the staging folder then would leave half the shards published), else deletes the staging
    folder. Returns the `_SUCCESS` record of a publish it finished, else None."""
    record = finalize.resume(info)
    if record is None:
        publish.remove_staging(info.output, info.run_id)
    return record


def is_local(beam_args: list[str]) -> bool:
    """Whether the workers run on this machine (Beam's local runner, in any of its modes)."""
    return _runs_locally(PipelineOptions(beam_args))


def _runs_locally(options: PipelineOptions) -> bool:
    """Whether --runner names one of Beam's local runners, resolved as Beam resolves it (any case, with or without
    `Runner`, or a class path: `direct`, `DIRECT` and `directrunner` are the DirectRunner)."""
    return runner_class(options.view_as(StandardOptions).runner) in StandardOptions.LOCAL_RUNNERS


@functools.cache
def runner_class(name: str | None) -> str | None:
    """The class name of the runner Beam creates for `--runner NAME` (its default when None); None when Beam knows
    no such runner (Beam then refuses it when the pipeline is built)."""
    try:
        return type(create_runner(name or StandardOptions.DEFAULT_RUNNER)).__name__
    except (ValueError, ImportError, AttributeError):
        return None


def runner_problem(beam_args: list[str]) -> str | None:
    """Why Beam cannot create the runner --runner names (misspelt, or its extra not installed), else None."""
    name = PipelineOptions(beam_args).view_as(StandardOptions).runner
    if name is None or runner_class(name) is not None:
        return None
    try:
        create_runner(name)
    except ValueError:
        known = ", ".join(StandardOptions.KNOWN_RUNNER_NAMES)
        return f"unknown runner {name!r} (Beam's runners: {known}, or a PipelineRunner class path)"
    except (ImportError, AttributeError) as exc:
        return f"runner {name!r} cannot be loaded: {exc}"
    return None


def threads_per_process(beam_args: list[str]) -> int | None:
    """Cores one worker process may use: all of them for the in-memory worker, an equal share for the local
    multi-process layout, and one off the local runner (Dataflow runs one SDK process per vCPU)."""
    options = PipelineOptions(beam_args)
    if not _runs_locally(options):
        return 1
    direct = options.view_as(DirectOptions)
    if direct.direct_running_mode == "in_memory":
        return None
    workers = direct.direct_num_workers or os.cpu_count() or 1
    return max(1, default_num_threads() // workers)


def model_staging(beam_args: list[str]) -> str | None:
    """Where remote workers' model copy goes by default: under --temp_location (None on the local runner)."""
    options = PipelineOptions(beam_args)
    if _runs_locally(options):
        return None
    temp = options.view_as(GoogleCloudOptions).temp_location
    return f"{temp.rstrip('/')}/beam-image-labeller/models" if temp else None


def runs_in_this_process(beam_args: list[str]) -> bool:
    """Whether the pipeline's workers run in this process (so the progress tally sees their counts)."""
    return not rows_need_spreading(PipelineOptions(beam_args))


def rows_need_spreading(options: PipelineOptions) -> bool:
    """False only on the local runner's single in-memory worker, where a Reshuffle moves rows nowhere."""
    mode = options.view_as(DirectOptions).direct_running_mode
    return not (_runs_locally(options) and mode == "in_memory")
