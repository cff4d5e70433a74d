"""Test helpers: the PostgreSQL server under test, tagged client sessions on threads, a daemon process, eventually()."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Generic, Protocol, Self, TypeVar

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from exporter.core.model import Reading, Snapshot
from exporter.core.settings import Config
from exporter.pg.database import Database
from exporter.pgcluster import Cluster, ClusterError, free_port, start_cluster, unprivileged_user

T = TypeVar("T")
HTTP_TIMEOUT = 30.0
"""Seconds a test waits for the daemon to answer: generous, since CI machines are shared; a hang still fails."""


def eventually(fn: Callable[[], T | None], timeout: float = 15.0, interval: float = 0.05, what: str = "") -> T:
    """Call `fn` until it returns something truthy (and return that); fail with the last value after `timeout`."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = fn()
        except AssertionError as exc:
            last = exc
        else:
            if value:
                return value
            last = value
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout}s{': ' + what if what else ''}; last value: {last!r}")
        time.sleep(interval)


TOOLS = {
    "promtool": "Debian package prometheus",
    "prometheus": "Debian package prometheus",
    "kubectl": "kubectl, from the Kubernetes packages",
    "node": "Debian package nodejs",
    "npm": "Debian package npm",
    "podman": "Debian package podman",
    "runc": "Debian package runc",
    "debootstrap": "Debian package debootstrap",
    "pgbouncer": "Debian package pgbouncer",
}
"""The programs outside the virtualenv that the tests drive (`deliverables`, and PgBouncer in front of the test
server), and where each comes from."""


def require_tool(name: str) -> str:
    """The path of program `name`. When it is missing the test is skipped, saying why, on a developer's machine, and
    fails when CI=true: CI installs every tool (scripts/setup --test-tools), so there a missing one is a broken setup,
    never a reason to prove less."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")  # Debian puts daemons in sbin
    if path:
        return path
    reason = f"{name} is missing ({TOOLS[name]}; `scripts/setup --test-tools` installs it as root)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def unique_name(prefix: str) -> str:
    """A name for a server-wide object (role, database) of this test's own: `prefix` and 8 hex digits. Such objects
    are shared by every test and every run against the server, so a fixed name collides and outlives the test."""
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


@contextmanager
def role_and_database(dsn: str, role: str, database: str, password: str, *, superuser: bool = False) -> Iterator[None]:
    """A login role and a database of the test's own (name them with `unique_name`). On the way out their sessions
    are ended and waited for, since neither can be dropped while in use, and both are dropped."""
    create_role = "CREATE ROLE {} LOGIN PASSWORD {} SUPERUSER" if superuser else "CREATE ROLE {} LOGIN PASSWORD {}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL(create_role).format(sql.Identifier(role), sql.Literal(password)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    try:
        yield
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s OR datname = %s",
                         [role, database])
            eventually(lambda: conn.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = %s OR datname = %s",
                                            [role, database]).fetchone() == (0,), what="their sessions gone")
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(database)))
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def read_snapshot(dsn: str, config: Config | None = None) -> Snapshot:
    """One poll of the server at `dsn` as the daemon reads it with `config`, on a connection of its own."""
    db = Database(dsn)
    try:
        return db.snapshot(config.poll if config is not None else Reading())
    finally:
        db.close()


class Server(Protocol):
    """The PostgreSQL server under test."""

    dsn: str
    restartable: bool

    def dsn_for(self, dbname: str, user: str | None = None, password: str | None = None) -> str: ...
    def stop(self, mode: str = "fast") -> None: ...
    def start(self) -> None: ...
    def destroy(self) -> None: ...


class ExternalServer:
    """PGPARENT_TEST_DSN: a server someone else runs; it cannot be stopped or restarted by the tests."""

    restartable = False

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    def dsn_for(self, dbname: str, user: str | None = None, password: str | None = None) -> str:
        params = conninfo_to_dict(self.dsn)
        params["dbname"] = dbname
        if user is not None:
            params["user"] = user
        if password is not None:
            params["password"] = password
        return make_conninfo("", **params)

    def stop(self, mode: str = "fast") -> None:
        raise NotImplementedError("PGPARENT_TEST_DSN servers cannot be stopped by the tests")

    def start(self) -> None:
        raise NotImplementedError("PGPARENT_TEST_DSN servers cannot be started by the tests")

    def destroy(self) -> None:
        pass


class ContainerServer(ExternalServer):
    """testcontainers' PostgreSQL, on a fixed host port so a restart keeps the DSN."""

    restartable = True

    def __init__(self) -> None:
        from testcontainers.postgres import PostgresContainer  # imported only when a Docker engine answers

        port = free_port()
        self._container = PostgresContainer(os.environ.get("PGPARENT_TEST_IMAGE", "postgres:16-alpine"))
        self._container.with_bind_ports(5432, port)
        self._container.start()
        c = self._container
        super().__init__(f"host=127.0.0.1 port={port} dbname={c.dbname} user={c.username} password={c.password}")

    def stop(self, mode: str = "fast") -> None:
        self._container.get_wrapped_container().stop(timeout=0 if mode == "immediate" else 10)

    def start(self) -> None:
        self._container.get_wrapped_container().start()
        eventually(lambda: _accepts(self.dsn), timeout=60, what="container PostgreSQL accepting connections")

    def destroy(self) -> None:
        self._container.stop()


