"""Lock chains against a real server: who blocks whom by group, root blockers, and rules that end only the root."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client.registry import CollectorRegistry
from psycopg import sql

from exporter.cli.main import main
from exporter.core.assess import assess
from exporter.core.model import Grouped
from exporter.core.settings import Config
from exporter.face.collector import PgparentCollector, Published
from harness.daemon import DaemonProcess
from harness.waiting import eventually
from tests.support.roles import Roles
from tests.support.servers import Server
from tests.support.sessions import Client, Clients, read_snapshot

# per_major: pg_locks, waitstart and blocking pids are the server's
pytestmark = [pytest.mark.integration, pytest.mark.per_major]

PATTERN = r"^(?P<parent>[^:]+:[^:]+)"


@dataclass
class Chain:
    """The issue's chain: A holds rows 1 and 3 idle in a transaction; B:1 takes row 2 and waits on row 1; B:2 waits
    on row 1; C waits on row 2 (held by B:1); an untagged session waits on row 3 (held by A)."""

    table: str
    a: Client
    a_idle: Client
    b1: Client
    b2: Client
    c: Client
    u: Client

    def waiters(self) -> list[Client]:
        return [self.b1, self.b2, self.c, self.u]


def at(registry: CollectorRegistry, name: str, labels: dict[str, str] | None = None) -> float | None:
    """A sample of target "default" (the one server of a config without targets)."""
    return registry.get_sample_value(name, {"target": "default", **(labels or {})})


def _waiting(dsn: str, pids: list[int]) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s) AND wait_event_type = 'Lock'", [pids]
        ).fetchone()
    return bool(row and row[0] == len(pids))


def _alive(dsn: str, pid: int | None) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone() is not None


def _idle_in_transaction(dsn: str, pid: int) -> bool:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT state FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone()
    return bool(row and row[0] == "idle in transaction")


@pytest.fixture
def table(pg: Server, clients: Clients) -> Iterator[str]:
    """A table of three rows, of this test's own; dropped after the test's sessions are gone (so `clients` first)."""
    name = f"locks_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, v int NOT NULL)").format(sql.Identifier(name)))
        conn.execute(sql.SQL("INSERT INTO {} VALUES (1, 0), (2, 0), (3, 0)").format(sql.Identifier(name)))
    try:
        yield name
    finally:
        clients.cleanup()
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            conn.execute("SET lock_timeout = '30s'")
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name)))


def start_chain(pg: Server, clients: Clients, table: str, a_tag: str = "LockA:1", a_dsn: str | None = None) -> Chain:
    t = table

    def update(*ids: int) -> str:
        return "; ".join(f"UPDATE {t} SET v = v + 1 WHERE id = {i}" for i in ids)

    [a] = clients.start(a_tag, f"BEGIN; {update(1, 3)}", hold=True, dsn=a_dsn)
    eventually(lambda: _idle_in_transaction(pg.dsn, a.pid or 0), what="A idle in transaction")
    [a_idle] = clients.start(a_tag, "SELECT 1", hold=True, dsn=a_dsn)
    [b1] = clients.start("LockB:1", f"BEGIN; {update(2, 1)}; COMMIT")
    eventually(lambda: _waiting(pg.dsn, [b1.pid or 0]), what="B:1 waiting")
    [b2] = clients.start("LockB:1", update(1))
    [c] = clients.start("LockC:1", update(2))
    [u] = clients.start("psql", update(3))
    chain = Chain(t, a, a_idle, b1, b2, c, u)
    eventually(lambda: _waiting(pg.dsn, [w.pid or 0 for w in chain.waiters()]), what="every waiter waiting")
    return chain


def _grouped(dsn: str) -> Grouped:
    return assess(read_snapshot(dsn), Config()).grouped


def test_chain_metrics_count_each_waiter_against_every_blocker_upstream(
    pg: Server, clients: Clients, table: str
) -> None:
    """A blocks 4 (B's two, C through B, the untagged one), B blocks 1 (C), C blocks 0; blocked: B 2, C 1; every
    waiter's chain leads to A's session, the one root blocker."""
    chain = start_chain(pg, clients, table)
    grouped = _grouped(pg.dsn)
    stats = {p: grouped.groups[p].stats for p in ("LockA:1", "LockB:1", "LockC:1")}
    assert [stats[p].blocking for p in ("LockA:1", "LockB:1", "LockC:1")] == [4, 1, 0]
    assert [stats[p].blocked for p in ("LockA:1", "LockB:1", "LockC:1")] == [0, 2, 1]
    assert stats["LockA:1"].max_blocking >= stats["LockB:1"].max_blocking > 0
    locks = grouped.locks
    assert locks is not None
    for w in chain.waiters():
        assert locks.roots[w.pid or 0] == {chain.a.pid}
    assert locks.is_root(chain.a.pid or 0) and not locks.is_root(chain.b1.pid or 0)
    assert grouped.untagged.blocking == 0 and grouped.prepared_blocking == 0

    collector = PgparentCollector()
    collector.publish(Published(up=True, grouped=grouped))
    reg = collector.registry
    assert at(reg, "pgparent_group_blocking_sessions", {"parent": "LockA:1"}) == 4
    assert at(reg, "pgparent_group_blocking_sessions", {"parent": "LockB:1"}) == 1
    assert at(reg, "pgparent_group_blocking_sessions", {"parent": "LockC:1"}) == 0
    assert at(reg, "pgparent_group_blocked_sessions", {"parent": "LockB:1"}) == 2
    assert (at(reg, "pgparent_group_max_blocking_seconds", {"parent": "LockA:1"}) or 0) > 0
    assert at(reg, "pgparent_untagged_blocking_sessions") == 0
    assert at(reg, "pgparent_prepared_transactions_blocking_sessions") == 0


def test_locks_command_prints_the_tree(
    pg: Server, clients: Clients, table: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`pgparent locks` shows A's session as the root with the four waiters under it, C beneath B:1; the JSON form
    has the same tree; `groups` gains BLOCKING and BLOCKED."""
    chain = start_chain(pg, clients, table)
    assert main(["locks", "--dsn", pg.dsn]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    root = next(i for i, line in enumerate(lines) if f"pid {chain.a.pid}" in line)
    assert "LockA:1" in lines[root] and "idle in transaction" in lines[root]
    below = "\n".join(lines[root + 1 :])
    for w in chain.waiters():
        assert f"pid {w.pid}" in below
    c_line = next(line for line in lines if f"pid {chain.c.pid}" in line)
    b1_line = next(line for line in lines if f"pid {chain.b1.pid}" in line)
    assert len(c_line) - len(c_line.lstrip()) > len(b1_line) - len(b1_line.lstrip())  # C nested under B:1

    assert main(["locks", "--dsn", pg.dsn, "--output", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    [tree] = [r for r in doc["roots"] if r["pid"] == chain.a.pid]
    assert tree["group"] == "LockA:1" and tree["blocking"] == 4

    def pids(node: dict[str, Any]) -> set[int]:
        return {node["pid"]} | {p for child in node["waiters"] for p in pids(child)}

    assert pids(tree) == {chain.a.pid, *(w.pid for w in chain.waiters())}

    assert main(["groups", "--dsn", pg.dsn, "--output", "json"]) == 0
    rows = {g["parent"]: g for g in json.loads(capsys.readouterr().out)["groups"]}
    assert rows["LockA:1"]["blocking"] == 4 and rows["LockB:1"]["blocked"] == 2
    assert main(["groups", "--dsn", pg.dsn]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert "BLOCKING" in header and "BLOCKED" in header


def _rows(dsn: str, table: str) -> dict[int, int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return dict(conn.execute(sql.SQL("SELECT id, v FROM {}").format(sql.Identifier(table))).fetchall())


@pytest.mark.slow
def test_blocking_rule_ends_the_root_blocker_only(pg: Server, clients: Clients, table: str, tmp_path: Path) -> None:
    """max_blocking_duration with terminate on A's pattern ends A's root-blocking session only: A's idle member
    stays, B's and C's sessions and the untagged one then complete their updates, nothing else is signalled."""
    chain = start_chain(pg, clients, table)
    rules = """
interval: 500ms
rules:
  - name: blocker
    match: {parent: "LockA:*"}
    max_blocking_duration: 1s
    action: terminate
"""
    with DaemonProcess(tmp_path, rules, pg.dsn) as d:
        eventually(lambda: not _alive(pg.dsn, chain.a.pid), timeout=30, what="A's blocking session terminated")
        for w in chain.waiters():
            eventually(lambda w=w: w.done, timeout=30, what="waiter completed")  # type: ignore[misc]
            assert w.outcome == "completed", w.error
        d.wait_polls(2)
        signals = d.events("session_signal")
        assert [e["pid"] for e in signals] == [chain.a.pid]
        assert signals[0]["blocking_sessions"] == 4 and signals[0]["max_blocking_seconds"] > 1
        assert signals[0]["result"] == "ok" and signals[0]["rule"] == "blocker"
    assert _alive(pg.dsn, chain.a_idle.pid)
    # A's updates rolled back; B:1's and B:2's (row 1, row 2), C's (row 2) and the untagged one's (row 3) kept.
    assert _rows(pg.dsn, table) == {1: 2, 2: 2, 3: 1}


@pytest.mark.slow
def test_scope_group_ends_the_whole_group(pg: Server, clients: Clients, table: str, tmp_path: Path) -> None:
    """`scope: group` on a blocking rule signals every session of the group, the idle member included."""
    chain = start_chain(pg, clients, table)
    rules = """
interval: 500ms
rules:
  - {name: blocker, match: {parent: "LockA:*"}, max_blocking_sessions: 3, action: terminate, scope: group}
"""
    with DaemonProcess(tmp_path, rules, pg.dsn) as d:
        eventually(lambda: not _alive(pg.dsn, chain.a.pid) and not _alive(pg.dsn, chain.a_idle.pid), timeout=30,
                   what="both of A's sessions terminated")
        # A session ends as its signal is sent; its audit line is written just after, so wait for both lines.
        signals = eventually(lambda: (s if len(s := d.events("session_signal")) >= 2 else None),
                             what="an audit line for each of the two signals")
        assert {e["pid"] for e in signals} == {chain.a.pid, chain.a_idle.pid}


@pytest.mark.slow
def test_protected_blocker_is_reported_never_signalled(
    pg: Server, clients: Clients, table: str, roles: Roles, tmp_path: Path
) -> None:
    """A root blocker whose user is protected shows in the metrics and is never signalled, however long it blocks."""
    role = roles.login("pgp_locks", "pw-locks", superuser=True)
    chain = start_chain(pg, clients, table, a_dsn=role.dsn)
    rules = f"""
interval: 500ms
protect: {{users: ["{role.name}"]}}
rules:
  - {{name: blocker, match: {{parent: "LockA:*"}}, max_blocking_duration: 500ms, action: terminate}}
"""
    with DaemonProcess(tmp_path, rules, pg.dsn) as d:
        eventually(lambda: d.sample("pgparent_group_blocking_sessions", {"parent": "LockA:1"}) == 4,
                   what="A's blocking reported")
        eventually(lambda: d.sample("pgparent_rule_violating_groups", {"rule": "blocker"}) == 1)
        d.wait_polls(3)
        assert d.events("session_signal") == []
    assert _alive(pg.dsn, chain.a.pid)


@pytest.mark.slow
def test_prepared_transaction_blocking_is_reported_and_nothing_signalled(
    pg: Server, clients: Clients, table: str, tmp_path: Path
) -> None:
    """A prepared transaction holding a row lock shows as prepared_transactions_blocking_sessions; the waiters are
    not blocked by any session, so a blocking rule signals nothing (never "pid 0")."""
    gid = f"pgparent-test-{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute(f"BEGIN; UPDATE {table} SET v = v + 1 WHERE id = 1; PREPARE TRANSACTION '{gid}'".encode())
    try:
        [w] = clients.start("LockB:1", f"UPDATE {table} SET v = v + 1 WHERE id = 1")
        eventually(lambda: _waiting(pg.dsn, [w.pid or 0]), what="waiting on the prepared transaction")
        grouped = _grouped(pg.dsn)
        assert grouped.prepared_blocking == 1 and grouped.groups["LockB:1"].stats.blocked == 1
        rules = """
interval: 500ms
rules:
  - {name: blocker, max_blocking_sessions: 0, action: terminate}
"""
        with DaemonProcess(tmp_path, rules, pg.dsn) as d:
            eventually(lambda: d.sample("pgparent_prepared_transactions_blocking_sessions") == 1)
            d.wait_polls(3)
            assert d.events("session_signal") == []
        assert not w.done
    finally:
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            conn.execute(f"ROLLBACK PREPARED '{gid}'".encode())


@pytest.mark.slow
def test_deadlock_broken_mid_poll_leaves_the_daemon_running(
    pg: Server, clients: Clients, table: str, tmp_path: Path
) -> None:
    """Two sessions deadlock; PostgreSQL breaks the cycle after deadlock_timeout while the daemon polls every 100 ms:
    the daemon keeps polling successfully and signals nothing."""
    rules = """
interval: 100ms
rules:
  - {name: blocker, max_blocking_duration: 1h, action: terminate}
"""
    with DaemonProcess(tmp_path, rules, pg.dsn) as d:
        d.wait_polls(2)
        gate = threading.Barrier(2)
        results: list[str] = []

        def side(first: int, second: int) -> None:
            try:
                with psycopg.connect(pg.dsn, autocommit=True, application_name="Dead:1") as conn:
                    conn.execute("BEGIN")
                    conn.execute(f"UPDATE {table} SET v = v + 1 WHERE id = {first}".encode())
                    gate.wait(10)
                    conn.execute(f"UPDATE {table} SET v = v + 1 WHERE id = {second}".encode())
                    conn.execute("COMMIT")
                results.append("committed")
            except psycopg.errors.DeadlockDetected:
                results.append("deadlock")

        threads = [threading.Thread(target=side, args=(1, 2)), threading.Thread(target=side, args=(2, 1))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(results) == ["committed", "deadlock"]
        before = d.sample("pgparent_poll_errors_total")
        d.wait_polls(3)
        assert d.sample("pgparent_up") == 1 and d.sample("pgparent_poll_errors_total") == before
        assert d.events("poll_crashed") == [] and d.events("session_signal") == []
