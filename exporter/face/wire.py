"""What goes over one HTTP connection: request heads taken whole within the limits, read by h11, and the
connection's bytes in and out (`Plain` on the socket, `Tls` over asyncio's streams).

HTTP/1.1 is h11's (h11 does no I/O): the grammar of request lines and headers (400 for what it refuses),
Content-Length and Transfer-Encoding, keep-alive (HTTP/1.0, `Connection: close`), the request/response cycle that
keeps pipelined requests in order, and the response heads. pgparent's own part is `RequestHeads`, which takes each
request head whole off the connection's bytes before h11 reads it, for three reasons:

- the limits below. h11 bounds only the bytes it buffers for an incomplete head (`max_incomplete_event_size`): a
  head that arrives complete in one read passes whatever its size, and it counts neither line lengths nor headers.
- an HTTP/1.1 head without Host. RFC 9112 section 3.2 makes it a 400 and h11 refuses it, before the limits could be
  applied; pgparent serves one site and never reads Host, and answers such heads (a probe typed into nc, say), so an
  empty Host line is supplied.
- empty lines before a request line, which RFC 9112 section 2.2 says to ignore and h11 refuses.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from email.utils import formatdate
from http import HTTPStatus
from typing import cast

import h11

REQUEST_TIMEOUT = 10.0
"""Seconds a client may take to handshake and send a request head, or to read a response."""
MAX_LINE = 8192
"""Bytes a line of a request head may have (its line ending aside)."""
MAX_HEAD = 32768
"""Bytes a request head may have in all, its blank line included."""
MAX_HEADERS = 100
CHUNK = 65536
"""Over TLS, responses are written in pieces of this size, so a client that reads slowly holds one piece in the
transport, not a copy of all; without TLS, a response this small goes in one write with its head."""


def _too_large() -> h11.RemoteProtocolError:
    return h11.RemoteProtocolError(
        "request head too large", error_status_hint=HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE
    )


class RequestHeads:
    """Request heads taken whole off one connection's bytes, within MAX_LINE, MAX_HEAD and MAX_HEADERS, for h11.

    Bytes after a head (the next pipelined request, or a body, which is never read) stay for the next one. Each byte is
    scanned once as it arrives, so a client sending a byte at a time costs no rescan of what it sent before.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._start = 0
        """Where the line being read begins."""
        self._searched = 0
        """How far the buffer has been searched for a line's end."""
        self._lines = 0
        """Complete lines of this head so far, the request line included."""
        self._host = False

    def feed(self, data: bytes) -> None:
        self._buffer += data

    def next(self) -> bytes | None:
        """The next head, blank line included, with a Host line if it had none; None until more bytes are fed.

        Raises `h11.RemoteProtocolError` with status 431 as soon as the head being read passes a limit.
        """
        buffer = self._buffer
        while (end := buffer.find(b"\n", self._searched)) >= 0:
            length = end - self._start - (end > self._start and buffer[end - 1] == ord("\r"))
            if end + 1 > MAX_HEAD or length > MAX_LINE:
                raise _too_large()
            if length == 0 and self._lines == 0:  # an empty line before the request line: ignored
                del buffer[: end + 1]
                self._searched = 0
                continue
            if length == 0:
                return self._take(self._start, end + 1)
            if self._lines > 0 and buffer[self._start : self._start + 5].lower() == b"host:":
                self._host = True
            self._lines += 1
            if self._lines > MAX_HEADERS + 1:
                raise _too_large()
            self._start = self._searched = end + 1
        if len(buffer) - self._start > MAX_LINE or len(buffer) > MAX_HEAD:
            raise _too_large()
        self._searched = len(buffer)
        return None

    def _take(self, blank: int, size: int) -> bytes:
        """The head of `size` bytes, its blank line at `blank`; a Host line goes last, so that it cannot turn a folded
        first header line (which h11 refuses) into a continuation of itself."""
        head = bytes(self._buffer[:blank]) + (b"" if self._host else b"Host: \r\n") + bytes(self._buffer[blank:size])
        del self._buffer[:size]
        self._start = self._searched = self._lines = 0
        self._host = False
        return head


