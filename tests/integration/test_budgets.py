"""Connection budgets against a real server: the capacity pgparent exports, a group trimmed to its budget (idle
first, longest idle first, its running work untouched), max_idle_sessions, max_idle_duration, LISTEN sessions left
alone, and the state_change guard closing the race of a session that turns active between the poll and the signal."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from structlog.testing import capture_logs

from exporter.core.assess import assess
from exporter.core.settings import DEFAULT_TARGET
from exporter.face.counters import Counters
from exporter.pg.database import Database
from exporter.run.enforcer import Enforcer
from harness.daemon import DaemonProcess
from harness.waiting import eventually
from tests.support.config import config_text, make_config
from tests.support.servers import Server, make_server
from tests.support.sessions import Client, Clients

# per_major: the capacity settings (reserved_connections from 16) and the signal's guards are the server's
pytestmark = [pytest.mark.integration, pytest.mark.per_major]

MAX_CONNECTIONS = 60
LOCK_KEY = 4242
"""The advisory lock the running sessions of a test wait on until it lets them finish."""


@pytest.fixture(scope="module")
def small() -> Iterator[Server]:
    """A server of this module's own with max_connections = 60."""
    server = make_server({"max_connections": str(MAX_CONNECTIONS)})
    try:
        with psycopg.connect(server.dsn) as conn:
            shown = conn.execute("SHOW max_connections").fetchone()
        if shown is None or int(shown[0]) != MAX_CONNECTIONS:
            pytest.skip("the server under test was not started by the tests: its max_connections is not theirs")
        yield server
    finally:
        server.destroy()


@pytest.fixture
def admin(small: Server) -> Iterator[psycopg.Connection[tuple[Any, ...]]]:
    with psycopg.connect(small.dsn, autocommit=True, application_name="pgparent-tests-admin") as conn:
        yield conn


@pytest.fixture
def sessions(small: Server) -> Iterator[Clients]:
    with Clients(small.dsn) as c:
        yield c


def _idle_since(admin: psycopg.Connection[tuple[Any, ...]], pids: list[int | None]) -> dict[int, Any]:
    rows = admin.execute("SELECT pid, state_change FROM pg_stat_activity WHERE pid = ANY(%s) AND state = 'idle'",
                         [pids]).fetchall()
    return {int(pid): since for pid, since in rows}


def _gone(admin: psycopg.Connection[tuple[Any, ...]], clients: list[Client]) -> set[int]:
    """The pids of `clients` the server no longer has (an idle client learns it only at its next statement)."""
    pids = [c.pid for c in clients]
    alive = {int(r[0]) for r in admin.execute("SELECT pid FROM pg_stat_activity WHERE pid = ANY(%s)", [pids])}
    return {p for p in pids if p is not None and p not in alive}


def _longest_idle(since: dict[int, Any], ended: set[int], n: int) -> bool:
    """Whether `ended` are `n` of the sessions idle longest: none of them went idle after any session left."""
    left = set(since) - ended
    return len(ended) == n and max(since[p] for p in ended) <= min(since[p] for p in left)


def _server_connections(admin: psycopg.Connection[tuple[Any, ...]]) -> tuple[int, int, int]:
    """(max_connections, reserved slots, client backends) as the server itself says, on the admin connection."""
    row = admin.execute(
        "SELECT current_setting('max_connections')::int,"
        " current_setting('superuser_reserved_connections')::int"
        " + coalesce(current_setting('reserved_connections', true)::int, 0),"
        " (SELECT count(*)::int FROM pg_stat_activity WHERE backend_type = 'client backend')"
    ).fetchone()
    assert row is not None
    return row[0], row[1], row[2]


def _daemon(tmp_path: Path, dsn: str, *rules: dict[str, Any]) -> DaemonProcess:
    return DaemonProcess(tmp_path, config_text(*rules, interval="1s"), dsn)


