"""The polls of `pgparent top`: one target's connection, its cost sources and ledger, and one poll per refresh through
the pipeline (`core.assess`), with each group's cost since the previous refresh.

A refresh that cannot reach the server raises `DatabaseUnavailable` and leaves the connection closed: the next one
connects again, so the view reconnects at its own pace (one attempt per refresh) and the ledger carries on across a
reconnect or a server restart.
"""

from __future__ import annotations

from dataclasses import dataclass

from exporter.core.assess import Assessment, assess
from exporter.core.settings import MAX_COUNT, Config
from exporter.core.top import Figures, Header, rates
from exporter.pg.database import Database
from exporter.run.costs import Costs


@dataclass(frozen=True, slots=True)
class Frame:
    """What one refresh shows: the poll's assessment, the server line, each group's cost since the last refresh."""

    assessed: Assessment
    header: Header
    figures: dict[str, Figures]
    seconds: float | None
    """Server time since the previous refresh's poll (None at the first)."""


class Live:
    """One target polled for the live view; `db` is also the connection a confirmed signal goes out on."""

    def __init__(self, db: Database, config: Config, target: str) -> None:
        self.db = db
        self.config = config
        self.target = target
        self.costs = Costs()
        self._last: Assessment | None = None

    def poll(self) -> Frame:
        """Poll once and assess it; DatabaseUnavailable when the server cannot be reached (the next call reconnects)."""
        caps = self.db.connect()
        snapshot, _, samples = self.costs.read(self.db, caps, self.config)
        assessed = assess(snapshot, self.config, target=self.target, samples=samples, cost_state=self.costs.state,
                          max_groups=MAX_COUNT)
        last, self._last = self._last, assessed
        self.costs.took(assessed)
        seconds = (snapshot.now - last.snapshot.now).total_seconds() if last is not None else None
        assert assessed.cost is not None
        figures = rates(last.cost if last is not None else None, assessed.cost, seconds)
        return Frame(assessed, Header(caps.server_version, caps.in_recovery, snapshot.capacity), figures, seconds)

    def close(self) -> None:
        self.costs.close()
        self.db.close()
