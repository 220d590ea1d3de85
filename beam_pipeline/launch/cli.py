"""Command line: `python -m beam_pipeline` / `beam-image-labeller`."""

from __future__ import annotations

import argparse
import contextlib
import difflib
import gc
import logging
import os
import re
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator

from beam_pipeline.imports import modules_hidden

PROG = "beam-image-labeller"
LOCAL_RUNNER = "FnApiRunner"  # the DirectRunner's batch engine, without its attempt to download Prism
# What `import apache_beam` imports whenever it is installed and nothing in the launcher's process uses: pandas (for
# Beam's DataFrame type hints) and Beam's BigQuery connector (apache_beam.io then skips its Pub/Sub one too). Measured
# with python -X importtime: ~0.7 s of the ~2.3 s the import takes. Dataflow's workers import Beam as usual.
BEAM_UNUSED = ("pandas", "apache_beam.io.gcp.bigquery")


class _OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line instead of a usage block."""

    def error(self, message: str):
        # argparse names a flag by all its spellings (--top-k/--top_k); the job's own checks name one (--top-k).
        message = re.sub(r"^argument (--[\w-]+)(?:/--\w+)+:", r"argument \1:", message)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    from beam_pipeline.launch.options import add_labeller_arguments

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


def import_beam() -> None:
    """`import apache_beam` without the modules BEAM_UNUSED names (a no-op where Beam is imported already).

    pyarrow looks for pandas once per process, at its first conversion of Python values (here the Parquet writer's):
    asked while pandas is hidden, it finds none, so no conversion imports pandas later (~0.3 s). Only that look is
    cached: an explicit `Table.to_pandas()` still imports pandas.
    """
    if "apache_beam" in sys.modules:
        return
    with modules_hidden(BEAM_UNUSED):
        import apache_beam  # noqa: F401
        import pyarrow

        pyarrow.array([])


def unknown_flag(beam_args: list[str], parser: argparse.ArgumentParser) -> str | None:
    """A message for the first argument neither the job nor Beam's pipeline options define, else None.

    Beam ignores options it does not know, so a misspelt flag would otherwise silently change a run.
    """
    from apache_beam.options import pipeline_options

    beam_parser = pipeline_options._BeamArgumentParser(allow_abbrev=False)
    for options_class in _subclasses(pipeline_options.PipelineOptions):
        options_class._add_argparse_args(beam_parser)
    known = [s for p in (parser, beam_parser) for s in p._option_string_actions if s.startswith("--")]
    for position, arg in enumerate(beam_args):
        if not arg.startswith("--"):
            if arg.startswith("-") or position == 0:  # not the value of a Beam flag before it
                return f"unrecognized argument {arg}"
            continue
        name = arg.split("=", 1)[0]
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            return f"unrecognized argument {name}" + (f" (did you mean {close[0]}?)" if close else "")
    return None


class Interrupted(BaseException):
    """Ctrl-C or SIGTERM while the job ran; a BaseException so that no `except Exception` swallows it.

    `received` remembers the signal, as Beam wraps exceptions raised inside a step into RuntimeErrors.
    """

    received: signal.Signals | None = None


@contextlib.contextmanager
def interrupts_raised() -> Iterator[None]:
    """Turns SIGINT and SIGTERM into Interrupted in the main thread for the duration (then restores handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, _frame):
        Interrupted.received = signal.Signals(signum)
        raise Interrupted(signum)

    Interrupted.received = None
    previous = {signum: signal.signal(signum, handler) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def silence_libraries() -> None:
    """Hides TensorFlow's C++ notices (oneDNN, CUDA, absl) and library warnings on the root logger; the job's
    own lines and errors still print. Must run before TensorFlow is imported to take effect."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    logging.getLogger().setLevel(logging.ERROR)
    logging.getLogger("apache_beam").setLevel(logging.CRITICAL)  # a failing step is reported once, by main()
    warnings.filterwarnings("ignore", module="apache_beam")


@contextlib.contextmanager
def native_stderr_silenced(enabled: bool) -> Iterator[None]:
    """Sends file descriptor 2 to /dev/null while TensorFlow is imported and the model loaded: TensorFlow 2.21's C++
    notices (absl, oneDNN, CUDA probes) go through absl logging, which TF_CPP_MIN_LOG_LEVEL no longer silences.
    Python exceptions are unaffected: the caller reports them after the block."""
    if not enabled:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _subclasses(cls: type) -> set[type]:
    return {sub for direct in cls.__subclasses__() for sub in {direct, *_subclasses(direct)}}


def command() -> int:
    """`beam-image-labeller` and `python -m beam_pipeline`: `main()` in a process that ends with it.

    Everything is frozen again before the interpreter exits, so that its final collections skip it and the objects go
    back to the OS with the process. Measured on a one-photo run: the installed `beam-image-labeller` script spent
    ~0.4 s between `main()` returning and the process's end (1.83-2.26 s in all, now 1.45-1.63); `python -m
    beam_pipeline` did not (1.34-1.54 s either way). In-process callers call `main()`, which leaves the collector as
    it found it.
    """
    code = main()
    gc.freeze()
    return code


def main(argv: list[str] | None = None) -> int:
    """Parses flags, checks them, runs the job and prints its summary; returns the exit code."""
    with collector_off_during_start_up() as started:
        return _main(sys.argv[1:] if argv is None else argv, started)


@contextlib.contextmanager
def collector_off_during_start_up() -> Iterator[Callable[[], None]]:
    """Turns Python's cyclic garbage collector off until `started()` is called, which freezes what start-up made
    (`gc.freeze`: no collection visits it again) and turns the collector back on; on exit all is as before.

    Start-up imports ~2,000 modules (Beam, pyarrow, OpenVINO) and makes ~230,000 objects that live as long as the
    process, next to no garbage: the collector's passes over them took 0.24 s of a one-photo run, in 468
    collections of which 3 full (measured with gc.callbacks), and every full pass during the run would visit them
    all again.
    """
    enabled = gc.isenabled()
    gc.disable()

    def started() -> None:
        gc.freeze()
        if enabled:
            gc.enable()

    try:
        yield started
    finally:
        gc.unfreeze()
        if enabled:
            gc.enable()


def _main(argv: list[str], started: Callable[[], None]) -> int:
    parser = build_parser()
    flags, beam_args = parser.parse_known_args(argv)
    if not flags.verbose:
        silence_libraries()
    import_beam()
    unknown = unknown_flag(beam_args, parser)
    if unknown:
        print(f"{PROG}: error: {unknown}", file=sys.stderr)
        return 2

    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    from beam_pipeline import pipeline
    from beam_pipeline.launch import job, runner
    from beam_pipeline.launch.summary import format_summary

    problem = runner.runner_problem(beam_args)
    if problem:
        print(f"{PROG}: error: argument --runner: {problem}", file=sys.stderr)
        return 2
    beam_args = local_defaults(beam_args)
    # The launch checks below use Beam's filesystems before any Pipeline exists; its S3 filesystem cannot work
    # without options (and takes --s3_endpoint_url & co. from them).
    FileSystems.set_options(PipelineOptions(beam_args))
    local = runner.is_local(beam_args)
    config = None
    try:
        with interrupts_raised(), native_stderr_silenced(not flags.verbose):
            config = job.prepare(
                flags,
                local=local,
                threads_per_process=runner.threads_per_process(beam_args),
                model_staging=runner.model_staging(beam_args),
            )
        started()
        with interrupts_raised():
            record = runner.run(config, beam_args, progress=not flags.quiet and runner.runs_in_this_process(beam_args))
    except job.LaunchError as exc:
        print(f"{PROG}: error: argument {exc.flag}: {exc}", file=sys.stderr)
        return 2
    except runner.RunError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except (Interrupted, Exception) as exc:
        # Beam re-raises whatever a DoFn raised (a signal's Interrupted too) as a RuntimeError naming the step.
        finished = None
        if config is not None and local:
            try:
                finished = runner.settle_stopped_run(pipeline.run_info(config))
            except Exception:  # noqa: BLE001 - the first error is the one to report; the staging folder stays
                pass
        if Interrupted.received is not None:
            if finished is not None:
                what = f"the final step had decided, so its publish was finished ({finished['status']})"
            elif local:
                what = "no output was published"
            else:
                what = "the job may still run on the runner and finish by itself"
            print(f"\n{PROG}: interrupted ({Interrupted.received.name}): {what}", file=sys.stderr)
            return 128 + Interrupted.received  # the shell's convention: 130 for SIGINT, 143 for SIGTERM
        if finished is not None:  # a second try of the final step finished the publish
            record = finished
        elif flags.verbose:
            raise
        else:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            print(
                f"{PROG}: error: the run failed, nothing was published: {type(exc).__name__}: {first_line} "
                "(--verbose shows the traceback)",
                file=sys.stderr,
            )
            return 1
    print(format_summary(record))
    if record["status"] != "ok":
        for problem in record["problems"]:
            print(f"{PROG}: error: {problem} (output: {config.output})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(command())
