"""Listing that scales: the launch check and the expansion of a flat folder, against the number of objects in it.

A flat local folder of 1,000 and of 1,000,000 small `.jpg` files, and a flat prefix of 1,000 and of 20,000 objects
on gcp-storage-emulator (in this process, on 127.0.0.1, made to page its listings as GCS does). For each, a fresh
process (measure.py's wrapper: wall time, peak RSS) imports the job, runs the launch checks of `--input FOLDER`
(inputs/checks.py: check_exists, count_rows) and takes the first row of the expansion (inputs/expand.expand_input,
as the pipeline's first stage does): the launcher's work and the time to the first row a worker can decode. A
second process streams every row of the expansion (memory should not grow with the count). Ratios are to the
1,000-object case of the same store, same run.

    python benchmarks/listing.py                     # local 1,000 and 1,000,000; GCS 1,000 and 20,000
    python benchmarks/listing.py --local 1000,100000 --gcs 1000,5000
    python benchmarks/listing.py --code /tmp/older    # the same with another checkout's beam_pipeline package
"""

from __future__ import annotations

import argparse
import bisect
import json
import logging
import os
import socket
import statistics
import sys
import tempfile
from pathlib import Path

from measure import run_measured

REPO_ROOT = Path(__file__).resolve().parent.parent
BUCKET = "listing-bench"
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


def make_local(folder: Path, n: int) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        fd = os.open(folder / f"img_{i:07d}.jpg", os.O_CREAT | os.O_WRONLY, 0o644)
        os.write(fd, b"x")
        os.close(fd)
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
    """`n` one-byte objects under `prefix`, put straight into the emulator's in-memory store: its upload handler
    rewrites its whole metadata file per object, which makes 20,000 uploads take ~20 minutes."""
    from gcp_storage_emulator.handlers.objects import _make_object_resource

    storage = server._storage
    for i in range(n):
        name = f"{prefix}/img_{i:07d}.jpg"
        storage.objects.setdefault(BUCKET, {})[name] = _make_object_resource(url, BUCKET, name, "image/jpeg", 1)
        storage._store.write_bytes(storage._object_path(BUCKET, name), b"x")
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


def report(store: str, cases: dict[int, dict[str, dict]]) -> None:
    base = cases[min(cases)]
    for n, case in sorted(cases.items()):
        first, full = case["first"], case["all"]
        print(
            f"| {store} | {n:,} | {first['check_s']:.2f} | {first['first_row_s']:.2f} "
            f"({first['first_row_s'] / base['first']['first_row_s']:.2f}x) | {first['rss_mib']:.0f} "
            f"({first['rss_mib'] / base['first']['rss_mib']:.2f}x) | {full['all_s']:.1f} | {full['rss_mib']:.0f} "
            f"({full['rss_mib'] / base['all']['rss_mib']:.2f}x) | {first['counted_at_launch']} |"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--local", default="1000,1000000", help="comma-separated file counts ('' for none)")
    parser.add_argument("--gcs", default="1000,20000", help="comma-separated object counts ('' for none)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each probe (medians are shown)")
    parser.add_argument("--code", default=str(REPO_ROOT), help="folder holding the beam_pipeline package to run")
    args = parser.parse_args(argv)
    env = {**os.environ, "PYTHONPATH": args.code}
    results: dict[str, dict[int, dict[str, dict]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-listing-") as tmp:
        for n in [int(x) for x in args.local.split(",") if x]:
            folder = make_local(Path(tmp) / f"flat-{n}", n)
            results.setdefault("local", {})[n] = {mode: probe(folder, mode, env, args.repeats) for mode in MODES}
        gcs = [int(x) for x in args.gcs.split(",") if x]
        if gcs:
            url, server = start_emulator()
            gcs_env = {**env, "STORAGE_EMULATOR_HOST": url, "FSSPEC_GCS_TOKEN": "anon"}
            gcs_env["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"  # no Storage Control API on the emulator
            try:
                for n in gcs:
                    location = make_gcs(url, server, f"flat-{n}", n)
                    cases = {mode: probe(location, mode, gcs_env, args.repeats) for mode in MODES}
                    results.setdefault("gcs", {})[n] = cases
            finally:
                server.stop()
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} (1/5/15 min, at the end); code: {args.code}")
    print(
        "| store | objects | launch check s | first row s | launcher peak RSS MiB | all rows s | "
        "expansion peak RSS MiB | counted at launch |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for store, cases in results.items():
        report(store, cases)
    return 0


if __name__ == "__main__":
    sys.exit(main())
