"""The collector renders the latest poll: series per group, folding, vanishing groups, and a valid exposition."""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import CollectorRegistry

from exporter.core.cost import Cost, CostState, HostMemory, ProcSample, Samples, Sources, account
from exporter.core.grouping import group
from exporter.core.model import Capacity, Grouped, Snapshot
from exporter.face.collector import Access, Flags, PgparentCollector, Published, _Series
from exporter.face.counters import FAMILIES
from tests.support.tools import require_tool
from tests.unit.factory import session, snapshot

PATTERN = r"^(?P<parent>[^:]+:[^:]+)"


def at(registry: CollectorRegistry, name: str, labels: dict[str, str] | None = None) -> float | None:
    """A sample of target "default" (the one server of a config without targets)."""
    return registry.get_sample_value(name, {"target": "default", **(labels or {})})


def grouped(*apps: str) -> Grouped:
    return group(snapshot(*(session(a) for a in apps)), PATTERN)


def test_group_series_and_vanishing_groups() -> None:
    """Each group has its series; a group missing from the next poll has none."""
    collector = PgparentCollector()
    registry = collector.registry
    collector.publish(Published(up=True, grouped=grouped("A:1", "A:1", "B:2", "psql")))
    assert at(registry, "pgparent_group_sessions", {"parent": "A:1", "state": "active"}) == 2
    assert at(registry, "pgparent_untagged_sessions", {"state": "active"}) == 1
    assert at(registry, "pgparent_groups") == 2
    collector.publish(Published(up=True, grouped=grouped("A:1")))
    assert at(registry, "pgparent_group_sessions", {"parent": "B:2", "state": "active"}) is None
    assert at(registry, "pgparent_group_age_seconds", {"parent": "B:2"}) is None


def test_a_group_of_hidden_sessions_exports_no_durations() -> None:
    """A group whose sessions pgparent sees only in part (no pg_read_all_stats: no state, no timestamps) counts them
    as sessions of state unknown and exports no durations, rather than zeros; a group with one visible session keeps
    its durations, over what it can see."""
    hidden = [session("H:1", state=None, query_age=None, age=None) for _ in range(2)]
    mixed = [session("M:1", state=None, query_age=None, age=None), session("M:1", query_age=4.0, age=9.0)]
    collector = PgparentCollector()
    collector.publish(Published(up=True, grouped=group(snapshot(*hidden, *mixed), PATTERN)))
    registry = collector.registry
    assert at(registry, "pgparent_group_sessions", {"parent": "H:1", "state": "unknown"}) == 2
    assert at(registry, "pgparent_hidden_sessions") == 3
    for name in ("pgparent_group_max_query_duration_seconds", "pgparent_group_max_transaction_duration_seconds",
                 "pgparent_group_age_seconds"):
        assert at(registry, name, {"parent": "H:1"}) is None, name
        assert at(registry, name, {"parent": "M:1"}) is not None, name
    assert at(registry, "pgparent_group_age_seconds", {"parent": "M:1"}) == 9.0
    assert at(registry, "pgparent_group_waiting_sessions", {"parent": "H:1"}) == 0
    assert collector.render() == generate_latest(registry)


def test_down_hides_groups_and_counters_persist() -> None:
    """When the last poll failed, up is 0 and no group series are shown; counters keep their totals."""
    collector = PgparentCollector()
    collector.counters.signalled.labels("default", "r", "terminate", "poll").inc(3)
    collector.counters.signal_failures.labels("default", "r", "gone", "poll").inc()
    registry = collector.registry
    collector.publish(Published(up=False, grouped=grouped("A:1")))
    assert at(registry, "pgparent_up") == 0
    assert at(registry, "pgparent_group_sessions", {"parent": "A:1", "state": "active"}) is None
    signalled = {"rule": "r", "action": "terminate", "trigger": "poll"}
    assert at(registry, "pgparent_signalled_sessions_total", signalled) == 3
    assert at(registry, "pgparent_signal_failures_total", {"rule": "r", "reason": "gone", "trigger": "poll"}) == 1
    assert registry.get_sample_value("pgparent_build_info", {"version": __import__("exporter").__version__}) == 1


def test_max_groups_folds_into_other() -> None:
    """Beyond max_groups the smallest groups fold into parent="__other__" and are counted as dropped."""
    collector = PgparentCollector()
    registry = collector.registry
    apps = ["Big:1"] * 3 + ["Mid:1"] * 2 + ["S:1", "S:2", "S:3"]
    collector.publish(Published(up=True, grouped=grouped(*apps), max_groups=2))
    assert at(registry, "pgparent_group_sessions", {"parent": "Big:1", "state": "active"}) == 3
    assert at(registry, "pgparent_group_sessions", {"parent": "__other__", "state": "active"}) == 3
    assert at(registry, "pgparent_group_sessions", {"parent": "S:1", "state": "active"}) is None
    assert at(registry, "pgparent_groups") == 5
    assert at(registry, "pgparent_groups_dropped") == 3


