"""http(s) reads against a 127.0.0.1 server: one GET, statuses mapped to error types, timeouts, no DNS rebinding."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import http.server
import ipaddress
import re
import socket
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field

import fsspec.asyn
import pytest
from conftest import label, read_output, run_job

import beam_pipeline
from beam_pipeline import errors
from beam_pipeline.decode import reading
from beam_pipeline.decode.limits import ReadLimits

HANG_LIMIT = 60.0  # the longest any handler waits, so a client that never gives up cannot hang the test
STREAM_TOTAL = 1 << 30  # what /stream would send if the client read it all


@dataclass
class Served:
    """A running test server: its base URL and what it saw."""

    url: str
    requests: collections.Counter = field(default_factory=collections.Counter)  # (method, path) -> count
    client_closed_early: threading.Event = field(default_factory=threading.Event)
    stream_bytes_sent: list[int] = field(default_factory=lambda: [0])
    user_agents: set = field(default_factory=set)
    slow_now: int = 0  # /slow/ requests being answered now, and the most at once
    slow_most: int = 0

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def count(self, path: str, method: str = "GET") -> int:
        return self.requests[method, path]


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):  # clients hanging up is what these tests do
            super().handle_error(request, client_address)


@contextlib.contextmanager
def serve(image: bytes) -> Iterator[Served]:
    """Serves on 127.0.0.1, the response chosen by the path:

    /image.jpg the image; /status/N status N (3xx to /image.jpg); /loop redirects to itself; /hang accepts the
    request and never answers; /big declares a 1e9-byte body and sends none; /stream sends a body with no
    Content-Length until the client goes away; /robots/TAG the image with `X-Robots-Tag: TAG` (URL-quoted), and
    /robots-big/TAG the same header over /big's answer; /slow/NAME the image after 0.3 s, counting how many such
    requests are answered at once.
    """
    stop = threading.Event()
    lock = threading.Lock()
    served: Served

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_HEAD(self):
            self._respond()

        def do_GET(self):
            self._respond()

        def _send(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command == "GET":
                self.wfile.write(body)

        def _respond(self) -> None:
            with lock:
                served.requests[self.command, self.path] += 1
                served.user_agents.add(self.headers.get("User-Agent"))
            path = self.path
            if path == "/image.jpg":
                self._send(200, image, {"Content-Type": "image/jpeg"})
            elif path.startswith("/robots/"):
                self._send(200, image, {"X-Robots-Tag": urllib.parse.unquote(path.split("/", 2)[2])})
            elif path.startswith("/robots-big/"):
                self.send_response(200)
                self.send_header("X-Robots-Tag", urllib.parse.unquote(path.split("/", 2)[2]))
                self.send_header("Content-Length", str(10**9))
                self.end_headers()
                self.wfile.flush()
                self.close_connection = True
                self._wait_for_client_to_close()
            elif path.startswith("/slow/"):
                with lock:
                    served.slow_now += 1
                    served.slow_most = max(served.slow_most, served.slow_now)
                time.sleep(0.3)
                with lock:
                    served.slow_now -= 1
                self._send(200, image, {"Content-Type": "image/jpeg"})
            elif path == "/loop":
                self._send(302, headers={"Location": "/loop"})
            elif path == "/hang":
                stop.wait(HANG_LIMIT)
                self.close_connection = True
            elif path == "/big":
                self.send_response(200)
                self.send_header("Content-Length", str(10**9))
                self.end_headers()
                self.wfile.flush()
                self.close_connection = True
                self._wait_for_client_to_close()
            elif path == "/stream":
                self._stream()
            else:
                status = int(re.fullmatch(r"/status/(\d+)", path).group(1))
                self._send(status, f"status {status}".encode(), {"Location": "/image.jpg"} if status < 400 else {})

        def _wait_for_client_to_close(self) -> None:
            self.connection.settimeout(0.2)
            while not stop.is_set():
                try:
                    if self.connection.recv(1) == b"":
                        break
                except TimeoutError:
                    continue
                except OSError:
                    break
            if not stop.is_set():
                served.client_closed_early.set()

        def _stream(self) -> None:
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            chunk = b"\xff" * 65536
            try:
                while served.stream_bytes_sent[0] < STREAM_TOTAL and not stop.is_set():
                    self.wfile.write(chunk)
                    served.stream_bytes_sent[0] += len(chunk)
            except OSError:
                pass

    server = _Server(("127.0.0.1", 0), Handler)
    served = Served(f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        stop.set()
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def image(shared) -> bytes:
    return (shared / "images" / "photos" / "hot_dog.jpg").read_bytes()


@pytest.fixture
def server(image) -> Iterator[Served]:
    with serve(image) as served:
        yield served


@pytest.fixture
def fast_backoff(monkeypatch):
    monkeypatch.setattr(reading, "BACKOFF_SECONDS", 0.01)


@pytest.fixture
def loopback_is_public(monkeypatch):
    """Lets the default (public hosts only, redirects not followed) mode reach the 127.0.0.1 test server."""
    real = reading.is_public_address
    monkeypatch.setattr(reading, "is_public_address", lambda ip: ip == ipaddress.ip_address("127.0.0.1") or real(ip))


def _read(url: str, **kwargs) -> bytes:
    options = {"max_bytes": 10_000_000, "allowed_schemes": ("http",), "timeout": 5.0, "retries": 0, **kwargs}
    return reading.read_image_bytes(url, reading.ReadPolicy(**{"allow_private_hosts": True, **options}))


def _failure(url: str, **kwargs) -> errors.ImageInputError:
    with pytest.raises(errors.ImageInputError) as info:
        _read(url, **kwargs)
    return info.value


def test_a_host_that_never_answers_times_out_and_every_other_row_is_labelled(
    tmp_path, shared, server, fast_backoff, tiny_model, labels_file
):
    photos = shared / "images" / "photos"
    hang = f"{server.url}/hang"
    manifest = tmp_path / "m.txt"
    manifest.write_text("\n".join([hang, f"{server.url}/image.jpg", str(photos / "cat.bmp"), str(photos / "bird.bmp")]))
    prefix = tmp_path / "out" / "labels"
    flags = ["--allow-private-hosts", "--read-timeout", "1", "--read-retries", "1"]
    assert label(manifest, prefix, tiny_model, labels_file, *flags) == 0

    rows = {r["uri"]: r for r in read_output(prefix).to_pylist()}
    assert len(rows) == 4
    assert rows[hang]["status"] == "error" and rows[hang]["error_type"] == "ReadError"
    assert "timed out" in rows[hang]["error"] and "2 attempts" in rows[hang]["error"]
    assert all(r["status"] == "ok" and r["label"] for uri, r in rows.items() if uri != hang)
    assert server.count("/hang") == 2, "one attempt and one retry"
    assert server.count("/hang", "HEAD") == server.count("/image.jpg", "HEAD") == 0


def test_timeouts_also_bound_reads_of_public_hosts(server, loopback_is_public):
    failure = _failure(f"{server.url}/hang", allow_private_hosts=False, retries=0, timeout=1.0)
    assert failure.error_type == "ReadError" and "timed out" in str(failure) and failure.transient


def test_one_get_reads_the_image(server, image):
    assert _read(f"{server.url}/image.jpg") == image
    assert dict(server.requests) == {("GET", "/image.jpg"): 1}


@pytest.mark.parametrize("status", [404, 410])
def test_missing_is_not_found_and_not_retried(server, status):
    failure = _failure(f"{server.url}/status/{status}", retries=3)
    assert failure.error_type == "NotFound" and f"HTTP {status}" in str(failure) and not failure.transient
    assert dict(server.requests) == {("GET", f"/status/{status}"): 1}


@pytest.mark.parametrize("status", [401, 403])
def test_forbidden_is_a_permanent_read_error(server, status):
    failure = _failure(f"{server.url}/status/{status}", retries=3)
    assert failure.error_type == "ReadError" and str(failure) == f"forbidden (HTTP {status})"
    assert failure.transient is False
    assert dict(server.requests) == {("GET", f"/status/{status}"): 1}


@pytest.mark.parametrize("status", [429, 500, 503])
def test_throttling_and_server_errors_are_retried_then_a_transient_read_error(server, fast_backoff, status):
    failure = _failure(f"{server.url}/status/{status}", retries=2)
    assert failure.error_type == "ReadError" and str(failure).startswith(f"HTTP {status} ")
    assert "3 attempts" in str(failure) and failure.transient is True
    assert dict(server.requests) == {("GET", f"/status/{status}"): 3}


def test_other_client_errors_are_permanent(server):
    failure = _failure(f"{server.url}/status/400", retries=3)
    assert (failure.error_type, str(failure), failure.transient) == ("ReadError", "HTTP 400 Bad Request", False)
    assert server.count("/status/400") == 1


@pytest.mark.parametrize("status", [301, 302, 307])
def test_redirects_are_not_followed_by_default(server, loopback_is_public, status):
    failure = _failure(f"{server.url}/status/{status}", allow_private_hosts=False, retries=3)
    assert failure.error_type == "ReadError"
    assert str(failure) == f"redirect not followed (HTTP {status} to /image.jpg)" and failure.transient is False
    assert dict(server.requests) == {("GET", f"/status/{status}"): 1}


def test_redirects_are_followed_with_allow_private_hosts_until_a_loop(server, image):
    assert _read(f"{server.url}/status/302", allow_private_hosts=True) == image
    failure = _failure(f"{server.url}/loop", allow_private_hosts=True, retries=3)
    assert failure.error_type == "ReadError" and "too many redirects" in str(failure) and not failure.transient
    assert server.count("/loop") == 10, "aiohttp's limit, and the loop is not retried"


def test_a_declared_size_over_max_bytes_is_refused_before_the_body(server):
    failure = _failure(f"{server.url}/big", max_bytes=1000)
    assert failure.error_type == "FileTooLarge" and "Content-Length 1000000000" in str(failure)
    assert server.client_closed_early.wait(10), "the client hung up instead of waiting for the body"
    assert server.count("/big") == 1 and server.count("/big", "HEAD") == 0


def test_a_body_without_a_declared_size_is_read_only_past_max_bytes(server):
    failure = _failure(f"{server.url}/stream", max_bytes=100_000)
    assert failure.error_type == "FileTooLarge"
    assert server.stream_bytes_sent[0] < STREAM_TOTAL // 8, "the client stopped reading soon after --max-bytes"


def _answering(monkeypatch, host: str, *answers: str) -> list[str]:
    """Makes socket.getaddrinfo answer `host` with answers[0], then answers[1], ... (the last one repeats)."""
    real = socket.getaddrinfo
    asked: list[str] = []

    def getaddrinfo(name, port, *args, **kwargs):
        if name != host:
            return real(name, port, *args, **kwargs)
        asked.append(name)
        address = answers[min(len(asked), len(answers)) - 1]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, int(port or 0)))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return asked


def test_a_rebinding_dns_answer_is_never_connected_to(server, monkeypatch):
    # 127.0.0.2 stands for a public address (nothing listens there, so the connection is refused at once);
    # a rebinding DNS server answers it to the check, then 127.0.0.1 to any later lookup.
    real = reading.is_public_address
    monkeypatch.setattr(reading, "is_public_address", lambda ip: ip == ipaddress.ip_address("127.0.0.2") or real(ip))
    asked = _answering(monkeypatch, "rebind.test", "127.0.0.2", "127.0.0.1")
    with pytest.raises(errors.ImageInputError) as info:
        _read(f"http://rebind.test:{server.port}/image.jpg", allow_private_hosts=False, retries=0)
    assert info.value.error_type == "ReadError" and "127.0.0.2" in str(info.value)
    assert asked == ["rebind.test"], "one lookup: the address checked is the address connected to"
    assert not server.requests


@pytest.mark.parametrize("answer", ["127.0.0.1", "169.254.169.254", "10.1.2.3"])
def test_a_name_resolving_to_a_private_address_is_blocked(server, monkeypatch, answer):
    _answering(monkeypatch, "inside.test", answer)
    failure = _failure(f"http://inside.test:{server.port}/image.jpg", allow_private_hosts=False, retries=3)
    assert failure.error_type == "BlockedHost" and answer in str(failure)
    assert not server.requests


def test_requests_name_the_job_unless_told_otherwise(server):
    _read(f"{server.url}/image.jpg")
    assert server.user_agents == {f"beam-image-labeller/{beam_pipeline.__version__}"}
    server.user_agents.clear()
    _read(f"{server.url}/image.jpg", user_agent="my-crawler/2 (+https://example.com/bot)")
    assert server.user_agents == {"my-crawler/2 (+https://example.com/bot)"}


@pytest.mark.parametrize(
    "tag",
    ["noai", "noimageai", "noindex, NoImageAI", "beam-image-labeller: noai", "my-crawler: noimageai, noindex"],
)
def test_an_x_robots_tag_refusing_ai_use_is_disallowed_and_not_retried(server, tag):
    url = f"{server.url}/robots/{urllib.parse.quote(tag)}"
    failure = _failure(url, retries=3, user_agent="my-crawler/2")
    assert failure.error_type == "Disallowed" and "X-Robots-Tag" in str(failure) and not failure.transient
    assert sum(server.requests.values()) == 1


@pytest.mark.parametrize("tag", ["noindex, nofollow", "otherbot: noai", "unavailable_after: 25 Jun 2030 15:00 PST"])
def test_other_x_robots_tags_are_read(server, image, tag):
    assert _read(f"{server.url}/robots/{urllib.parse.quote(tag)}", user_agent="my-crawler/2") == image


def test_an_x_robots_tag_is_honoured_before_the_body_and_can_be_ignored(server, image):
    failure = _failure(f"{server.url}/robots-big/noai", max_bytes=2 * 10**9)
    assert failure.error_type == "Disallowed"
    assert server.client_closed_early.wait(10), "the client hung up instead of waiting for the body"
    assert _read(f"{server.url}/robots/noai", honour_robots_tag=False) == image


def test_reads_are_many_at_once_within_the_cap_per_host_and_every_row_comes_out_once(
    tmp_path, shared, server, tiny_model, labels_file
):
    """24 reads that each take 0.3 s, on a job whose decode pool has fewer threads than the per-host cap."""
    slow = [f"{server.url}/slow/{i}.jpg" for i in range(24)]
    denied = f"{server.url}/robots/noimageai"
    manifest = tmp_path / "m.txt"
    manifest.write_text("\n".join([*slow, denied, str(shared / "images" / "photos" / "cat.bmp"), slow[0]]))
    prefix = tmp_path / "out" / "labels"
    flags = ["--allow-private-hosts", "--requests-per-host", "6", "--reads-in-flight", "12", "--user-agent", "t/1"]
    assert label(manifest, prefix, tiny_model, labels_file, *flags) == 0

    rows = read_output(prefix).to_pylist()
    assert sorted(r["uri"] for r in rows) == sorted([*slow, slow[0], denied, str(shared / "images/photos/cat.bmp")])
    assert {r["error_type"] for r in rows if r["uri"] == denied} == {"Disallowed"}
    assert all(r["status"] == "ok" for r in rows if r["uri"] != denied)
    assert server.slow_most == 6, "as many reads at once as the per-host cap allows, more than the decode threads"
    assert server.user_agents == {"t/1"}


def test_finished_reads_wait_for_the_byte_budget_and_one_bigger_than_it_waits_to_be_alone():
    limits = ReadLimits(reads=4, per_host=2, budget=100)

    def hold(size: int) -> concurrent.futures.Future:
        return asyncio.run_coroutine_threadsafe(limits.hold(size), fsspec.asyn.get_loop())

    assert hold(60).result(5) == 60
    second, huge = hold(60), hold(500)
    with pytest.raises(concurrent.futures.TimeoutError):
        second.result(0.5)  # 60 + 60 > 100: it cannot be granted before a release
    limits.release(60)
    assert second.result(5) == 60 and not huge.done()
    limits.release(60)
    assert huge.result(5) == 100, "a read over the whole budget takes all of it, alone"


def test_read_timeout_flag_must_be_positive(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        run_job("--input", tmp_path, "--output", tmp_path / "out", "--read-timeout", "0")
    assert info.value.code == 2
    assert "--read-timeout" in capsys.readouterr().err