def test_a_budget_trims_a_group_to_its_size_longest_idle_first_and_its_running_work_finishes(
    small: Server, admin: psycopg.Connection[tuple[Any, ...]], sessions: Clients, tmp_path: Path
) -> None:
    """On a server with max_connections = 60, group A holds 30 idle and 5 running sessions; a rule keeps A at 20:
    the 15 longest idle end, the 5 running ones run on and finish their work, every trim is audited with its
    budget, and the exported capacity and headroom are what SHOW max_connections and pg_stat_activity say."""
    admin.execute("SELECT pg_advisory_lock(%s)", [LOCK_KEY])
    idle = sessions.start("A:1", "SELECT 1", n=30, hold=True)
    for c in idle:
        assert c.executed.wait(30)
    running = sessions.start("A:1", f"SELECT pg_advisory_lock_shared({LOCK_KEY})", n=5)
    since = _idle_since(admin, [c.pid for c in idle])
    assert len(since) == 30
    rule = {"name": "pool", "match": {"parent": "A:1"}, "max_sessions": 20, "scope": "excess",
            "action": "terminate"}
    with _daemon(tmp_path, small.dsn, rule) as d:
        eventually(lambda: len(_gone(admin, idle)) >= 15, timeout=30, what="15 idle sessions trimmed")
        d.wait_polls(d.polls() + 3)  # three full polls after the trim: nothing more is ended
        ended = _gone(admin, idle)
        assert _longest_idle(since, ended, 15)
        assert not _gone(admin, running) and not any(c.done for c in running)
        signals = d.events("session_signal")
        assert sorted(e["pid"] for e in signals) == sorted(ended)
        assert {e["result"] for e in signals} == {"ok"} and {e["state"] for e in signals} == {"idle"}
        assert signals[0]["budget"] == {"condition": "max_sessions", "limit": 20.0, "count": 35, "trimmed": 15}
        assert d.sample("pgparent_signalled_sessions_total", {"rule": "pool", "action": "terminate",
                                                              "trigger": "poll"}) == 15

        max_connections, reserved, in_use = _server_connections(admin)
        d.wait_polls(d.polls() + 2)  # a poll after the server's own count, nothing connecting meanwhile
        assert d.sample("pgparent_server_max_connections") == max_connections == MAX_CONNECTIONS
        assert d.sample("pgparent_server_reserved_connections") == reserved
        assert d.sample("pgparent_server_connections") == in_use
        assert d.sample("pgparent_server_connections_headroom") == max_connections - reserved - in_use
        share = d.sample("pgparent_group_connections_share_ratio", {"parent": "A:1"})
        assert share == pytest.approx(20 / (max_connections - reserved))

        admin.execute("SELECT pg_advisory_unlock(%s)", [LOCK_KEY])
        eventually(lambda: all(c.done for c in running), timeout=30, what="the running sessions finish")
        assert [c.outcome for c in running] == ["completed"] * 5


def test_max_idle_sessions_max_idle_duration_and_a_listen_session(
    small: Server, admin: psycopg.Connection[tuple[Any, ...]], sessions: Clients, tmp_path: Path
) -> None:
    """max_idle_sessions 2 ends the 3 longest idle of 5; max_idle_duration 2s ends a session idle longer, and leaves
    a session idle after LISTEN alone however long it waits (exported as listening)."""
    pool = sessions.start("B:1", "SELECT 1", n=5, hold=True)
    for c in pool:
        assert c.executed.wait(30)
    since = _idle_since(admin, [c.pid for c in pool])
    assert len(since) == 5
    [listener] = sessions.start("C:1", "LISTEN budget_channel", hold=True)
    [plain] = sessions.start("C:1", "SELECT 1", hold=True)
    assert listener.executed.wait(30) and plain.executed.wait(30)
    rules = (
        {"name": "idle-pool", "match": {"parent": "B:1"}, "max_idle_sessions": 2, "action": "terminate"},
        {"name": "idle-time", "match": {"parent": "C:1"}, "max_idle_duration": "2s", "action": "terminate"},
    )
    with _daemon(tmp_path, small.dsn, *rules) as d:
        eventually(lambda: len(_gone(admin, [*pool, plain])) >= 4, timeout=30, what="the trims")
        eventually(lambda: d.sample("pgparent_group_listening_sessions", {"parent": "C:1"}) == 1,
                   what="the listener exported as such")
        d.wait_polls(d.polls() + 4)  # the listener has been idle well past 2 s, over several polls
        assert _longest_idle(since, _gone(admin, pool), 3)
        assert _gone(admin, [plain, listener]) == {plain.pid}
        assert listener.pid not in {e["pid"] for e in d.events("session_signal")}
    listener.release.set()
    eventually(lambda: listener.done, what="the listener's next statement")
    assert listener.outcome == "completed"


