"""The seed scenario end to end against a real PostgreSQL, in the seed's own SQL: by hand (`pgparent groups`, then
`pgparent terminate`), by rule (the daemon), and as `pgparent demo` plays it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from harness.daemon import DaemonProcess
from harness.waiting import eventually
from tests.support.cli import pgparent
from tests.support.servers import Server, cluster_env
from tests.support.sessions import Client, Clients

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LIMIT = 2.0
INTERVAL = 1.0
SLEEP = 15.0  # long enough that a loaded machine still lists and signals the sessions before they finish
"""simulate_long_query()'s sleep: the seed's 30 s, shortened."""

SEED_SCHEMA = (
    "CREATE TABLE sample_data ( id SERIAL PRIMARY KEY, description TEXT, created_at TIMESTAMPTZ DEFAULT NOW() )",
    "INSERT INTO sample_data (description)\nVALUES ('Demo entry 1'), ('Demo entry 2'), ('Demo entry 3')",
    f"""CREATE OR REPLACE FUNCTION simulate_long_query(seconds double precision DEFAULT {SLEEP})
RETURNS VOID AS $$
BEGIN
    PERFORM pg_sleep(seconds);
    INSERT INTO sample_data (description) VALUES ('Long query complete at ' || NOW());
END;
$$ LANGUAGE plpgsql""",
)
"""The seed's table, rows and function, verbatim but for the sleep, which is a parameter defaulting to SLEEP."""

SEED_RULES = f"""
interval: {INTERVAL}s
rules:
  - name: runaway-1001
    match:
      parent: "FakeParent:1001"
    max_query_duration: {LIMIT}s
    action: terminate
"""


def seed_statement(parent: str) -> str:
    """What each of the seed's background jobs runs (`psql -c "..."`)."""
    return f"SET application_name = '{parent}'; SELECT simulate_long_query();"


@pytest.fixture
def seed_db(pg: Server) -> Iterator[str]:
    """A fresh database holding the seed's sample_data (three rows) and simulate_long_query()."""
    name = f"seed_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    dsn = pg.dsn_for(name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for statement in SEED_SCHEMA:
            conn.execute(statement.encode())
    yield dsn
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


def start_seed_sessions(clients: Clients) -> tuple[list[Client], list[Client]]:
    """Two FakeParent:1001 and two FakeParent:2002 sessions; like psql's, each connects as "psql" and tags itself in
    the seed's statement."""
    doomed = clients.start("psql", seed_statement("FakeParent:1001"), n=2)
    survivors = clients.start("psql", seed_statement("FakeParent:2002"), n=2)
    return doomed, survivors


