"""Prometheus metrics: a custom collector over the latest published poll, and the daemon's counters.

A scrape never touches PostgreSQL: `collect()` reads the last `Published` object and yields fresh metric families,
so groups that vanished from the last poll vanish from /metrics.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client import Counter, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from exporter import __version__
from exporter.grouping import OTHER, top_groups
from exporter.logs import get_logger
from exporter.model import KNOWN_STATES, Group, Grouped

log = get_logger(__name__)

disable_created_metrics()  # type: ignore[no-untyped-call]  # no `_created` series: counters here start with the process, which `up` already says


class Counters:
    """The daemon's counters: prometheus_client metrics on a private registry, written by the loop, read by scrapes.

    Every counter incremented anywhere is one of these, so every one is exported.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=False)
        r = self.registry
        self.polls = Counter("pgparent_polls", "Poll cycles completed, successful or not.", registry=r)
        self.poll_errors = Counter("pgparent_poll_errors", "Polls that failed.", registry=r)
        self.signalled = Counter(
            "pgparent_signalled_sessions",
            "Sessions signalled successfully, by rule and action (terminate or cancel).",
            ["rule", "action"],
            registry=r,
        )
        self.signal_failures = Counter(
            "pgparent_signal_failures", "Signals not delivered, by rule and reason.", ["rule", "reason"], registry=r
        )
        self.deferred = Counter(
            "pgparent_signals_deferred", "Signals postponed by max_terminations_per_cycle.", ["rule"], registry=r
        )
        self.scrape_errors = Counter(
            "pgparent_scrape_errors", "Scrapes whose metrics could not be built (they reported pgparent_up 0).",
            registry=r,
        )


@dataclass(frozen=True, slots=True)
class Published:
    """What the loop publishes after each poll, replaced whole (readers never see half an update)."""

    up: bool = False
    last_success: float = 0.0
    """Unix time of the last successful poll, 0 before the first."""
    poll_duration: float = 0.0
    interval: float = 0.0
    grouped: Grouped | None = None
    violating: dict[str, int] = field(default_factory=dict)
    pending: dict[str, int] = field(default_factory=dict)
    max_groups: int = 500
    dry_run: bool = False
    reload_ok: bool = True
    reload_time: float = 0.0
    enforcing: bool = False
    """False while enforcement is off for a reason the logs give (not the leader, a standby server)."""
    leader: bool = False
    """True while this replica holds the leader lock."""


@dataclass(frozen=True, slots=True)
class _GroupSeries:
    """One per-group gauge: its name and help, its value for a group, and how folded groups combine into __other__
    (counts add up; durations keep the worst)."""

    name: str
    help: str
    value: Callable[[Group], float]
    fold: Callable[[list[float]], float]


def _worst(values: list[float]) -> float:
    return max(values, default=0.0)


def _total(values: list[float]) -> float:
    return float(sum(values))


_GROUP_SERIES = (
    _GroupSeries(
        "pgparent_group_parallel_workers", "Parallel workers serving a group's sessions.", lambda g: g.workers, _total
    ),
    _GroupSeries(
        "pgparent_group_waiting_sessions",
        "Active sessions of a group waiting on a lock.",
        lambda g: g.stats.waiting,
        _total,
    ),
    _GroupSeries(
        "pgparent_group_blocked_sessions",
        "Sessions of a group waiting on a lock held by another session.",
        lambda g: g.stats.blocked,
        _total,
    ),
    _GroupSeries(
        "pgparent_group_blocking_sessions",
        "Sessions of other groups, untagged ones included, waiting on a group's sessions, directly or through a "
        "chain.",
        lambda g: g.stats.blocking,
        _total,  # a waiter held up by two folded groups counts twice: an upper bound
    ),
    _GroupSeries(
        "pgparent_group_max_blocking_seconds",
        "The longest any session has been waiting on a group's sessions (through a chain included).",
        lambda g: g.stats.max_blocking,
        _worst,
    ),
    _GroupSeries(
        "pgparent_group_max_query_duration_seconds",
        "Longest running query of a group.",
        lambda g: g.stats.max_query_duration,
        _worst,
    ),
    _GroupSeries(
        "pgparent_group_max_transaction_duration_seconds",
        "Longest open transaction of a group.",
        lambda g: g.stats.max_transaction_duration,
        _worst,
    ),
    _GroupSeries(
        "pgparent_group_age_seconds", "Time since the group's oldest session started.", lambda g: g.stats.age, _worst
    ),
)


