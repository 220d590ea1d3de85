"""The throughput benchmark's measurements, one function (or class) per stage; see throughput.py.

(a) ModelBench: the job's classifier alone on pre-decoded batches, in this process;
(b) measure_decode: the job's decode alone over the corpus bytes, on a thread pool, in this process;
(e) measure_without_beam: (a) and (b) together as the job runs them, in this process, without Beam;
(c) measure_end_to_end: `python -m beam_pipeline` as a subprocess, with its output's top-1 classes;
(d) measure_naive: benchmarks/naive_baseline.py as a subprocess, with the given Beam arguments.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import math
import os
import queue
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from measure import run_measured

REPO_ROOT = Path(__file__).resolve().parent.parent
NAIVE_BASELINE = Path(__file__).resolve().with_name("naive_baseline.py")
SUMMARY_RE = re.compile(r"time: ([\d.]+) s\s+\(([\d.]+) images/s\)")
COUNTS_RE = re.compile(r"images read: (\d+)\s+labelled: (\d+)\s+failed: (\d+)")


# ----------------------------------------------------------------------------------------------------------------------
# In-process measurements


@dataclasses.dataclass(frozen=True)
class JobDefaults:
    """The job's defaults, read from its own argument parser so they follow the code."""

    resize: str
    max_image_pixels: int
    max_batch_size: int
    min_batch_size: int


def job_runner_args() -> list[str]:
    """The Beam arguments the job adds to a command line without --runner (its local runner settings)."""
    from beam_pipeline.launch.cli import local_defaults

    return local_defaults([])


def job_defaults() -> JobDefaults:
    """Parses an empty job command line to read the job's defaults."""
    from beam_pipeline.launch.cli import build_parser

    flags, _ = build_parser().parse_known_args(["--input", "-", "--output", "-"])  # the two required flags
    return JobDefaults(flags.resize, flags.max_image_pixels, flags.max_batch_size, flags.min_batch_size)


class ModelBench:
    """(a) The model alone: the job's classifier on pre-decoded uint8 batches of the job's max batch size."""

    def __init__(self, model: str, backend: str, files: Sequence[Path], defaults: JobDefaults):
        from beam_pipeline.decode.preprocess import DecodeSpec, decode_image
        from beam_pipeline.model import load, resolve

        self.classifier = load.load(resolve.resolve(model, backend))
        self.batch_size = defaults.max_batch_size
        width, height = self.classifier.input_size
        spec = DecodeSpec((width, height), defaults.resize, defaults.max_image_pixels)  # type: ignore[arg-type]
        images = [decode_image(path.read_bytes(), spec)[0] for path in files[: self.batch_size]]
        while len(images) < self.batch_size:  # a corpus smaller than one batch
            images.extend(images[: self.batch_size - len(images)])
        self.batch = np.stack(images)
        self.classifier.predict(self.batch)  # warm-up: the first call at this batch size allocates

    def run(self, n: int) -> dict[str, float]:
        """Predicts ceil(n / B) full batches; returns images/s."""
        batches = math.ceil(n / self.batch_size)
        started = time.perf_counter()
        for _ in range(batches):
            self.classifier.predict(self.batch)
        seconds = time.perf_counter() - started
        return {"images_per_s": batches * self.batch_size / seconds, "seconds": seconds, "batch_size": self.batch_size}


def measure_decode(files: Sequence[Path], size: tuple[int, int], defaults: JobDefaults) -> dict[str, float]:
    """(b) The decode step alone: decode_image over the corpus's bytes on os.cpu_count() threads; returns images/s."""
    from beam_pipeline.decode.preprocess import DecodeSpec, decode_image

    spec = DecodeSpec(size, defaults.resize, defaults.max_image_pixels)  # type: ignore[arg-type]
    blobs = [path.read_bytes() for path in files]  # read before the clock starts: this times the decode only
    threads = os.cpu_count() or 1

    def decode(data: bytes) -> None:
        decode_image(data, spec)

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        started = time.perf_counter()
        for _ in pool.map(decode, blobs):
            pass
        seconds = time.perf_counter() - started
    return {"images_per_s": len(blobs) / seconds, "seconds": seconds, "threads": threads}


