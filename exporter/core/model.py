"""Pure: the frozen records that flow through pgparent (a session row, a poll's snapshot, a group and its statistics)
and the moments of a session that durations are measured from, declared once."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from functools import cached_property
from operator import attrgetter
from types import MappingProxyType
from typing import Literal, NamedTuple, get_args

SignalAction = Literal["terminate", "cancel"]
"""What pgparent can do to a session: end it (pg_terminate_backend) or interrupt its query (pg_cancel_backend)."""

ACTIVE_STATES = frozenset({"active", "fastpath function call"})
"""States in which a session is running a query (what `cancel` interrupts and `max_query_duration` measures)."""

IDLE_STATES = frozenset({"idle"})
"""The state of a session idle outside a transaction: what the idle conditions and a budget's trim read first."""

KNOWN_STATES = ("active", "idle", "idle in transaction", "idle in transaction (aborted)")
"""States always exported per group (as 0 when empty) so stacked graphs keep their series."""

PREPARED_XACT = 0
"""The blocker pid pg_blocking_pids() reports for a prepared transaction: locks held by no backend."""

UNKNOWN_STATE = "unknown"
"""The state label of a row whose state the monitoring role may not see (no pg_read_all_stats)."""


@dataclass(frozen=True, slots=True)
class Session:
    """One row of pg_stat_activity: a client backend, or a parallel worker (then `leader_pid` is set).

    A row the monitoring role may not see in full (no pg_read_all_stats) has backend_type, state and backend_start
    None: it is counted, and never signalled. `query` is an excerpt (None when `audit.query_text: none`).
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
    comments: tuple[bytes | None, ...] = ()
    """For each configured comment key (`Sources.comment_keys`, in order), its raw value in the comment at the start
    or the end of the query, as the poll read it (`='...'` or `:...`), or None. Empty when no comment source is
    configured; None for an idle session, whose last comment is stale."""
    query_cut: bool = False
    """PostgreSQL cut the query text at track_activity_query_size: a comment at its end cannot be read."""
    listening: bool = False
    """Idle, and its last statement was a LISTEN (the poll tells, on the server: exporter/pg/queries/activity.sql):
    the session waits for notifications. Budgets never trim it and the idle conditions do not count it as idle."""
    superuser: bool = False
    """Its role is a superuser, or it has none (usename NULL: its role was dropped while it was connected), as the poll
    tells on the server: on a managed server, the provider's own sessions (`protect.superusers`)."""

    @property
    def is_worker(self) -> bool:
        return self.backend_type == "parallel worker"

    @classmethod
    def build(cls, values: Iterable[object]) -> Session:
        """The same record as `Session(*values)` (values in field order; any beyond the last field are ignored),
        filled through the slots directly: a frozen dataclass's __init__ sets each field through object.__setattr__,
        and a poll builds one per row."""
        session = object.__new__(cls)
        for put, value in zip(_SESSION_SLOTS, values, strict=False):
            put(session, value)
        return session


_SESSION_SLOTS = tuple(getattr(Session, f.name).__set__ for f in fields(Session))
"""The setter of each of Session's slots, in field order."""


@dataclass(frozen=True, slots=True)
class Guard:
    """What must still hold when a session is signalled, beyond its pid, backend_start and application_name (which
    are always checked). None: not checked. See exporter/queries/signal.sql for the race each one closes."""

    query_start: datetime | None = None
    xact_start: datetime | None = None
    state_change: datetime | None = None
    exceeded: float | None = None
    """Seconds `since` must lie in the past on the server's clock at the signal: a deadline acts only once its limit
    is really crossed."""
    since: datetime | None = None
    """The moment `exceeded` is measured from: the crossing session's moment of the condition (`Moment.of`)."""
    idle: bool = False
    """`state_change` pins a spell `idle` outside a transaction; False: a spell idle in a transaction."""


NO_GUARD = Guard()
"""Only pid, backend_start and application_name are checked."""

MomentColumn = Literal["query_start", "xact_start", "state_change", "backend_start"]


