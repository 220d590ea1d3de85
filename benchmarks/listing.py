"""Listing that scales: the launch check, the expansion of a flat folder and the whole job's first labelled row,
against the number of objects in it.

A flat local folder of 1,000 and of 1,000,000 small `.jpg` files (hard links to a few copies of one small JPEG), and
a flat prefix of 1,000 and of 20,000 such objects on gcp-storage-emulator (in this process, on 127.0.0.1, made to
page its listings as GCS does). For each, a fresh process (measure.py's wrapper: wall time, peak RSS) imports the
job, runs the launch checks of `--input FOLDER` (inputs/checks.py: check_exists, count_rows) and takes the first row
of the expansion (inputs/expand.expand_input, as the pipeline's first stage does): the launcher's work and the time
to the first row a worker can decode. A second process streams every row of the expansion (memory should not grow
with the count). Then the whole job runs (`python -m beam_pipeline --input FOLDER ...` on the local runner, the
model in ../shared, a progress line every 0.1 s) until its progress line first counts a labelled row: the seconds
from its start and the launcher's peak RSS (VmHWM) then; it is stopped there with SIGINT (as a user's Ctrl-C), so
the big cases do not label everything. Ratios are to the 1,000-object case of the same store, same run.

    python benchmarks/listing.py                     # local 1,000 and 1,000,000; GCS 1,000 and 20,000
    python benchmarks/listing.py --local 1000,100000 --gcs 1000,5000
    python benchmarks/listing.py --code /tmp/older    # the same with another checkout's beam_pipeline package
"""

from __future__ import annotations

import argparse
import bisect
import collections
import io
import json
import logging
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from measure import run_measured

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("LABELLER_SHARED_DIR", REPO_ROOT.parent / "shared")).resolve()
MODEL = SHARED / "models" / "mobilenet_v3_small_100_224_float"
LABELS = SHARED / "labels" / "ImageNetLabels.txt"
BUCKET = "listing-bench"
LINKS_PER_COPY = 50_000  # ext4 allows 65,000 hard links to one file
MODES = ("first", "all")
PROBE = r"""
import json, sys, time
started = time.monotonic()
import pyarrow as pa
from beam_pipeline.inputs import checks, expand
from beam_pipeline.inputs.specs import InputSpec
imported = time.monotonic()
spec = checks.check_exists(InputSpec.parse(sys.argv[1]))
total = checks.count_rows([spec])
checked = time.monotonic()
rows = expand.expand_input(spec, uri_column="uri", carried=pa.schema([]))
next(rows)
first = time.monotonic()
count = 1 + sum(1 for _ in rows) if sys.argv[2] == "all" else None
print(json.dumps({"check_s": checked - imported, "first_row_s": first - imported, "all_s": time.monotonic() - imported,
                  "count": count, "counted_at_launch": total}))
"""


JOB = r"""
import runpy, sys
from beam_pipeline.launch import progress
progress.INTERVAL_SECONDS = 0.1  # the first labelled row is seen within 0.1 s of being written
sys.argv[0] = "beam_pipeline"
runpy.run_module("beam_pipeline", run_name="__main__", alter_sys=True)
"""
PROGRESS = re.compile(r"labelled ([\d,]+)(?:/[\d,]+)?\s+\(([\d,]+) failed\)")


def small_jpeg() -> bytes:
    """A 96x96 JPEG of a photo in ../shared (about 3 KB)."""
    from PIL import Image

    out = io.BytesIO()
    Image.open(SHARED / "images" / "photos" / "cat.bmp").convert("RGB").resize((96, 96)).save(out, "JPEG")
    return out.getvalue()


