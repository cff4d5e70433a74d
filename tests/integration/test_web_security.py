"""The HTTP face under attack, against real daemons: TLS, client certificates and basic auth (--web.config.file; bad
files exit 2), over-long passwords, user-name timing, password-check floods, slow-connection floods, bad requests."""

from __future__ import annotations

import base64
import contextlib
import http.client
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest
from structlog.testing import capture_logs

from exporter.face.http import Gatekeeper, Limits, MetricsServer
from exporter.face.wire import REQUEST_TIMEOUT
from harness.daemon import HTTP_TIMEOUT, DaemonProcess
from harness.proc import cpu_seconds, socket_count, thread_count
from harness.waiting import eventually
from tests.support.figures import record_figure
from tests.support.pki import authority, issue, self_signed
from tests.support.servers import Server

pytestmark = pytest.mark.integration

PASSWORD = "scrape-Secret-5"
RULES = "interval: 0.5s\n"
BASE_THREADS = 4
"""The daemon's threads besides the HTTP workers: main, the HTTP face's event loop, and per target (one here) its
poll loop and its connection's watchdog. None of them depends on how many clients connect."""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway CA, a server certificate for 127.0.0.1, a client certificate, and a stranger's certificate."""
    d = tmp_path_factory.mktemp("pki")
    authority(d)
    issue(d, "server", "subjectAltName=IP:127.0.0.1")
    issue(d, "client", "extendedKeyUsage=clientAuth")
    self_signed(d, "stranger")
    return d


def client_context(pki: Path, cert: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    if cert:
        ctx.load_cert_chain(str(pki / f"{cert}.crt"), str(pki / f"{cert}.key"))
    return ctx


def web_file(tmp: Path, text: str) -> str:
    path = tmp / "web.yml"
    path.write_text(text)
    return str(path)


def status_of(d: DaemonProcess, path: str = "/metrics") -> int:
    return d.get(path)[0]


@pytest.fixture(scope="module")
def hash12() -> str:
    """PASSWORD hashed at bcrypt cost 12, what `htpasswd -nBC 12` makes (a check takes ~0.3 s)."""
    return bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=12)).decode()


def auth_daemon(tmp: Path, pg: Server, hashed: str, *extra: str) -> DaemonProcess:
    web = web_file(tmp, f"basic_auth_users:\n  prom: '{hashed}'\n")
    return DaemonProcess(tmp, RULES, pg.dsn, "--web.config.file", web, *extra, auth=("prom", PASSWORD))


def request(port: int, method: str = "GET", path: str = "/metrics", auth: tuple[str, str] | None = None,
            body: bytes | None = None) -> tuple[int, http.client.HTTPMessage, bytes, float]:
    """One request on a fresh connection: status, headers, body and seconds taken."""
    headers = {}
    if auth is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HTTP_TIMEOUT)
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
    finally:
        conn.close()
    return resp.status, resp.headers, data, time.monotonic() - started


def raw_exchange(port: int, data: bytes) -> bytes:
    """Send bytes as they are and read until the server closes; a server that hangs fails the test (timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=HTTP_TIMEOUT) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def settled_sockets(pid: int) -> int:
    """The process's socket count once the start-up check's connection is gone: the fewest over a second's reads
    (the daemon may still be closing the connection that saw it serving)."""
    counts = []
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        counts.append(socket_count(pid))
        time.sleep(0.05)
    return min(counts)


def closed_by_peer(sock: socket.socket) -> bool:
    """True if the server closed this connection (a look without waiting: the socket's timeout is set aside)."""
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True
    finally:
        sock.settimeout(timeout)


@contextlib.contextmanager
def connections(port: int, n: int) -> Iterator[list[socket.socket]]:
    socks = []
    try:
        for _ in range(n):
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=HTTP_TIMEOUT))
        yield socks
    finally:
        for s in socks:
            s.close()


