"""Pure: what each group costs the server, poll by poll: load (active seconds by wait type), CPU seconds, private
memory, bytes read and written, WAL bytes. No I/O, no clock: the server's clock comes with the snapshot, the
operating system's figures with `Samples` (read by exporter/host/procfs.py), PostgreSQL 18's per-backend counters
with the snapshot (`Snapshot.backend_stats`).

Counters are kept in a `CostState` carried from poll to poll, per series (a group's name, or `__other__` for the
groups `max_groups` folds): each poll adds every session's increment since the previous poll to the series its
group maps to at that poll, so no series ever goes down, whatever sessions exit, retag or fold. A series no poll has
mapped a group to for `retain` seconds is dropped.

- Load: an active session adds the time since the previous poll, or since its active spell began (`state_change`)
  if that is later; a session that went idle since the previous poll, active then, adds the time until it went idle.
  Split by `wait_event_type` (`CPU` when active with none; a type outside PostgreSQL's fixed set is `Other`).
- CPU, memory, I/O: per process (sessions and the parallel workers serving them), from /proc, only for processes
  proven to be the session's (`is_backend`). A counter adds the process's delta since its previous reading; a
  process that started since the previous poll adds all it has, and one first seen older adds nothing yet.
- WAL and backend I/O (PostgreSQL 18+): the same deltas of pg_stat_get_backend_wal / _io, which a backend publishes
  only when it goes idle outside a transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import NamedTuple

from exporter.core.grouping import OTHER, top_groups
from exporter.core.model import ACTIVE_STATES, Grouped, Session, Snapshot

WAIT_TYPES = ("Activity", "BufferPin", "Client", "Extension", "InjectionPoint", "IO", "IPC", "Lock", "LWLock",
              "Timeout")
"""PostgreSQL's fixed set of wait_event_type values (15 to 18; InjectionPoint since 17)."""
CPU = "CPU"
"""The wait label of an active session waiting on nothing: running on a CPU, or queued for one."""
OTHER_WAIT = "Other"
"""The wait label of a wait_event_type outside WAIT_TYPES (a future PostgreSQL's): the label set stays bounded."""
WAIT_LABELS = (CPU, *WAIT_TYPES, OTHER_WAIT)
_WAIT_LABEL: dict[str | None, str] = {None: CPU, **{w: w for w in WAIT_TYPES}}

START_SLACK = 1.0
"""Seconds a backend's process start time (/proc) may differ from its backend_start (the server's clock at its
fork, on the same kernel) and still be that backend."""
REFRESH = 30.0
"""Seconds after which a process that neither ran nor changed state is read from /proc again (its memory figure is
otherwise carried from its last reading: a backend idle the whole time allocates nothing)."""
STATS_SETTLE = 15.0
"""Seconds after a state change within which a backend may still publish its pg_stat_get_backend_* counters: it
publishes when it goes idle outside a transaction, at once or, if it published less than a second before, within
PGSTAT_IDLE_INTERVAL (10 s). A backend whose state has not changed for longer has nothing new to publish."""

SOURCES = ("proc", "proc_io", "backend_stats")
"""Where cost figures come from: /proc/<pid>/{stat,statm,schedstat} (CPU, memory), /proc/<pid>/io (bytes read and
written), PostgreSQL 18's pg_stat_get_backend_wal and _io (WAL; bytes read and written where /proc/<pid>/io is not
readable)."""

REASONS = {
    "off": "turned off in the config (cost.proc or cost.backend_stats: off)",
    "no_procfs": "there is no /proc here (not Linux)",
    "not_visible": "pgparent does not see the server's processes: its own backend is not a process here with that "
                   "pid and start time (the server runs on another host, in another container or PID namespace, as "
                   "a managed service, or /proc is mounted with hidepid)",
    "postmaster_unverified": "the parent of pgparent's own backend is not a process started when the server started "
                             "(pg_postmaster_start_time)",
    "not_readable": "pgparent may not read the server's /proc/<pid>/io (another OS user than the server's, without "
                    "CAP_SYS_PTRACE)",
    "needs_pg18": "pg_stat_get_backend_wal and pg_stat_get_backend_io need PostgreSQL 18",
    "no_privilege": "the monitoring role may not execute pg_stat_get_backend_wal or pg_stat_get_backend_io",
    "not_connected": "not connected to the server yet",
}
"""Why a source is unavailable, by the code `pgparent_cost_source_unavailable{reason}` and the logs carry."""


