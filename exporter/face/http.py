"""The HTTP face: `/metrics` (from the private registry, never from PostgreSQL), `/healthz`, and a landing page.

One thread runs an asyncio loop that accepts connections, does TLS handshakes and reads request heads, so a slow or
silent client costs a socket and a few KiB, never a thread. What takes time runs on a fixed pool of `Limits.workers`
threads: renders, and bcrypt checks.

HTTP/1.1 is h11's, driven by that loop, with request heads taken whole within the limits below first
(exporter/face/wire.py says how and why).

Everything a client can make the server hold is bounded:

- open connections: `Limits.max_connections`. At the cap, the connection that has waited longest for a request (a
  silent or trickling client, or an idle keep-alive one) is closed to make room; when every connection is in the middle
  of a request, new ones wait in the kernel's listen backlog (BACKLOG).
- time: REQUEST_TIMEOUT for the TLS handshake and the whole request head (on a keep-alive connection, from the end of
  the previous response), and again for writing a response.
- request heads: MAX_LINE bytes a line, MAX_HEAD bytes and MAX_HEADERS headers in all (431 past them). Request bodies
  are never read: a request that has one is answered and its connection closed.
- password checks: one at a time (`Gatekeeper`). Credentials that passed before skip the queue.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import contextlib
import errno
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import h11
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import CollectorRegistry

from exporter import __version__
from exporter.errors import UsageError
from exporter.face.counters import HTTP_AUTH_FAILURES, HTTP_ERRORS
from exporter.face.webconfig import BasicAuth, WebConfig
from exporter.face.wire import (
    REQUEST_TIMEOUT,
    Plain,
    RequestHeads,
    Tls,
    framed,
    header,
    http_date,
    next_head,
    read_request,
    request_path,
)
from exporter.logs import get_logger

log = get_logger("pgparent.http")

LANDING = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>pgparent</title></head>
<body><h1>pgparent {__version__}</h1>
<p>Per-parent-tag session metrics and a runaway-group watchdog for PostgreSQL.</p>
<ul><li><a href="metrics">metrics</a></li><li><a href="healthz">healthz</a></li></ul>
</body></html>
""".encode()
TEXT = "text/plain; charset=utf-8"

BACKLOG = 128
"""The listen backlog: a burst of scrapers queues in the kernel instead of being dropped (the default is 5)."""
_ACCEPT_RETRY = 0.1
"""Seconds to wait before accepting again when the process is out of file descriptors."""
WARN_EVERY = 10.0
"""At most one warning of a kind (failed password checks, failed accepts) in this many seconds."""