class _Idle:
    """A session on the test's own thread, idle after `SELECT 1`, that the test makes run statements at will."""

    def __init__(self, dsn: str, tag: str) -> None:
        self.conn = psycopg.connect(dsn, autocommit=True, application_name=tag)
        self.conn.execute("SELECT 1")
        row = self.conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        self.pid = int(row[0])

    def alive(self) -> bool:
        try:
            self.conn.execute("SELECT 1")
            return True
        except psycopg.OperationalError:
            return False


def test_a_session_that_turns_active_between_the_poll_and_the_signal_is_left_alone(
    small: Server, admin: psycopg.Connection[tuple[Any, ...]]
) -> None:
    """Three idle sessions are chosen by a budget at a real poll; before the signals go, one starts a query (still
    running at the signal) and one runs a statement and is idle again. The state_change guard finds neither in the
    idle spell the poll saw, so both are left alone (`gone`); the one that did nothing is ended."""
    untouched, running, busy = (_Idle(small.dsn, "R:1") for _ in range(3))
    config = make_config({"name": "race", "match": {"parent": "R:1"}, "max_sessions": 0, "scope": "excess",
                          "action": "terminate"})
    db = Database(small.dsn)
    try:
        assessed = assess(db.snapshot(), config)
        assert {s.session.pid for s in assessed.decision.signals} == {untouched.pid, running.pid, busy.pid}
        # The race, made real: after the poll, before the signal.
        query = threading.Thread(target=running.conn.execute, args=("SELECT pg_sleep(2)",), daemon=True)
        query.start()
        eventually(lambda: admin.execute("SELECT state FROM pg_stat_activity WHERE pid = %s",
                                         [running.pid]).fetchone() == ("active",), what="the query running")
        busy.conn.execute("SELECT 2")  # idle again, since a later state_change
        with capture_logs() as events:
            Enforcer(db, Counters(), DEFAULT_TARGET).enforce(assessed.decision, assessed.snapshot.now)
    finally:
        db.close()
    results = {e["pid"]: e["result"] for e in events if e["event"] == "session_signal"}
    assert results == {untouched.pid: "ok", running.pid: "gone", busy.pid: "gone"}
    query.join(10)
    assert running.alive() and busy.alive()
    assert not untouched.alive()
    for s in (untouched, running, busy):
        s.conn.close()


@pytest.mark.parametrize("database_only", [False, True], ids=["server", "database"])
def test_a_poll_counts_every_client_backend_of_the_server(
    small: Server, admin: psycopg.Connection[tuple[Any, ...]], sessions: Clients, database_only: bool
) -> None:
    """The capacity a poll reads counts every client backend of the server, pgparent's own and other databases'
    included, whether the target reads the whole server or only its DSN's database (`sessions: database`)."""
    if admin.execute("SELECT 1 FROM pg_database WHERE datname = 'budget_other'").fetchone() is None:
        admin.execute("CREATE DATABASE budget_other")
    [elsewhere] = sessions.start("D:1", "SELECT 1", dsn=small.dsn_for("budget_other"), hold=True)
    assert elsewhere.executed.wait(30)
    db = Database(small.dsn, database_only=database_only)
    try:
        db.connect()
        max_connections, reserved, in_use = _server_connections(admin)  # pgparent's connection is open already
        snapshot = db.snapshot()
    finally:
        db.close()
    assert snapshot.capacity is not None
    assert (snapshot.capacity.max_connections, snapshot.capacity.reserved_total) == (max_connections, reserved)
    assert snapshot.capacity.in_use == in_use
    assert (elsewhere.pid in {s.pid for s in snapshot.sessions}) != database_only
