"""Between polls, the sessions under a memory condition: their private memory read every `sample_interval` (one
pread of /proc/<pid>/statm each, exporter/host/procfs.py), and a crossing acted on at once, with the guards of any
signal (exporter/core/guards.py decides; the enforcer sends).

Memory can grow by gigabytes in seconds, faster than a poll. What the last poll saw is all the sampler knows of a
session besides its memory: its pid, backend_start and tag guard every signal. A cancel must land on the query that
holds the memory, which the poll may not have seen (it began after the poll), so the sampler reads the session's
running query first (exporter/pg/queries/running_query.sql) and guards the cancel by that very query_start; it then
reads the memory once more, and leaves the session alone if the memory has gone (the query that held it ended: a
query frees its memory as it ends, and its successor is the next sample's business). A session tagged by a query
comment is cancelled only in the query the poll saw carry the comment.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any

from exporter.core.cost import HostMemory
from exporter.core.guards import NO_WATCH, MemoryWatch, crossings, session_memory
from exporter.core.policy import Decision, Signal
from exporter.core.settings import Config
from exporter.face.counters import Counters
from exporter.host.procfs import MemorySampler
from exporter.pg.database import Database
from exporter.run.enforcer import Enforcer

STILL_HELD = 0.5
"""The share of a crossing's memory a session must still hold when its running query has been read: less, and the
query that held it has ended (a cancelled hash aggregate's RssAnon fell from 454 to 26 MiB)."""


class Sampler:
    """One target's memory sampling between polls: armed after each poll with what to watch, due every
    `sample_interval` while something is watched."""

    def __init__(self, counters: Counters, target: str, log: Any = None) -> None:
        self.counters = counters
        self.target = target
        self.log = log
        self.watch: MemoryWatch = NO_WATCH
        self._reader: MemorySampler | None = None
        self._host: Callable[[], HostMemory | None] = lambda: None
        self._interval = 0.1
        self.next_at: float | None = None
        self._done: set[tuple[str, int, datetime | None]] = set()
        """(rule, pid, query_start) signalled since they crossed: one signal per query (a cancelled query frees its
        memory only as it ends), once per session for a terminate."""

    def arm(self, watch: MemoryWatch, postmaster: int | None, host: Callable[[], HostMemory | None],
            interval: float, now: float) -> None:
        """Watch what the last poll found under a memory condition (nothing where /proc shows no server process)."""
        if not watch or postmaster is None:
            self.disarm()
            return
        if self._reader is None or self._reader.postmaster != postmaster:
            self.close()
            self._reader = MemorySampler(postmaster)
        self._reader.watch(watch.processes)
        self.watch, self._host, self._interval = watch, host, interval
        pids = {pid for pid, _ in watch.processes}
        self._done = {d for d in self._done if d[1] in pids}
        if self.next_at is None:
            self.next_at = now + interval

    def signalled(self, signals: list[Signal]) -> None:
        """Signals sent otherwise (by the poll, a deadline): the sampler does not send them again for the same query
        (a cancelled query frees its memory only as it unwinds)."""
        for s in signals:
            self._done.add((s.rule, s.session.pid, s.guard.query_start if s.action == "cancel" else None))

    def disarm(self) -> None:
        self.watch = NO_WATCH
        self.next_at = None
        if self._reader is not None:
            self._reader.watch(())

    def sample(self, now: float, server_now: datetime, db: Database, enforcer: Enforcer, config: Config
               ) -> list[Signal]:
        """Read the watched processes' memory, and signal what crossed a limit; the signals sent (or, dry run,
        probed true)."""
        reader = self._reader
        self.next_at = now + self._interval
        if reader is None or not self.watch:
            return []
        self.counters.memory_samples.labels(self.target).inc()
        memory = session_memory(self.watch, reader.read())
        host = self._host() if self.watch.gated else None
        found = crossings(self.watch, memory, host, server_now, config.protect)
        if not found:
            return []
        if host is None and (host := self._host()) is not None:  # read only to act: the audit carries it
            found = tuple(replace(s, host_available=host.available) for s in found)
        signals = [s for s in (self._confirmed(c, db, reader, memory) for c in found) if s is not None]
        if not signals:
            return []
        enforcer.enforce(Decision.only(tuple(signals), config.limits.max_terminations_per_cycle), server_now)
        for s in signals:
            self._done.add((s.rule, s.session.pid, s.guard.query_start if s.action == "cancel" else None))
        return list(enforcer.landed)

    def _confirmed(self, signal: Signal, db: Database, reader: MemorySampler, memory: dict[int, int]
                   ) -> Signal | None:
        """The signal to send for a crossing, its cancel guarded by the query running now; None when there is
        nothing to send (no query runs, the memory has gone, or this very query was signalled already)."""
        s = signal.session
        if signal.action != "cancel":
            return None if (signal.rule, s.pid, None) in self._done else signal
        if signal.tag_source is not None and signal.tag_source.startswith("comment:"):
            query_start = signal.guard.query_start  # only the query that carried the comment
        else:
            query_start = db.running_query(s)
        if query_start is None or (signal.rule, s.pid, query_start) in self._done:
            return None
        again = session_memory(self.watch, reader.read()).get(s.pid)
        if again is None or again < STILL_HELD * memory.get(s.pid, 0):
            return None
        session = replace(s, state="active", query_start=query_start)
        return replace(signal, session=session, guard=replace(signal.guard, query_start=query_start))

    @property
    def watched(self) -> int:
        return self._reader.watched if self._reader is not None else 0

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self.watch = NO_WATCH
        self.next_at = None