def wait_label(wait_event_type: str | None) -> str:
    """The bounded `wait_event_type` label of an active session: `CPU` for none, `Other` outside PostgreSQL's set."""
    return _WAIT_LABEL.get(wait_event_type, OTHER_WAIT)


def is_backend(started: float, ppid: int, backend_start: float, postmaster: int, slack: float = START_SLACK
               ) -> bool:
    """Whether a process (`started`: its start time, `ppid`: its parent) is the backend of a session that started at
    `backend_start` (Unix seconds both), of the server whose postmaster is `postmaster`: never another process's
    numbers."""
    return ppid == postmaster and abs(started - backend_start) <= slack


@dataclass(frozen=True, slots=True)
class Sources:
    """Which cost sources a target has, and why not the others (a code of REASONS per unavailable source)."""

    unavailable: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))

    def available(self, source: str) -> bool:
        return source not in self.unavailable

    @classmethod
    def of(cls, **reasons: str | None) -> Sources:
        """`Sources.of(proc=None, proc_io="not_readable", ...)`: None for an available source; a source not given
        is unavailable, not connected."""
        given = {s: reasons.get(s, "not_connected") for s in SOURCES}
        return cls(MappingProxyType({s: r for s, r in given.items() if r is not None}))


NOT_CONNECTED = Sources.of()


class ProcSample(NamedTuple):
    """One backend process as /proc showed it at this poll, proven to be the session that started at
    `backend_start` (exporter/host/procfs.py reads it only then). A named tuple: a poll builds one per process read.
    """

    backend_start: datetime
    cpu_ns: int
    """utime + stime, in nanoseconds."""
    memory: int
    """Its private memory, bytes: RssAnon (resident minus shared pages of /proc/<pid>/statm)."""
    read_bytes: int | None = None
    """/proc/<pid>/io read_bytes and write_bytes: None where it is not readable."""
    written_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class HostMemory:
    """The memory the server has: the host's (MemTotal, MemAvailable) or, where the postmaster runs in a cgroup with a
    memory limit, that cgroup's (memory.max, and memory.max less its usage without inactive file pages)."""

    total: int
    available: int
    source: str = "meminfo"


@dataclass(frozen=True, slots=True)
class Samples:
    """What the operating system said at this poll, beside the snapshot: the processes read (`wanted`) and the host's
    memory, and which cost sources the target has."""

    sources: Sources = NOT_CONNECTED
    procs: Mapping[int, ProcSample] = field(default_factory=lambda: MappingProxyType({}))
    host: HostMemory | None = None


Figures = tuple[int | None, int | None, int | None, int | None, int | None, int | None, int | None]
"""A process's last readings: CPU ns, private memory, bytes read and written (/proc); WAL bytes, bytes read and
written or extended (PostgreSQL 18's counters). None: never read."""
_NONE: Figures = (None, None, None, None, None, None, None)


class _Proc(NamedTuple):
    """What the ledger remembers of one tagged process from its last poll (built with tuple.__new__: a poll builds
    one per active process)."""

    backend_start: datetime
    label: str
    """The series its increments went to."""
    active: bool
    wait: str
    read_at: datetime | None
    """When /proc was last read for it (None: never)."""
    figures: Figures

    @property
    def memory(self) -> int | None:
        return self.figures[1]


def _add(counter: dict[str, float], label: str, before: int | None, after: int | None, fresh: bool,
         unit: float = 1.0) -> None:
    """Add a process's increase of one of its counters since `before`; all of `after` for a `fresh` process (started
    since the previous poll); nothing for a counter that went down (reset)."""
    if after is None:
        return
    if before is not None:
        if after > before:
            counter[label] = counter.get(label, 0.0) + (after - before) * unit
    elif fresh and after > 0:
        counter[label] = counter.get(label, 0.0) + after * unit


Counter = dict[str, float]