def measure_without_beam(
    classifier: Any, files: Sequence[Path], defaults: JobDefaults, threads: int = 2
) -> dict[str, float]:
    """(e) The job's design without Beam: decode_image on `threads` threads with two batches in flight (the decode
    DoFn's default), finished images taken from a queue, the model on this thread in batches of the job's max size.

    What decode and model reach sharing these cores with none of Beam's per-element work: the ceiling of the job's
    steady rate (the limit assumes they share the cores at no cost), and the CPU time it took. Bytes are read
    first, as in (b).
    """
    from beam_pipeline.decode.preprocess import DecodeSpec, decode_image

    spec = DecodeSpec(classifier.input_size, defaults.resize, defaults.max_image_pixels)  # type: ignore[arg-type]
    blobs = iter([path.read_bytes() for path in files])
    batch_size = defaults.max_batch_size
    finished: queue.SimpleQueue = queue.SimpleQueue()
    pending, batch = 0, []
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:

        def top_up() -> int:
            submitted = 0
            for data in itertools.islice(blobs, 2 * batch_size - pending):
                pool.submit(decode_image, data, spec).add_done_callback(finished.put)
                submitted += 1
            return submitted

        started, cpu_started = time.perf_counter(), _process_cpu_s()
        pending = top_up()
        while pending:
            batch.append(finished.get().result()[0])
            pending -= 1
            pending += top_up()
            if len(batch) == batch_size or not pending:
                classifier.predict(np.stack(batch))
                batch = []
        seconds, cpu_s = time.perf_counter() - started, _process_cpu_s() - cpu_started
    return {"images_per_s": len(files) / seconds, "seconds": seconds, "cpu_s": cpu_s, "threads": threads}


def _process_cpu_s() -> float:
    """User + system CPU time of this process so far, every thread (OpenVINO's own included)."""
    times = os.times()
    return times.user + times.system


# ----------------------------------------------------------------------------------------------------------------------
# Subprocess measurements


def subprocess_env(repo: Path = REPO_ROOT) -> dict[str, str]:
    """The environment of a measured subprocess: beam_pipeline imported from `repo`'s checkout."""
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(repo), env.get("PYTHONPATH")) if p)
    return env


def measure_end_to_end(
    corpus: Path,
    n: int,
    model: str,
    labels: str,
    job_args: Sequence[str],
    backend: str | None = None,
    repo: Path = REPO_ROOT,
) -> dict[str, Any]:
    """(c) `python -m beam_pipeline` with its defaults: N / wall time of the whole command, and what it prints.

    `corpus` may be a folder or a single image (the start-up measurement). The result's "top1" maps each image's
    file name to the class id the job put first. `repo` is the checkout whose job runs (e.g. another branch's, for a
    before/after comparison in one run).
    """
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as out:
        command = [sys.executable, "-m", "beam_pipeline", "--input", str(corpus), "--output", f"{out}/labels"]
        command += ["--model", model, "--labels", labels, *(["--backend", backend] if backend else []), *job_args]
        run = run_measured(command, subprocess_env(repo), cwd=repo)
        run.check("the job")
        top1 = read_top1(Path(out))
    printed = SUMMARY_RE.search(run.stdout)
    counts = COUNTS_RE.search(run.stdout)
    labelled = int(counts[2]) if counts else None
    if labelled != n:
        print(f"  warning: the job labelled {labelled} of {n} images:\n{run.stdout}", file=sys.stderr)
    return {
        "images_per_s": n / run.wall_s,
        "wall_s": run.wall_s,
        "cpu_s": run.cpu_s,
        "job_printed_images_per_s": float(printed[2]) if printed else None,
        "job_printed_seconds": float(printed[1]) if printed else None,
        "images_labelled": labelled,
        "peak_rss_mib": run.maxrss_mib,
        "top1": top1,
    }


def read_top1(folder: Path) -> dict[str, int]:
    """{file name: top-1 class id} from a job's Parquet shards in `folder` (error rows have no class)."""
    import pyarrow.parquet as pq

    top1 = {}
    for shard in sorted(folder.glob("labels-*.parquet")):
        for row in pq.read_table(shard, columns=["uri", "top_k"]).to_pylist():
            if row["top_k"]:
                top1[Path(row["uri"]).name] = row["top_k"][0]["class_id"]
    return top1


def measure_naive(corpus: Path, n: int, model: str, beam_args: Sequence[str]) -> dict[str, Any]:
    """(d) The naive baseline (naive_baseline.py) with these Beam arguments: N / wall time of the whole command."""
    with tempfile.TemporaryDirectory(prefix="bench-naive-") as out:
        command = [sys.executable, str(NAIVE_BASELINE)]
        command += ["--input-dir", str(corpus), "--output", f"{out}/naive", "--model", model, *beam_args]
        run = run_measured(command, subprocess_env())
    run.check("the naive baseline")
    printed = re.search(r"naive: (\d+) images in ([\d.]+) s", run.stdout)
    runner = re.search(r"naive runner: (.*)", run.stdout)
    return {
        "images_per_s": n / run.wall_s,
        "wall_s": run.wall_s,
        "pipeline_seconds": float(printed[2]) if printed else None,
        "rows_written": int(printed[1]) if printed else None,
        "runner": runner[1].strip() if runner else None,
        "runner_args": list(beam_args),
        "peak_rss_mib": run.maxrss_mib,
    }