def parse_listen_address(text: str) -> tuple[str, int]:
    """HOST:PORT, [IPv6]:PORT or :PORT (all interfaces) into a bindable (host, port)."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise UsageError(f"--web.listen-address {text!r}: expected HOST:PORT, e.g. 127.0.0.1:10187 or :10187")
    host = host.removeprefix("[").removesuffix("]")
    return host or "0.0.0.0", int(port_text)  # noqa: S104 - ':PORT' means all interfaces, as in every exporter


@dataclass(frozen=True, slots=True)
class Limits:
    """How much the HTTP face holds at once (`pgparent run --web.workers`, `--web.max-connections`)."""

    workers: int = 2
    """Threads for renders and password checks. One check runs at a time, and renders share one text per poll (a
    second render worker would only wait for the first), so two keep a check from ever delaying a scrape."""
    max_connections: int = 512
    """Open connections: each costs a socket and a few KiB (up to ~50 KiB while a request head or TLS is buffered)."""

    def __post_init__(self) -> None:
        if self.workers < 2:
            raise UsageError(f"--web.workers {self.workers}: at least 2 (one may be busy with a password check)")
        if self.max_connections < 1:
            raise UsageError(f"--web.max-connections {self.max_connections}: at least 1")


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    content_type: str
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


UNAUTHORIZED = Response(401, TEXT, b"unauthorized\n", {"WWW-Authenticate": 'Basic realm="pgparent"'})


def basic_credentials(header: str) -> tuple[str, str] | None:
    """(user, password) from an `Authorization: Basic` value, or None if it is not one."""
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, password = base64.b64decode(encoded.strip(), validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return (user, password) if sep else None


class Gatekeeper:
    """Basic auth on the loop: bcrypt checks one at a time on the worker pool, counted and logged sparingly.

    A bcrypt check takes a core for ~0.3 s at cost 12. One at a time bounds what unauthenticated clients can take to
    one core whatever their number, leaving the others to the poll loop and scrapes; that is still three checks a
    second, plenty for scrapers, whose credentials pass once and are then answered from BasicAuth's cache without
    queueing. A check waits at most CHECK_WAIT for its turn, then gets 503 with Retry-After. Failures are counted in
    `pgparent_http_auth_failures_total{reason}` and logged as one `http_auth_failed` line at most every LOG_EVERY
    seconds, with the failures since the previous line.
    """

    CHECKS_AT_ONCE = 1
    CHECK_WAIT = 5.0
    LOG_EVERY = WARN_EVERY
    REASONS = ("wrong_password", "unknown_user", "malformed", "busy")

    def __init__(
        self, auth: BasicAuth, pool: concurrent.futures.Executor, registry: CollectorRegistry | None = None
    ) -> None:
        self._auth = auth
        self._pool = pool
        self._turns = asyncio.Semaphore(self.CHECKS_AT_ONCE)
        self.failures = HTTP_AUTH_FAILURES.counter(registry)
        for reason in self.REASONS:
            self.failures.labels(reason)
        self._unlogged: dict[str, int] = {}
        self._clients: set[str] = set()
        self._last_log: float | None = None
        self._flush: asyncio.TimerHandle | None = None

    async def refusal(self, header: str | None, client: str) -> Response | None:
        """None if the request may proceed, else the answer refusing it."""
        credentials = basic_credentials(header) if header is not None else None
        if credentials is None:
            if header is not None:
                self._failed("malformed", client)
            return UNAUTHORIZED
        user, password = credentials
        if self._auth.passed(user, password):
            return None
        try:
            async with asyncio.timeout(self.CHECK_WAIT):
                await self._turns.acquire()
        except TimeoutError:
            self._failed("busy", client)
            return Response(503, TEXT, b"too many password checks at once\n", {"Retry-After": f"{self.CHECK_WAIT:.0f}"})
        loop = asyncio.get_running_loop()
        check = self._pool.submit(self._auth.check, user, password)
        # The turn ends when the check does, even if this request is cancelled meanwhile: never two at once.
        check.add_done_callback(lambda _: _call_soon(loop, self._turns.release))
        if await asyncio.wrap_future(check):
            return None
        self._failed("wrong_password" if self._auth.knows(user) else "unknown_user", client)
        return UNAUTHORIZED

    def _failed(self, reason: str, client: str) -> None:
        self.failures.labels(reason).inc()
        self._unlogged[reason] = self._unlogged.get(reason, 0) + 1
        if len(self._clients) < 5:
            self._clients.add(client)
        loop = asyncio.get_running_loop()
        wait = 0.0 if self._last_log is None else self._last_log + self.LOG_EVERY - loop.time()
        if wait <= 0:
            self._log()
        elif self._flush is None:
            self._flush = loop.call_later(wait, self._log)

    def _log(self) -> None:
        self._flush = None
        if not self._unlogged:
            return
        log.warning(
            "http_auth_failed",
            failures=sum(self._unlogged.values()),
            reasons=dict(sorted(self._unlogged.items())),
            clients=sorted(self._clients),
            since_seconds=None if self._last_log is None else round(asyncio.get_running_loop().time() - self._last_log),
        )
        self._unlogged.clear()
        self._clients.clear()
        self._last_log = asyncio.get_running_loop().time()


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[[], object]) -> None:
    with contextlib.suppress(RuntimeError):  # the loop already closed: the server stopped
        loop.call_soon_threadsafe(fn)


def _loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    exc = context.get("exception")
    if isinstance(exc, OSError):  # a client's connection failing (TLS alerts, resets) is not news
        log.debug("http_connection_error", message=context.get("message"), error=str(exc))
    else:
        log.warning("http_loop_error", message=context.get("message"), error=repr(exc))


class MetricsServer:
    """The HTTP face on its own daemon thread (an asyncio loop) with a fixed pool of worker threads."""

    def __init__(
        self,
        address: tuple[str, int],
        render: Callable[[], bytes],
        healthy: Callable[[], bool],
        web: WebConfig | None = None,
        tls: ssl.SSLContext | None = None,
        *,
        limits: Limits | None = None,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.limits = limits if limits is not None else Limits()
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        try:
            self._listener = socket.create_server(
                address, family=family, backlog=BACKLOG, dualstack_ipv6=family == socket.AF_INET6
            )
        except OSError as exc:
            raise UsageError(f"cannot listen on {address[0]}:{address[1]}: {exc.strerror or exc}") from None
        self._listener.setblocking(False)
        self._render = render
        self._current: Callable[[], bytes | None] | None = getattr(render, "current", None)
        """The render's text when nothing changed since it was rendered (collector.Exposition.current), if it has
        one: a scrape then skips the hand-over to a worker and back."""
        self._healthy = healthy
        self._tls = tls
        self._extra_headers = dict(web.http_server_config.headers) if web is not None else {}
        self._pool = concurrent.futures.ThreadPoolExecutor(self.limits.workers, thread_name_prefix="http-worker")
        users = web.basic_auth_users if web is not None else {}
        self._gate = Gatekeeper(BasicAuth(users), self._pool, registry) if users else None
        self._errors = HTTP_ERRORS.counter(registry)
        self._open = 0
        self._waiting: dict[asyncio.Task[None], None] = {}
        """Connections waiting for a request head, oldest first: the ones closed to make room at the cap."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), name="http", daemon=True)

    @property
    def tls(self) -> bool:
        return self._tls is not None

    @property
    def basic_auth(self) -> bool:
        return self._gate is not None

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(5)

    def stop(self) -> None:
        if self._loop is not None and self._stopping is not None:
            _call_soon(self._loop, self._stopping.set)
            self._thread.join(2)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._listener.close()

    # -- the loop ----------------------------------------------------------------------------------------------------
    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(_loop_error)
        self._loop, self._stopping, room = loop, asyncio.Event(), asyncio.Event()
        self._ready.set()
        accepting = loop.create_task(self._accept(room))
        await self._stopping.wait()
        accepting.cancel()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(accepting, *self._tasks, return_exceptions=True)

    async def _accept(self, room: asyncio.Event) -> None:
        """Accept while below the cap; at it, close the connection waiting longest for a request to make room.

        `room` is set whenever a connection closes or starts waiting for a request (so it could be closed).
        """
        loop = asyncio.get_running_loop()
        last_warning = -WARN_EVERY
        while True:
            while self._open >= self.limits.max_connections and not self._waiting:
                room.clear()  # every connection is mid-request: new ones wait in the listen backlog
                await room.wait()
            try:
                sock, address = await loop.sock_accept(self._listener)
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    if loop.time() - last_warning >= WARN_EVERY:
                        log.warning("http_accept_failed", error=exc.strerror, open_connections=self._open)
                        last_warning = loop.time()
                    await asyncio.sleep(_ACCEPT_RETRY)
                continue  # otherwise a client that gave up before it was accepted
            if self._open >= self.limits.max_connections:
                oldest = next(iter(self._waiting))
                del self._waiting[oldest]
                oldest.cancel()
            self._open += 1
            task = loop.create_task(self._connection(sock, str(address[0]), room))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            # Let it start (sock_accept does not yield while connections are pending): a task cancelled before its
            # first step would never run the `finally` that closes its socket.
            await asyncio.sleep(0)

    async def _connection(self, sock: socket.socket, client: str, room: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        channel: Plain | Tls | None = None
        connection = h11.Connection(h11.SERVER)
        heads = RequestHeads()
        deadline = loop.time() + REQUEST_TIMEOUT
        clean = False
        try:
            while True:
                self._waiting[task] = None
                room.set()
                try:
                    async with asyncio.timeout_at(deadline):
                        if channel is None:
                            channel = Plain(sock) if self._tls is None else await Tls.handshake(sock, self._tls)
                        head = await next_head(channel, heads)
                finally:
                    self._waiting.pop(task, None)
                if head is None:
                    break
                if not await self._respond(channel, connection, read_request(connection, head), client):
                    break
                deadline = loop.time() + REQUEST_TIMEOUT
            clean = True
        except h11.RemoteProtocolError as exc:  # a head h11 or the limits refuse: answered, then the connection closed
            if channel is not None:
                status = HTTPStatus(exc.error_status_hint)
                refusal = Response(status, TEXT, f"{status.phrase}\n".encode())
                with contextlib.suppress(TimeoutError, OSError):
                    await self._write(channel, connection, refusal, head=False, close=True)
                    clean = True
        except (TimeoutError, OSError) as exc:  # too slow, a failed TLS handshake, a reset: close and move on
            log.debug("http_connection_dropped", client=client, reason=type(exc).__name__, error=str(exc))
        finally:
            self._waiting.pop(task, None)
            if channel is None:
                sock.close()
            else:
                channel.close(clean=clean)
            self._open -= 1
            room.set()

    async def _respond(
        self, channel: Plain | Tls, connection: h11.Connection, request: h11.Request, client: str
    ) -> bool:
        """Answer one request; True if the connection stays open for another."""
        try:
            response = await self._answer(request, client)
        except Exception:  # the request's edge: one failed request is a 500 and a logged traceback, never a hang-up
            self._errors.inc()
            log.warning(
                "http_request_failed",
                method=request.method.decode("latin-1"),
                path=request_path(request),
                client=client,
                exc_info=True,
            )
            response = Response(500, TEXT, b"internal server error\n")
        # A body after the head is never read, so the connection cannot carry another request.
        unread_body = connection.their_state is not h11.DONE
        await self._write(channel, connection, response, head=request.method == b"HEAD", close=unread_body)
        if connection.our_state is h11.DONE and connection.their_state is h11.DONE:
            connection.start_next_cycle()
            return True
        return False  # h11 says the connection ends: HTTP/1.0, `Connection: close` on either side, or a body unread

    async def _answer(self, request: h11.Request, client: str) -> Response:
        if request.http_version not in (b"1.0", b"1.1"):  # h11 reads any HTTP/d.d request line
            return Response(505, TEXT, b"HTTP version not supported\n", {"Connection": "close"})
        if request.method not in (b"GET", b"HEAD"):
            return Response(405, TEXT, b"method not allowed\n", {"Allow": "GET, HEAD"})
        path = request_path(request)
        if path == "/healthz":  # liveness probes carry no credentials; it reveals only "ok"
            ok = self._healthy()
            return Response(200 if ok else 503, TEXT, b"ok\n" if ok else b"poll loop stalled\n")
        if self._gate is not None:
            refusal = await self._gate.refusal(header(request, b"authorization"), client)
            if refusal is not None:
                return refusal
        if path == "/metrics":
            body = self._current() if self._current is not None else None
            if body is None:
                body = await asyncio.wrap_future(self._pool.submit(self._render))
            return Response(200, CONTENT_TYPE_LATEST, body)
        if path == "/":
            return Response(200, "text/html; charset=utf-8", LANDING)
        return Response(404, TEXT, b"not found\n")

    async def _write(
        self, channel: Plain | Tls, connection: h11.Connection, response: Response, *, head: bool, close: bool
    ) -> None:
        """Write a response; h11 writes its head (adding `Connection: close` when keep-alive is off) and frames the
        body, which is handed to the channel as a view of the rendered text, never copied whole."""
        headers = [
            ("Date", http_date()),
            ("Content-Type", response.content_type),
            ("Content-Length", str(len(response.body))),
            *{**self._extra_headers, **response.headers}.items(),
        ]
        if close:
            headers.append(("Connection", "close"))
        status = HTTPStatus(response.status)
        start = connection.send(h11.Response(status_code=status, headers=headers, reason=status.phrase))
        body = memoryview(b"" if head else response.body)
        async with asyncio.timeout(REQUEST_TIMEOUT):
            await channel.send(start, framed(connection, body))
        connection.send(h11.EndOfMessage())