def test_capacity_series_and_each_groups_share() -> None:
    """The server's slots, reserve, connections in use and headroom are exported; each group's share is its sessions
    over the slots ordinary roles may use, and the groups folded into __other__ share theirs summed."""
    collector = PgparentCollector()
    registry = collector.registry
    sessions = [session(a) for a in ["Big:1"] * 6 + ["Mid:1"] * 3 + ["S:1", "S:2"]]
    capacity = Capacity(max_connections=60, superuser_reserved=3, reserved=2, in_use=40)
    rows = replace(snapshot(*sessions), capacity=capacity)
    collector.publish(Published(up=True, grouped=group(rows, PATTERN), max_groups=2))
    assert at(registry, "pgparent_server_max_connections") == 60
    assert at(registry, "pgparent_server_reserved_connections") == 5
    assert at(registry, "pgparent_server_connections") == 40
    assert at(registry, "pgparent_server_connections_headroom") == 15
    assert at(registry, "pgparent_group_connections_share_ratio", {"parent": "Big:1"}) == 6 / 55
    assert at(registry, "pgparent_group_connections_share_ratio", {"parent": "__other__"}) == 2 / 55
    collector.publish(Published(up=True, grouped=grouped("Big:1")))
    assert at(registry, "pgparent_server_max_connections") is None  # a snapshot without capacity: no series


@pytest.mark.deliverables
def test_hostile_names_pass_promtool() -> None:
    """Quotes, backslashes, newlines, tabs and non-ASCII in tags still make an exposition promtool accepts."""
    promtool = require_tool("promtool")
    collector = PgparentCollector()
    registry = collector.registry
    hostile = ['a"b:1', "c\\d:2", "e\nf:3", "g\th:4", "ünï:çødé", "🙂:🙃", "x{y}=z,w:5"]
    collector.publish(Published(up=True, grouped=grouped(*hostile), violating={'r"1\n': 1}))
    for text in (generate_latest(registry), collector.render()):
        result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=30)
        assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    assert at(registry, "pgparent_group_sessions", {"parent": "e\nf:3", "state": "active"}) == 1


def test_render_is_cached_per_publish() -> None:
    """Scrapes between two polls share one rendering; the next publish renders anew."""
    collector = PgparentCollector()
    collector.publish(Published(up=True, grouped=grouped("A:1")))
    first = collector.render()
    assert collector.render() is first
    collector.publish(Published(up=True, grouped=grouped("A:1", "B:2")))
    second = collector.render()
    assert second is not first and b'parent="B:2"' in second and b'parent="B:2"' not in first