@dataclass(frozen=True, slots=True)
class Totals:
    """The counters' values by series label (`load` by (label, wait label))."""

    load: Mapping[tuple[str, str], float] = field(default_factory=dict)
    cpu: Mapping[str, float] = field(default_factory=dict)
    read: Mapping[str, float] = field(default_factory=dict)
    written: Mapping[str, float] = field(default_factory=dict)
    wal: Mapping[str, float] = field(default_factory=dict)

    def load_by_label(self) -> dict[str, float]:
        """Active seconds by series label, summed over wait types: what a group's load is the rate of."""
        out: dict[str, float] = {}
        for (label, _), seconds in self.load.items():
            out[label] = out.get(label, 0.0) + seconds
        return out


@dataclass(frozen=True, slots=True)
class CostState:
    """The ledger carried from one poll to the next: its server clock, what it knows of each tagged process, the
    counters, and when each series last had a group mapped to it."""

    now: datetime | None = None
    procs: Mapping[int, _Proc] = field(default_factory=dict)
    totals: Totals = field(default_factory=Totals)
    seen: Mapping[str, datetime] = field(default_factory=dict)
    active: frozenset[int] = frozenset()
    """The pids of `procs` active at that poll."""


@dataclass(frozen=True, slots=True)
class Cost:
    """What one poll's cost accounting comes to: the counters (`state.totals`), the gauges of this poll, the sources
    they came from, and the state for the next poll."""

    state: CostState
    sources: Sources = NOT_CONNECTED
    memory: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    """Per series label, where /proc was read: the private memory of its processes summed, and the largest one's."""
    host: HostMemory | None = None
    io_source: str | None = None
    """Which source the read and written counters come from: `proc_io`, `backend_stats`, or None (neither)."""

    @property
    def totals(self) -> Totals:
        return self.state.totals


def wanted(snapshot: Snapshot, state: CostState | None, refresh: float = REFRESH) -> Iterator[tuple[int, datetime]]:
    """The processes (pid, backend_start) to read from /proc at this poll: those new since the previous poll, those
    whose state changed since, the tagged ones that are active, and the tagged ones not read for `REFRESH` seconds.
    A process of a session untagged at the previous poll that neither started nor changed since is still untagged (a
    tag changes only with a new statement), and one idle the whole time has used nothing: neither is read."""
    prev = state.now if state is not None else None
    procs = state.procs if state is not None else {}
    stale = snapshot.now - timedelta(seconds=refresh)
    for s in (*snapshot.sessions, *snapshot.workers):
        start = s.backend_start
        if start is None:
            continue  # hidden: nothing to prove it by
        if prev is None or start > prev or (s.state_change is not None and s.state_change > prev):
            yield s.pid, start
            continue
        known = procs.get(s.pid)
        if known is None or known.backend_start != start:
            continue
        if s.state in ACTIVE_STATES or known.read_at is None or known.read_at < stale:
            yield s.pid, start


@dataclass(frozen=True, slots=True)
class StatsReading:
    """What a poll reads of PostgreSQL 18's per-backend counters: those of the backends that started or changed state
    since `since` (None: every backend), WAL only or, with `io`, bytes read and written too."""

    since: datetime | None = None
    io: bool = True


def stats_reading(state: CostState | None, sources: Sources) -> StatsReading | None:
    """What this poll should read of PostgreSQL 18's counters (None: nothing): those a backend may have published
    since the previous poll (it publishes within STATS_SETTLE of a state change), with bytes read and written only
    where /proc/<pid>/io does not give them."""
    if not sources.available("backend_stats"):
        return None
    since = state.now - timedelta(seconds=STATS_SETTLE) if state is not None and state.now is not None else None
    return StatsReading(since, io=not sources.available("proc_io"))


