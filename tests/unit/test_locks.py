"""The blocking forest is pure: chains to root blockers, counts per group, cycles, prepared transactions, and rules
that end only the root blockers."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from exporter.core.assess import assess
from exporter.core.locks import build
from exporter.core.model import PREPARED_XACT, Blocker, Session, Snapshot
from exporter.core.settings import Config
from tests.support.config import make_config
from tests.unit.factory import ago, session, snapshot

CONFIG = Config()
"""The default grouping: the parent tag is the application_name up to its second colon."""


def waits(snap: Snapshot, *edges: tuple[Session | int, Session | int, float]) -> Snapshot:
    """`snap` with (waiter, blocker, seconds waited) rows as pg_blocking_pids and pg_locks.waitstart would give."""
    rows = []
    for waiter, blocker, waited in edges:
        w = waiter if isinstance(waiter, int) else waiter.pid
        b = blocker if isinstance(blocker, int) else blocker.pid
        kind = "client backend" if not isinstance(blocker, int) else None
        rows.append(Blocker(w, b, kind, ago(waited), "transactionid", None, "ShareLock"))
    return replace(snap, blockers=tuple(rows))


def chain() -> tuple[list[Session], Snapshot]:
    """A (idle in transaction) <- B1 <- C, A <- B2, A <- untagged U; B2 also queues behind B1."""
    a = session("A:1", state="idle in transaction", xact_age=60)
    a_idle = session("A:1", state="idle")
    b1, b2, c = session("B:1", wait="Lock"), session("B:1", wait="Lock"), session("C:1", wait="Lock")
    u = session("psql", wait="Lock")
    snap = waits(snapshot(a, a_idle, b1, b2, c, u), (b1, a, 40), (b2, b1, 30), (c, b1, 20), (u, a, 10))
    return [a, a_idle, b1, b2, c, u], snap


def test_a_chain_counts_each_waiter_against_every_blocker_up_to_the_root() -> None:
    """A blocks 4, B blocks 1 (its own member queued behind it does not count), C blocks 0; all roads lead to A."""
    (a, _, b1, b2, c, u), snap = chain()
    grouped = assess(snap, CONFIG).grouped
    stats = {p: grouped.groups[p].stats for p in ("A:1", "B:1", "C:1")}
    assert [stats[p].blocking for p in ("A:1", "B:1", "C:1")] == [4, 1, 0]
    assert [stats[p].blocked for p in ("A:1", "B:1", "C:1")] == [0, 2, 1]
    assert stats["A:1"].max_blocking == 40 and stats["B:1"].max_blocking == 20
    locks = grouped.locks
    assert locks is not None
    assert all(locks.roots[w.pid] == {a.pid} for w in (b1, b2, c, u))
    assert locks.is_root(a.pid) and not locks.is_root(b1.pid)
    assert grouped.untagged.blocked == 1 and grouped.untagged.blocking == 0


def test_no_waiter_means_no_graph_and_zero_counts() -> None:
    """A poll with no lock waits builds nothing and every blocking figure is zero."""
    grouped = assess(snapshot(session("A:1"), session("B:1")), CONFIG).grouped
    assert grouped.locks is None
    assert grouped.groups["A:1"].stats.blocking == 0 and grouped.prepared_blocking == 0


def test_cycles_end_the_walk() -> None:
    """A deadlock not yet broken (X waits on Y, Y on X) has no root; counting terminates and nothing is a root."""
    x, y, z = session("X:1", wait="Lock"), session("Y:1", wait="Lock"), session("Z:1", wait="Lock")
    snap = waits(snapshot(x, y, z), (x, y, 2), (y, x, 3), (z, x, 1))
    grouped = assess(snap, CONFIG).grouped
    locks = grouped.locks
    assert locks is not None
    assert locks.roots[x.pid] == frozenset() and locks.roots[z.pid] == frozenset()
    assert not any(locks.is_root(p) for p in (x.pid, y.pid, z.pid))
    assert grouped.groups["X:1"].stats.blocking == 2  # y and z
    assert grouped.groups["Y:1"].stats.blocking == 2  # x, and z through x


def test_prepared_transactions_and_other_processes_are_roots_but_not_sessions() -> None:
    """pid 0 (a prepared transaction) and an autovacuum worker are roots; they belong to no group."""
    w1, w2 = session("B:1", wait="Lock"), session("C:1", wait="Lock")
    snap = replace(
        snapshot(w1, w2),
        blockers=(
            Blocker(w1.pid, PREPARED_XACT, None, ago(5), "transactionid", None, "ShareLock"),
            Blocker(w2.pid, 4242, "autovacuum worker", ago(3), "relation", "t", "AccessExclusiveLock"),
        ),
    )
    grouped = assess(snap, CONFIG).grouped
    assert grouped.prepared_blocking == 1
    locks = grouped.locks
    assert locks is not None and locks.is_root(PREPARED_XACT) and locks.blocker_types[4242] == "autovacuum worker"


def test_wait_start_falls_back_to_query_start() -> None:
    """Without pg_locks.waitstart (PostgreSQL < 14) a wait is timed from the waiting query's start."""
    a, w = session("A:1", state="idle in transaction"), session("B:1", wait="Lock", query_age=25)
    snap = replace(snapshot(a, w), blockers=(Blocker(w.pid, a.pid, "client backend", None, None, None, None),))
    assert build(snap) is not None
    assert assess(snap, CONFIG).grouped.groups["A:1"].stats.max_blocking == 25


