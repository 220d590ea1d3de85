"""A forwarding HTTP proxy on 127.0.0.1 that records every request, to count what a client asks a local server."""

from __future__ import annotations

import contextlib
import http.client
import http.server
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field


@dataclass
class Recorded:
    """The proxy's URL and the requests it forwarded: (method, unquoted path and query, Range header or None)."""

    url: str
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)

    def to(self, fragment: str) -> list[tuple[str, str, str | None]]:
        """The requests whose path contains `fragment`."""
        return [r for r in self.requests if fragment in r[1]]


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@contextlib.contextmanager
def recording_proxy(upstream: str) -> Iterator[Recorded]:
    """Forwards every request to `upstream` (http://127.0.0.1:PORT) whole, and records it."""
    target = urllib.parse.urlsplit(upstream)
    lock = threading.Lock()
    recorded: Recorded

    class Proxy(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            with lock:
                recorded.requests.append((self.command, urllib.parse.unquote(self.path), self.headers.get("Range")))
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            connection = http.client.HTTPConnection(target.hostname, target.port, timeout=60)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
            connection.request(self.command, self.path, body=body or None, headers=headers)
            answer = connection.getresponse()
            data = answer.read()
            connection.close()
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

        do_HEAD = do_POST = do_PUT = do_DELETE = do_PATCH = do_GET

    server = _Server(("127.0.0.1", 0), Proxy)
    recorded = Recorded(f"http://127.0.0.1:{server.server_address[1]}")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield recorded
    finally:
        server.shutdown()
        server.server_close()
