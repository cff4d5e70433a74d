"""Pure: what `pgparent top` shows of an assessment: one row per group (and one for the untagged sessions), sorted
by any column and filtered by a glob on the tag; a group's sessions; the header's figures; what a cancel or a
terminate of a group or a session would signal, and what it leaves out and why. No I/O, no clock: the screen
(exporter/cli/top.py) formats these records, and the tests read them without a terminal."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from fnmatch import fnmatchcase

from exporter.core.cost import Cost
from exporter.core.model import ACTIVE_STATES, Capacity, Grouped, Session, SignalAction, Snapshot
from exporter.core.policy import Decision, manual
from exporter.core.rules import Exclusion, Protection, excluded
from exporter.core.settings import Protect

UNTAGGED = "untagged"
"""The label of the row of sessions no source tagged (what `pgparent locks` calls them too)."""


@dataclass(frozen=True, slots=True)
class Figures:
    """A group's cost between two refreshes: load (average active sessions), CPU (cores), private memory (bytes at
    the last poll). None: the server gives no such figure (or only one poll was made yet)."""

    load: float | None = None
    cpu: float | None = None
    memory: int | None = None


NO_FIGURES = Figures()


def rates(previous: Cost | None, current: Cost, seconds: float | None) -> dict[str, Figures]:
    """Each group's cost over the `seconds` between the poll `previous` was accounted at and `current`'s (the same
    ledger carried on): load and CPU from the counters' growth, memory from the last poll."""
    proc = current.sources.available("proc")
    out: dict[str, Figures] = {}
    load_now = current.totals.load_by_label()
    load_before = previous.totals.load_by_label() if previous is not None else {}
    labels = set(load_now) | set(current.memory)
    for label in labels:
        load = cpu = None
        if previous is not None and seconds:
            load = max(load_now.get(label, 0.0) - load_before.get(label, 0.0), 0.0) / seconds
            if proc:
                grown = current.totals.cpu.get(label, 0.0) - previous.totals.cpu.get(label, 0.0)
                cpu = max(grown, 0.0) / seconds
        memory = current.memory.get(label) if proc else None
        out[label] = Figures(load, cpu, memory[0] if memory else None)
    return out


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the main view: a group, or the untagged sessions (`parent` None)."""

    parent: str | None
    sessions: int
    active: int
    idle: int
    idle_in_transaction: int
    waiting: int
    blocking: int
    blocked: int
    longest_query: float
    longest_transaction: float
    load: float | None
    cpu: float | None
    memory: int | None
    source: str

    @property
    def label(self) -> str:
        return self.parent if self.parent is not None else UNTAGGED


@dataclass(frozen=True, slots=True)
class Column:
    """A column of the main view: its key (what `sort` names), its heading, and the value it sorts by."""

    key: str
    title: str
    value: Callable[[Row], float | str]
    cost: bool = False
    """Shown only where the cost figures exist."""


def _num(get: Callable[[Row], float | int | None]) -> Callable[[Row], float]:
    return lambda row: float(v) if (v := get(row)) is not None else -1.0


COLUMNS: tuple[Column, ...] = (
    Column("tag", "TAG", lambda r: r.label.lower()),
    Column("sessions", "SESS", _num(lambda r: r.sessions)),
    Column("active", "ACT", _num(lambda r: r.active)),
    Column("idle", "IDLE", _num(lambda r: r.idle)),
    Column("idle_tx", "IDLTX", _num(lambda r: r.idle_in_transaction)),
    Column("waiting", "WAIT", _num(lambda r: r.waiting)),
    Column("blocking", "BLKG", _num(lambda r: r.blocking)),
    Column("blocked", "BLKD", _num(lambda r: r.blocked)),
    Column("query", "QUERY", _num(lambda r: r.longest_query)),
    Column("transaction", "XACT", _num(lambda r: r.longest_transaction)),
    Column("load", "LOAD", _num(lambda r: r.load), cost=True),
    Column("cpu", "CPU", _num(lambda r: r.cpu), cost=True),
    Column("memory", "MEM", _num(lambda r: r.memory), cost=True),
    Column("source", "SOURCE", lambda r: r.source),
)
BY_KEY = {c.key: c for c in COLUMNS}
DEFAULT_SORT = "sessions"


def rows(grouped: Grouped, figures: Mapping[str, Figures] | None = None) -> list[Row]:
    """Every group as a row, then the untagged sessions' row (when there are any), unsorted."""
    figures = figures or {}
    out = []
    for g in grouped.groups.values():
        st = g.stats
        f = figures.get(g.parent, NO_FIGURES)
        out.append(Row(
            g.parent, st.sessions, st.active, st.by_state.get("idle", 0), _idle_in_transaction(st.by_state),
            st.waiting, st.blocking, st.blocked, st.max_query_duration, st.max_transaction_duration,
            f.load, f.cpu, f.memory, "+".join(src.label for src in g.sources) or "-",
        ))
    un = grouped.untagged
    if un.sessions:
        out.append(Row(
            None, un.sessions, un.active, un.by_state.get("idle", 0), _idle_in_transaction(un.by_state), un.waiting,
            un.blocking, un.blocked, un.max_query_duration, un.max_transaction_duration, None, None, None, "-",
        ))
    return out


