"""Fixtures: a real PostgreSQL for the whole run (and a private one for tests that stop it), client sessions."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from tests.support import Clients, PgBouncer, PooledClients, Server, make_server


@pytest.fixture(scope="session")
def pg() -> Iterator[Server]:
    """The shared server. Tests must not stop it; use `private_pg` for that."""
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
def clients(pg: Server) -> Iterator[Clients]:
    with Clients(pg.dsn) as c:
        yield c


@pytest.fixture
def admin(pg: Server) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
    """An autocommit superuser connection to the shared server."""
    with psycopg.connect(pg.dsn, autocommit=True, application_name="pgparent-tests-admin") as conn:
        yield conn


@pytest.fixture
def pgbouncer(pg: Server) -> Iterator[PgBouncer]:
    """A real PgBouncer in transaction mode in front of the shared server, of this test's own: its server connections
    are gone when the test ends (an idle one keeps its last client's application_name, and would be grouped)."""
    bouncer = PgBouncer(pg)
    try:
        yield bouncer
    finally:
        bouncer.stop(pg)


@pytest.fixture
def pooled(pg: Server) -> Iterator[PooledClients]:
    with PooledClients(pg.dsn) as c:
        yield c
