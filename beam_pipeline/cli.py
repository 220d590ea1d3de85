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
    """Beam arguments with local defaults: no runner given means FnApiRunner, multi-threaded on every core.

    Threads (not processes) share one model per process and decode in parallel, since Pillow releases the GIL.
    """
    from beam_pipeline.models import default_num_threads

    given = {arg[2:].split("=")[0] for arg in beam_args if arg.startswith("--")}
    if "runner" in given:
        return beam_args
    defaults = {
        "runner": LOCAL_RUNNER,
        "direct_running_mode": "multi_threading",
        "direct_num_workers": default_num_threads(),
    }
    return beam_args + [f"--{name}={value}" for name, value in defaults.items() if name not in given]


def main(argv: list[str] | None = None) -> int:
    """Parses flags, checks them, runs the job and prints its summary; returns the exit code."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    argv = sys.argv[1:] if argv is None else argv
    flags, beam_args = build_parser().parse_known_args(argv)

    from beam_pipeline import job, runner

    try:
        config = job.prepare(flags)
    except job.LaunchError as exc:
        print(f"{PROG}: error: argument {exc.flag}: {exc}", file=sys.stderr)
        return 2
    summary = runner.run(config, local_defaults(beam_args))
    print(summary.format())
    failed_fraction = summary.images_failed / summary.images_read if summary.images_read else 0.0
    if failed_fraction > config.max_error_fraction:
        print(
            f"{PROG}: error: {failed_fraction:.1%} of inputs failed, over --max-error-fraction "
            f"{config.max_error_fraction:g}; every row was written to {config.output}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    logging.getLogger().setLevel(logging.WARNING)
    sys.exit(main())