@dataclass(frozen=True, slots=True)
class Moment:
    """A moment of a session that a duration is measured from: the pg_stat_activity column holding it, the states in
    which the session has it, and the `Stats` field that holds a set's longest time since it.

    Declared once here; the statistics, the conditions (exporter/core/conditions.py), the deadlines and the guards of
    the signal statement all read it from these declarations.
    """

    stat: str
    column: MomentColumn
    states: frozenset[str] | None = None
    """The states in which a session has this moment; None: every state (when the column is set)."""
    prefix: str | None = None
    """Or: the states that start with this (`idle in transaction`, with or without `(aborted)`)."""
    listening: bool = True
    """Whether a session waiting for notifications (`Session.listening`) has this moment: its idle spell is a wait,
    not idleness."""

    def of(self, session: Session) -> datetime | None:
        """The session's moment, or None when it has none now (a query's start counts only while it runs)."""
        state = session.state
        if self.states is not None and state not in self.states:
            return None
        if not self.listening and session.listening:
            return None
        if self.prefix is not None and (state is None or not state.startswith(self.prefix)):
            return None
        value: datetime | None = getattr(session, self.column)
        return value

    def oldest(self, sessions: Sequence[Session]) -> datetime | None:
        """The earliest of the sessions' moments (`of` over a set, in one comprehension: Stats.of runs it for every
        moment of every group of a poll)."""
        get = _COLUMN_GETTERS[self.column]
        states, prefix = self.states, self.prefix
        if states is not None and not self.listening:
            values = [v for s in sessions if s.state in states and not s.listening and (v := get(s)) is not None]
        elif states is not None:
            values = [v for s in sessions if s.state in states and (v := get(s)) is not None]
        elif prefix is not None:
            values = [v for s in sessions if (st := s.state) is not None and st.startswith(prefix)
                      and (v := get(s)) is not None]
        else:
            values = [v for s in sessions if (v := get(s)) is not None]
        return min(values, default=None)

    def pin(self, value: datetime | None, onto: Guard = NO_GUARD) -> Guard:
        """`onto`, also holding only while a session is still at this very moment `value` (the same query,
        transaction or idle spell; for the session's own start, pid and backend_start already are)."""
        if value is None or self.column == "backend_start":
            return onto
        if self.column == "query_start":
            return replace(onto, query_start=value)
        if self.column == "xact_start":
            return replace(onto, xact_start=value)
        return replace(onto, state_change=value, idle=self.states == IDLE_STATES)


QUERY = Moment("max_query_duration", "query_start", states=ACTIVE_STATES)
"""Since the running query started."""
TRANSACTION = Moment("max_transaction_duration", "xact_start")
"""Since the open transaction began."""
IDLE_IN_TRANSACTION = Moment("max_idle_in_transaction", "state_change", prefix="idle in transaction")
"""Since the session last went idle inside its transaction."""
CONNECTED = Moment("age", "backend_start")
"""Since the session connected."""
IDLE = Moment("max_idle_duration", "state_change", states=IDLE_STATES, listening=False)
"""Since the session last went idle outside a transaction (a LISTEN session waiting for notifications has none)."""
MOMENTS: tuple[Moment, ...] = (QUERY, TRANSACTION, IDLE_IN_TRANSACTION, CONNECTED, IDLE)
_COLUMN_GETTERS: dict[str, Callable[[Session], datetime | None]] = {
    column: attrgetter(column) for column in get_args(MomentColumn)
}


@dataclass(frozen=True, slots=True)
class Blocker:
    """One row of pg_blocking_pids() for a waiting session: who holds (or is queued ahead for) the lock it wants."""

    pid: int
    """A backend's pid, or 0 for a prepared transaction (which holds locks with no backend)."""
    blocker: int
    blocker_type: str | None
    """The blocker's backend_type ("client backend", "autovacuum worker", "walsender", ...), None when unknown."""
    waitstart: datetime | None
    """When the waiter began waiting (pg_locks.waitstart, PostgreSQL 14+); None on older servers."""
    locktype: str | None
    relation: str | None
    mode: str | None


@dataclass(frozen=True, slots=True)
class Wait:
    """One waiting session: since when, on what lock, and the pids directly ahead of it."""

    pid: int
    since: datetime | None
    """pg_locks.waitstart (PostgreSQL 14+), else the waiting query's query_start: an upper bound on the wait."""
    blockers: tuple[int, ...]
    locktype: str | None = None
    relation: str | None = None
    mode: str | None = None


