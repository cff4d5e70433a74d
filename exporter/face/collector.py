"""Prometheus metrics: a custom collector over the latest published poll of every target, the flags and the counters
(every family declared in exporter/face/counters.py).

A scrape never touches PostgreSQL: `collect()` reads the last `Published` object of each target and yields fresh
metric families, so groups (and targets) that vanished vanish from /metrics. Every series of a target carries
`target="NAME"` and the target's own constant labels.

/metrics is written from the same series without building metric objects: each target's series are rendered to
text when a scrape first needs them after that target published, kept until it publishes again, and joined family
by family at the scrape. A fleet's scrape renders only the targets that polled since the last one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import cast

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

from exporter import __version__
from exporter.core.cost import SOURCES, Cost
from exporter.core.grouping import OTHER, top_groups
from exporter.core.model import KNOWN_STATES, Group, Grouped
from exporter.face import counters as m
from exporter.face.counters import Counters, Family
from exporter.logs import get_logger

log = get_logger(__name__)

@dataclass(frozen=True, slots=True)
class Access:
    """What pgparent can see and do on a target, as its connection found it (exporter/pg/database.py:
    Capabilities): each capability's flag, where the server cuts query texts, and the connection's TLS."""

    capabilities: Mapping[str, bool]
    """superuser, read_all_stats, signal_backend, in_recovery, pooler, tls."""
    track_activity_query_size: int
    sslmode: str
    tls_version: str | None


@dataclass(frozen=True, slots=True)
class Published:
    """What a target's loop publishes after each poll, replaced whole (readers never see half an update)."""

    up: bool = False
    last_success: float = 0.0
    """Unix time of the last successful poll, 0 before the first."""
    poll_duration: float = 0.0
    grouped: Grouped | None = None
    """None when the poll read nothing: the server is down, or (sharding) another replica leads this target."""
    violating: dict[str, int] = field(default_factory=dict)
    pending: dict[str, int] = field(default_factory=dict)
    max_groups: int = 500
    dry_run: bool = False
    enforcing: bool = False
    """False while enforcement is off for a reason the logs give (not the leader, a standby server)."""
    leader: bool = False
    """True while this replica holds the target's leader lock."""
    labels: dict[str, str] = field(default_factory=dict)
    """The target's constant labels (config `targets[].labels`)."""
    cost: Cost | None = None
    """What the groups cost, counters carried from poll to poll; shown with the groups."""
    active: dict[str, int] = field(default_factory=dict)
    """Per rule: 1 if the target has every figure it reads, 0 if not (exporter/core/guards.py: `inactive`)."""
    protected: int = 0
    """Sessions of firing groups left alone as protected at the poll (`Decision.protected`)."""
    access: Access | None = None
    """What pgparent can see and do on the target; None while it is not connected."""


@dataclass(frozen=True, slots=True)
class Flags:
    """The process's own state, not any target's: the config file and the schedule."""

    interval: float = 0.0
    reload_ok: bool = True
    reload_time: float = 0.0


def _escape(value: str) -> str:
    """A label value as the text exposition writes it."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


class _Series:
    """One target's gauge series, family by family in the order first added; every sample carries the target's
    labels (`target` and its constant labels) before its own."""

    def __init__(self, base: Sequence[str], values: Sequence[str]) -> None:
        self.base = tuple(base)
        self.values = tuple(values)
        self.families: dict[str, tuple[Family, list[tuple[Sequence[str], float]]]] = {}

    def add(self, family: Family, value: float, *values: str) -> None:
        """One sample of the declared `family`, its own label values in the order the declaration names them."""
        samples = self.families.get(family.name)
        if samples is None:
            samples = self.families[family.name] = (family, [])
        samples[1].append((values, value))

    def text(self) -> dict[str, tuple[Family, bytes]]:
        """Each family's declaration and sample lines, by name, as prometheus_client's text exposition writes them:
        labels in name order, values escaped, numbers as Go formats them, a counter's samples named `_total`."""
        given = zip(self.base, self.values, strict=True)
        fixed = {n: _escape(v).replace("{", "{{").replace("}", "}}") for n, v in given}  # literal in a template
        out: dict[str, tuple[Family, bytes]] = {}
        for name, (family, samples) in self.families.items():
            # A template per family: the target's labels written in, the sample's own as {0}, {1}, ... in name order.
            own = {label: f"{{{i}}}" for i, label in enumerate(family.labels)}
            pairs = ",".join(f'{n}="{own[n] if n in own else fixed[n]}"' for n in sorted((*self.base, *family.labels)))
            exposed = _exposed(family)
            head = f"{exposed}{{{{{pairs}}}}} " if pairs else f"{exposed} "
            lines = [head.format(*map(_escape, values)) + _number(value) + "\n" for values, value in samples]
            out[name] = (family, "".join(lines).encode())
        return out


