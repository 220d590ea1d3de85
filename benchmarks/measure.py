"""Wall time, CPU time and peak RSS of one command, measured by a fresh wrapper process.

`run_measured(command)` runs this file as a script around the command: the wrapper starts the command, waits for it
and writes its wall time, its CPU time (user + system, all processes) and the peak RSS of its process tree to a JSON
file. Peak RSS is RUSAGE_CHILDREN's ru_maxrss: the largest single process among every descendant that was waited
for, not a sum. A fresh wrapper per run gives each run its own figures; the caller's own RUSAGE_CHILDREN would keep
the maximum over all its earlier runs.

    python benchmarks/measure.py REPORT.json COMMAND [ARG ...]
"""

from __future__ import annotations

import dataclasses
import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclasses.dataclass
class Measured:
    """One run: exit code, wall and CPU time of the whole command, peak RSS, and what it printed."""

    returncode: int
    wall_s: float
    cpu_s: float
    maxrss_mib: float
    stdout: str
    stderr: str

    def check(self, what: str) -> None:
        """Exits with the last lines of the run's output if it failed."""
        if self.returncode != 0:
            tail = "\n".join((self.stdout + self.stderr).strip().splitlines()[-30:])
            raise SystemExit(f"{what} failed with exit code {self.returncode}:\n{tail}")


def run_measured(command: Sequence[str], env: dict[str, str] | None = None, cwd: Path = REPO_ROOT) -> Measured:
    """Runs `command` from `cwd` (the repository root) under a fresh wrapper process; returns its figures and output."""
    with tempfile.TemporaryDirectory(prefix="bench-measure-") as tmp:
        report = Path(tmp) / "report.json"
        done = subprocess.run(
            [sys.executable, __file__, str(report), *command],
            capture_output=True,
            text=True,
            env=env,
            cwd=cwd,
            check=False,
        )
        failed = {"wall_s": math.nan, "cpu_s": math.nan, "maxrss_kib": 0}
        figures = json.loads(report.read_text()) if report.exists() else failed
    return Measured(
        done.returncode, figures["wall_s"], figures["cpu_s"], figures["maxrss_kib"] / 1024, done.stdout, done.stderr
    )


def wrapper(report: str, command: Sequence[str]) -> int:
    """Runs `command`, writes its figures to `report`; returns its exit code."""
    started = time.monotonic()
    code = subprocess.run(command).returncode
    wall = time.monotonic() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    figures = {
        "returncode": code,
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "maxrss_kib": usage.ru_maxrss,  # KiB on Linux
    }
    Path(report).write_text(json.dumps(figures))
    return code


if __name__ == "__main__":
    if len(sys.argv) < 3:
        print(f"usage: {sys.argv[0]} REPORT.json COMMAND [ARG ...]", file=sys.stderr)
        sys.exit(2)
    sys.exit(wrapper(sys.argv[1], sys.argv[2:]))
