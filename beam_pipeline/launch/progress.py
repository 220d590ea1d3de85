"""A progress line for local runs: rows written so far, of how many, how fast, and how long to go (from the
process-wide tally the pipeline's DoFns count into, `beam_pipeline.worker.TALLY`)."""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

from beam_pipeline.worker import TALLY, Tally

INTERVAL_SECONDS = 5.0


class ProgressReporter:
    """Prints the tally every `interval` seconds on its own thread: one updating line on a terminal, plain lines
    otherwise. Use as a context manager around the run."""

    def __init__(self, tally: Tally = TALLY, *, interval: float | None = None, stream: TextIO | None = None):
        self._tally = tally
        self._interval = interval or INTERVAL_SECONDS
        self._stream = stream or sys.stderr
        self._tty = self._stream.isatty()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)
        self._started = 0.0
        self._printed = False

    def __enter__(self) -> ProgressReporter:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()
        if self._printed and self._tty:
            self._stream.write("\n")
            self._stream.flush()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            line = format_progress(self._tally, time.monotonic() - self._started)
            self._stream.write(f"\r\x1b[K{line}" if self._tty else f"{line}\n")
            self._stream.flush()
            self._printed = True


def format_progress(tally: Tally, seconds: float) -> str:
    """e.g. `labelled 1,200/2,000  (58 failed)  240 images/s  ETA 3 s`; without the total while inputs are listed."""
    rate = tally.written / seconds if seconds > 0 else 0.0
    total = tally.total
    done = f"{tally.written:,}/{total:,}" if total is not None else f"{tally.written:,}"
    line = f"labelled {done}  ({tally.failed:,} failed)  {rate:,.0f} images/s"
    if total is not None and rate > 0:
        line += f"  ETA {max(0, total - tally.written) / rate:,.0f} s"
    return line