def _exposed(family: Family) -> str:
    """The name a family's samples carry in the text exposition: a counter's with `_total`."""
    return family.name + "_total" if family.type == "counter" else family.name


_number = cast("Callable[[float], str]", floatToGoString)
"""A sample's value as the text exposition writes it (Go's float formatting)."""


@dataclass(frozen=True, slots=True)
class _GroupSeries:
    """One per-group gauge: its declaration, its value for a group, and how folded groups combine into __other__
    (counts add up; durations keep the worst)."""

    family: Family
    value: Callable[[Group], float]
    fold: Callable[[list[float]], float]
    timed: bool = False
    """A duration read from the sessions' timestamps: absent for a group none of whose sessions pgparent may see in
    full (no pg_read_all_stats), whose durations are unknown, not zero."""


def _seen(group: Group) -> bool:
    """Some session of the group shows its state and timestamps (the others are hidden: pgparent_hidden_sessions)."""
    return group.stats.hidden < group.stats.sessions


def _worst(values: list[float]) -> float:
    return max(values, default=0.0)


def _total(values: list[float]) -> float:
    return float(sum(values))


_GROUP_SERIES = (
    _GroupSeries(m.GROUP_WORKERS, lambda g: g.workers, _total),
    _GroupSeries(m.GROUP_WAITING, lambda g: g.stats.waiting, _total),
    _GroupSeries(m.GROUP_BLOCKED, lambda g: g.stats.blocked, _total),
    # A waiter held up by two folded groups counts twice: an upper bound.
    _GroupSeries(m.GROUP_BLOCKING, lambda g: g.stats.blocking, _total),
    _GroupSeries(m.GROUP_MAX_BLOCKING, lambda g: g.stats.max_blocking, _worst),
    _GroupSeries(m.GROUP_MAX_QUERY, lambda g: g.stats.max_query_duration, _worst, timed=True),
    _GroupSeries(m.GROUP_MAX_TRANSACTION, lambda g: g.stats.max_transaction_duration, _worst, timed=True),
    _GroupSeries(m.GROUP_AGE, lambda g: g.stats.age, _worst, timed=True),
    _GroupSeries(m.GROUP_LISTENING, lambda g: g.stats.listening, _total),
)


def _help(doc: str) -> str:
    return doc.replace("\\", r"\\").replace("\n", r"\n")


