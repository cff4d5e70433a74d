"""--web.config.file: real TLS handshakes, client certificates and basic auth on /metrics; bad files exit 2."""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import bcrypt
import pytest

from tests.support import DaemonProcess, Server

pytestmark = pytest.mark.integration

PASSWORD = "scrape-Secret-5"
RULES = "interval: 0.5s\n"


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A throwaway CA, a server certificate for 127.0.0.1, a client certificate, and a stranger's certificate."""
    d = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
            "-keyout", str(d / "ca.key"), "-out", str(d / "ca.crt"))
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1"), ("client", "extendedKeyUsage=clientAuth")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", str(d / f"{name}.key"),
                "-out", str(d / f"{name}.csr"))
        (d / f"{name}.ext").write_text(ext + "\n")
        openssl("x509", "-req", "-in", str(d / f"{name}.csr"), "-CA", str(d / "ca.crt"), "-CAkey", str(d / "ca.key"),
                "-CAcreateserial", "-days", "2", "-extfile", str(d / f"{name}.ext"), "-out", str(d / f"{name}.crt"))
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=stranger",
            "-keyout", str(d / "stranger.key"), "-out", str(d / "stranger.crt"))
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


def test_tls_scrape_and_plain_http_refused(pg: Server, pki: Path, tmp_path: Path) -> None:
    """With a server certificate, https scrapes verify against the CA; plain http to the port gets no answer."""
    web = web_file(tmp_path, f"tls_server_config:\n  cert_file: {pki}/server.crt\n  key_file: {pki}/server.key\n")
    d = DaemonProcess(tmp_path, RULES, pg.dsn, "--web.config.file", web, tls=client_context(pki))
    try:
        assert "pgparent_up" in d.metrics()
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            urllib.request.urlopen(f"http://127.0.0.1:{d.port}/metrics", timeout=5)
        with socket.create_connection(("127.0.0.1", d.port), timeout=5) as junk:  # garbage instead of a handshake
            junk.sendall(b"\x00\xff garbage \r\n\r\n")
        wrong_ca = ssl.create_default_context(cafile=str(pki / "stranger.crt"))
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(d.url("/metrics"), timeout=5, context=wrong_ca)  # noqa: S310 - loopback
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
            with pytest.raises((urllib.error.URLError, ConnectionError, ssl.SSLError, OSError)):
                urllib.request.urlopen(d.url("/metrics"), timeout=5, context=ctx)  # noqa: S310 - loopback
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
