"""Pure: lock waits into a blocking forest: who waits on whom, the root blockers, and whom each blocker holds up.

A waiter is a client session waiting on a heavyweight lock; its blockers come from pg_blocking_pids(). A *root
blocker* is a blocker that does not itself wait on a lock: ending it is what releases the chain behind it. A waiter
blocked through a chain counts against every blocker on the way, roots included. Cycles (a deadlock PostgreSQL has not
broken yet) end the walk: each node is visited once per waiter, so nothing loops. No I/O, no clock.
"""

from __future__ import annotations

from datetime import datetime

from exporter.core.model import LockGraph, Session, Snapshot, Wait


def build(snapshot: Snapshot) -> LockGraph | None:
    """The forest of `snapshot`'s lock waits, or None when no session waited (a poll without waiters pays nothing)."""
    if not snapshot.blockers:
        return None
    by_pid: dict[int, Session] = {s.pid: s for s in snapshot.sessions}
    edges: dict[int, list[int]] = {}
    first: dict[int, tuple[datetime | None, str | None, str | None, str | None]] = {}
    types: dict[int, str | None] = {}
    for b in snapshot.blockers:
        if b.blocker == b.pid:
            continue
        edges.setdefault(b.pid, [])
        if b.blocker not in edges[b.pid]:
            edges[b.pid].append(b.blocker)
        types.setdefault(b.blocker, b.blocker_type)
        if b.pid not in first:
            session = by_pid.get(b.pid)
            since = b.waitstart if b.waitstart is not None else (session.query_start if session else None)
            first[b.pid] = (since, b.locktype, b.relation, b.mode)
    waits = {
        pid: Wait(pid, first[pid][0], tuple(blockers), *first[pid][1:]) for pid, blockers in edges.items() if blockers
    }

    downstream: dict[int, set[int]] = {}
    roots: dict[int, frozenset[int]] = {}
    for waiter in waits:
        seen: set[int] = {waiter}
        found: set[int] = set()
        stack = list(waits[waiter].blockers)
        while stack:
            pid = stack.pop()
            if pid in seen:
                continue  # a cycle, or a second path to the same blocker
            seen.add(pid)
            downstream.setdefault(pid, set()).add(waiter)
            upstream = waits.get(pid)
            if upstream is None:
                found.add(pid)
            else:
                stack.extend(upstream.blockers)
        roots[waiter] = frozenset(found)
    return LockGraph(
        now=snapshot.now,
        waits=waits,
        downstream={pid: frozenset(ws) for pid, ws in downstream.items()},
        roots=roots,
        blocker_types=types,
    )