@dataclass(frozen=True, slots=True)
class LockGraph:
    """The blocking forest of one poll."""

    now: datetime
    waits: dict[int, Wait]
    """Waiter pid -> its wait; only sessions with at least one blocker."""
    downstream: dict[int, frozenset[int]]
    """Blocker pid (a session, PREPARED, or another process) -> every waiter held up by it, directly or through a
    chain."""
    roots: dict[int, frozenset[int]]
    """Waiter pid -> the root blockers its chains lead to (empty for a waiter caught in a cycle)."""
    blocker_types: dict[int, str | None] = field(default_factory=dict)
    """backend_type of each blocker as the server reported it ("client backend", "autovacuum worker", ...)."""

    def waited(self, pid: int) -> float:
        """Seconds the waiter `pid` has waited (0 when unknown)."""
        wait = self.waits.get(pid)
        if wait is None or wait.since is None:
            return 0.0
        return max((self.now - wait.since).total_seconds(), 0.0)

    def is_root(self, pid: int) -> bool:
        """A blocker that waits on nothing itself."""
        return pid in self.downstream and pid not in self.waits

    def victims(self, pids: Iterable[int], exclude_own: bool = True) -> set[int]:
        """Waiters held up by any of `pids`; with `exclude_own`, not counting `pids` themselves (a group's sessions
        queueing behind each other are not blocking others)."""
        own = set(pids)
        out: set[int] = set()
        for pid in own:
            out |= self.downstream.get(pid, frozenset())
        return out - own if exclude_own else out

    def longest(self, waiters: Iterable[int]) -> float:
        """The longest wait among `waiters`, in seconds (0 for none)."""
        return max((self.waited(w) for w in waiters), default=0.0)


BackendStats = tuple[int | None, int | None, int | None]
"""A backend's cumulative PostgreSQL 18 counters as published: WAL bytes (pg_stat_get_backend_wal), bytes read and
bytes written or extended (pg_stat_get_backend_io, summed; None when not asked for)."""


@dataclass(frozen=True, slots=True)
class Reading:
    """What a poll reads beyond the fixed columns (`Config.poll`): the comment keys the tag sources need, and the
    query excerpt unless `audit.query_text` is none."""

    comment_keys: tuple[str, ...] = ()
    query_text: bool = True


@dataclass(frozen=True, slots=True)
class Capacity:
    """The server's connection slots as one poll saw them (exporter/pg/queries/connections.sql).

    `max_connections` slots serve client backends; `superuser_reserved_connections` of them, and on PostgreSQL 16+
    `reserved_connections` more, are kept for superusers (and roles with pg_use_reserved_connections): what is left
    is what ordinary roles may use. `in_use` counts every client backend, pgparent's own and hidden ones included:
    the slots taken against the limit (autovacuum, background workers and walsenders have slots of their own).
    """

    max_connections: int
    superuser_reserved: int
    reserved: int
    """reserved_connections (PostgreSQL 16+; 0 before)."""
    in_use: int

    @property
    def reserved_total(self) -> int:
        """Slots ordinary roles may not use."""
        return self.superuser_reserved + self.reserved

    @property
    def usable(self) -> int:
        """Slots ordinary roles may use."""
        return max(self.max_connections - self.reserved_total, 0)

    @property
    def headroom(self) -> int:
        """Slots left for ordinary roles now; 0 when superusers hold reserved ones beyond it."""
        return max(self.usable - self.in_use, 0)

    def share(self, sessions: int) -> float:
        """`sessions` as a fraction of what ordinary roles may use."""
        return sessions / self.usable if self.usable else 0.0


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What one poll read: client sessions and parallel workers, with the server's clock at that moment, and for the
    sessions that waited on a heavyweight lock, their blockers (read only when some session waited)."""

    now: datetime
    sessions: tuple[Session, ...]
    workers: tuple[Session, ...] = ()
    blockers: tuple[Blocker, ...] = ()
    backend_stats: Mapping[int, BackendStats] | None = None
    """PostgreSQL 18's counters of the backends read at this poll, by pid: those that started or changed state
    recently enough to have published new ones (exporter/core/cost.py: `stats_since`). None: not read."""
    capacity: Capacity | None = None
    """The server's connection slots and how many are taken, server-wide (None: not read)."""
    pgparent_superuser: bool | None = None
    """pgparent's own role is a superuser on this server (None: not known), which `protect.superusers: auto` reads."""


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
    blocked: int = 0
    """Sessions of the set waiting on a lock another session holds (or is queued ahead for)."""
    blocking: int = 0
    """Sessions outside the set waiting on sessions of the set, directly or through a chain."""
    max_blocking: float = 0.0
    """The longest any of those `blocking` sessions has waited, in seconds."""
    max_idle_duration: float = 0.0
    """The longest spell idle outside a transaction (since state_change), LISTEN sessions not counted."""
    idle: int = 0
    """Sessions idle outside a transaction, not counting LISTEN sessions waiting for notifications."""
    listening: int = 0
    """Sessions idle after a LISTEN: waiting for notifications."""

    @property
    def hidden(self) -> int:
        """Sessions whose state (and timestamps) pgparent's role may not see (no pg_read_all_stats)."""
        return self.by_state.get(UNKNOWN_STATE, 0)

    @classmethod
    def of(
        cls, sessions: Iterable[Session], now: datetime, locks: LockGraph | None = None, exclude_own: bool = True
    ) -> Stats:
        """Counts by state, lock waits, the longest query, transaction, idle-in-transaction spell and age, and, when
        the poll saw lock waits, how many sessions the set blocks and for how long."""
        blocked = blocking = 0
        max_blocking = 0.0
        sessions = tuple(sessions)
        if locks is not None:
            pids = [s.pid for s in sessions]
            waits, downstream = locks.waits, locks.downstream
            # Most groups neither wait nor block: two set lookups per session, nothing built.
            blocked = sum(1 for p in pids if p in waits)
            if any(p in downstream for p in pids):
                victims = locks.victims(pids, exclude_own)
                blocking, max_blocking = len(victims), locks.longest(victims)
        by_state = dict.fromkeys(KNOWN_STATES, 0)
        count = active = waiting = listening = 0
        for s in sessions:
            count += 1
            state = s.state if s.state is not None else UNKNOWN_STATE
            by_state[state] = by_state.get(state, 0) + 1
            listening += s.listening
            if state in ACTIVE_STATES:
                active += 1
                if s.wait_event_type == "Lock":
                    waiting += 1
        longest: dict[str, float] = {}
        for moment in MOMENTS:
            oldest = moment.oldest(sessions)
            longest[moment.stat] = max((now - oldest).total_seconds(), 0.0) if oldest is not None else 0.0
        return cls(
            sessions=count,
            by_state=by_state,
            active=active,
            waiting=waiting,
            blocked=blocked,
            blocking=blocking,
            max_blocking=max_blocking,
            idle=by_state["idle"] - listening,
            listening=listening,
            **longest,
        )


