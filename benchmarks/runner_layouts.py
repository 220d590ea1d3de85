"""Which local Beam runner layouts keep every element across a Reshuffle (data-loss issue), and at what cost.

Run from the repository root with the project's venv active (see benchmarks/README.md)::

    python benchmarks/runner_layouts.py                                  # 200k and 1M elements, 3 repeats
    python benchmarks/runner_layouts.py --sizes 20000 --repeats 1        # a quick check
    python benchmarks/runner_layouts.py --layouts fnapi-mt2,fnapi-inmem --json layouts.json

Each run is the issue's reproduction, `Create(["x"]) | FlatMap(n dicts {"uri": f"/n/{i}.jpg"}) | Reshuffle()`, with
and without the Reshuffle, followed by two branches: the reproduction's `combiners.Count.Globally()`, and an id check
(a CombineGlobally that counts the elements and marks each id in an n-entry bitmap) so that a duplicate and a drop
cannot cancel out: a run is exact only if both counts are n and n distinct ids in [0, n) were seen. Every run is a
subprocess of this script (its internal `--run-one` mode) in its own session, killed as a group on `--timeout`, so a
hang or crash of one layout cannot stop the others. Runs are interleaved (repeat, then size, then layout), so slow
drift of the shared machine hits all layouts alike.

Wall time is that of the whole subprocess (interpreter start and imports included); the pipeline time is the one the
run measures around `pipeline.run().wait_until_finish()`. Memory is measured two ways: the peak of the summed RSS of
the run's process tree, sampled with psutil every `SAMPLE_S` seconds (counts every worker process of
multi_processing; a spike shorter than the sampling interval can be missed), and the largest single process, from
the rusage `os.wait4` returns for the run (the run and every descendant it waited for: the kernel's exact high-water
mark, but per process, not summed). The load average is recorded at the start and end of the whole benchmark.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

SAMPLE_S = 0.2
DEFAULT_SIZES = (200_000, 1_000_000)
DEFAULT_TIMEOUT_S = 900.0
STDERR_TAIL_CHARS = 2000

# name -> (description for the table's legend, Beam pipeline arguments)
LAYOUTS: dict[str, tuple[str, list[str]]] = {
    "fnapi-mt2": (
        "FnApiRunner, multi_threading, 2 workers",
        ["--runner=FnApiRunner", "--direct_running_mode=multi_threading", "--direct_num_workers=2"],
    ),
    "fnapi-mp2": (
        "FnApiRunner, multi_processing, 2 workers",
        ["--runner=FnApiRunner", "--direct_running_mode=multi_processing", "--direct_num_workers=2"],
    ),
    "fnapi-inmem": (
        "FnApiRunner, in_memory, default number of workers",
        ["--runner=FnApiRunner", "--direct_running_mode=in_memory"],
    ),
    "portable-embed": (
        "PortableRunner, embedded local job service, LOOPBACK environment",
        ["--runner=PortableRunner", "--job_endpoint=embed", "--environment_type=LOOPBACK"],
    ),
}


# ----------------------------------------------------------------------------------------------------------------
# The pipeline, run in a subprocess (--run-one)


def run_one(layout: str, n: int, reshuffle: bool, result_dir: Path) -> None:
    """Run the reproduction once in this process; write counts.json, check.json and timing.json to result_dir."""
    import apache_beam as beam
    import numpy as np
    from apache_beam.options.pipeline_options import PipelineOptions

    class IdCheck(beam.CombineFn):
        """Counts the elements and marks each id of /n/{id}.jpg in an n-entry bitmap: distinct ids, not just a count."""

        def __init__(self, size: int) -> None:
            self._size = size

        def create_accumulator(self) -> list[Any]:
            return [0, 0, np.zeros(self._size, dtype=bool)]  # elements, ids outside [0, n), bitmap

        def add_input(self, acc: list[Any], element: dict[str, str]) -> list[Any]:
            i = int(element["uri"][len("/n/") : -len(".jpg")])
            acc[0] += 1
            if 0 <= i < self._size:
                acc[2][i] = True
            else:
                acc[1] += 1
            return acc

        def merge_accumulators(self, accs: Any) -> list[Any]:
            merged = self.create_accumulator()
            for count, outside, bits in accs:
                merged[0] += count
                merged[1] += outside
                np.logical_or(merged[2], bits, out=merged[2])
            return merged

        def extract_output(self, acc: list[Any]) -> dict[str, int]:
            return {"elements": acc[0], "outside": acc[1], "distinct": int(acc[2].sum())}

    def write_json(value: Any, name: str) -> None:
        (result_dir / name).write_text(json.dumps(value))

    def expand(_: str) -> Any:
        return ({"uri": f"/n/{i}.jpg"} for i in range(n))

    options = PipelineOptions(LAYOUTS[layout][1])
    pipeline = beam.Pipeline(options=options)
    elements = pipeline | beam.Create(["x"]) | beam.FlatMap(expand)
    if reshuffle:
        elements = elements | beam.Reshuffle()
    _ = elements | "Count" >> beam.combiners.Count.Globally() | "WriteCount" >> beam.Map(write_json, "count.json")
    _ = elements | "IdCheck" >> beam.CombineGlobally(IdCheck(n)) | "WriteCheck" >> beam.Map(write_json, "check.json")
    start = time.monotonic()
    pipeline.run().wait_until_finish()
    write_json({"pipeline_s": time.monotonic() - start, "beam": beam.__version__}, "timing.json")


# ----------------------------------------------------------------------------------------------------------------
# The driver


@dataclasses.dataclass
class Run:
    layout: str
    reshuffle: bool
    n: int
    repeat: int
    status: str  # "ok", "timeout" or "exit N"
    counted: int | None
    check: dict[str, int] | None
    wall_s: float
    pipeline_s: float | None
    tree_rss_peak_mib: float
    largest_process_mib: float | None
    processes_seen: int
    load_at_start: float
    stderr_tail: str

    @property
    def exact(self) -> bool:
        return (
            self.status == "ok"
            and self.counted == self.n
            and self.check is not None
            and self.check == {"elements": self.n, "outside": 0, "distinct": self.n}
        )


def _tree_rss(root: psutil.Process, seen: set[int]) -> int:
    """Summed RSS in bytes of root and its descendants now; adds their pids to seen."""
    total = 0
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
            seen.add(proc.pid)
        except psutil.NoSuchProcess:
            continue
    return total


def measure(layout: str, n: int, reshuffle: bool, repeat: int, timeout_s: float) -> Run:
    """Run one reproduction as a subprocess in its own session, sampling its process tree's RSS until it ends."""
    load_at_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="runner-layouts-") as tmp:
        result_dir = Path(tmp)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--run-one", layout, str(n), str(int(reshuffle)), tmp]
        with open(result_dir / "stdout.txt", "wb") as out, open(result_dir / "stderr.txt", "wb") as err:
            start = time.monotonic()
            proc = subprocess.Popen(cmd, stdout=out, stderr=err, start_new_session=True)
            root = psutil.Process(proc.pid)
            seen: set[int] = set()
            peak = 0
            status = "timeout"
            rusage = None
            # os.wait4 rather than Popen.wait: it also returns the run's rusage (maxrss over the run and its
            # waited-for descendants), which this script's RUSAGE_CHILDREN would mix with every earlier run.
            while time.monotonic() - start < timeout_s:
                peak = max(peak, _tree_rss(root, seen))
                pid, wait_status, rusage = os.wait4(proc.pid, os.WNOHANG)
                if pid:
                    proc.returncode = os.waitstatus_to_exitcode(wait_status)
                    status = "ok" if proc.returncode == 0 else f"exit {proc.returncode}"
                    break
                time.sleep(SAMPLE_S)
            wall = time.monotonic() - start
            if status == "timeout":
                os.killpg(proc.pid, signal.SIGKILL)  # the run's own session: it and the workers it started
                proc.wait()
                rusage = None
        stderr_tail = (result_dir / "stderr.txt").read_text(errors="replace")[-STDERR_TAIL_CHARS:]
        counted = _read_json(result_dir / "count.json")
        check = _read_json(result_dir / "check.json")
        timing = _read_json(result_dir / "timing.json") or {}
    return Run(
        layout=layout,
        reshuffle=reshuffle,
        n=n,
        repeat=repeat,
        status=status,
        counted=counted,
        check=check,
        wall_s=wall,
        pipeline_s=timing.get("pipeline_s"),
        tree_rss_peak_mib=peak / 2**20,
        largest_process_mib=rusage.ru_maxrss / 1024 if rusage is not None else None,  # ru_maxrss is in KiB on Linux
        processes_seen=len(seen),
        load_at_start=load_at_start,
        stderr_tail="" if status == "ok" else stderr_tail,
    )


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def _fmt_optional(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(runs: list[Run], layouts: list[str], sizes: list[int]) -> str:
    """One row per layout, reshuffle and n: per-repeat counts, exactness, median times, peak memory."""
    header = (
        "layout",
        "reshuffle",
        "n",
        "counted per repeat",
        "distinct ids per repeat",
        "exact every repeat",
        "median wall s",
        "median pipeline s",
        "peak tree RSS MiB",
        "largest process MiB",
        "processes",
    )
    rows = [header]
    for layout in layouts:
        for reshuffle in (True, False):
            for n in sizes:
                group = [r for r in runs if (r.layout, r.reshuffle, r.n) == (layout, reshuffle, n)]
                if not group:
                    continue
                counted = ", ".join(str(r.counted) if r.counted is not None else r.status for r in group)
                distinct = ", ".join(str(r.check["distinct"]) if r.check else r.status for r in group)
                pipeline_times = [r.pipeline_s for r in group if r.pipeline_s is not None]
                largest = [r.largest_process_mib for r in group if r.largest_process_mib is not None]
                rows.append(
                    (
                        layout,
                        "yes" if reshuffle else "no",
                        f"{n:,}",
                        counted,
                        distinct,
                        "yes" if all(r.exact for r in group) else "NO",
                        f"{statistics.median(r.wall_s for r in group):.1f}",
                        _fmt_optional(statistics.median(pipeline_times) if pipeline_times else None, ".1f"),
                        f"{max(r.tree_rss_peak_mib for r in group):.0f}",
                        _fmt_optional(max(largest) if largest else None, ".0f"),
                        str(max(r.processes_seen for r in group)),
                    )
                )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def _positive_ints(text: str) -> list[int]:
    try:
        values = [int(part.replace("_", "")) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return values


def _layout_names(text: str) -> list[str]:
    names = text.split(",")
    unknown = [name for name in names if name not in LAYOUTS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown layout(s) {', '.join(unknown)}; choose from {', '.join(LAYOUTS)}")
    return names


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) == 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=_positive_ints, default=list(DEFAULT_SIZES), help="comma-separated n values")
    parser.add_argument("--repeats", type=_positive_int, default=3, help="runs of each layout, reshuffle and n")
    parser.add_argument(
        "--layouts", type=_layout_names, default=list(LAYOUTS), help=f"comma-separated, from: {', '.join(LAYOUTS)}"
    )
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds before a run is killed")
    parser.add_argument("--json", type=Path, help="also write every run's figures to this file")
    args = parser.parse_args(argv)
    if args.timeout <= 0:
        parser.error(f"argument --timeout: must be positive, got {args.timeout}")
    return args


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--run-one"]:  # internal: one run, as a subprocess of the driver below
        layout, n, reshuffle, result_dir = argv[1:5]
        run_one(layout, int(n), reshuffle == "1", Path(result_dir))
        return
    args = parse_args(argv)
    beam_version = importlib.metadata.version("apache-beam")
    started = datetime.datetime.now().astimezone()
    load_start = os.getloadavg()
    print(
        f"runner_layouts: {started:%Y-%m-%d %H:%M %Z}, Beam {beam_version}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, load average at start {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f}"
    )
    print(
        f"sizes {args.sizes}, repeats {args.repeats}, layouts {args.layouts}, timeout {args.timeout:.0f} s", flush=True
    )
    clock = time.monotonic()
    runs: list[Run] = []
    for repeat in range(args.repeats):
        for n in args.sizes:
            for layout in args.layouts:
                for reshuffle in (True, False):
                    run = measure(layout, n, reshuffle, repeat, args.timeout)
                    runs.append(run)
                    outcome = "exact" if run.exact else f"NOT EXACT ({run.status}, counted {run.counted}, {run.check})"
                    print(
                        f"  repeat {repeat + 1} {layout:15} reshuffle={'yes' if reshuffle else 'no ':3} n={n:>9,}: "
                        f"{outcome}, {run.wall_s:.1f} s, tree RSS {run.tree_rss_peak_mib:.0f} MiB",
                        flush=True,
                    )
                    if run.stderr_tail:
                        print("    stderr tail: " + run.stderr_tail.strip().replace("\n", "\n    "), flush=True)
    total_s = time.monotonic() - clock
    load_end = os.getloadavg()
    print()
    print(table(runs, args.layouts, args.sizes))
    print()
    for name in args.layouts:
        print(f"{name}: {LAYOUTS[name][0]}: {' '.join(LAYOUTS[name][1])}")
    print(
        f"peak tree RSS: psutil, summed over the run's process tree (workers included), sampled every {SAMPLE_S} s, "
        "max over repeats; largest process: ru_maxrss from os.wait4, max over repeats"
    )
    print(f"total {total_s / 60:.1f} min; load average at end {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "started": started.isoformat(),
                    "beam": beam_version,
                    "python": platform.python_version(),
                    "cpus": os.cpu_count(),
                    "load_average_start": load_start,
                    "load_average_end": load_end,
                    "total_s": total_s,
                    "layouts": {name: LAYOUTS[name][1] for name in args.layouts},
                    "runs": [dataclasses.asdict(r) | {"exact": r.exact} for r in runs],
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