class _Ledger:
    """One poll's accounting over the previous state (used once, by `account`)."""

    def __init__(self, snapshot: Snapshot, samples: Samples, state: CostState) -> None:
        self.now = snapshot.now
        self.prev = state.now if state.now is not None and state.now < snapshot.now else None
        self.old = state.procs
        self.new: dict[int, _Proc] = {}
        self.with_memory = samples.sources.available("proc")
        self.samples = samples.procs if self.with_memory else {}
        self.proc_io = samples.sources.available("proc_io")
        self.stats = snapshot.backend_stats or {}
        self.baselines = self.with_memory or samples.sources.available("backend_stats")
        """Whether idle processes are remembered too (their counters' baselines, their memory): not for load alone."""
        self.was_active = state.active
        self.load: dict[tuple[str, str], float] = {}
        self.cpu: Counter = {}
        self.read: Counter = {}
        self.written: Counter = {}
        self.wal: Counter = {}
        self.memory: dict[str, list[int]] = {}
        self.active: list[int] = []

    def take(self, s: Session, label: str | None) -> int | None:
        """Account one process of the series `label` at this poll (None: untagged now, the tail of a tagged one);
        its memory figure, if any. Run for every active process at every poll: written for speed."""
        pid, start = s.pid, s.backend_start
        if start is None:
            return None
        known = self.old.get(pid)
        if known is not None and known.backend_start != start:
            known = None  # the pid of another, earlier backend
        series = label if label is not None else known.label if known is not None else None
        if series is None:
            return None
        prev, now, changed = self.prev, self.now, s.state_change
        active = s.state in ACTIVE_STATES
        wait = _WAIT_LABEL.get(s.wait_event_type, OTHER_WAIT)
        load = self.load
        if prev is not None and s.backend_type != "parallel worker":  # a worker's time is its leader's load
            if active:
                began = changed or s.query_start
                secs = (now - (began if began is not None and began > prev else prev)).total_seconds()
                if secs > 0:
                    key = (series, wait)
                    load[key] = load.get(key, 0.0) + secs
            elif known is not None and known.active and changed is not None and prev < changed <= now:
                key = (series, known.wait)
                load[key] = load.get(key, 0.0) + (changed - prev).total_seconds()
        figures = known.figures if known is not None else _NONE
        read_at = known.read_at if known is not None else None
        sample = self.samples.get(pid)
        if sample is not None and sample.backend_start != start:
            sample = None
        stats = self.stats.get(pid)
        if sample is not None or stats is not None:
            fresh = known is None and prev is not None and start > prev  # all it has was done since prev
            cpu, memory, read, written, wal, pg_read, pg_written = figures
            if sample is not None:
                _add(self.cpu, series, cpu, sample.cpu_ns, fresh, 1e-9)
                if self.proc_io:
                    _add(self.read, series, read, sample.read_bytes, fresh)
                    _add(self.written, series, written, sample.written_bytes, fresh)
                cpu, memory, read, written, read_at = (sample.cpu_ns, sample.memory, sample.read_bytes,
                                                       sample.written_bytes, now)
            if stats is not None:
                _add(self.wal, series, wal, stats[0], fresh)
                if not self.proc_io:
                    _add(self.read, series, pg_read, stats[1], fresh)
                    _add(self.written, series, pg_written, stats[2], fresh)
                wal, pg_read, pg_written = stats
            figures = (cpu, memory, read, written, wal, pg_read, pg_written)
        if label is None:
            return None  # untagged now: its tail is counted, and the ledger forgets it
        self.new[pid] = tuple.__new__(_Proc, (start, label, active, wait, read_at, figures))
        if active:
            self.active.append(pid)
        return figures[1]

    def tagged(self, label: str, sessions: Iterable[Session]) -> None:
        """Account the processes of one group at this poll, all of them mapped to the series `label`. Most of a busy
        server's sessions sit idle from one poll to the next: theirs is only carried on, in the loop below."""
        old_get, new, prev, take = self.old.get, self.new, self.prev, self.take
        samples, stats = self.samples, self.stats
        if not self.baselines:  # load alone: only the active sessions, and those active at the previous poll
            was_active = self.was_active
            for s in sessions:
                if s.state in ACTIVE_STATES or s.pid in was_active:
                    take(s, label)
            return
        total = largest = 0
        known_memory = False
        for s in sessions:
            pid = s.pid
            known = old_get(pid)
            if (known is not None and s.state not in ACTIVE_STATES and not known.active and known.label == label
                    and known.backend_start == s.backend_start
                    and (prev is None or s.state_change is None or s.state_change <= prev)
                    and pid not in samples and pid not in stats):
                new[pid] = known  # idle the whole interval: nothing new, its last figures stand
                memory = known.memory
            else:
                memory = take(s, label)
            if memory is not None:
                known_memory = True
                total += memory
                if memory > largest:
                    largest = memory
        if known_memory and self.with_memory:
            figures = self.memory.get(label)
            if figures is None:
                self.memory[label] = [total, largest]
            else:
                figures[0] += total
                figures[1] = max(figures[1], largest)