def assert_seed_rows(dsn: str, completed: int) -> None:
    """`SELECT * FROM sample_data` holds the three demo rows and one "Long query complete" row per completed query."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT * FROM sample_data").fetchall()
    descriptions = [description for _, description, _ in sorted(rows)]
    assert descriptions[:3] == ["Demo entry 1", "Demo entry 2", "Demo entry 3"]
    assert len(descriptions) == 3 + completed, descriptions
    assert all(d.startswith("Long query complete at ") for d in descriptions[3:]), descriptions


@pytest.mark.per_major
def test_seed_by_hand_groups_then_terminate(seed_db: str) -> None:
    """`pgparent groups` shows the seed's two groups of two; `pgparent terminate FakeParent:1001` ends that group only,
    so only FakeParent:2002 writes its rows."""
    clients = Clients(seed_db)
    try:
        doomed, survivors = start_seed_sessions(clients)

        def both_groups_active() -> bool:
            out = pgparent("groups", "--dsn", seed_db, "--output", "json")
            active = {g["parent"]: g["active"] for g in json.loads(out.stdout)["groups"]}
            return active == {"FakeParent:1001": 2, "FakeParent:2002": 2}

        eventually(both_groups_active, what="both groups listed with two active sessions each")
        out = pgparent("terminate", "FakeParent:1001", "--dsn", seed_db)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        signalled = sorted(int(line.split("pid=")[1].split()[0]) for line in lines[:-1])
        assert signalled == sorted(c.pid or 0 for c in doomed)
        assert lines[-1].startswith("total: 2 of 2 session(s) of FakeParent:1001 terminated; 0 failed")
        eventually(lambda: all(c.outcome == "terminated" for c in doomed), what="1001 terminated")
        assert not any(c.done for c in survivors)
        eventually(lambda: all(c.done for c in survivors), timeout=SLEEP + 5, what="2002 completed")
        assert all(c.outcome == "completed" for c in survivors)
    finally:
        clients.cleanup()
    assert_seed_rows(seed_db, completed=2)


@pytest.mark.per_major
def test_seed_by_rule_through_cli_and_http(seed_db: str, tmp_path: Path) -> None:
    """The rule ends FakeParent:1001 within its limit plus two intervals; FakeParent:2002 completes and writes rows."""
    clients = Clients(seed_db)
    try:
        with DaemonProcess(tmp_path, SEED_RULES, seed_db) as d:
            eventually(lambda: d.sample("pgparent_up") == 1, what="daemon up")
            started = time.monotonic()
            doomed, survivors = start_seed_sessions(clients)
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
            assert all(e["query"] == seed_statement("FakeParent:1001") for e in audits)
            eventually(lambda: d.sample("pgparent_group_sessions", {"parent": "FakeParent:1001", "state": "active"})
                       is None, what="the ended group vanished from /metrics")
    finally:
        clients.cleanup()
    assert_seed_rows(seed_db, completed=2)


def test_demo_plays_the_seed_scenario_in_its_terms() -> None:
    """`pgparent demo` builds the seed's objects, terminates FakeParent:1001 by hand and then by rule, ends with the
    seed's table (three demo rows, one row per FakeParent:2002 session), exits 0 and removes its server."""
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "demo"], capture_output=True, text=True, timeout=120,
        env=cluster_env({k: v for k, v in os.environ.items() if not k.startswith("PG")}),
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "not the seed's 30 s" in out
    assert out.count(seed_statement("FakeParent:1001")) >= 2 and seed_statement("FakeParent:2002") in out
    # Round 1: the seed's session listing, `pgparent groups`, then `pgparent terminate`.
    assert re.search(r"^\s+pid\s+\|\s+usename\s+\|\s+application_name\s+\|\s+client_addr\s+\|\s+backend_start\s+\|"
                     r"\s+state\s+\|\s+query$", out, re.MULTILINE)
    assert re.search(r"^\s+FakeParent:1001\s+2\s+2\s", out, re.MULTILINE)
    assert "total: 2 of 2 session(s) of FakeParent:1001 terminated; 0 failed" in out
    assert "rule=manual" in out
    # Round 2: the daemon, by rule.
    assert "rule=runaway-1001" in out
    signalled = re.findall(r'^\s*pgparent_signalled_sessions_total\{[^}]*rule="runaway-1001"[^}]*\} (\S+)$', out, re.M)
    assert sum(float(v) for v in signalled) == 2
    assert out.count("FakeParent:1001 session terminated") == 4
    assert out.count("FakeParent:2002 session completed") == 4
    # The seed's closing SELECT * FROM sample_data.
    table = out[out.index("SELECT * FROM sample_data;"):]
    assert re.search(r"^\s+id\s+\|\s+description\s+\|\s+created_at$", table, re.MULTILINE)
    descriptions = re.findall(r"^\s+\d+ \| (.+?)\s+\| ", table, re.MULTILINE)
    assert descriptions[:3] == ["Demo entry 1", "Demo entry 2", "Demo entry 3"]
    assert len(descriptions) == 7 and all(d.startswith("Long query complete at ") for d in descriptions[3:])
    assert "(7 rows)" in table
    assert "Removed the throwaway server." in out
