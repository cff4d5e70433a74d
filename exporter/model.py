"""Frozen records that flow through pgparent: a session row, a poll's snapshot, a group and its statistics."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

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


@dataclass(frozen=True, slots=True)
class Group:
    """The client sessions that share a parent tag, the parallel workers serving them, and their statistics."""

    parent: str
    sessions: tuple[Session, ...]
    stats: Stats
    workers: int = 0


@dataclass(frozen=True, slots=True)
class Grouped:
    """A snapshot split into groups by parent tag, plus the untagged rest."""

    now: datetime
    groups: dict[str, Group]
    untagged: Stats
    untagged_workers: int = 0
    hidden: int = 0
    """Client sessions whose backend_start the monitoring role cannot see (no pg_read_all_stats)."""