def tls_refusal(url: str, context: ssl.SSLContext) -> OSError:
    """The error of a request refused by TLS: an SSL error or the connection closed unanswered (never a timeout or an
    HTTP status)."""
    with pytest.raises(OSError) as info:
        urllib.request.urlopen(url, timeout=5, context=context)  # noqa: S310 - loopback
    error = info.value
    if isinstance(error, urllib.error.URLError) and not isinstance(error, urllib.error.HTTPError):
        error = error.reason  # type: ignore[assignment]  # what went wrong under urllib's wrapper
    assert isinstance(error, (ssl.SSLError, ConnectionResetError)), repr(error)
    return error


def test_tls_scrape_and_plain_http_refused(pg: Server, pki: Path, tmp_path: Path) -> None:
    """With a server certificate, https scrapes verify against the CA; plain http to the port gets no answer."""
    web = web_file(tmp_path, f"tls_server_config:\n  cert_file: {pki}/server.crt\n  key_file: {pki}/server.key\n")
    d = DaemonProcess(tmp_path, RULES, pg.dsn, "--web.config.file", web, tls=client_context(pki))
    try:
        assert "pgparent_up" in d.metrics()
        # Closed without an answer: an HTTP answer (even an error) or a hang (TimeoutError) fails this.
        with pytest.raises(http.client.RemoteDisconnected):
            urllib.request.urlopen(f"http://127.0.0.1:{d.port}/metrics", timeout=5)
        with socket.create_connection(("127.0.0.1", d.port), timeout=5) as junk:  # garbage instead of a handshake
            junk.sendall(b"\x00\xff garbage \r\n\r\n")
        wrong_ca = ssl.create_default_context(cafile=str(pki / "stranger.crt"))
        assert isinstance(tls_refusal(d.url("/metrics"), wrong_ca), ssl.SSLCertVerificationError)
        assert status_of(d) == 200  # still serving after all that
    finally:
        d.stop()


def test_client_certificates_required(pg: Server, pki: Path, tmp_path: Path) -> None:
    """RequireAndVerifyClientCert: no certificate or a stranger's is refused; one signed by the CA is served."""
    web = web_file(tmp_path, f"""tls_server_config:
  cert_file: {pki}/server.crt
  key_file: {pki}/server.key
  client_ca_file: {pki}/ca.crt
  client_auth_type: RequireAndVerifyClientCert
""")
    d = DaemonProcess(tmp_path, RULES, pg.dsn, "--web.config.file", web, tls=client_context(pki, "client"))
    try:
        assert status_of(d) == 200
        for ctx in (client_context(pki), client_context(pki, "stranger")):
            tls_refusal(d.url("/metrics"), ctx)
        assert status_of(d) == 200
    finally:
        d.stop()


