"""How fast the job labels images when storage is far away: http and gs:// with 0, 40 and 100 ms per request.

Serves the web corpus (N 500x375 JPEGs, corpus.py) three ways, all on 127.0.0.1: local files; a threaded HTTP
server that waits DELAY ms before answering each request; and gcp-storage-emulator (in memory) behind a small proxy
that waits DELAY ms before forwarding each request. The job (`python -m beam_pipeline`, the float SavedModel from
../shared) reads a manifest of the URIs in two layouts: the local default (one in-memory worker) and Dataflow's
(`--direct_running_mode multi_processing --direct_num_workers 2`: one process per core, each capped by the launcher
to one model thread and two decode threads, as on a Dataflow worker). For each run it prints the steady rate (from
the spread of the rows' `labelled_at`, the middle 90% of rows, so start-up is left out), N / wall time, the ratio of
the steady rate to local files' (same layout) and to the same source at 0 ms, the server's requests per image, and
peak RSS (psutil, summed over the job's process tree, sampled every 0.2 s). `--checkout DIR` also runs another
checkout's job (e.g. `git archive main | tar -x -C /tmp/before`) from DIR with the same interpreter, interleaved,
so "before" and "after" share the machine's state. Nothing asserts a time.

    python benchmarks/latency.py                                  # 600 images, every source, delay and layout
    python benchmarks/latency.py --sources http --delays 0,40 --layouts mp2 --n 200
    python benchmarks/latency.py --checkout /tmp/before --json latency.json
    python benchmarks/latency.py --sources http --delays 40 --job-arg=--reads-in-flight=16
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import http.server
import json
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import psutil
import pyarrow.parquet as pq
from corpus import REPO_ROOT, build_corpus, corpus_files, shared_dir

BUCKET = "latency-bench"
LAYOUTS = {
    "default": [],
    "mp2": ["--direct_running_mode=multi_processing", "--direct_num_workers=2"],
}
SAMPLE_SECONDS = 0.2


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # many reads in flight connect at once

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that hangs up early is no failure here
            super().handle_error(request, client_address)


class Delayed:
    """A running delaying server: its URL, the delay it adds (changed between runs) and the requests it saw."""

    def __init__(self) -> None:
        self.url = ""
        self.delay = 0.0
        self.requests: Counter = Counter()
        self.lock = threading.Lock()

    def seen(self, method: str) -> None:
        with self.lock:
            self.requests[method] += 1


@contextlib.contextmanager
def _running(server: http.server.HTTPServer) -> Iterator[None]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def file_server(folder: Path) -> Iterator[Delayed]:
    """Serves `folder`'s files over HTTP/1.1 (keep-alive), each answer after `delay` seconds."""
    state = Delayed()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def do_GET(self) -> None:
            self._answer(body=True)

        def _answer(self, body: bool) -> None:
            state.seen(self.command)
            time.sleep(state.delay)
            path = folder / self.path.lstrip("/")
            if not path.is_file():
                self.send_error(404)
                return
            data = path.read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if body:
                self.wfile.write(data)

    server = _Server(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    with _running(server):
        yield state


@contextlib.contextmanager
def gcs_behind_proxy(files: list[Path]) -> Iterator[Delayed]:
    """gcp-storage-emulator holding `files` as gs://BUCKET/NAME, behind a proxy adding `delay` per request."""
    from gcp_storage_emulator.server import create_server
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    logging.getLogger("gcp_storage_emulator").setLevel(logging.ERROR)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # The emulator serves one request at a time from a plain http.server.HTTPServer, whose listen backlog is 5:
    # with 64 reads in flight per process the kernel drops the connections beyond it, and each dropped one stalls
    # for seconds of SYN retries, then the read timeout (measured: 17 images/s on mp2 at 0 ms, 1.06 requests per
    # image). GCS does not drop connections, so the emulator's queue is made as deep as the proxy's.
    with mock.patch.object(http.server.HTTPServer, "request_queue_size", _Server.request_queue_size):
        emulator = create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
        emulator.start()
    upstream = f"http://127.0.0.1:{port}"
    client = storage.Client(
        project="bench", credentials=AnonymousCredentials(), client_options={"api_endpoint": upstream}
    )
    bucket = client.bucket(BUCKET)
    for path in files:
        bucket.blob(path.name).upload_from_filename(str(path))
    state = Delayed()
    local = threading.local()

    class Proxy(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            self._forward()

        do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_GET

        def _forward(self) -> None:
            state.seen(self.command)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            time.sleep(state.delay)
            if getattr(local, "connection", None) is None:
                local.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
            local.connection.request(self.command, self.path, body=body or None, headers=headers)
            answer = local.connection.getresponse()
            data = answer.read()
            self.send_response(answer.status)
            for name, value in answer.getheaders():
                if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                    self.send_header(name, value)
            # A HEAD answer has no body but says the length of the one a GET would have.
            length = answer.getheader("Content-Length") if self.command == "HEAD" else None
            self.send_header("Content-Length", length or str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

    server = _Server(("127.0.0.1", 0), Proxy)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with _running(server):
            yield state
    finally:
        emulator.stop()


def _tree_rss(process: psutil.Process) -> int:
    total = 0
    for p in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def run_job(checkout: Path, manifest: Path, layout: str, env: dict[str, str], tmp: Path, extra: list[str]) -> dict:
    """One run of the job from `checkout`; its wall time, steady rate and peak tree RSS."""
    shared = shared_dir()
    out = Path(tempfile.mkdtemp(prefix="out-", dir=tmp))
    command = [
        sys.executable, "-m", "beam_pipeline",
        "--input", str(manifest),
        "--output", str(out / "labels"),
        "--model", str(shared / "models" / "mobilenet_v3_small_100_224_float"),
        "--labels", str(shared / "labels" / "ImageNetLabels.txt"),
        "--allow-private-hosts", "--quiet",
        *LAYOUTS[layout],
        *extra,
    ]  # fmt: skip
    started = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=checkout, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    watched = psutil.Process(process.pid)
    peak = 0
    while process.poll() is None:
        peak = max(peak, _tree_rss(watched))
        time.sleep(SAMPLE_SECONDS)
    wall = time.perf_counter() - started
    output = process.stdout.read() if process.stdout else ""
    if process.returncode != 0:
        raise SystemExit(f"the job failed ({process.returncode}):\n" + "\n".join(output.splitlines()[-30:]))
    table = pq.read_table(sorted(out.glob("labels-*.parquet")), columns=["status", "labelled_at"])
    statuses = Counter(table.column("status").to_pylist())
    times = sorted(t.timestamp() for t in table.column("labelled_at").to_pylist())
    lo, hi = int(len(times) * 0.05), int(len(times) * 0.95) - 1
    steady = (hi - lo) / (times[hi] - times[lo]) if hi > lo and times[hi] > times[lo] else float("nan")
    return {
        "rows": table.num_rows,
        "ok": statuses.get("ok", 0),
        "wall_s": wall,
        "rate_wall": table.num_rows / wall,
        "rate_steady": steady,
        "peak_rss_mib": peak / 2**20,
    }


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=600)
    parser.add_argument("--delays", default="0,40,100", help="ms added per request, comma-separated")
    parser.add_argument("--sources", default="local,http,gs")
    parser.add_argument("--layouts", default="default,mp2")
    parser.add_argument("--checkout", type=Path, action="append", default=[], help="also run this checkout's job")
    parser.add_argument("--job-arg", action="append", default=[], help="an extra argument for every job run")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    delays = [float(d) for d in args.delays.split(",")]
    sources = args.sources.split(",")
    layouts = args.layouts.split(",")
    checkouts = {"this": REPO_ROOT, **{str(c): c.resolve() for c in args.checkout}}
    folder = build_corpus(args.n, corpus="web")
    files = corpus_files(folder)
    print(f"{len(files)} images in {folder}; load average at start {_load()}", flush=True)
    results = []
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory(prefix="latency-") as tmp_name:
        tmp = Path(tmp_name)
        servers = {}
        if "http" in sources:
            servers["http"] = stack.enter_context(file_server(folder))
        if "gs" in sources:
            servers["gs"] = stack.enter_context(gcs_behind_proxy(files))
        gs_env = {
            "STORAGE_EMULATOR_HOST": servers["gs"].url if "gs" in servers else "",
            "FSSPEC_GCS_TOKEN": "anon",
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
            "GOOGLE_CLOUD_PROJECT": "bench",
            "NO_GCE_CHECK": "True",
        }
        manifests = {
            "local": [str(p) for p in files],
            "http": [f"{servers['http'].url}/{p.name}" for p in files] if "http" in servers else [],
            "gs": [f"gs://{BUCKET}/{p.name}" for p in files],
        }
        plan = [("local", 0.0)] * ("local" in sources) + [(s, d) for s in sources if s != "local" for d in delays]
        for layout in layouts:
            for source, delay in plan:
                manifest = tmp / f"{source}.txt"
                manifest.write_text("\n".join(manifests[source]) + "\n")
                for name, checkout in checkouts.items():
                    server = servers.get(source)
                    if server is not None:
                        server.delay = delay / 1000
                        server.requests.clear()
                    figures = run_job(checkout, manifest, layout, gs_env if source == "gs" else {}, tmp, args.job_arg)
                    requests = sum(server.requests.values()) if server is not None else 0
                    row = {"checkout": name, "layout": layout, "source": source, "delay_ms": delay, **figures}
                    row["requests_per_image"] = requests / len(files) if server is not None else None
                    row["load"] = _load()
                    results.append(row)
                    print(json.dumps(row), flush=True)
    _print_table(results)
    print(f"load average at end {_load()}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


def _print_table(results: list[dict]) -> None:
    """The summary: ratios to local files (same checkout and layout) and to the same source at 0 ms."""
    by_key = {(r["checkout"], r["layout"], r["source"], r["delay_ms"]): r for r in results}
    print(
        "\n| checkout | layout | source | delay ms | ok/rows | steady img/s | wall img/s | / local | / 0 ms "
        "| requests/img | peak RSS MiB | load 1/5/15 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        local = by_key.get((r["checkout"], r["layout"], "local", 0.0))
        zero = by_key.get((r["checkout"], r["layout"], r["source"], 0.0))
        to_local = f"{r['rate_steady'] / local['rate_steady']:.2f}" if local else "-"
        to_zero = f"{r['rate_steady'] / zero['rate_steady']:.2f}" if zero and r["source"] != "local" else "-"
        per_image = f"{r['requests_per_image']:.2f}" if r["requests_per_image"] is not None else "-"
        print(
            f"| {r['checkout']} | {r['layout']} | {r['source']} | {r['delay_ms']:g} | {r['ok']}/{r['rows']} "
            f"| {r['rate_steady']:.1f} | {r['rate_wall']:.1f} | {to_local} | {to_zero} | {per_image} "
            f"| {r['peak_rss_mib']:.0f} | {r['load']} |"
        )


if __name__ == "__main__":
    main()