def read_request(connection: h11.Connection, head: bytes) -> h11.Request:
    """The request of a whole head, read by h11; after it the client's state says whether a body follows (SEND_BODY,
    never read) or not (DONE). Raises `h11.RemoteProtocolError` (400) for a head h11 refuses."""
    connection.receive_data(head)
    event = connection.next_event()
    if not isinstance(event, h11.Request):  # a whole head is one Request: RequestHeads ends heads where h11 does
        raise h11.RemoteProtocolError("incomplete request head", error_status_hint=HTTPStatus.BAD_REQUEST)
    connection.next_event()  # EndOfMessage unless a body follows: the client's state then moves to DONE
    return event


def header(request: h11.Request, name: bytes) -> str | None:
    """The first `name` header of a request (lower-case, as h11 gives names), if it has one."""
    return next((value.decode("latin-1") for key, value in request.headers if key == name), None)


class Plain:
    """A connection without TLS, read and written on its socket by the loop's own socket calls: no transport, protocol
    or stream objects per connection, and a body goes to the kernel from a view of the rendered text as fast as the
    client reads it (sock_sendall keeps the view, never a copy)."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock, self._loop = sock, asyncio.get_running_loop()
        # A head and its body may go in two writes: the second must not wait for the client's delayed ACK (Nagle).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def recv(self) -> bytes:
        return await self._loop.sock_recv(self._sock, MAX_LINE)

    async def send(self, start: bytes, body: memoryview) -> None:
        if len(body) <= CHUNK:  # the usual small answer: one write
            await self._loop.sock_sendall(self._sock, start + body)
            return
        await self._loop.sock_sendall(self._sock, start)
        await self._loop.sock_sendall(self._sock, body)

    def close(self, *, clean: bool) -> None:
        del clean  # nothing is buffered here: every write was awaited to the kernel
        self._sock.close()


class Tls:
    """A TLS connection: asyncio's streams over the handshaken socket; a body is written in CHUNK pieces, so a
    client that reads slowly holds one piece in the TLS transport's buffer, not a copy of all."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader, self._writer = reader, writer

    @classmethod
    async def handshake(cls, sock: socket.socket, context: ssl.SSLContext) -> Tls:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=MAX_LINE, loop=loop)
        protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        transport, _ = await loop.connect_accepted_socket(
            lambda: protocol, sock, ssl=context, ssl_handshake_timeout=REQUEST_TIMEOUT, ssl_shutdown_timeout=2.0
        )
        return cls(reader, asyncio.StreamWriter(transport, protocol, reader, loop))

    async def recv(self) -> bytes:
        return await self._reader.read(MAX_LINE)

    async def send(self, start: bytes, body: memoryview) -> None:
        self._writer.writelines([start, body[:CHUNK]])
        await self._writer.drain()
        for offset in range(CHUNK, len(body), CHUNK):
            self._writer.write(body[offset : offset + CHUNK])
            await self._writer.drain()

    def close(self, *, clean: bool) -> None:
        if clean:
            self._writer.close()  # after what is still buffered is written, and TLS's close_notify
        else:
            self._writer.transport.abort()


async def next_head(channel: Plain | Tls, heads: RequestHeads) -> bytes | None:
    """The next request head; None when the client closed the connection (between requests or in one)."""
    while (head := heads.next()) is None:
        data = await channel.recv()
        if not data:
            return None
        heads.feed(data)
    return head


_DATED: tuple[int, str] = (0, "")


def http_date() -> str:
    """The Date header's value, formatted once a second."""
    global _DATED
    now = int(time.time())
    if _DATED[0] != now:
        _DATED = (now, formatdate(now, usegmt=True))
    return _DATED[1]


def request_path(request: h11.Request) -> str:
    return request.target.split(b"?", 1)[0].decode("latin-1")


def framed(connection: h11.Connection, body: memoryview) -> memoryview:
    """The body as h11 frames it: with Content-Length, the body itself (a view, not a copy)."""
    if not body:
        return body
    # h11 takes any bytes-like object (its Data docs) and passes it through uncopied; its annotation says bytes.
    (framed,) = connection.send_with_data_passthrough(h11.Data(data=cast(bytes, body))) or [b""]
    return memoryview(framed)