def _idle_in_transaction(by_state: Mapping[str, int]) -> int:
    return by_state.get("idle in transaction", 0) + by_state.get("idle in transaction (aborted)", 0)


def matches(pattern: str, label: str) -> bool:
    """Whether a tag matches the filter: a shell glob, case-insensitive; a pattern without a wildcard matches the
    tags that contain it (typing `etl` finds `nightly-etl:7`)."""
    pattern = pattern.lower()
    if not any(c in pattern for c in "*?["):
        pattern = f"*{pattern}*"
    return fnmatchcase(label.lower(), pattern)


def arrange(all_rows: list[Row], sort: str = DEFAULT_SORT, descending: bool = True, pattern: str = "") -> list[Row]:
    """The rows to show: those whose tag matches `pattern` (all when empty), sorted by the column `sort` (ties by
    tag), the untagged row always last."""
    column = BY_KEY[sort]
    shown = [r for r in all_rows if not pattern or matches(pattern, r.label)]
    groups = [r for r in shown if r.parent is not None]
    groups.sort(key=lambda r: r.label)
    groups.sort(key=column.value, reverse=descending)
    return groups + [r for r in shown if r.parent is None]


@dataclass(frozen=True, slots=True)
class SessionRow:
    """One session of an opened group."""

    pid: int
    user: str | None
    database: str | None
    state: str | None
    wait: str
    """Its wait event type, and, waiting on a lock, the pids ahead of it."""
    query_seconds: float | None
    transaction_seconds: float | None
    connected_seconds: float | None
    query: str
    """The whole query text the poll read (the excerpt is the screen's business)."""


def _since(grouped: Grouped, moment: datetime | None) -> float | None:
    if moment is None:
        return None
    return max((grouped.now - moment).total_seconds(), 0.0)


def members(grouped: Grouped, snapshot: Snapshot, parent: str | None) -> tuple[Session, ...]:
    """The client sessions of the group `parent`, or with None the untagged ones."""
    if parent is not None:
        grp = grouped.groups.get(parent)
        return grp.sessions if grp is not None else ()
    tagged = {s.pid for g in grouped.groups.values() for s in g.sessions}
    return tuple(s for s in snapshot.sessions if s.pid not in tagged)


def session_rows(grouped: Grouped, snapshot: Snapshot, parent: str | None) -> list[SessionRow]:
    """The sessions of the group `parent` (None: the untagged ones), longest transaction first, then by pid."""
    locks = grouped.locks
    out = []
    for s in members(grouped, snapshot, parent):
        wait = s.wait_event_type or ""
        if locks is not None and s.pid in locks.waits:
            wait = f"{wait or 'Lock'} on {','.join(map(str, locks.waits[s.pid].blockers))}"
        query_start = s.query_start if s.state in ACTIVE_STATES else None
        out.append(SessionRow(
            s.pid, s.usename, s.datname, s.state, wait, _since(grouped, query_start), _since(grouped, s.xact_start),
            _since(grouped, s.backend_start), s.query or "",
        ))
    out.sort(key=lambda r: (-(r.transaction_seconds or -1.0), r.pid))
    return out


@dataclass(frozen=True, slots=True)
class Header:
    """The server line of the view."""

    version: str
    in_recovery: bool
    capacity: Capacity | None
    """The server's connection slots at this poll (None where the poll could not count them)."""


@dataclass(frozen=True, slots=True)
class Plan:
    """What a `c` or `t` would signal, shown for confirmation before anything is sent: the decision to carry out
    (exactly the pids listed) and the sessions left out, each with why."""

    action: SignalAction
    label: str
    """The group's tag, or `TAG pid N` for one session."""
    decision: Decision
    left_out: tuple[tuple[int, Exclusion | str], ...]

    @property
    def pids(self) -> tuple[int, ...]:
        return tuple(s.session.pid for s in self.decision.signals)


def plan(
    grouped: Grouped,
    snapshot: Snapshot,
    parent: str | None,
    action: SignalAction,
    protect: Protect,
    pid: int | None = None,
) -> Plan:
    """What `action` on the group `parent` (or, with `pid`, that one of its sessions) would signal, under the guards
    of `pgparent terminate` (`policy.manual`). Untagged sessions are never signalled: they are listed as left out."""
    label = (parent or UNTAGGED) + (f" pid {pid}" if pid is not None else "")
    chosen = members(grouped, snapshot, parent)
    if pid is not None:
        chosen = tuple(s for s in chosen if s.pid == pid)
    if parent is None:
        return Plan(action, label, Decision.only(()), tuple((s.pid, "untagged") for s in chosen))
    decision = manual(grouped, parent, action, protect, pids=None if pid is None else frozenset({pid}))
    signalled = {s.session.pid for s in decision.signals}
    protection = Protection.of(protect, grouped.pgparent_superuser)
    left = tuple(
        (s.pid, excluded(s, action, protection) or "unguarded") for s in chosen if s.pid not in signalled
    )
    return Plan(action, label, decision, left)
