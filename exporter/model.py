"""Frozen records that flow through pgparent: a session row, a poll's snapshot, a group and its statistics."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Literal

SignalAction = Literal["terminate", "cancel"]
"""What pgparent can do to a session: end it (pg_terminate_backend) or interrupt its query (pg_cancel_backend)."""

ACTIVE_STATES = frozenset({"active", "fastpath function call"})
"""States in which a session is running a query (what `cancel` interrupts and `max_query_duration` measures)."""

KNOWN_STATES = ("active", "idle", "idle in transaction", "idle in transaction (aborted)")
"""States always exported per group (as 0 when empty) so stacked graphs keep their series."""

UNKNOWN_STATE = "unknown"
"""The state label of a row whose state the monitoring role may not see (no pg_read_all_stats)."""


@dataclass(frozen=True, slots=True)
class Session:
    """One row of pg_stat_activity: a client backend, or a parallel worker (then `leader_pid` is set).

    A row the monitoring role may not see in full (no pg_read_all_stats) has backend_type, state and backend_start
    None: it is counted, and never signalled.
    """

    pid: int
    leader_pid: int | None
    backend_type: str | None
    datname: str | None
    usename: str | None
    application_name: str
    client_addr: str | None
    state: str | None
    wait_event_type: str | None
    backend_start: datetime | None
    xact_start: datetime | None
    query_start: datetime | None
    state_change: datetime | None
    query: str | None
    query_id: int | None = None

    @property
    def is_worker(self) -> bool:
        return self.backend_type == "parallel worker"


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What one poll read: client sessions and parallel workers, with the server's clock at that moment."""

    now: datetime
    sessions: tuple[Session, ...]
    workers: tuple[Session, ...] = ()


@dataclass(frozen=True, slots=True)
class Stats:
    """Aggregates over a set of sessions, as exported and as tested by rules. Durations in seconds."""

    sessions: int
    by_state: dict[str, int]
    active: int
    waiting: int
    max_query_duration: float
    max_transaction_duration: float
    max_idle_in_transaction: float
    age: float

    @classmethod
    def of(cls, sessions: Iterable[Session], now: datetime) -> Stats:
        """Counts by state, lock waits, and the longest query, transaction, idle-in-transaction spell and age."""
        by_state = dict.fromkeys(KNOWN_STATES, 0)
        count = active = waiting = 0
        oldest_query = oldest_xact = oldest_idle_xact = oldest_start = None
        for s in sessions:
            count += 1
            state = s.state if s.state is not None else UNKNOWN_STATE
            by_state[state] = by_state.get(state, 0) + 1
            if state in ACTIVE_STATES:
                active += 1
                if s.wait_event_type == "Lock":
                    waiting += 1
                if s.query_start is not None and (oldest_query is None or s.query_start < oldest_query):
                    oldest_query = s.query_start
            elif (
                state.startswith("idle in transaction")
                and s.state_change is not None
                and (oldest_idle_xact is None or s.state_change < oldest_idle_xact)
            ):
                oldest_idle_xact = s.state_change
            if s.xact_start is not None and (oldest_xact is None or s.xact_start < oldest_xact):
                oldest_xact = s.xact_start
            if s.backend_start is not None and (oldest_start is None or s.backend_start < oldest_start):
                oldest_start = s.backend_start

        def since(moment: datetime | None) -> float:
            return max((now - moment).total_seconds(), 0.0) if moment is not None else 0.0

        return cls(
            sessions=count,
            by_state=by_state,
            active=active,
            waiting=waiting,
            max_query_duration=since(oldest_query),
            max_transaction_duration=since(oldest_xact),
            max_idle_in_transaction=since(oldest_idle_xact),
            age=since(oldest_start),
        )


@dataclass(frozen=True)
class Group:
    """The client sessions that share a parent tag, and the parallel workers serving them.

    `stats` is computed on first use and kept: a poll of thousands of groups pays only for the groups that a rule
    measures or /metrics exports.
    """

    parent: str
    sessions: tuple[Session, ...]
    now: datetime
    workers: int = 0

    @cached_property
    def stats(self) -> Stats:
        return Stats.of(self.sessions, self.now)


@dataclass(frozen=True, slots=True)
class Grouped:
    """A snapshot split into groups by parent tag, plus the untagged rest."""

    now: datetime
    groups: dict[str, Group]
    untagged: Stats
    untagged_workers: int = 0
    hidden: int = 0
    """Client sessions whose backend_start the monitoring role cannot see (no pg_read_all_stats)."""
