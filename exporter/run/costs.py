"""One target's cost sources and ledger: at each new connection, whether this host shows the server's processes
(exporter/host/procfs.py) and whether the server has PostgreSQL 18's per-backend counters; at each poll, what to read
of them (the processes `cost.wanted` names, the host's memory), and the ledger carried from poll to poll.

The ledger (`CostState`, exporter/core/cost.py) belongs to the target, not to a connection: a reconnect, or a server
restart, keeps every counter where it was, and new backends start from their own first reading.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

from exporter.core.assess import Assessment
from exporter.core.cost import REASONS, SOURCES, CostState, HostMemory, Samples, Sources, stats_reading, wanted
from exporter.core.model import Snapshot
from exporter.core.settings import Config, CostSettings
from exporter.host.procfs import Found, ServerProcesses, find_server
from exporter.pg.database import Capabilities, Database


def backend_stats_reason(caps: Capabilities, settings: CostSettings) -> str | None:
    """Why the server gives no per-backend counters (None: it does)."""
    if settings.backend_stats == "off":
        return "off"
    if caps.backend_stats is None or caps.server_version_num < 180000:
        return "needs_pg18"
    return None if caps.backend_stats else "no_privilege"


def find(caps: Capabilities, settings: CostSettings) -> Found:
    """What cost sources this host and server give the connection `caps` describes."""
    return find_server(caps.server_pid, caps.server_pid_started, caps.server_started, enabled=settings.proc == "auto",
                       backend_stats=backend_stats_reason(caps, settings))


class Costs:
    """A target's cost sources (found again at each new connection or settings change) and its ledger."""

    def __init__(self, log: Any = None) -> None:
        self.log = log
        self.state = CostState()
        self.sources = Sources.of()
        self._found_for: tuple[int, CostSettings] | None = None
        self._procs: ServerProcesses | None = None

    def connected(self, caps: Capabilities, generation: int, settings: CostSettings) -> None:
        """Find the sources again when the connection (`generation`) or the settings changed; log them when they
        differ from the last ones found."""
        if self._found_for == (generation, settings):
            return
        self._found_for = (generation, settings)
        found = find(caps, settings)
        self.close()
        self._procs = ServerProcesses(found) if found.proc else None
        if found.sources != self.sources and self.log is not None:
            said = {s: "available" if r is None else f"{r}: {REASONS[r]}"
                    for s in SOURCES for r in (found.sources.unavailable.get(s),)}
            self.log.info("cost_sources", **said, postmaster=found.postmaster,
                          memory_cgroups=[str(p) for p in found.cgroups])
        self.sources = found.sources

    def read(self, db: Database, caps: Capabilities, config: Config, *, every: bool = False
             ) -> tuple[Snapshot, float, Samples]:
        """One poll's reading: the snapshot (with PostgreSQL 18's counters where this poll wants them), this process's
        monotonic clock right after it (the moment of the server's now(), about), then what the operating system
        says. `every` reads every visible backend in full, as a poll after all of them ran would (the benchmark's worst
        case)."""
        self.connected(caps, db.generation, config.cost)
        stats = stats_reading(self.state, self.sources)
        if every and stats is not None:
            stats = replace(stats, since=None)
        snapshot = db.snapshot(config.poll, stats)
        read_at = time.monotonic()
        return snapshot, read_at, self.sample(snapshot, every=every)

    def took(self, assessed: Assessment) -> None:
        """Carry the ledger of an assessment made with this target's `state` on to the next poll."""
        if assessed.cost is not None:
            self.state = assessed.cost.state

    def sample(self, snapshot: Snapshot, *, every: bool = False) -> Samples:
        """What the operating system says at this poll: the wanted processes (`every`: all, in full) and the host's
        memory."""
        procs = self._procs
        if procs is None:
            return Samples(self.sources)
        pids = wanted(snapshot, None if every else self.state)
        return Samples(self.sources, procs.read(pids, full=every), procs.host_memory())

    @property
    def postmaster(self) -> int | None:
        """The server's postmaster pid where this host shows the server's processes, else None."""
        return self._procs.postmaster if self._procs is not None else None

    def host_memory(self) -> HostMemory | None:
        """The server's memory now (the host's, or its cgroup's), where this host shows its processes."""
        return self._procs.host_memory() if self._procs is not None else None

    def close(self) -> None:
        """Let go of the server's processes (their held /proc files)."""
        if self._procs is not None:
            self._procs.close()
            self._procs = None