def _accepts(dsn: str) -> bool:
    try:
        with psycopg.connect(dsn, connect_timeout=2):
            return True
    except psycopg.OperationalError:
        return False


def _docker_answers() -> bool:
    """True when a Docker engine answers /_ping (on DOCKER_HOST's unix socket, or the default one)."""
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        return True  # a remote engine: let testcontainers try it and report its own error
    path = host.removeprefix("unix://")
    if not os.path.exists(path):
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(3)
        try:
            sock.connect(path)
            sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            status_line = sock.recv(64).split(b"\r\n", 1)[0]
            return status_line.startswith(b"HTTP/1.") and b" 200" in status_line
        except OSError:
            return False


def make_server(settings: dict[str, str] | None = None) -> Server:
    """PGPARENT_TEST_DSN if set; else testcontainers when a Docker engine answers; else a local throwaway cluster."""
    if dsn := os.environ.get("PGPARENT_TEST_DSN"):
        return ExternalServer(dsn)
    if os.environ.get("PGPARENT_TEST_DOCKER", "auto") != "never" and _docker_answers():
        return ContainerServer()
    major = int(os.environ["PGPARENT_TEST_PG_MAJOR"]) if os.environ.get("PGPARENT_TEST_PG_MAJOR") else None
    try:
        cluster: Cluster = start_cluster(settings=settings, major=major)
    except ClusterError as exc:
        raise RuntimeError(f"no PostgreSQL to test against: {exc}") from exc
    cluster.restartable = True  # type: ignore[attr-defined]
    return cluster  # type: ignore[return-value]


class _SessionThread(threading.Thread):
    """A client on its own thread: `session()` runs once, and how it ended is recorded for the test to inspect
    (`outcome`, `error`). `ready` is set once the session is under way, or has failed to get there."""

    LOST = "terminated"
    """The outcome when the server end of the connection goes away (pg_terminate_backend's AdminShutdown is one)."""

    def __init__(self, name: str, hold: bool) -> None:
        super().__init__(daemon=True, name=name)
        self.hold = hold
        self.ready = threading.Event()
        self.release = threading.Event()
        self.outcome: str | None = None
        self.error: BaseException | None = None

    def session(self) -> None:
        raise NotImplementedError

    def run(self) -> None:
        try:
            self.session()
            self.outcome = "completed"
        except psycopg.errors.QueryCanceled:
            self.outcome = "cancelled"
        except psycopg.OperationalError as exc:
            self.outcome = self.LOST
            self.error = exc
        except BaseException as exc:  # noqa: BLE001 - recorded for the test to inspect
            self.outcome = "error"
            self.error = exc
        finally:
            self.ready.set()

    @property
    def done(self) -> bool:
        return self.outcome is not None


