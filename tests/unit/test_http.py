"""The HTTP face without a database: request heads cut to pgparent's limits before h11 reads them, and keep-alive,
HEAD, bodies and extra headers as h11 frames them, over loopback sockets to an in-process server."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import h11
import pytest

from exporter.errors import ConfigInvalid
from exporter.face.http import MetricsServer
from exporter.face.webconfig import HTTPServerConfig, WebConfig, load_web_config
from exporter.face.wire import CHUNK, MAX_HEAD, MAX_HEADERS, MAX_LINE, RequestHeads, read_request
from harness.daemon import HTTP_TIMEOUT

BODY = bytes(range(256)) * (3 * CHUNK // 256 + 7)
"""A /metrics text of several CHUNK pieces and a partial one, every byte value in it."""


def heads_of(data: bytes) -> RequestHeads:
    heads = RequestHeads()
    heads.feed(data)
    return heads


def status_of_refusal(data: bytes) -> int:
    with pytest.raises(h11.RemoteProtocolError) as refused:
        heads_of(data).next()
    return refused.value.error_status_hint


def test_a_head_fed_a_byte_at_a_time_comes_whole_and_what_follows_stays() -> None:
    """A head trickled byte by byte is returned once its blank line arrives; the pipelined request after it is the
    next head."""
    heads = RequestHeads()
    first = b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n"
    second = b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n"
    got = []
    for byte in first + second:
        heads.feed(bytes([byte]))
        if (head := heads.next()) is not None:
            got.append(head)
    assert got == [first, second]
    assert heads.next() is None


def test_lines_up_to_max_line_pass_and_a_longer_one_is_431_before_it_ends() -> None:
    """A header line of MAX_LINE bytes is read; one byte more is 431, even while the line is still unterminated."""
    longest = b"X: " + b"a" * (MAX_LINE - 3)
    assert heads_of(b"GET / HTTP/1.1\r\n" + longest + b"\r\nHost: a\r\n\r\n").next() is not None
    assert status_of_refusal(b"GET / HTTP/1.1\r\n" + longest + b"a\r\n\r\n") == 431
    assert status_of_refusal(b"GET / HTTP/1.1\r\n" + longest + b"a") == 431


def test_max_headers_pass_and_one_more_is_431() -> None:
    """MAX_HEADERS headers are read; MAX_HEADERS + 1 are 431 (the Host line pgparent may add is not counted)."""
    lines = [b"X-%d: y\r\n" % i for i in range(MAX_HEADERS + 1)]
    assert heads_of(b"GET / HTTP/1.1\r\n" + b"".join(lines[:MAX_HEADERS]) + b"\r\n").next() is not None
    assert status_of_refusal(b"GET / HTTP/1.1\r\n" + b"".join(lines) + b"\r\n") == 431


def test_a_head_over_max_head_is_431_even_when_it_arrives_whole() -> None:
    """A head of more than MAX_HEAD bytes is 431 though it comes complete in one read, which h11's
    max_incomplete_event_size alone would let through."""
    lines = b"".join(b"X-%d: %s\r\n" % (i, b"a" * 1000) for i in range(MAX_HEAD // 1000 + 1))
    head = b"GET / HTTP/1.1\r\nHost: a\r\n" + lines + b"\r\n"
    assert len(head) > MAX_HEAD and head.count(b"\n") < MAX_HEADERS
    connection = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    connection.receive_data(head)
    assert isinstance(connection.next_event(), h11.Request)  # what h11 alone does
    assert status_of_refusal(head) == 431


def test_a_head_without_host_gets_an_empty_one_last_and_h11_reads_it() -> None:
    """An HTTP/1.1 head without Host, which h11 refuses, is read with an empty Host added as its last header; a head
    with one (in any case) is left as it is."""
    request = read_request(
        h11.Connection(h11.SERVER), heads_of(b"GET /x HTTP/1.1\r\nAccept: */*\r\n\r\n").next() or b""
    )
    assert [(n, v) for n, v in request.headers] == [(b"accept", b"*/*"), (b"host", b"")]
    with_host = b"GET /x HTTP/1.1\r\nHOST: a\r\n\r\n"
    assert heads_of(with_host).next() == with_host


def test_empty_lines_before_a_request_line_are_skipped() -> None:
    """CRLF or LF lines before a request line are ignored (RFC 9112 section 2.2)."""
    assert heads_of(b"\r\n\n\r\nGET / HTTP/1.0\r\n\r\n").next() == b"GET / HTTP/1.0\r\nHost: \r\n\r\n"


def test_a_folded_first_header_is_refused_with_400() -> None:
    """A header line starting with whitespace right after the request line stays a 400 (the added Host goes last, so
    it cannot become a continuation of it)."""
    head = heads_of(b"GET / HTTP/1.1\r\n folded: x\r\n\r\n").next()
    assert head is not None
    with pytest.raises(h11.RemoteProtocolError) as refused:
        read_request(h11.Connection(h11.SERVER), head)
    assert refused.value.error_status_hint == 400


@pytest.fixture(scope="module")
def server() -> Iterator[MetricsServer]:
    web = WebConfig(http_server_config=HTTPServerConfig(headers={"X-Frame-Options": "deny"}))
    metrics = MetricsServer(("127.0.0.1", 0), lambda: BODY, lambda: True, web)
    metrics.start()
    try:
        yield metrics
    finally:
        metrics.stop()


def connect(server: MetricsServer) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=HTTP_TIMEOUT)


def read_response(sock: socket.socket, buffered: bytearray, method: str = "GET") -> tuple[h11.Response, bytes]:
    """One response from the socket, read by h11 as a client that sent `method` would; bytes past it stay in
    `buffered`, for the next response."""
    client = h11.Connection(h11.CLIENT)
    client.send(h11.Request(method=method, target="/", headers=[("Host", "a")]))
    client.send(h11.EndOfMessage())
    if buffered:  # receive_data(b"") would tell h11 the connection closed
        client.receive_data(bytes(buffered))
        buffered.clear()
    response: h11.Response | None = None
    body = bytearray()
    while True:
        event = client.next_event()
        if event is h11.NEED_DATA:
            client.receive_data(sock.recv(65536))
        elif isinstance(event, h11.Response):
            response = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            assert response is not None
            buffered += client.trailing_data[0]
            return response, bytes(body)


def header(response: h11.Response, name: bytes) -> bytes | None:
    return next((v for n, v in response.headers if n == name), None)


def closed_by_server(sock: socket.socket, buffered: bytearray) -> bool:
    """True once the server closed the connection with nothing more sent (waits for it, within the socket's
    timeout)."""
    return not buffered and sock.recv(1) == b""


def test_keep_alive_serves_requests_in_order_until_connection_close(server: MetricsServer) -> None:
    """On one HTTP/1.1 connection, pipelined requests are answered in order, the whole /metrics body each time (in
    several CHUNK pieces), and `Connection: close` ends it after its answer."""
    with connect(server) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\nGET /nope HTTP/1.1\r\nHost: a\r\n\r\n")
        buffered = bytearray()
        first, body = read_response(sock, buffered)
        assert (first.status_code, body) == (200, BODY)
        assert read_response(sock, buffered)[0].status_code == 404
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        last, body = read_response(sock, buffered)
        assert (last.status_code, body, header(last, b"connection")) == (200, b"ok\n", b"close")
        assert closed_by_server(sock, buffered)


def test_http_1_0_gets_one_answer_and_connection_close(server: MetricsServer) -> None:
    """An HTTP/1.0 request is answered with `Connection: close`, and the connection ends."""
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.0\r\n\r\n")
        buffered = bytearray()
        response, _ = read_response(sock, buffered)
        assert (response.status_code, header(response, b"connection")) == (200, b"close")
        assert closed_by_server(sock, buffered)


def test_a_request_with_a_body_is_answered_and_its_connection_closed(server: MetricsServer) -> None:
    """A body is never read: its request is answered with `Connection: close` and nothing after it is served."""
    with connect(server) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\na=1GET / HTTP/1.1\r\n\r\n")
        buffered = bytearray()
        response, _ = read_response(sock, buffered)
        assert (response.status_code, header(response, b"allow")) == (405, b"GET, HEAD")
        assert header(response, b"connection") == b"close"
        assert closed_by_server(sock, buffered)


def test_head_gets_the_length_of_get_and_no_body(server: MetricsServer) -> None:
    """HEAD /metrics answers the Content-Length a GET would get, sends no body and keeps the connection open."""
    with connect(server) as sock:
        sock.sendall(b"HEAD /metrics HTTP/1.1\r\nHost: a\r\n\r\nGET /healthz HTTP/1.1\r\nHost: a\r\n\r\n")
        buffered = bytearray()
        response, body = read_response(sock, buffered, "HEAD")
        assert (response.status_code, body, header(response, b"content-length")) == (200, b"", str(len(BODY)).encode())
        after, body = read_response(sock, buffered)
        assert (after.status_code, body) == (200, b"ok\n")


def test_web_config_headers_are_on_every_answer_and_refusals_close(server: MetricsServer) -> None:
    """The web config's extra headers come with answers and refusals alike; a refused head (431) is answered with
    `Connection: close` and the connection ends."""
    with connect(server) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nX: " + b"a" * MAX_LINE + b"\r\n\r\n")
        buffered = bytearray()
        landing, _ = read_response(sock, buffered)
        refused, body = read_response(sock, buffered)
        assert (landing.status_code, refused.status_code) == (200, 431)
        assert header(landing, b"x-frame-options") == header(refused, b"x-frame-options") == b"deny"
        assert (header(refused, b"connection"), body) == (b"close", b"Request Header Fields Too Large\n")
        assert closed_by_server(sock, buffered)


@pytest.mark.parametrize(
    ("headers", "says"),
    [
        ('{X-Bad: "a\\nb"}', "http_server_config.headers: 'X-Bad': not a valid HTTP header"),
        ("{'X Bad': a}", "'X Bad': not a valid HTTP header"),
        ("{Content-Length: '5'}", "Content-Length: set by pgparent for each response"),
    ],
)
def test_web_config_headers_h11_cannot_send_are_config_errors(tmp_path: Path, headers: str, says: str) -> None:
    """An extra header that h11 would refuse to write, or one that frames the body, is a config error naming it,
    not a failure of every request."""
    path = tmp_path / "web.yml"
    path.write_text(f"http_server_config:\n  headers: {headers}\n")
    with pytest.raises(ConfigInvalid) as invalid:
        load_web_config(path)
    assert str(invalid.value).startswith(f"{path}: ") and says in str(invalid.value), str(invalid.value)
