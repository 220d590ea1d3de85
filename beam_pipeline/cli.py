"""Command line: `python -m beam_pipeline` / `beam-image-labeller`."""

from __future__ import annotations

import argparse
import logging
import os
import sys

PROG = "beam-image-labeller"
LOCAL_RUNNER = "FnApiRunner"  # the DirectRunner's batch engine, without its attempt to download Prism


class _OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line instead of a usage block."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    from beam_pipeline.options import add_labeller_arguments

    parser = _OneLineParser(
        prog=PROG,
        allow_abbrev=False,
        description="Label images with an image classifier on Apache Beam: one Parquet row per input URI.",
        epilog="Beam's pipeline options pass through (--runner, --direct_num_workers, --direct_running_mode, "
        "--project, --region, --temp_location, --setup_file, ...). Without --runner the job runs locally on "
        f"{LOCAL_RUNNER} using every core.",
    )
    add_labeller_arguments(parser)
    return parser


def local_defaults(beam_args: list[str]) -> list[str]:
    """Beam arguments with local defaults: no runner given means FnApiRunner with its in-memory worker.

    Measured (benchmarks/README.md): Beam 2.77's multi-threaded mode loses rows on large inputs and the
    multi-process mode loads the model once per process; one in-memory worker is exact, and the decode step's own
    thread pool keeps every core busy (see DecodeImage).
    """
    given = {arg[2:].split("=")[0] for arg in beam_args if arg.startswith("--")}
    if "runner" in given:
        return beam_args
    defaults = {"runner": LOCAL_RUNNER, "direct_running_mode": "in_memory"}
    return beam_args + [f"--{name}={value}" for name, value in defaults.items() if name not in given]


def main(argv: list[str] | None = None) -> int:
    """Parses flags, checks them, runs the job and prints its summary; returns the exit code."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    argv = sys.argv[1:] if argv is None else argv
    flags, beam_args = build_parser().parse_known_args(argv)

    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    from beam_pipeline import job, runner
    from beam_pipeline.summary import format_summary

    # The launch checks below use Beam's filesystems before any Pipeline exists; its S3 filesystem cannot work
    # without options (and takes --s3_endpoint_url & co. from them).
    FileSystems.set_options(PipelineOptions(beam_args))
    try:
        config = job.prepare(flags)
    except job.LaunchError as exc:
        print(f"{PROG}: error: argument {exc.flag}: {exc}", file=sys.stderr)
        return 2
    try:
        record = runner.run(config, local_defaults(beam_args))
    except runner.RunError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    print(format_summary(record))
    if record["status"] != "ok":
        for problem in record["problems"]:
            print(f"{PROG}: error: {problem} (output: {config.output})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    logging.getLogger().setLevel(logging.WARNING)
    sys.exit(main())