@dataclass(frozen=True, slots=True)
class TagSource:
    """Which configured source tagged a session, as its group remembers it (exporter/core/tags.py compiles them)."""

    label: str
    """How `pgparent groups` and the audit name it: `application_name`, `user`, `database`, `comment:KEY`."""
    query_scoped: bool = False
    """The tag describes the session's current query, not the session: signals must re-check query_start."""


class _GroupFields(NamedTuple):
    parent: str
    sessions: tuple[Session, ...]
    now: datetime
    workers: int = 0
    locks: LockGraph | None = None
    """The poll's blocking forest, when some session waited on a lock."""
    sources: tuple[TagSource, ...] = ()
    """The sources that tagged the group's sessions, in config order."""
    tagged_by: Mapping[int, TagSource] = MappingProxyType({})
    """pid -> the source that tagged it, kept only when the group's sessions came from more than one source."""


class Group(_GroupFields):
    """The client sessions that share a parent tag, and the parallel workers serving them.

    A named tuple rather than a frozen dataclass: as immutable, and built at C speed (a frozen dataclass sets each
    field through object.__setattr__, and a poll of 100k sessions builds 25k groups). `stats` is computed on first
    use and kept: a poll of thousands of groups pays only for the groups that a rule measures or /metrics exports.
    """

    @cached_property
    def stats(self) -> Stats:
        return Stats.of(self.sessions, self.now, self.locks)

    @classmethod
    def build(
        cls,
        parent: str,
        sessions: tuple[Session, ...],
        now: datetime,
        workers: int,
        locks: LockGraph | None,
        sources: tuple[TagSource, ...],
        tagged_by: Mapping[int, TagSource],
    ) -> Group:
        """The same record as `Group(...)`, without the keyword handling of a named tuple's __new__."""
        return tuple.__new__(cls, (parent, sessions, now, workers, locks, sources, tagged_by))

    def source_of(self, pid: int) -> TagSource | None:
        """The source that tagged the group's session `pid` (None for a group built without sources)."""
        return self.tagged_by.get(pid) or (self.sources[0] if self.sources else None)


@dataclass(frozen=True, slots=True)
class Grouped:
    """A snapshot split into groups by parent tag, plus the untagged rest."""

    now: datetime
    groups: dict[str, Group]
    untagged: Stats
    untagged_workers: int = 0
    hidden: int = 0
    """Client sessions whose backend_start the monitoring role cannot see (no pg_read_all_stats)."""
    locks: LockGraph | None = None
    """The poll's blocking forest; None when no session waited on a lock."""
    comment_missed: int = 0
    """Sessions whose query text PostgreSQL cut at track_activity_query_size before any configured comment key
    could be read: a comment appended at the end of a long query is lost (see docs/tagging.md)."""
    capacity: Capacity | None = None
    """The server's connection slots, from the snapshot."""
    pgparent_superuser: bool | None = None
    """pgparent's own role is a superuser on this server, from the snapshot (None: not known)."""

    @property
    def prepared_blocking(self) -> int:
        """Sessions waiting, directly or through a chain, on prepared transactions."""
        return len(self.locks.downstream.get(PREPARED_XACT, ())) if self.locks is not None else 0
