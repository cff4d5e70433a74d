"""The HTTP face: `/metrics` (from the private registry, never from PostgreSQL), `/healthz`, and a landing page."""

from __future__ import annotations

import base64
import socket
import ssl
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client.exposition import CONTENT_TYPE_LATEST

from exporter import __version__
from exporter.errors import UsageError
from exporter.logs import get_logger
from exporter.webconfig import BasicAuth, WebConfig

log = get_logger("pgparent.http")

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


REQUEST_TIMEOUT = 10.0
"""Seconds a client may take to handshake and send its request: a stalled client cannot hold a thread forever."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # the listen backlog: a burst of scrapers queues instead of being dropped (default 5)
    render: Callable[[], bytes]
    healthy: Callable[[], bool]
    tls: ssl.SSLContext | None = None
    auth: BasicAuth | None = None
    extra_headers: dict[str, str]

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        sock.settimeout(REQUEST_TIMEOUT)
        if self.tls is not None:
            # The handshake happens on the request's own thread (finish_request), never in the accept loop.
            sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, address

    def finish_request(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket):
            try:
                request.do_handshake()
            except (ssl.SSLError, OSError) as exc:
                log.debug("tls_handshake_failed", client=client_address[0], error=str(exc))
                return
        super().finish_request(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that vanished mid-request is not worth a traceback.
        log.debug("http_request_failed", client=client_address[0])


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def _send(self, status: int, content_type: str, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in {**self.server.extra_headers, **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _authorized(self) -> bool:
        auth = self.server.auth
        if auth is None:
            return True
        scheme, _, encoded = (self.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, sep, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        return bool(sep) and auth.check(user, password)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/healthz":  # liveness probes carry no credentials; it reveals only "ok"
            ok = self.server.healthy()
            self._send(200 if ok else 503, "text/plain; charset=utf-8", b"ok\n" if ok else b"poll loop stalled\n")
        elif not self._authorized():
            self._send(
                401, "text/plain; charset=utf-8", b"unauthorized\n", {"WWW-Authenticate": 'Basic realm="pgparent"'}
            )
        elif path == "/metrics":
            self._send(200, CONTENT_TYPE_LATEST, self.server.render())
        elif path == "/":
            self._send(200, "text/html; charset=utf-8", LANDING)
        else:
            self._send(404, "text/plain; charset=utf-8", b"not found\n")

    do_HEAD = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        pass


class MetricsServer:
    """A threaded HTTP server on its own daemon thread."""

    def __init__(
        self,
        address: tuple[str, int],
        render: Callable[[], bytes],
        healthy: Callable[[], bool],
        web: WebConfig | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        server_class = _Server6 if ":" in address[0] else _Server
        try:
            self._server = server_class(address, _Handler)
        except OSError as exc:
            raise UsageError(f"cannot listen on {address[0]}:{address[1]}: {exc.strerror or exc}") from None
        self._server.render = render
        self._server.healthy = healthy
        self._server.tls = tls
        self._server.auth = BasicAuth(web.basic_auth_users) if web is not None and web.basic_auth_users else None
        self._server.extra_headers = dict(web.http_server_config.headers) if web is not None else {}
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="http", daemon=True
        )

    @property
    def tls(self) -> bool:
        return self._server.tls is not None

    @property
    def basic_auth(self) -> bool:
        return self._server.auth is not None

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