def make_local(folder: Path, n: int) -> str:
    """`n` JPEGs in a flat folder: hard links to n / LINKS_PER_COPY copies of one, kept beside the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    data = small_jpeg()
    for i in range(n):
        source = folder.parent / f"{folder.name}-copy-{i // LINKS_PER_COPY}.jpg"
        if i % LINKS_PER_COPY == 0:
            source.write_bytes(data)
        os.link(source, folder / f"img_{i:07d}.jpg")
    return str(folder)


def paged(ls):
    """gcp-storage-emulator's objects.list returns every object in one response, ignoring maxResults; GCS returns
    pages of at most 1,000 with a nextPageToken. This wraps it to page as GCS does (the token: the last name)."""

    def paged_ls(request, response, storage, *args, **kwargs):
        limit = min(int((request.query.get("maxResults") or ["1000"])[0]), 1000)
        token = (request.query.get("pageToken") or [None])[0]
        send = response.json

        def send_page(body: dict) -> None:
            items = body.get("items", [])
            start = 0 if token is None else bisect.bisect_right([item["name"] for item in items], token)
            body["items"] = items[start : start + limit]
            if start + limit < len(items):
                body["nextPageToken"] = body["items"][-1]["name"]
            if token is not None:
                body["prefixes"] = []
            send(body)

        response.json = send_page
        ls(request, response, storage, *args, **kwargs)

    return paged_ls


def start_emulator() -> tuple[str, object]:
    from gcp_storage_emulator import server as emulator
    from gcp_storage_emulator.handlers import objects
    from gcp_storage_emulator.server import create_server

    for _, handlers in emulator.HANDLERS:
        for method, handler in list(handlers.items()):
            if handler is objects.ls:
                handlers[method] = paged(objects.ls)

    logging.getLogger("gcp_storage_emulator").setLevel(logging.ERROR)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    return f"http://127.0.0.1:{port}", server


def make_gcs(url: str, server, prefix: str, n: int) -> str:
    """`n` small JPEG objects under `prefix`, put straight into the emulator's in-memory store: its upload handler
    rewrites its whole metadata file per object, which makes 20,000 uploads take ~20 minutes."""
    from gcp_storage_emulator.handlers.objects import _make_object_resource

    storage = server._storage
    data = small_jpeg()
    for i in range(n):
        name = f"{prefix}/img_{i:07d}.jpg"
        resource = _make_object_resource(url, BUCKET, name, "image/jpeg", len(data))
        storage.objects.setdefault(BUCKET, {})[name] = resource
        storage._store.write_bytes(storage._object_path(BUCKET, name), data)
    return f"gs://{BUCKET}/{prefix}/"


def probe(location: str, mode: str, env: dict[str, str], repeats: int) -> dict:
    """The figures of `repeats` runs of the probe, each the median over the runs."""
    runs = []
    for _ in range(repeats):
        # From the --code folder: `python -c` puts the working directory first on sys.path.
        run = run_measured([sys.executable, "-c", PROBE, location, mode], env=env, cwd=Path(env["PYTHONPATH"]))
        run.check(f"listing {location}")
        runs.append({**json.loads(run.stdout.strip().splitlines()[-1]), "rss_mib": run.maxrss_mib})
    return {
        key: statistics.median(r[key] for r in runs) if key != "counted_at_launch" else runs[0][key]
        for key in runs[0]
        if key != "count"
    }


def first_labelled(location: str, env: dict[str, str], repeats: int) -> dict:
    """The whole job on `location` to its first labelled row, `repeats` times: medians of the seconds from its start
    and of the launcher's peak RSS (MiB) at that moment."""
    runs = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(prefix="bench-listing-job-") as out:
            command = [sys.executable, "-c", JOB, "--input", location, "--output", f"{out}/labels/"]
            command += ["--model", str(MODEL), "--labels", str(LABELS)]
            runs.append(_until_first_labelled(command, env))
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def _until_first_labelled(command: list[str], env: dict[str, str]) -> dict:
    started = time.monotonic()
    job = subprocess.Popen(
        command, env=env, cwd=env["PYTHONPATH"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    tail: collections.deque[str] = collections.deque(maxlen=30)
    seen = None
    for line in job.stderr:
        tail.append(line)
        match = PROGRESS.search(line)
        if seen is None and match and int(match[1].replace(",", "")) > int(match[2].replace(",", "")):
            seen = {"first_labelled_s": time.monotonic() - started, "rss_mib": _peak_rss_mib(job.pid)}
            job.send_signal(signal.SIGINT)
    job.wait()
    if seen is None:
        raise SystemExit(f"{' '.join(command)} labelled nothing (exit {job.returncode}):\n{''.join(tail)}")
    return seen


def _peak_rss_mib(pid: int) -> float:
    """A live process's peak resident set (VmHWM) so far."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) / 1024


def report(store: str, cases: dict[int, dict[str, dict]]) -> None:
    base = cases[min(cases)]
    for n, case in sorted(cases.items()):
        first, full, job = case["first"], case["all"], case["job"]
        print(
            f"| {store} | {n:,} | {first['check_s']:.2f} | {first['first_row_s']:.2f} "
            f"({first['first_row_s'] / base['first']['first_row_s']:.2f}x) | {first['rss_mib']:.0f} "
            f"({first['rss_mib'] / base['first']['rss_mib']:.2f}x) | {full['all_s']:.1f} | {full['rss_mib']:.0f} "
            f"({full['rss_mib'] / base['all']['rss_mib']:.2f}x) | {first['counted_at_launch']} | "
            f"{job['first_labelled_s']:.2f} ({job['first_labelled_s'] / base['job']['first_labelled_s']:.2f}x) | "
            f"{job['rss_mib']:.0f} ({job['rss_mib'] / base['job']['rss_mib']:.2f}x) |"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--local", default="1000,1000000", help="comma-separated file counts ('' for none)")
    parser.add_argument("--gcs", default="1000,20000", help="comma-separated object counts ('' for none)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each probe (medians are shown)")
    parser.add_argument("--job-repeats", type=int, default=2, help="whole-job runs of each case (medians are shown)")
    parser.add_argument("--code", default=str(REPO_ROOT), help="folder holding the beam_pipeline package to run")
    args = parser.parse_args(argv)
    env = {**os.environ, "PYTHONPATH": args.code}
    results: dict[str, dict[int, dict[str, dict]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-listing-") as tmp:
        for n in [int(x) for x in args.local.split(",") if x]:
            folder = make_local(Path(tmp) / f"flat-{n}", n)
            cases = {mode: probe(folder, mode, env, args.repeats) for mode in MODES}
            results.setdefault("local", {})[n] = {**cases, "job": first_labelled(folder, env, args.job_repeats)}
        gcs = [int(x) for x in args.gcs.split(",") if x]
        if gcs:
            url, server = start_emulator()
            gcs_env = {**env, "STORAGE_EMULATOR_HOST": url, "FSSPEC_GCS_TOKEN": "anon"}
            gcs_env["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"  # no Storage Control API on the emulator
            try:
                for n in gcs:
                    location = make_gcs(url, server, f"flat-{n}", n)
                    cases = {mode: probe(location, mode, gcs_env, args.repeats) for mode in MODES}
                    cases["job"] = first_labelled(location, gcs_env, args.job_repeats)
                    results.setdefault("gcs", {})[n] = cases
            finally:
                server.stop()
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} (1/5/15 min, at the end); code: {args.code}")
    print(
        "| store | objects | launch check s | first row s | launcher peak RSS MiB | all rows s | "
        "expansion peak RSS MiB | counted at launch | job: first labelled row s | job: launcher peak RSS MiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for store, cases in results.items():
        report(store, cases)
    return 0


if __name__ == "__main__":
    sys.exit(main())
