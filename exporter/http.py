"""The HTTP face: `/metrics` (from the private registry, never from PostgreSQL), `/healthz`, and a landing page."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client.exposition import CONTENT_TYPE_LATEST

from exporter import __version__
from exporter.errors import UsageError

LANDING = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>pgparent</title></head>
<body><h1>pgparent {__version__}</h1>
<p>Per-parent-tag session metrics and a runaway-group watchdog for PostgreSQL.</p>
<ul><li><a href="metrics">metrics</a></li><li><a href="healthz">healthz</a></li></ul>
</body></html>
""".encode()


def parse_listen_address(text: str) -> tuple[str, int]:
    """HOST:PORT, [IPv6]:PORT or :PORT (all interfaces) into a bindable (host, port)."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise UsageError(f"--web.listen-address {text!r}: expected HOST:PORT, e.g. 127.0.0.1:10187 or :10187")
    host = host.removeprefix("[").removesuffix("]")
    return host or "0.0.0.0", int(port_text)  # noqa: S104 - ':PORT' means all interfaces, as in every exporter


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    render: Callable[[], bytes]
    healthy: Callable[[], bool]


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(200, CONTENT_TYPE_LATEST, self.server.render())
        elif path == "/healthz":
            ok = self.server.healthy()
            self._send(200 if ok else 503, "text/plain; charset=utf-8", b"ok\n" if ok else b"poll loop stalled\n")
        elif path == "/":
            self._send(200, "text/html; charset=utf-8", LANDING)
        else:
            self._send(404, "text/plain; charset=utf-8", b"not found\n")

    do_HEAD = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        pass


class MetricsServer:
    """A threaded HTTP server on its own daemon thread."""

    def __init__(self, address: tuple[str, int], render: Callable[[], bytes], healthy: Callable[[], bool]) -> None:
        try:
            self._server = _Server(address, _Handler)
        except OSError as exc:
            raise UsageError(f"cannot listen on {address[0]}:{address[1]}: {exc.strerror or exc}") from None
        self._server.render = render
        self._server.healthy = healthy
        self._thread = threading.Thread(target=self._server.serve_forever, name="http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