def account(grouped: Grouped, snapshot: Snapshot, samples: Samples | None, state: CostState | None, *,
            max_groups: int, retain: float) -> Cost:
    """The poll's cost: `state`'s counters advanced by this poll's increments, each added to the series its group
    maps to now (a group's name, or `__other__` beyond `max_groups`), and the memory gauges of this poll."""
    samples = samples or Samples()
    state = state or CostState()
    ledger = _Ledger(snapshot, samples, state)
    kept, folded = top_groups(grouped.groups, max_groups)
    for g in kept:
        ledger.tagged(g.parent, g.sessions)
    for g in folded:
        ledger.tagged(OTHER, g.sessions)
    if snapshot.workers:  # parallel workers count with their leader's group
        labels = {s.pid: g.parent for g in kept for s in g.sessions}
        labels |= {s.pid: OTHER for g in folded for s in g.sessions}
        by_label: dict[str, list[Session]] = {}
        for w in snapshot.workers:
            leader = labels.get(w.leader_pid) if w.leader_pid is not None else None
            if leader is not None:
                by_label.setdefault(leader, []).append(w)
        for label, workers in by_label.items():
            ledger.tagged(label, workers)
    tails = state.active - ledger.new.keys()
    if tails:  # active at the previous poll and untagged now (a comment tag's query ended): the time until then
        for s in (*snapshot.sessions, *snapshot.workers):
            if s.pid in tails:
                ledger.take(s, None)
    mapped = {*(g.parent for g in kept), *((OTHER,) if folded else ())}
    totals = _advanced(state.totals, ledger, mapped, samples.sources)
    seen = {**state.seen, **dict.fromkeys(mapped, snapshot.now)}
    for label, _ in ledger.load:  # a tail's series, mapped at the previous poll, is kept as long as the others
        seen.setdefault(label, snapshot.now)
    totals, seen = _retained(totals, seen, snapshot.now, retain, max_groups)
    memory = {label: (f[0], f[1]) for label, f in ledger.memory.items()}
    io = "proc_io" if samples.sources.available("proc_io") else (
        "backend_stats" if samples.sources.available("backend_stats") else None)
    host = samples.host if ledger.with_memory else None
    return Cost(CostState(snapshot.now, ledger.new, totals, seen, frozenset(ledger.active)), samples.sources, memory,
                host, io)


def _advanced(totals: Totals, ledger: _Ledger, mapped: Iterable[str], sources: Sources) -> Totals:
    """The counters plus this poll's increments; every series a group maps to now starts at 0 where its source is
    available, so that rate() sees its first increment."""
    def plus(old: Mapping[str, float], inc: Counter, on: bool) -> dict[str, float]:
        out = dict(old)
        if on:
            for label in mapped:
                out.setdefault(label, 0.0)
        for label, value in inc.items():
            out[label] = out.get(label, 0.0) + value
        return out

    load = dict(totals.load)
    for key, value in ledger.load.items():
        load[key] = load.get(key, 0.0) + value
    proc = sources.available("proc")
    io = sources.available("proc_io") or sources.available("backend_stats")
    return Totals(load, plus(totals.cpu, ledger.cpu, proc), plus(totals.read, ledger.read, io),
                  plus(totals.written, ledger.written, io), plus(totals.wal, ledger.wal,
                                                                 sources.available("backend_stats")))


def _retained(totals: Totals, seen: dict[str, datetime], now: datetime, retain: float, max_groups: int
              ) -> tuple[Totals, dict[str, datetime]]:
    """Drop the series no group has mapped to for `retain` seconds, and beyond `max_groups` such absent series the
    longest absent first: the series of a target stay below 2 x max_groups + 1 parents however tags churn."""
    cutoff = now - timedelta(seconds=retain)
    absent = sorted((when, label) for label, when in seen.items() if when < now)
    gone = {label for when, label in absent if when < cutoff}
    live_absent = [label for when, label in absent if label not in gone]
    if len(live_absent) > max_groups:
        gone.update(live_absent[: len(live_absent) - max_groups])
    if not gone:
        return totals, seen

    def keep(counter: Mapping[str, float]) -> dict[str, float]:
        return {k: v for k, v in counter.items() if k not in gone}

    return (
        Totals({k: v for k, v in totals.load.items() if k[0] not in gone}, keep(totals.cpu), keep(totals.read),
               keep(totals.written), keep(totals.wal)),
        {k: v for k, v in seen.items() if k not in gone},
    )
