"""The PostgreSQL server under test: which one (PGPARENT_TEST_DSN, testcontainers, else a throwaway local cluster of
PGPARENT_TEST_PG_MAJOR or the first major found), the shared `pg` fixture and a `private_pg` one for tests that stop
it, and the `per_major` marker's meaning.

Under pytest-xdist every worker process holds its own shared server (a session fixture is per process): the tests of
one worker run one after the other on it, as in a run without workers, so a test may count the whole server's
sessions without meeting another worker's.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator, Mapping
from typing import Protocol

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from exporter.pgcluster import Cluster, ClusterError, find_binaries, free_port, start_cluster
from harness.waiting import eventually


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


def chosen_major() -> int | None:
    """PGPARENT_TEST_PG_MAJOR, the major version of the local clusters the tests start; None: the first found."""
    return int(os.environ["PGPARENT_TEST_PG_MAJOR"]) if os.environ.get("PGPARENT_TEST_PG_MAJOR") else None


def cluster_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment (`base`, else this process's) for a program that starts throwaway clusters of its own
    (`pgparent demo`, the benchmark): with PGPARENT_TEST_PG_MAJOR set, PGPARENT_PG_BINDIR names that major's binaries,
    which such a program then finds first; without it, the program picks the first binaries found, as `pg` does."""
    env = dict(os.environ if base is None else base)
    major = chosen_major()
    if major is None:
        return env
    found = [b for b in find_binaries() if b.major == major]
    if not found:
        raise RuntimeError(f"no PostgreSQL {major} server binaries on this machine (PGPARENT_TEST_PG_MAJOR)")
    env["PGPARENT_PG_BINDIR"] = str(found[0].bindir)
    with pytest.MonkeyPatch.context() as patch:  # what that program will find first
        patch.setenv("PGPARENT_PG_BINDIR", env["PGPARENT_PG_BINDIR"])
        first = find_binaries()[0]
    if first.major != major:
        raise RuntimeError(f"PGPARENT_PG_BINDIR={found[0].bindir} does not come first among the binaries found "
                           f"(PostgreSQL {first.major} from {first.source} does)")
    return env


def make_server(settings: dict[str, str] | None = None) -> Server:
    """PGPARENT_TEST_DSN if set; else testcontainers when a Docker engine answers; else a local throwaway cluster."""
    if dsn := os.environ.get("PGPARENT_TEST_DSN"):
        return ExternalServer(dsn)
    if os.environ.get("PGPARENT_TEST_DOCKER", "auto") != "never" and _docker_answers():
        return ContainerServer()
    try:
        cluster: Cluster = start_cluster(settings=settings, major=chosen_major())
    except ClusterError as exc:
        raise RuntimeError(f"no PostgreSQL to test against: {exc}") from exc
    cluster.restartable = True  # type: ignore[attr-defined]
    return cluster  # type: ignore[return-value]


@pytest.fixture(scope="session")
def pg() -> Iterator[Server]:
    """The shared server (one per xdist worker). Tests must not stop it; use `private_pg` for that."""
    server = make_server()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def private_pg() -> Iterator[Server]:
    """A server of this test's own, which it may stop and restart."""
    server = make_server()
    if not server.restartable:
        server.destroy()
        pytest.skip("PGPARENT_TEST_DSN points at a server the tests cannot stop or restart")
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def admin(pg: Server) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """An autocommit superuser connection to the shared server."""
    with psycopg.connect(pg.dsn, autocommit=True, application_name="pgparent-tests-admin") as conn:
        yield conn