class _Metrics:
    """Metric families already built, in the shape generate_latest() reads."""

    def __init__(self, metrics: list[Metric]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        return iter(self.metrics)


class Exposition:
    """A collector's text exposition for /metrics. `exposition()` gives the text of the latest publishes, rendering
    what changed (which may take a while); `exposition.current()` gives it only if nothing changed since, and never
    renders, so a server can answer from it without handing the request to a worker."""

    def __init__(self, collector: PgparentCollector) -> None:
        self._collector = collector

    def __call__(self) -> bytes:
        return self._collector._render()

    def current(self) -> bytes | None:
        return self._collector._current()


class PgparentCollector(Collector):
    """Yields pgparent's metrics from the latest published poll of each target, the flags and the counters."""

    def __init__(self) -> None:
        self.latest: dict[str, Published] = {}
        self.flags = Flags()
        self.counters = Counters()
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(self)
        self._version = 0
        self._stamps: dict[str, int] = {}
        """Per target, the version of its latest publish: its rendered series are kept while this holds."""
        self._texts: dict[str, tuple[int, tuple[str, ...], dict[str, tuple[Family, bytes]]]] = {}
        """Per target: the stamp and label names it was rendered with, and its families' help and sample lines."""
        self._rendered: tuple[int, bytes] | None = None
        self._render_lock = threading.Lock()
        self._publish_lock = threading.Lock()
        self._local = threading.local()
        self.render = Exposition(self)
        """The text exposition for /metrics: `render()` renders what changed; `render.current()` never renders."""

    @property
    def registry(self) -> CollectorRegistry:
        """A private registry holding only this collector (no process or platform collectors)."""
        return self._registry

    def publish(self, published: Published, target: str = "default") -> None:
        with self._publish_lock:
            self._version += 1
            self.latest = {**self.latest, target: published}
            self._stamps = {**self._stamps, target: self._version}

    def forget(self, target: str) -> None:
        """A target removed from the config: its series go."""
        with self._publish_lock:
            self.latest = {k: v for k, v in self.latest.items() if k != target}
            self._stamps = {k: v for k, v in self._stamps.items() if k != target}
            self._version += 1

    def refresh(self) -> None:
        """Counters moved outside a poll (a deadline's signals): the next scrape renders afresh."""
        with self._publish_lock:
            self._version += 1

    def set_flags(self, flags: Flags) -> None:
        with self._publish_lock:
            self.flags = flags
            self._version += 1

    def _render(self) -> bytes:
        """The text exposition of the latest publishes, rendered once and shared by every scrape until the next.

        Counters only move inside a poll cycle, which ends with a publish, so the cache is never staler than the
        snapshots it describes; scrapes then cost a memory copy however many scrapers there are. One scraper renders
        while the others wait for its result: concurrent scrapes after a publish never render the same text twice.
        Of the targets' series, only those of targets that published since the last rendering are rendered again.
        """
        with self._render_lock:
            cached = self._rendered
            if cached is not None and cached[0] == self._version:
                return cached[1]
            with self._publish_lock:  # one consistent view of what was published
                version, latest, stamps, flags = self._version, self.latest, self._stamps, self.flags
            try:
                head = self._text(latest, stamps, flags)
            except Exception:
                log.exception("collect_failed")
                self.counters.scrape_errors.inc()
                head = generate_latest(_Metrics(self._down(latest)))
            self._local.counters_only = True  # the counters and any other collector of the registry
            try:
                tail = generate_latest(self._registry)
            finally:
                self._local.counters_only = False
            self._rendered = (version, head + tail)
            return self._rendered[1]

    def _current(self) -> bytes | None:
        cached = self._rendered
        return cached[1] if cached is not None and cached[0] == self._version else None

    def _text(self, latest: dict[str, Published], stamps: dict[str, int], flags: Flags) -> bytes:
        """The process's gauges, then every target's, family by family; a target's series are rendered again only
        when it published since, or the label names changed."""
        names = tuple(sorted({n for p in latest.values() for n in p.labels}))
        texts = {}
        for target, p in sorted(latest.items()):
            stamp = stamps.get(target, -1)
            kept = self._texts.get(target)
            if kept is None or kept[0] != stamp or kept[1] != names:
                kept = (stamp, names, self._series(target, p, names).text())
            texts[target] = kept
        # Removed targets' texts go. A lone target's text is the exposition itself, kept whole below; keeping it
        # twice would only save a re-render when the counters or flags alone change.
        self._texts = texts if len(texts) > 1 else {}
        families: dict[str, tuple[Family, list[bytes]]] = {}
        for _, _, rendered in texts.values():
            for name, (family, lines) in rendered.items():
                families.setdefault(name, (family, []))[1].append(lines)
        out = [generate_latest(_Metrics(self._process_families(flags)))]
        for family, chunks in families.values():
            exposed = _exposed(family)
            out.append(f"# HELP {exposed} {_help(family.help)}\n# TYPE {exposed} {family.type}\n".encode())
            out += chunks
        return b"".join(out)

    def collect(self) -> Iterator[Metric]:
        latest, flags = self.latest, self.flags
        if getattr(self._local, "counters_only", False):  # render() writes the rest itself
            yield from self._counters(latest)
            return
        try:
            families = self._families(latest, flags)
        except Exception:
            log.exception("collect_failed")
            self.counters.scrape_errors.inc()
            families = self._down(latest)
        yield from families
        yield from self._counters(latest)

    @staticmethod
    def _down(latest: dict[str, Published]) -> list[Metric]:
        """What a scrape whose metrics could not be built shows: every target down."""
        up = GaugeMetricFamily(m.UP.name, m.UP.help, labels=["target"])
        for target in latest:
            up.add_metric([target], 0)
        return [up]

    def _counters(self, latest: dict[str, Published]) -> Iterator[Metric]:
        """The counters, each sample with its target's constant labels added (a removed target keeps its totals)."""
        names = sorted({n for p in latest.values() for n in p.labels})
        for metric in self.counters.registry.collect():
            out = Metric(metric.name, metric.documentation, metric.type)
            for sample in metric.samples:
                target = sample.labels.get("target")
                if target is not None and names:
                    own = latest[target].labels if target in latest else {}
                    labels = {**sample.labels, **{n: own.get(n, "") for n in names}}
                    sample = sample._replace(labels=labels)
                out.samples.append(sample)
            yield out

    def _families(self, latest: dict[str, Published], flags: Flags) -> list[Metric]:
        names = tuple(sorted({n for p in latest.values() for n in p.labels}))
        merged: dict[str, GaugeMetricFamily | CounterMetricFamily] = {}
        for target, p in sorted(latest.items()):
            series = self._series(target, p, names)
            for name, (declared, samples) in series.families.items():
                family = merged.get(name)
                if family is None:
                    kind = CounterMetricFamily if declared.type == "counter" else GaugeMetricFamily
                    family = merged[name] = kind(name, declared.help, labels=[*series.base, *declared.labels])
                for values, value in samples:
                    family.add_metric([*series.values, *values], value)
        return [*self._process_families(flags), *merged.values()]

    @staticmethod
    def _process_families(flags: Flags) -> list[Metric]:
        fams: list[Metric] = [
            GaugeMetricFamily(m.POLL_INTERVAL.name, m.POLL_INTERVAL.help, value=flags.interval),
            GaugeMetricFamily(m.RELOAD_OK.name, m.RELOAD_OK.help, value=int(flags.reload_ok)),
            GaugeMetricFamily(m.RELOAD_TIME.name, m.RELOAD_TIME.help, value=flags.reload_time),
        ]
        info = InfoMetricFamily(m.BUILD.name, m.BUILD.help)
        info.add_metric([], {"version": __version__})
        fams.append(info)
        return fams

    def _series(self, target: str, p: Published, names: Sequence[str]) -> _Series:
        """The target's gauge series; `names` are the constant label names of every target."""
        f = _Series(["target", *names], [target, *(p.labels.get(n, "") for n in names)])
        f.add(m.UP, int(p.up))
        f.add(m.LAST_POLL, p.last_success)
        f.add(m.POLL_DURATION, p.poll_duration)
        f.add(m.DRY_RUN, int(p.dry_run))
        f.add(m.ENFORCING, int(p.enforcing))
        f.add(m.LEADER, int(p.leader))
        for rule, n in p.violating.items():
            f.add(m.VIOLATING, n, rule)
        for rule, n in p.pending.items():
            f.add(m.PENDING, n, rule)
        for rule, n in p.active.items():
            f.add(m.RULE_ACTIVE, n, rule)
        if p.up and p.access is not None:
            _access_families(f, p.access)
        if p.up and p.grouped is not None:
            f.add(m.PROTECTED, p.protected)
            self._group_families(f, p.grouped, p.max_groups)
            if p.cost is not None:
                _cost_families(f, p.cost)
        return f

    def _group_families(self, f: _Series, grouped: Grouped, max_groups: int) -> None:
        kept, folded = top_groups(grouped.groups, max_groups)
        for g in kept:
            for state, n in g.stats.by_state.items():
                f.add(m.GROUP_SESSIONS, n, g.parent, state)
        if folded:
            by_state: dict[str, int] = dict.fromkeys(KNOWN_STATES, 0)
            for g in folded:
                for state, n in g.stats.by_state.items():
                    by_state[state] = by_state.get(state, 0) + n
            for state, n in by_state.items():
                f.add(m.GROUP_SESSIONS, n, OTHER, state)
        seen_folded = [g for g in folded if _seen(g)]
        for spec in _GROUP_SERIES:
            for g in kept:
                if not spec.timed or _seen(g):
                    f.add(spec.family, spec.value(g), g.parent)
            if folded and (seen_folded or not spec.timed):
                f.add(spec.family, spec.fold([spec.value(g) for g in (seen_folded if spec.timed else folded)]), OTHER)
        f.add(m.UNTAGGED_BLOCKING, grouped.untagged.blocking)
        f.add(m.PREPARED_BLOCKING, grouped.prepared_blocking)
        for state, n in grouped.untagged.by_state.items():
            f.add(m.UNTAGGED, n, state)
        f.add(m.GROUPS, len(grouped.groups))
        f.add(m.HIDDEN, grouped.hidden)
        f.add(m.COMMENT_MISSED, grouped.comment_missed)
        f.add(m.GROUPS_DROPPED, len(folded))
        capacity = grouped.capacity
        if capacity is not None:
            f.add(m.SERVER_MAX_CONNECTIONS, capacity.max_connections)
            f.add(m.SERVER_RESERVED, capacity.reserved_total)
            f.add(m.SERVER_CONNECTIONS, capacity.in_use)
            f.add(m.SERVER_HEADROOM, capacity.headroom)
            for g in kept:
                f.add(m.GROUP_SHARE, capacity.share(len(g.sessions)), g.parent)
            if folded:
                f.add(m.GROUP_SHARE, capacity.share(sum(len(g.sessions) for g in folded)), OTHER)


def _access_families(f: _Series, access: Access) -> None:
    """What pgparent can see and do on the target: each capability 0/1, the query text bound, the connection's TLS."""
    for capability, held in access.capabilities.items():
        f.add(m.CAPABILITY, int(held), capability)
    f.add(m.QUERY_SIZE, access.track_activity_query_size)
    f.add(m.TLS_INFO, 1, access.sslmode, access.tls_version or "none")


def _cost_families(f: _Series, cost: Cost) -> None:
    """What the groups cost: each counter where its source gives figures now (absent, never 0, where it does not),
    the memory gauges of the last poll, the host's memory, and which sources are available and why not."""
    sources, totals = cost.sources, cost.totals
    for (label, wait), seconds in totals.load.items():
        f.add(m.GROUP_ACTIVE, seconds, label, wait)
    shown = ((m.GROUP_CPU, totals.cpu, sources.available("proc")),
             (m.GROUP_READ, totals.read, cost.io_source is not None),
             (m.GROUP_WRITTEN, totals.written, cost.io_source is not None),
             (m.GROUP_WAL, totals.wal, sources.available("backend_stats")))
    for family, counter, available in shown:
        if available:
            for label, value in counter.items():
                f.add(family, value, label)
    for label, (total, largest) in cost.memory.items():
        f.add(m.GROUP_MEMORY, total, label)
        f.add(m.GROUP_MAX_MEMORY, largest, label)
    if cost.host is not None:
        f.add(m.HOST_MEMORY_AVAILABLE, cost.host.available)
        f.add(m.HOST_MEMORY, cost.host.total)
    for source in SOURCES:
        f.add(m.COST_SOURCE, int(sources.available(source)), source)
    for source, reason in sources.unavailable.items():
        f.add(m.COST_SOURCE_UNAVAILABLE, 1, source, reason)