def test_concurrent_scrapes_after_a_publish_render_once() -> None:
    """Scrapers arriving together after a publish wait for one rendering instead of each rendering the same text."""
    collector = PgparentCollector()
    collector.publish(Published(up=True, grouped=grouped(*(f"G:{n}" for n in range(300)))))
    renders: list[int] = []
    real = collector._series

    def counted(target: str, p: Published, names: Sequence[str]) -> _Series:
        renders.append(1)
        time.sleep(0.05)  # a deliberately slow rendering, not a wait for an event: the others arrive meanwhile
        return real(target, p, names)

    collector._series = counted  # type: ignore[method-assign]
    start = threading.Barrier(20)
    bodies: list[bytes] = []

    def scrape() -> None:
        start.wait()
        bodies.append(collector.render())

    threads = [threading.Thread(target=scrape) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(renders) == 1
    assert len(bodies) == 20 and all(b is bodies[0] for b in bodies)


def test_a_failing_collect_reports_down_and_counts_the_scrape_error() -> None:
    """A scrape whose metrics cannot be built shows pgparent_up 0 and is counted in pgparent_scrape_errors_total."""
    collector = PgparentCollector()
    collector.publish(Published(up=True, grouped=grouped("A:1"), violating=None))  # type: ignore[arg-type]
    lines = collector.render().decode().splitlines()
    assert 'pgparent_up{target="default"} 0.0' in lines and "pgparent_scrape_errors_total 1.0" in lines
    assert not [line for line in lines if line.startswith("pgparent_group_")]


def test_every_counter_is_on_the_registry() -> None:
    """Each counter the daemon increments is a metric of the collector's own registry, exported from zero."""
    collector = PgparentCollector()
    names = {m.name for m in collector.registry.collect()}
    assert {"pgparent_polls", "pgparent_poll_errors", "pgparent_scrape_errors", "pgparent_signalled_sessions",
            "pgparent_signal_failures", "pgparent_signals_deferred"} <= names
    collector.counters.polls.labels("default").inc()
    assert at(collector.registry, "pgparent_polls_total") == 1


def test_render_writes_what_the_registry_collects() -> None:
    """/metrics, written from each target's cached text, is byte for byte the exposition of the registry's metric
    families: several targets with constant labels, hostile tags, folded groups, counters; and after one target
    publishes again, only its series change."""
    collector = PgparentCollector()
    hostile = ['a"b:1', "c\\d:2", "e\nf:3", "x{y}=z,w:5", "{0}:{1}", "Big:1", "Big:1"]
    collector.publish(Published(up=True, grouped=grouped(*hostile), violating={'r"{1}\n': 1}, max_groups=3,
                                labels={"region": 'e"u{'}), "b")
    collector.publish(Published(up=True, grouped=grouped("A:1"), labels={"zone": "z1"}), "a")
    collector.publish(Published(up=False), "c")
    collector.counters.signalled.labels("b", "r", "terminate", "poll").inc()
    collector.set_flags(Flags(interval=5.0, reload_ok=True, reload_time=1.5e9))
    assert collector.render() == generate_latest(collector.registry)
    collector.publish(Published(up=True, grouped=grouped("A:1", "A:2")), "a")
    assert collector.render() == generate_latest(collector.registry)
    assert b'parent="A:2"' in collector.render() and collector.render.current() is collector.render()
    collector.forget("b")
    assert collector.render.current() is None
    assert collector.render() == generate_latest(collector.registry)


def test_targets_with_different_label_names_export_the_missing_ones_empty() -> None:
    """Targets may carry different label names: every series has the union of them, a name a target lacks exported
    empty for it (Prometheus reads an empty label as an absent one), counters included."""
    collector = PgparentCollector()
    collector.publish(Published(up=True, grouped=grouped("A:1"), labels={"region": "eu"}), "a")
    collector.publish(Published(up=True, grouped=grouped("B:1"), labels={"zone": "z1"}), "b")
    collector.counters.polls.labels("b").inc()
    registry = collector.registry
    assert registry.get_sample_value("pgparent_up", {"target": "a", "region": "eu", "zone": ""}) == 1
    assert registry.get_sample_value("pgparent_up", {"target": "b", "region": "", "zone": "z1"}) == 1
    assert registry.get_sample_value("pgparent_polls_total", {"target": "b", "region": "", "zone": "z1"}) == 1
    assert collector.render() == generate_latest(registry)


def test_the_readme_lists_every_declared_metric_with_its_labels() -> None:
    """README's metrics table is exactly the families declared in exporter/face/counters.py, each with the label
    names its declaration gives (a target's `target` and constant labels aside)."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    rows = [line.split("|")[1:3] for line in readme.splitlines() if re.match(r"\| `pgparent_[a-z_]+` \|", line)]
    listed = {name.strip(" `"): tuple(filter(None, map(str.strip, labels.split(",")))) for name, labels in rows}
    suffix = {"counter": "_total", "info": "_info", "gauge": ""}
    declared = {f.name + suffix[f.type]: f.labels for f in FAMILIES}
    declared["pgparent_build_info"] = ("version",)  # the info metric's one label is its value
    assert listed == {n: tuple(labels for labels in ls if labels != "target") for n, ls in declared.items()}


def costed(sources: Sources) -> tuple[Grouped, Cost]:
    """Two polls of three groups (max_groups 2: one folds), their cost through the ledger."""
    from tests.unit.factory import NOW, ago

    def snap(t: float) -> Snapshot:
        apps = ["A:1", "A:1", "B:2", "B:2", "C:3"]
        return snapshot(*(replace(session(a, pid=10 + i, age=3600, query_age=60), state_change=ago(60))
                          for i, a in enumerate(apps)), now=NOW + timedelta(seconds=t))

    state = CostState()
    for t in (0.0, 2.0):
        snap_t = snap(t)
        procs = {10 + i: ProcSample(ago(3600), int((t + i) * 1e9), (i + 1) << 20, 0, 4096)
                 for i in range(5)} if sources.available("proc") else {}
        grouped_t = group(snap_t, PATTERN)
        cost = account(grouped_t, snap_t, Samples(sources, procs, HostMemory(8 << 30, 6 << 30)), state,
                       max_groups=2, retain=900)
        state = cost.state
    return grouped_t, cost


def test_cost_counters_render_as_counters_and_as_the_registry_collects() -> None:
    """The cost counters are typed counters named `_total`, the gauges gauges, folded groups under __other__;
    /metrics is byte for byte the registry's exposition."""
    collector = PgparentCollector()
    everything = Sources.of(proc=None, proc_io=None, backend_stats=None)
    grouped_now, cost = costed(everything)
    collector.publish(Published(up=True, grouped=grouped_now, cost=cost, max_groups=2, labels={"region": "eu"}))
    text = collector.render()
    assert text == generate_latest(collector.registry)
    assert b"# TYPE pgparent_group_cpu_seconds_total counter" in text
    assert b"# TYPE pgparent_group_active_seconds_total counter" in text
    assert b"# TYPE pgparent_group_memory_bytes gauge" in text
    registry = collector.registry
    labels = {"region": "eu"}
    assert at(registry, "pgparent_group_active_seconds_total", {"parent": "A:1", "wait_event_type": "CPU",
                                                                 **labels}) == 4.0
    assert at(registry, "pgparent_group_cpu_seconds_total", {"parent": "__other__", **labels}) == 2.0
    assert at(registry, "pgparent_group_memory_bytes", {"parent": "A:1", **labels}) == 3 << 20
    assert at(registry, "pgparent_group_max_session_memory_bytes", {"parent": "A:1", **labels}) == 2 << 20
    assert at(registry, "pgparent_host_memory_available_bytes", labels) == 6 << 30
    assert at(registry, "pgparent_cost_source_available", {"source": "proc", **labels}) == 1


def test_without_proc_no_os_figure_is_exported_and_the_reason_is() -> None:
    """Where the server's processes are not visible, load is exported and no CPU, memory, I/O or host series, not
    even 0; the availability metric is 0 and says why."""
    collector = PgparentCollector()
    grouped_now, cost = costed(Sources.of(proc="not_visible", proc_io="not_visible", backend_stats="needs_pg18"))
    collector.publish(Published(up=True, grouped=grouped_now, cost=cost, max_groups=2))
    text = collector.render().decode()
    assert "pgparent_group_active_seconds_total{" in text
    for absent in ("pgparent_group_cpu_seconds", "pgparent_group_memory_bytes", "pgparent_group_read_bytes",
                   "pgparent_group_wal_bytes", "pgparent_host_memory"):
        assert absent not in text
    registry = collector.registry
    assert at(registry, "pgparent_cost_source_available", {"source": "proc"}) == 0
    assert at(registry, "pgparent_cost_source_unavailable", {"source": "proc", "reason": "not_visible"}) == 1
    assert at(registry, "pgparent_cost_source_unavailable", {"source": "backend_stats", "reason": "needs_pg18"}) == 1


def test_what_pgparent_can_see_and_do_is_exported_per_target_while_connected() -> None:
    """Each capability as 0/1, track_activity_query_size and the connection's TLS (sslmode, version; `none` without
    TLS) and the protected count are series of the target while it is up, and go while it is down; /metrics is the
    registry's exposition."""
    collector = PgparentCollector()
    access = Access({"superuser": False, "read_all_stats": True, "signal_backend": True, "in_recovery": False,
                     "pooler": False, "tls": True}, 2048, "verify-full", "TLSv1.3")
    collector.publish(Published(up=True, grouped=grouped("A:1"), access=access, protected=3), "a")
    collector.publish(Published(up=True, grouped=grouped("B:1"), access=replace(access, tls_version=None,
                                                                               sslmode="prefer")), "b")
    registry = collector.registry
    assert at(registry, "pgparent_capability", {"target": "a", "capability": "superuser"}) == 0
    assert at(registry, "pgparent_capability", {"target": "a", "capability": "read_all_stats"}) == 1
    assert at(registry, "pgparent_track_activity_query_size_bytes", {"target": "a"}) == 2048
    assert at(registry, "pgparent_connection_tls_info", {"target": "a", "sslmode": "verify-full",
                                                         "version": "TLSv1.3"}) == 1
    assert at(registry, "pgparent_connection_tls_info", {"target": "b", "sslmode": "prefer", "version": "none"}) == 1
    assert at(registry, "pgparent_protected_sessions", {"target": "a"}) == 3
    assert collector.render() == generate_latest(registry)
    collector.publish(Published(up=False), "a")
    assert at(collector.registry, "pgparent_capability", {"target": "a", "capability": "tls"}) is None
