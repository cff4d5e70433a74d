"""The seed scenario end to end through the real CLI and HTTP: two groups of two, one rule, one survivor."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.support import Clients, Server, daemon, eventually

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LIMIT = 2.0
INTERVAL = 1.0
SLEEP = 6.0

SEED_RULES = f"""
interval: {INTERVAL}s
rules:
  - name: runaway-1001
    match:
      parent: "FakeParent:1001"
    max_query_duration: {LIMIT}s
    action: terminate
"""


@pytest.fixture
def seed_db(pg: Server) -> Iterator[str]:
    """A fresh database with the seed's table and simulate_long_query()."""
    name = f"seed_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    dsn = pg.dsn_for(name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE sample_data (parent text, finished_at timestamptz DEFAULT clock_timestamp())")
        conn.execute(
            "CREATE FUNCTION simulate_long_query() RETURNS void LANGUAGE plpgsql AS $$ BEGIN"
            f" PERFORM pg_sleep({SLEEP});"
            " INSERT INTO sample_data (parent) VALUES (current_setting('application_name')); END $$"
        )
    yield dsn
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


def test_seed_scenario_through_cli_and_http(pg: Server, seed_db: str, tmp_path: Path) -> None:
    """The rule ends FakeParent:1001 within its limit plus two intervals; FakeParent:2002 completes and writes rows."""
    clients = Clients(seed_db)
    try:
        with daemon(tmp_path, SEED_RULES, seed_db) as d:
            eventually(lambda: d.sample("pgparent_up") == 1, what="daemon up")
            started = time.monotonic()
            doomed = clients.start("FakeParent:1001", "SELECT simulate_long_query()", n=2)
            survivors = clients.start("FakeParent:2002", "SELECT simulate_long_query()", n=2)
            eventually(
                lambda: d.sample("pgparent_group_sessions", {"parent": "FakeParent:2002", "state": "active"}) == 2,
                what="2002 visible on /metrics",
            )
            eventually(lambda: all(c.done for c in doomed), timeout=LIMIT + 2 * INTERVAL + 5, what="1001 ended")
            reaction = time.monotonic() - started
            assert all(c.outcome == "terminated" for c in doomed)
            assert reaction <= LIMIT + 2 * INTERVAL + 0.5, f"1001 ended {reaction:.2f}s after it started"
            assert not any(c.done for c in survivors)
            eventually(lambda: all(c.done for c in survivors), timeout=SLEEP + 5, what="2002 completed")
            assert all(c.outcome == "completed" for c in survivors)
            assert d.sample("pgparent_signalled_sessions_total", {"rule": "runaway-1001", "action": "terminate"}) == 2
            audits = d.events("session_signal")
            assert sorted(e["pid"] for e in audits) == sorted(c.pid or 0 for c in doomed)
            assert all(e["result"] == "ok" and e["parent"] == "FakeParent:1001" for e in audits)
            eventually(lambda: d.sample("pgparent_group_sessions", {"parent": "FakeParent:1001", "state": "active"})
                       is None, what="the ended group vanished from /metrics")
    finally:
        clients.cleanup()
    with psycopg.connect(seed_db) as conn:
        rows = conn.execute("SELECT parent FROM sample_data ORDER BY parent").fetchall()
    assert rows == [("FakeParent:2002",), ("FakeParent:2002",)]


def test_demo_command_runs_the_seed_scenario() -> None:
    """`pgparent demo` starts its own server, shows 1001 terminated and 2002 completed, and cleans up after itself."""
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "demo"], capture_output=True, text=True, timeout=180,
        env={k: v for k, v in os.environ.items() if not k.startswith("PG")},
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "FakeParent:1001 session terminated" in out
    assert out.count("FakeParent:2002 session completed") == 2
    assert out.count("parent=FakeParent:2002") == 2
    assert "session_signal" in out
    assert "removed the throwaway server" in out