class PgparentCollector(Collector):
    """Yields pgparent's metrics from the latest published poll and the counters."""

    def __init__(self) -> None:
        self.latest = Published()
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(self)
        self.counters = Counters(self._registry)
        self._rendered: tuple[Published, bytes] | None = None
        self._render_lock = threading.Lock()

    @property
    def registry(self) -> CollectorRegistry:
        """A private registry holding only this collector and its counters (no process or platform collectors)."""
        return self._registry

    def publish(self, published: Published) -> None:
        self.latest = published

    def render(self) -> bytes:
        """The text exposition of the latest publish, rendered once and shared by every scrape until the next.

        Counters only move inside a poll cycle, which ends with a publish, so the cache is never staler than the
        snapshot it describes; scrapes then cost a memory copy however many scrapers there are. One scraper renders
        while the others wait for its result: concurrent scrapes after a publish never render the same text twice.
        """
        with self._render_lock:
            latest, cached = self.latest, self._rendered
            if cached is None or cached[0] is not latest:
                cached = self._rendered = (latest, generate_latest(self._registry))
            return cached[1]

    def collect(self) -> Iterator[Metric]:
        p = self.latest
        try:
            families = self._families(p)
        except Exception:
            log.exception("collect_failed")
            self.counters.scrape_errors.inc()
            families = [GaugeMetricFamily("pgparent_up", "1 if the last poll of PostgreSQL succeeded.", value=0)]
        yield from families

    def _families(self, p: Published) -> list[Metric]:
        fams: list[Metric] = [
            GaugeMetricFamily("pgparent_up", "1 if the last poll of PostgreSQL succeeded.", value=int(p.up)),
            GaugeMetricFamily(
                "pgparent_last_poll_timestamp_seconds",
                "Unix time of the last successful poll (0 before the first).",
                value=p.last_success,
            ),
            GaugeMetricFamily(
                "pgparent_poll_duration_seconds", "Duration of the last poll cycle.", value=p.poll_duration
            ),
            GaugeMetricFamily("pgparent_poll_interval_seconds", "Configured poll interval.", value=p.interval),
            GaugeMetricFamily(
                "pgparent_config_last_reload_successful",
                "1 if the last config (re)load succeeded.",
                value=int(p.reload_ok),
            ),
            GaugeMetricFamily(
                "pgparent_config_last_reload_success_timestamp_seconds",
                "Unix time of the last successful config load.",
                value=p.reload_time,
            ),
            GaugeMetricFamily("pgparent_dry_run", "1 if no rule may signal (global dry run).", value=int(p.dry_run)),
            GaugeMetricFamily(
                "pgparent_enforcing", "1 if this instance may signal sessions now.", value=int(p.enforcing)
            ),
            GaugeMetricFamily(
                "pgparent_leader",
                "1 if this replica holds the leader lock (the one that enforces).",
                value=int(p.leader),
            ),
        ]
        info = InfoMetricFamily("pgparent_build", "pgparent build information.")
        info.add_metric([], {"version": __version__})
        fams.append(info)

        violating = GaugeMetricFamily(
            "pgparent_rule_violating_groups", "Groups for which the rule fires now.", labels=["rule"]
        )
        pending = GaugeMetricFamily(
            "pgparent_rule_pending_groups", "Groups that exceed the rule but not yet for its 'for:'.", labels=["rule"]
        )
        for rule, n in p.violating.items():
            violating.add_metric([rule], n)
        for rule, n in p.pending.items():
            pending.add_metric([rule], n)
        fams += [violating, pending]

        if p.up and p.grouped is not None:
            fams += self._group_families(p.grouped, p.max_groups)
        return fams

    def _group_families(self, grouped: Grouped, max_groups: int) -> list[Metric]:
        sessions = GaugeMetricFamily(
            "pgparent_group_sessions", "Client sessions of a group, by state.", labels=["parent", "state"]
        )
        kept, folded = top_groups(grouped.groups, max_groups)
        for g in kept:
            for state, n in g.stats.by_state.items():
                sessions.add_metric([g.parent, state], n)
        if folded:
            by_state: dict[str, int] = dict.fromkeys(KNOWN_STATES, 0)
            for g in folded:
                for state, n in g.stats.by_state.items():
                    by_state[state] = by_state.get(state, 0) + n
            for state, n in by_state.items():
                sessions.add_metric([OTHER, state], n)
        series: list[Metric] = [sessions]
        for spec in _GROUP_SERIES:
            family = GaugeMetricFamily(spec.name, spec.help, labels=["parent"])
            for g in kept:
                family.add_metric([g.parent], spec.value(g))
            if folded:
                family.add_metric([OTHER], spec.fold([spec.value(g) for g in folded]))
            series.append(family)
        untagged = GaugeMetricFamily(
            "pgparent_untagged_sessions", "Client sessions with no parent tag, by state.", labels=["state"]
        )
        for state, n in grouped.untagged.by_state.items():
            untagged.add_metric([state], n)
        return [
            *series,
            GaugeMetricFamily(
                "pgparent_untagged_blocking_sessions",
                "Sessions waiting on untagged sessions, directly or through a chain.",
                value=grouped.untagged.blocking,
            ),
            GaugeMetricFamily(
                "pgparent_prepared_transactions_blocking_sessions",
                "Sessions waiting on prepared transactions, directly or through a chain.",
                value=grouped.prepared_blocking,
            ),
            untagged,
            GaugeMetricFamily("pgparent_groups", "Tagged groups seen by the last poll.", value=len(grouped.groups)),
            GaugeMetricFamily(
                "pgparent_hidden_sessions",
                "Client sessions whose details the monitoring role cannot see (no pg_read_all_stats); never signalled.",
                value=grouped.hidden,
            ),
            GaugeMetricFamily(
                "pgparent_groups_dropped", 'Groups folded into parent="__other__" by max_groups.', value=len(folded)
            ),
        ]