class Client(_SessionThread):
    """A client session: tags itself, runs `statement`, and records how it ended."""

    def __init__(self, dsn: str, application_name: str, statement: str, *, setup: str | None = None,
                 hold: bool = False) -> None:
        super().__init__(f"client-{application_name}", hold)
        self.dsn, self.application_name, self.statement, self.setup = dsn, application_name, statement, setup
        self.executed = threading.Event()
        self.pid: int | None = None
        self.backend_start: Any = None

    def session(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("SET application_name = {}").format(sql.Literal(self.application_name)))
            if self.setup:
                conn.execute(self.setup.encode())
            row = conn.execute(
                "SELECT pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()"
            ).fetchone()
            assert row is not None
            self.pid, self.backend_start = row
            self.ready.set()
            conn.execute(self.statement.encode())
            self.executed.set()
            if self.hold:  # stay connected (idle) until released, then check the session is still there
                self.release.wait(300)
                conn.execute("SELECT 1")


S = TypeVar("S", bound=_SessionThread)


class _Started(Generic[S]):
    """The sessions a test started on `dsn`'s server; at the end (`cleanup()`, or leaving its `with` block) what is
    left of them is ended."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.started: list[S] = []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()

    def cleanup(self) -> None:
        raise NotImplementedError


class Clients(_Started[Client]):
    """Starts tagged sessions and, at the end, terminates whatever is left of them."""

    def start(self, application_name: str, statement: str = "SELECT pg_sleep(120)", n: int = 1,
              dsn: str | None = None, setup: str | None = None, hold: bool = False) -> list[Client]:
        """Start `n` sessions tagged `application_name` running `statement`; with `hold`, they stay connected and
        idle after it until cleanup."""
        clients = [Client(dsn or self.dsn, application_name, statement, setup=setup, hold=hold) for _ in range(n)]
        for c in clients:
            c.start()
        for c in clients:
            assert c.ready.wait(30), f"session {application_name} did not start"
            if c.pid is None:
                raise AssertionError(f"session {application_name} failed: {c.error!r}")
        self.started += clients
        return clients

    def cleanup(self) -> None:
        pids = [c.pid for c in self.started if c.pid is not None and not c.done]
        if pids:
            try:
                with psycopg.connect(self.dsn, autocommit=True) as conn:
                    conn.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", [pids])
            except psycopg.Error:
                pass  # the server may be down on purpose
        for c in self.started:
            c.release.set()
        for c in self.started:
            c.join(10)


def active_in_state(dsn: str, application_name: str, state: str = "active") -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND state = %s",
            [application_name, state],
        ).fetchone()
    return int(row[0]) if row else 0


class DaemonProcess:
    """`pgparent run` as a real process, with JSON logs to a file and /metrics on a free loopback port."""

    def __init__(self, tmp: Path, config_text: str, dsn: str, *extra: str, env: dict[str, str] | None = None,
                 tls: ssl.SSLContext | None = None, auth: tuple[str, str] | None = None) -> None:
        self.tls, self.auth = tls, auth
        self.config = tmp / "rules.yaml"
        self.config.write_text(config_text)
        self.port = free_port()
        self.log_path = tmp / f"daemon-{self.port}.log"
        self.out_path = tmp / f"daemon-{self.port}.out"
        cmd = [sys.executable, "-m", "exporter", "run", "--config.file", str(self.config), "--dsn", dsn,
               "--web.listen-address", f"127.0.0.1:{self.port}", "--log.format", "json", *extra]
        self._log = self.log_path.open("wb")
        self._out = self.out_path.open("wb")
        self.proc = subprocess.Popen(cmd, stdout=self._out, stderr=self._log, env={**os.environ, **(env or {})})
        eventually(self._serving, timeout=20, what="daemon serving /metrics")

    def _serving(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"daemon exited with {self.proc.returncode}: {self.log_path.read_text()}")
        try:
            self.metrics()
            return True
        except OSError:
            return False

    def url(self, path: str) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}{path}"

    def get(self, path: str) -> tuple[int, str]:
        request = urllib.request.Request(self.url(path))  # noqa: S310 - loopback
        if self.auth is not None:
            token = base64.b64encode(f"{self.auth[0]}:{self.auth[1]}".encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT, context=self.tls) as resp:  # noqa: S310 - loopback
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def metrics(self) -> str:
        status, body = self.get("/metrics")
        assert status == 200, body
        return body

    def sample(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        """The value of one sample on /metrics, or None when it is absent."""
        from prometheus_client.parser import text_string_to_metric_families

        for family in text_string_to_metric_families(self.metrics()):
            for s in family.samples:
                if s.name == name and (labels is None or all(s.labels.get(k) == v for k, v in labels.items())):
                    return float(s.value)
        return None

    def samples(self, name: str, labels: dict[str, str] | None = None) -> list[tuple[dict[str, str], float]]:
        """Every sample of `name` on /metrics whose labels include `labels`."""
        from prometheus_client.parser import text_string_to_metric_families

        return [
            (dict(s.labels), float(s.value))
            for family in text_string_to_metric_families(self.metrics())
            for s in family.samples
            if s.name == name and (labels is None or all(s.labels.get(k) == v for k, v in labels.items()))
        ]

    def polls(self, *, failed: bool = False, target: str | None = None) -> int:
        """pgparent_polls_total (with `failed`, pgparent_poll_errors_total) as /metrics shows it now: of `target`, or
        the fewest of any target (so "n more" means every target polled)."""
        name = "pgparent_poll_errors_total" if failed else "pgparent_polls_total"
        counts = [v for _, v in self.samples(name, {"target": target} if target else None)]
        return int(min(counts, default=0))

    def wait_polls(self, n: int, *, failed: bool = False, timeout: float = 60.0, target: str | None = None) -> int:
        """Wait until the daemon has completed `n` more poll cycles than when called (with `failed`: `n` more failed
        ones), of `target` or of every target, and return the new count; fail after `timeout` seconds, generous
        since CI machines are shared.

        The first of them may be a poll already under way at the call: "nothing happened during N whole polls after
        X" is `wait_polls(N + 1)` after X.
        """
        goal = self.polls(failed=failed, target=target) + n

        def reached() -> int | None:
            count = self.polls(failed=failed, target=target)
            return count if count >= goal else None

        what = f"{n} more {'failed ' if failed else ''}poll(s), to {goal}"
        return eventually(reached, timeout=timeout, interval=0.1, what=what)

    def logs(self) -> list[dict[str, Any]]:
        events = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                events.append({"event": "non_json_line", "line": line})
        return events

    def events(self, name: str) -> list[dict[str, Any]]:
        return [e for e in self.logs() if e.get("event") == name]

    def send(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 10) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        self._out.close()
        return self.proc.returncode


@contextmanager
def daemon(tmp: Path, config_text: str, dsn: str, *extra: str, env: dict[str, str] | None = None
           ) -> Iterator[DaemonProcess]:
    d = DaemonProcess(tmp, config_text, dsn, *extra, env=env)
    try:
        yield d
    finally:
        d.stop()


class StallingProxy:
    """A TCP proxy on 127.0.0.1 that can stop forwarding without closing anything: a network black hole.

    While stalled, bytes already sent sit in socket buffers and new connections are accepted but never answered, so
    the client sees neither an error nor a reply, as with a dead link or a firewall dropping packets. `held` is set
    once, since the last stall(), something of the client's is held back (a query or a connection attempt): the
    client is now hanging on the black hole.
    """

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = threading.Event()
        self.held = threading.Event()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True, name="proxy-accept").start()

    def _accept(self) -> None:
        self._listener.settimeout(0.2)
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True, name="proxy-conn").start()

    def _serve(self, client: socket.socket) -> None:
        if not self._flowing.is_set():
            self.held.set()  # a connection attempt into the black hole
        self._flowing.wait()
        if self._closed.is_set():
            client.close()
            return
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            client.close()
            return
        self._sockets += [client, upstream]
        for src, dst in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(src, dst, src is client), daemon=True, name="proxy-pump").start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        src.settimeout(0.1)
        while not self._closed.is_set():
            if not self._flowing.wait(0.1):
                if from_client and _readable(src):
                    self.held.set()  # the client's bytes wait unread
                continue
            try:
                data = src.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not data:
                break
            try:
                if from_client and not self._flowing.is_set():
                    self.held.set()  # read just before the stall, and now held back
                self._flowing.wait()
                dst.sendall(data)
            except OSError:
                break
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def stall(self) -> None:
        self.held.clear()
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def close(self) -> None:
        self._closed.set()
        self._flowing.set()
        self._listener.close()
        for s in self._sockets:
            with contextlib.suppress(OSError):
                s.close()


def _readable(sock: socket.socket) -> bool:
    try:
        return bool(select.select([sock], [], [], 0)[0])
    except (OSError, ValueError):  # closed meanwhile
        return False


def figures_path() -> Path:
    """Where tests record measured figures (for docs/RELIABILITY.md): $PGPARENT_FIGURES or .pytest_cache/."""
    default = Path(__file__).resolve().parent.parent / ".pytest_cache" / "pgparent-figures.json"
    return Path(os.environ.get("PGPARENT_FIGURES", str(default)))


_figures_lock = threading.Lock()


def record_figure(section: str, **values: float | int | str) -> None:
    """Merge measured values into the figures file under `section`, and print them for the test log."""
    path = figures_path()
    with _figures_lock:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            data = {}
        data.setdefault(section, {}).update(values)
        path.write_text(json.dumps(data, indent=2, sort_keys=True))
    print(f"figure {section}: {values}")


class PgBouncer:
    """A real PgBouncer (Debian's package) on loopback, in transaction mode, in front of the server under test.

    Databases: `*` pools every database of the server (`default_pool_size` server connections per database and
    user); `single` is the server's `postgres` database through a pool of one server connection, so its clients take
    turns on one server session (what makes a signal race with the next client's query). Clients authenticate as
    the server's superuser without a password (auth_type trust, loopback only); PgBouncer logs in to the server with
    the password from its auth file. As root it runs as an unprivileged user, like the test PostgreSQL.
    """

    def __init__(self, server: Server, *, pool_size: int = 4, **settings: str) -> None:
        binary = require_tool("pgbouncer")
        params = conninfo_to_dict(server.dsn)
        self.user = str(params.get("user") or "postgres")
        upstream = f"host={params.get('host', '127.0.0.1')} port={params.get('port', 5432)}"
        self.port = free_port()
        self.base = Path(tempfile.mkdtemp(prefix="pgparent-pgbouncer-"))
        (self.base / "userlist.txt").write_text(f'"{self.user}" "{params.get("password", "")}"\n')
        options = {
            "listen_addr": "127.0.0.1",
            "listen_port": str(self.port),
            "unix_socket_dir": "",
            "auth_type": "trust",
            "auth_file": str(self.base / "userlist.txt"),
            "pool_mode": "transaction",
            "default_pool_size": str(pool_size),
            "max_client_conn": "200",
            "ignore_startup_parameters": "extra_float_digits",
            "server_login_retry": "1",
            "logfile": str(self.base / "pgbouncer.log"),
            "pidfile": "",
            "admin_users": self.user,  # the admin console's SHOW SERVERS names each server connection's pid
            **settings,
        }
        lines = ["[databases]", f"single = {upstream} dbname=postgres pool_size=1", f"* = {upstream}", "[pgbouncer]"]
        lines += [f"{k} = {v}" for k, v in options.items()]
        (self.base / "pgbouncer.ini").write_text("\n".join(lines) + "\n")
        owner = unprivileged_user()
        if owner is not None:
            for path in (self.base, *self.base.iterdir()):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        self.proc = subprocess.Popen(
            [binary, str(self.base / "pgbouncer.ini")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            user=owner.pw_uid if owner else None,
            group=owner.pw_gid if owner else None,
            extra_groups=[] if owner else None,
        )
        try:
            eventually(self._accepts, timeout=30, what="PgBouncer accepting connections")
        except BaseException:
            self.stop()
            raise

    def _accepts(self) -> bool:
        if self.proc.poll() is not None:
            err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
            raise RuntimeError(f"pgbouncer exited with {self.proc.returncode}: {err}{self.log()}")
        try:
            with psycopg.connect(self.dsn_for("postgres"), connect_timeout=2, autocommit=True) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.OperationalError:
            return False

    def dsn_for(self, dbname: str = "postgres", application_name: str | None = None) -> str:
        """A DSN through PgBouncer; `single` is the one-server-connection pool."""
        extra = {"application_name": application_name} if application_name is not None else {}
        return make_conninfo(
            "", host="127.0.0.1", port=self.port, dbname=dbname, user=self.user, connect_timeout=5, **extra
        )

    def log(self) -> str:
        try:
            return (self.base / "pgbouncer.log").read_text(errors="replace")
        except OSError:
            return ""

    def server_pids(self) -> list[int]:
        """The pids of PgBouncer's server connections now (its admin console, which speaks the simple protocol)."""
        with psycopg.connect(self.dsn_for("pgbouncer"), autocommit=True) as conn:
            result = conn.pgconn.exec_(b"SHOW SERVERS")
            names = [result.fname(i) for i in range(result.nfields)]
            column = names.index(b"remote_pid")
            return [int(value) for row in range(result.ntuples) if (value := result.get_value(row, column))]

    def stop(self, server: Server | None = None) -> None:
        """Stop PgBouncer; with `server`, also wait until its server connections have left PostgreSQL, so that no
        later test sees them (idle, still tagged by their last client's application_name)."""
        pids: list[int] = []
        if server is not None and self.proc.poll() is None:
            with contextlib.suppress(psycopg.Error):
                pids = self.server_pids()
        if self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: immediate shutdown
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        shutil.rmtree(self.base, ignore_errors=True)
        if server is not None and pids:
            with psycopg.connect(server.dsn, autocommit=True) as conn:
                conn.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", [pids])
                eventually(lambda: conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", [pids])
                           .fetchone() == (0,), what="PgBouncer's server connections gone")


class PooledClient(_SessionThread):
    """A client of PgBouncer: connects (its application_name a startup parameter, as PgBouncer tracks it), runs
    `statement` once, and records how it ended. Through a transaction pooler its server session is whichever
    PgBouncer lends it, so it has no pid of its own: find it by its query text."""

    LOST = "disconnected"  # the connection lost is the client's to PgBouncer: a server session may live on

    def __init__(self, dsn: str, statement: str, *, hold: bool = False) -> None:
        super().__init__("pooled-client", hold)
        self.dsn, self.statement = dsn, statement

    def session(self) -> None:
        # No prepared statements: a transaction pooler may run the next statement on another server session.
        with psycopg.connect(self.dsn, autocommit=True, prepare_threshold=None) as conn:
            self.ready.set()
            conn.execute(self.statement.encode())
            if self.hold:
                self.release.wait(300)


class PooledClients(_Started[PooledClient]):
    """Starts PgBouncer clients and, at the end, ends what is left of them and of their server sessions (found on
    the server behind the pooler, `dsn` a superuser's connection to it)."""

    def start(self, dsn: str, statement: str, *, hold: bool = False) -> PooledClient:
        client = PooledClient(dsn, statement, hold=hold)
        client.start()
        assert client.ready.wait(30), "a PgBouncer client did not connect"
        if client.outcome is not None and client.outcome != "completed":
            raise AssertionError(f"PgBouncer client failed: {client.error!r}")
        self.started.append(client)
        return client

    def cleanup(self) -> None:
        """Release held clients, and cancel the server-side queries of those still running one."""
        for c in self.started:
            c.release.set()
        running = [c.statement for c in self.started if c.outcome is None]
        if running:
            with contextlib.suppress(psycopg.Error), psycopg.connect(self.dsn, autocommit=True) as conn:
                conn.execute(
                    "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE query = ANY(%s)"
                    " AND pid <> pg_backend_pid()",
                    [running],
                )
        for c in self.started:
            c.join(10)


def server_session(dsn: str, mark: str, state: str | None = "active") -> tuple[int, Any, Any] | None:
    """(pid, backend_start, query_start) of the server session whose query holds `mark` (in `state`), if any."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT pid, backend_start, query_start FROM pg_stat_activity WHERE strpos(query, %s) > 0"
            " AND (%s::text IS NULL OR state = %s) AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
            [mark, state, state],
        ).fetchone()
    return (int(row[0]), row[1], row[2]) if row else None