def test_basic_auth(pg: Server, tmp_path: Path) -> None:
    """Basic auth: the right password is served; wrong, missing or unknown-user credentials get 401; /healthz is
    open for probes."""
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
    web = web_file(tmp_path, f"basic_auth_users:\n  prom: '{hashed}'\nhttp_server_config:\n  headers:\n"
                             "    X-Frame-Options: deny\n")
    d = DaemonProcess(tmp_path, RULES, pg.dsn, "--web.config.file", web, auth=("prom", PASSWORD))
    try:
        assert status_of(d) == 200 and status_of(d, "/") == 200
        for creds in (("prom", "wrong"), ("nobody", PASSWORD), None):
            d.auth = creds
            assert status_of(d) == 401, creds
            assert status_of(d, "/") == 401
        d.auth = None
        assert status_of(d, "/healthz") == 200
        with urllib.request.urlopen(d.url("/healthz"), timeout=5) as resp:  # noqa: S310 - loopback
            assert resp.headers["X-Frame-Options"] == "deny"
        assert PASSWORD not in d.log_path.read_text()
    finally:
        d.stop()


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("tls_server_config: {cert_file: /nope.crt, key_file: /nope.key}\n", "tls_server_config: cannot load"),
        ("basic_auth_users: {prom: plaintext}\n", "basic_auth_users: user 'prom': expected a bcrypt hash"),
        ("tls_config: {}\n", "tls_config: Extra inputs are not permitted"),
        ("tls_server_config: {cert_file: a, key_file: b, client_auth_type: RequireAndVerifyClientCert}\n",
         "needs client_ca_file"),
    ],
)
def test_invalid_web_config_exits_2(pg: Server, tmp_path: Path, text: str, says: str) -> None:
    """A bad web config file is one FILE: path: message line per problem and exit 2, never a traceback."""
    web = web_file(tmp_path, text)
    out = subprocess.run([sys.executable, "-m", "exporter", "run", "--dsn", pg.dsn, "--web.config.file", web,
                          "--web.listen-address", "127.0.0.1:0"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert out.stderr.startswith(f"{web}: ") and says in out.stderr and "Traceback" not in out.stderr


def test_over_long_passwords_get_401(pg: Server, tmp_path: Path, hash12: str) -> None:
    """Passwords past bcrypt's 72 bytes (73, 1000) are a 401 with WWW-Authenticate, never a dropped connection, and
    are not truncated: 72 right bytes and one more are refused."""
    long_pw = "p" * 72
    long_hash = bcrypt.hashpw(long_pw.encode(), bcrypt.gensalt(rounds=4)).decode()
    web = web_file(tmp_path, f"basic_auth_users:\n  prom: '{hash12}'\n  long: '{long_hash}'\n")
    d = DaemonProcess(tmp_path, RULES, pg.dsn, "--web.config.file", web, auth=("prom", PASSWORD))
    try:
        for creds in (("prom", "x" * 73), ("prom", "x" * 1000), ("nobody", "x" * 1000), ("long", long_pw + "p")):
            status, headers, _, _ = request(d.port, auth=creds)
            assert (status, headers["WWW-Authenticate"]) == (401, 'Basic realm="pgparent"'), creds[0]
        assert request(d.port, auth=("long", long_pw))[0] == 200
        assert not d.events("http_request_failed")
    finally:
        d.stop()


def test_unknown_users_cost_as_much_as_wrong_passwords(pg: Server, tmp_path: Path, hash12: str) -> None:
    """An unknown user is refused as slowly as a known user's wrong password (within a factor of 2): the check runs
    against a hash of the same cost, so timing does not tell user names apart."""
    d = auth_daemon(tmp_path, pg, hash12)
    try:
        known, unknown = [], []
        for i in range(5):
            status_known, _, _, seconds_known = request(d.port, auth=("prom", f"wrong-{i}"))
            status_unknown, _, _, seconds_unknown = request(d.port, auth=(f"nobody-{i}", f"wrong-{i}"))
            assert status_known == status_unknown == 401
            known.append(seconds_known)
            unknown.append(seconds_unknown)
        ratio = statistics.median(known) / statistics.median(unknown)
        record_figure("http_auth_timing", known_wrong_ms=round(statistics.median(known) * 1000, 1),
                      unknown_user_ms=round(statistics.median(unknown) * 1000, 1), ratio=round(ratio, 2))
        assert 0.5 < ratio < 2, (known, unknown)
    finally:
        d.stop()


def test_wrong_password_flood_takes_one_core_and_scrapes_go_on(pg: Server, tmp_path: Path, hash12: str) -> None:
    """20 clients sending wrong passwords keep the daemon under about one core (one bcrypt check at a time); the
    rest wait a bounded time or get 503 with Retry-After; a scraper whose credentials passed before is answered at
    once; failures are counted on /metrics and logged at most once per Gatekeeper.LOG_EVERY."""
    d = auth_daemon(tmp_path, pg, hash12)
    pid = d.proc.pid
    answers: list[tuple[int, str | None]] = []
    stop = threading.Event()

    def attacker(n: int) -> None:
        i = 0
        while not stop.is_set():
            status, headers, _, _ = request(d.port, auth=("prom", f"guess-{n}-{i}"))
            answers.append((status, headers["Retry-After"]))
            i += 1

    attackers = [threading.Thread(target=attacker, args=(n,), daemon=True) for n in range(20)]
    try:
        flood_started = time.monotonic()
        for t in attackers:
            t.start()
        eventually(lambda: len(answers) >= 3, timeout=30, what="the flood under way")
        cpu_before, t_before, answered_before = cpu_seconds(pid), time.monotonic(), len(answers)
        scrapes: list[float] = []

        def scrape_until_enough_answers() -> bool:
            status, _, _, seconds = request(d.port, auth=("prom", PASSWORD))
            assert status == 200
            scrapes.append(seconds)
            return len(answers) - answered_before >= 24

        eventually(scrape_until_enough_answers, timeout=90, interval=0.2, what="24 answers to the flood")
        cores = (cpu_seconds(pid) - cpu_before) / (time.monotonic() - t_before)
        checks_per_second = (len(answers) - answered_before) / (time.monotonic() - t_before)
    finally:
        stop.set()
        for t in attackers:
            t.join(HTTP_TIMEOUT)
    try:
        flood_seconds = time.monotonic() - flood_started
        statuses = {status for status, _ in answers}
        record_figure("http_password_flood", clients=20, daemon_cores=round(cores, 2),
                      answers_per_second=round(checks_per_second, 1), refused_busy=sum(s == 503 for s, _ in answers),
                      scrape_max_ms=round(max(scrapes) * 1000, 1), scrapes=len(scrapes))
        assert cores < 1.25
        assert statuses <= {401, 503}
        assert all(retry == f"{Gatekeeper.CHECK_WAIT:.0f}" for s, retry in answers if s == 503)
        assert max(scrapes) < 1.0
        wrong = sum(s == 401 for s, _ in answers)
        eventually(lambda: (d.sample("pgparent_http_auth_failures_total", {"reason": "wrong_password"}) or 0) >= wrong,
                   what="every refused attempt counted")
        lines = d.events("http_auth_failed")
        assert 1 <= len(lines) <= 2 + flood_seconds / Gatekeeper.LOG_EVERY
        assert PASSWORD not in d.log_path.read_text()
    finally:
        d.stop()


def test_slow_connections_hold_no_threads_and_scrapes_go_on(pg: Server, tmp_path: Path) -> None:
    """300 silent and 50 trickling connections are held without a thread each (the thread count stays at the pool's
    size), scrapes are still answered within 2 s, and all 350 are dropped REQUEST_TIMEOUT after they connected."""
    d = DaemonProcess(tmp_path, RULES, pg.dsn)
    pid = d.proc.pid
    try:
        stop = threading.Event()
        threads_before, idle = thread_count(pid), settled_sockets(pid)
        with connections(d.port, 300) as silent, connections(d.port, 50) as trickling:
            connected = time.monotonic()

            def trickle() -> None:
                for byte in b"GET /metrics HTTP/1.1\r\nX-Slow: " + b"a" * 100:
                    if stop.wait(0.5):
                        return
                    for sock in trickling:
                        with contextlib.suppress(OSError):
                            sock.send(bytes([byte]))

            trickler = threading.Thread(target=trickle, daemon=True)
            trickler.start()
            try:
                eventually(lambda: socket_count(pid) - idle >= 350, timeout=60,
                           what="all 350 connections accepted and held")
                scrapes, threads = [], []
                for _ in range(20):
                    status, _, _, seconds = request(d.port)
                    assert status == 200
                    scrapes.append(seconds)
                    threads.append(thread_count(pid))
                held = socket_count(pid) - idle
                eventually(lambda: socket_count(pid) <= idle, timeout=REQUEST_TIMEOUT + 15, interval=0.2,
                           what="the slow connections dropped")
                dropped_after = time.monotonic() - connected
                assert all(closed_by_peer(s) for s in silent + trickling)
            finally:
                stop.set()
                trickler.join(5)
            record_figure("http_slow_connections", connections=350, sockets_held=held, threads_before=threads_before,
                          threads_max=max(threads), scrape_p50_ms=round(statistics.median(scrapes) * 1000, 1),
                          scrape_max_ms=round(max(scrapes) * 1000, 1), dropped_after_s=round(dropped_after, 1))
            assert max(scrapes) < 2.0
            assert max(threads) <= BASE_THREADS + Limits().workers
            assert REQUEST_TIMEOUT - 1 < dropped_after < REQUEST_TIMEOUT + 15
    finally:
        d.stop()


def test_connection_cap_closes_the_longest_waiting(pg: Server, tmp_path: Path) -> None:
    """With --web.max-connections 64, 350 silent connections leave at most 64 open (the longest waiting are closed to
    make room) and a scrape still gets through within 2 s."""
    d = DaemonProcess(tmp_path, RULES, pg.dsn, "--web.max-connections", "64")
    pid = d.proc.pid
    idle = settled_sockets(pid)  # the listener, the PostgreSQL connection, the event loop's self-pipe
    try:
        with connections(d.port, 350) as silent:
            eventually(lambda: sum(map(closed_by_peer, silent)) >= 350 - 64, what="all but 64 closed by the daemon")
            held = socket_count(pid) - idle
            scrapes = [request(d.port) for _ in range(10)]
            assert not any(map(closed_by_peer, silent[-40:]))  # the newest are kept
        record_figure("http_connection_cap", cap=64, connections=350, sockets_held=held,
                      scrape_max_ms=round(max(s[3] for s in scrapes) * 1000, 1))
        assert held <= 64
        assert all(s[0] == 200 for s in scrapes) and max(s[3] for s in scrapes) < 2.0
    finally:
        d.stop()


def test_bad_requests_get_4xx_and_the_server_goes_on(pg: Server, tmp_path: Path) -> None:
    """Methods other than GET and HEAD are 405 with Allow; malformed request lines and headers 400; over-long or too
    many headers 431; HTTP/2 request lines 505; keep-alive and pipelined requests are answered in order."""
    d = DaemonProcess(tmp_path, RULES, pg.dsn)
    try:
        for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS"):
            status, headers, _, _ = request(d.port, method, body=b"a=1" if method == "POST" else None)
            assert (status, headers["Allow"]) == (405, "GET, HEAD"), method
        status, headers, body, _ = request(d.port, "HEAD")
        assert status == 200 and body == b"" and int(headers["Content-Length"]) > 0
        too_many = b"".join(b"X-%d: y\r\n" % i for i in range(150))
        for data, expected in (
            (b"GARBAGE\r\n\r\n", b"400"),
            (b"GET /metrics\r\n\r\n", b"400"),
            (b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n", b"400"),
            (b"GET /metrics HTTP/1.1\r\n folded: x\r\n\r\n", b"400"),
            (b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 10_000 + b"\r\n\r\n", b"431"),
            (b"GET /metrics HTTP/1.1\r\n" + too_many + b"\r\n", b"431"),
            (b"GET /metrics HTTP/2.0\r\n\r\n", b"505"),
        ):
            assert raw_exchange(d.port, data).startswith(b"HTTP/1.1 " + expected), data[:40]
        two = b"GET /healthz HTTP/1.1\r\n\r\nGET /nope HTTP/1.1\r\nConnection: close\r\n\r\n"
        pipelined = raw_exchange(d.port, two)
        assert pipelined.startswith(b"HTTP/1.1 200") and b"HTTP/1.1 404" in pipelined
        assert status_of(d) == 200
    finally:
        d.stop()


def test_a_failing_request_is_a_500_and_a_warning() -> None:
    """An error while handling a request answers that request with 500 and logs a warning with the traceback; the
    server goes on serving."""

    def broken_render() -> bytes:
        raise RuntimeError("render broke")

    server = MetricsServer(("127.0.0.1", 0), broken_render, lambda: True)
    server.start()
    try:
        with capture_logs() as logs:
            status = request(server.port)[0]
        assert status == 500
        assert request(server.port, path="/healthz")[0] == 200
        failed = [e for e in logs if e["event"] == "http_request_failed"]
        assert len(failed) == 1 and failed[0]["log_level"] == "warning" and failed[0]["exc_info"]
    finally:
        server.stop()


@pytest.mark.parametrize(("flag", "value", "says"), [("--web.workers", "1", "at least 2"),
                                                     ("--web.max-connections", "0", "at least 1"),
                                                     ("--web.max-connections", "many", "invalid int value")])
def test_bad_web_limits_exit_2(pg: Server, flag: str, value: str, says: str) -> None:
    """--web.workers below 2 or --web.max-connections below 1 (or not a number) is one line and exit 2."""
    out = subprocess.run([sys.executable, "-m", "exporter", "run", "--dsn", pg.dsn, flag, value,
                          "--web.listen-address", "127.0.0.1:0"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and says in out.stderr and flag in out.stderr, out.stderr
