"""What one worker process shares between its threads and stages: how many cores it may use, and the progress tally.

Beam's metrics reach the launcher only when a bundle ends, and the local runner runs the whole job as one bundle,
so the job's DoFns also count into this process-wide tally, which the launcher's progress line reads
(`launch/progress.py`). On a runner whose workers are other processes (Dataflow, multi_processing) the tally stays
empty; the same counts are Beam metrics there.
"""

from __future__ import annotations

import os
import threading


def default_num_threads() -> int:
    """Cores available to this process."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class Tally:
    """Process-wide counts, updated by the pipeline's threads (int updates under one lock)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset(inputs=0, expected_rows=None)

    def reset(self, *, inputs: int, expected_rows: int | None) -> None:
        """Zeroes the counts for a run over `inputs` --input values, expected to give `expected_rows` if known."""
        with self._lock:
            self.expected_rows = expected_rows
            self.inputs_left = inputs
            self.rows_in = 0
            self.written = 0
            self.failed = 0

    @property
    def total(self) -> int | None:
        """Rows the run will write: known at launch, or once every --input has been expanded."""
        return self.rows_in if self.inputs_left <= 0 else self.expected_rows

    def finish_input(self) -> None:
        with self._lock:
            self.inputs_left -= 1

    def add_input(self) -> None:
        with self._lock:
            self.rows_in += 1

    def add_written(self, failed: bool) -> None:
        with self._lock:
            self.written += 1
            self.failed += failed


TALLY = Tally()
