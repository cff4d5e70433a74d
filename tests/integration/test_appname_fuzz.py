"""application_name is client-controlled: fuzz it through real sessions; the exposition always passes promtool."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.exposition import generate_latest
from psycopg import sql

from exporter.core.settings import Config
from exporter.pg.database import Database
from exporter.run.daemon import Daemon
from tests.support.servers import Server
from tests.support.tools import require_tool

# per_major: the server clips and rewrites application_name differently by major
pytestmark = [pytest.mark.integration, pytest.mark.per_major]

POOL = 6


@pytest.fixture(scope="module")
def pool(pg: Server) -> Iterator[list[psycopg.Connection[tuple[object, ...]]]]:
    conns = [psycopg.connect(pg.dsn, autocommit=True) for _ in range(POOL)]
    try:
        yield conns
    finally:
        for c in conns:
            c.close()


def _server_version(conn: psycopg.Connection[tuple[object, ...]]) -> int:
    row = conn.execute("SHOW server_version_num").fetchone()
    assert row is not None
    return int(str(row[0]))


@pytest.fixture(scope="module")
def promtool() -> str:
    return require_tool("promtool")


names = st.text(min_size=0, max_size=90).map(lambda s: s.replace("\x00", ""))
tagged = st.builds(lambda prefix, rest: f"{prefix}:{rest}", st.sampled_from(["X", 'Q"', "\\", "ü"]), names)


@pytest.mark.deliverables
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(apps=st.lists(st.one_of(names, tagged), min_size=1, max_size=POOL))
def test_fuzzed_application_names_keep_the_exposition_valid(
    pg: Server, pool: list[psycopg.Connection[tuple[object, ...]]], promtool: str, apps: list[str]
) -> None:
    """Whatever the clients call themselves, a poll succeeds and promtool accepts the exposition."""
    for conn, app in zip(pool, apps, strict=False):
        conn.execute(sql.SQL("SET application_name = {}").format(sql.Literal(app)))
    daemon = Daemon(Config(), Database(pg.dsn))
    try:
        daemon.cycle()
    finally:
        daemon.close()
    assert daemon.registry.get_sample_value("pgparent_up", {"target": "default"}) == 1
    text = generate_latest(daemon.registry)
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=30)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


def test_server_clips_and_rewrites_names(pool: list[psycopg.Connection[tuple[object, ...]]]) -> None:
    """PostgreSQL clips application_name to 63 bytes and rewrites non-ASCII (? before 16, \\xNN from 16)."""
    conn = pool[0]
    conn.execute(sql.SQL("SET application_name = {}").format(sql.Literal("L:" + "x" * 100)))
    row = conn.execute("SELECT current_setting('application_name')").fetchone()
    assert row is not None and row[0] == "L:" + "x" * 61
    conn.execute(sql.SQL("SET application_name = {}").format(sql.Literal("ü:1\n")))
    row = conn.execute("SELECT current_setting('application_name')").fetchone()
    assert row is not None
    if _server_version(conn) >= 160000:
        assert row[0] == "\\xc3\\xbc:1\\x0a"
    else:
        assert row[0] == "??:1?"
