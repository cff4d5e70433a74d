"""Pure: the figures the guard conditions read (exporter/core/conditions.py): each session's private memory, each
group's CPU and load over a window, and the server's memory, from what the cost accounting carried to this poll
(exporter/core/cost.py). No I/O, no clock: the server's clock comes with the cost state.

A session's memory is its backend's RssAnon plus that of the parallel workers serving it (a parallel hash join's
memory is in its workers): what ending the session frees. CPU and load over a window are the cost counters' increase
over it divided by its length, read against the last poll at least a window old; until the history spans a window
they are not measured (None), so a guard never fires on a rate it has not seen for its whole window.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType

from exporter.core.cost import Cost, HostMemory
from exporter.core.model import Session, Snapshot

EMPTY: Mapping[str, float] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Point:
    """The cost counters of one poll, by series label: CPU seconds and active seconds (all wait types summed)."""

    now: datetime
    cpu: Mapping[str, float] = field(default_factory=dict)
    load: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Usage:
    """What the guard conditions read at one poll."""

    proc: bool = False
    """Whether memory and CPU figures exist for this target (the cost source `proc`): where they do not, a memory or
    CPU condition is inactive, never zero."""
    memory: Mapping[int, int] = field(default_factory=dict)
    """Client backend pid -> its private memory and its parallel workers', bytes (only those /proc was read for)."""
    host: HostMemory | None = None
    history: tuple[Point, ...] = ()
    """The polls' counters, oldest first; the last is this poll's."""

    def rate(self, which: str, label: str, window: float) -> float | None:
        """The increase per second of counter `which` (`cpu` or `load`) of series `label` over the last `window`
        seconds (CPU cores, or average active sessions); None until the history spans the window, or for a series
        the last poll did not count (a group folded into `__other__`)."""
        if not self.history or (which == "cpu" and not self.proc):
            return None
        last = self.history[-1]
        cutoff = last.now - timedelta(seconds=window)
        base = next((p for p in reversed(self.history) if p.now <= cutoff), None)
        now_counters: Mapping[str, float] = getattr(last, which)
        if base is None or label not in now_counters:
            return None
        seconds = (last.now - base.now).total_seconds()
        if seconds <= 0:
            return None
        then: Mapping[str, float] = getattr(base, which)
        return max(now_counters[label] - then.get(label, 0.0), 0.0) / seconds

    def of(self, session: Session) -> int | None:
        """The session's private memory with its workers', None where /proc gave no figure for it."""
        return self.memory.get(session.pid)


NO_USAGE = Usage()


def usage_of(cost: Cost | None, snapshot: Snapshot, previous: Usage | None, keep: float | None,
             memory_wanted: bool = True) -> Usage:
    """This poll's usage: memory by session from the cost ledger (unless not `memory_wanted`), and the counters'
    history kept `keep` seconds back (the longest window a rule has; None: no rule reads a window) plus the poll at
    its edge. A config without guard rules pays for neither."""
    if cost is None:
        return NO_USAGE
    proc = cost.sources.available("proc")
    memory: dict[int, int] = {}
    if proc and memory_wanted:
        procs = cost.state.procs
        for s in snapshot.sessions:
            known = procs.get(s.pid)
            if known is not None and known.backend_start == s.backend_start and known.memory is not None:
                memory[s.pid] = known.memory
        for w in snapshot.workers:
            known = procs.get(w.pid)
            if (w.leader_pid is not None and w.leader_pid in memory and known is not None
                    and known.backend_start == w.backend_start and known.memory is not None):
                memory[w.leader_pid] += known.memory
    if keep is None:
        return Usage(proc, MappingProxyType(memory), cost.host)
    totals = cost.totals
    point = Point(snapshot.now, MappingProxyType(dict(totals.cpu)) if proc else EMPTY,
                  MappingProxyType(totals.load_by_label()))
    history = [p for p in (previous.history if previous is not None else ()) if p.now < snapshot.now]
    cutoff = snapshot.now - timedelta(seconds=keep)
    edge = max((i for i, p in enumerate(history) if p.now <= cutoff), default=0)
    return Usage(proc, MappingProxyType(memory), cost.host, (*history[edge:], point))