def _run(rules: list[dict[str, Any]], snap: Snapshot) -> Any:
    config = make_config(*rules)
    return assess(snap, config).decision


def test_a_blocking_rule_signals_the_root_blockers_only() -> None:
    """max_blocking_duration fires on A and signals its root blocker, not its idle member, with the audit figures."""
    (a, a_idle, *_), snap = chain()
    d = _run([{"name": "r", "match": {"parent": "A:*"}, "max_blocking_duration": "30s", "action": "terminate"}], snap)
    assert [t.session.pid for t in d.signals] == [a.pid]
    assert d.signals[0].blocking_sessions == 4 and d.signals[0].max_blocking_seconds == 40
    assert a_idle.pid not in {t.session.pid for t in d.signals}


def test_scope_group_and_mixed_conditions_signal_the_whole_group() -> None:
    """`scope: group`, or a non-lock condition firing too, signals every session of the group."""
    (a, a_idle, *_), snap = chain()
    base = {"name": "r", "match": {"parent": "A:*"}, "action": "terminate"}
    whole = _run([{**base, "max_blocking_sessions": 3, "scope": "group"}], snap)
    mixed = _run([{**base, "max_blocking_sessions": 3, "max_group_age": "1s"}], snap)
    for d in (whole, mixed):
        assert {t.session.pid for t in d.signals} == {a.pid, a_idle.pid}


def test_a_cancel_rule_cannot_release_an_idle_blocker() -> None:
    """cancel on a lock condition signals nothing for a blocker idle in a transaction, and says so (unreleased)."""
    (a, *_), snap = chain()
    d = _run([{"name": "r", "match": {"parent": "A:*"}, "max_blocking_sessions": 1, "action": "cancel"}], snap)
    assert d.signals == () and [t.session.pid for t in d.unreleased] == [a.pid]


def test_protected_blocker_is_never_a_target() -> None:
    """A root blocker whose user is protected is counted as protected and not signalled."""
    a = session("A:1", state="idle in transaction", user="azuresu")
    w = session("B:1", wait="Lock")
    snap = waits(snapshot(a, w), (w, a, 50))
    d = _run([{"name": "r", "max_blocking_duration": "1s", "action": "terminate"}], snap)
    assert d.signals == () and d.protected == 1 and d.violating == {"r": 1}


def test_lock_conditions_do_not_fire_without_waits() -> None:
    """A group that blocks nobody does not exceed max_blocking_sessions 0."""
    d = _run([{"name": "r", "max_blocking_sessions": 0, "action": "terminate"}], snapshot(session("A:1")))
    assert d.violating == {"r": 0} and d.signals == ()

