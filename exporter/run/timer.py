"""The deadlines of one target between its polls: the server-clock moments the last poll foresaw, on this process's
monotonic clock, and the server's clock read from it."""

from __future__ import annotations

import time
from datetime import datetime, timedelta

from exporter.core.deadlines import Deadline


class DeadlineTimer:
    """The last poll's deadlines, earliest first, each due at a moment of this process's monotonic clock."""

    def __init__(self) -> None:
        self._due: list[tuple[float, Deadline]] = []
        self._glanced: list[tuple[float, Deadline]] = []
        """The deadlines of the last glance between polls (exporter/core/guards.py: `glance`), replaced at each."""
        self._clock: tuple[datetime, float] | None = None
        """The last poll's server now() and this process's monotonic clock when it was read."""

    def set(self, deadlines: tuple[Deadline, ...], server_now: datetime, read_at: float) -> None:
        """Replace the deadlines with the last poll's: its server clock `server_now` was read at `read_at`."""
        self._clock = (server_now, read_at)
        self._due = [(read_at + (d.at - server_now).total_seconds(), d) for d in deadlines]
        self._glanced = []

    def glanced(self, deadlines: list[Deadline], server_now: datetime, read_at: float) -> None:
        """Replace the last glance's deadlines with these, read at `server_now` (this process's `read_at`)."""
        glanced = [(read_at + (d.at - server_now).total_seconds(), d) for d in deadlines]
        kept = {id(d) for _, d in self._glanced}
        self._due = sorted([e for e in self._due if id(e[1]) not in kept] + glanced, key=lambda e: e[0])
        self._glanced = glanced

    def clear(self) -> None:
        self._due = []
        self._glanced = []

    @property
    def next_at(self) -> float | None:
        """When the earliest deadline is due (monotonic), None when there is none."""
        return self._due[0][0] if self._due else None

    def take_due(self, now: float) -> list[Deadline]:
        """The deadlines due by `now`, taken off the timer."""
        due = [d for at, d in self._due if at <= now]
        self._due = [(at, d) for at, d in self._due if at > now]
        return due

    def drop(self, rule: str, parent: str) -> None:
        """Forget the later deadlines of one (rule, group): one firing per pair, the next poll sees the rest."""
        self._due = [(at, d) for at, d in self._due if (d.rule, d.parent) != (rule, parent)]

    def server_now(self) -> datetime:
        """The server's clock now, from the last poll's reading and this process's monotonic clock since."""
        assert self._clock is not None, "deadlines come from a poll, which reads the server's clock"
        server_now, read_at = self._clock
        return server_now + timedelta(seconds=time.monotonic() - read_at)
