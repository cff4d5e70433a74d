"""The guard conditions, pure: memory per session and per group, CPU and load over a window, the host-pressure gate,
escalation, what the sampler acts on between polls, the rules inactive without figures, the cadence time limits
imply, and sizes as they are written."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from exporter.core.cost import HostMemory, Sources
from exporter.core.grouping import group
from exporter.core.guards import cadence, crossings, inactive, memory_watch, session_memory, warnings
from exporter.core.locks import build
from exporter.core.model import Session
from exporter.core.policy import Decision, RuleState, evaluate
from exporter.core.settings import Config
from exporter.core.units import format_size, parse_size, parse_threshold
from exporter.core.usage import Point, Usage
from exporter.errors import ConfigInvalid
from tests.support.config import make_config
from tests.unit.factory import NOW, session, snapshot

MB = 1000**2
GB = 1000**3
HOST = HostMemory(total=16 * GB, available=8 * GB)


def decide(config: Config, *sessions: Session, usage: Usage, state: RuleState | None = None, now: Any = NOW,
           watch: bool = False) -> Decision:
    snap = snapshot(*sessions, now=now)
    grouped = group(snap, config.grouping.compiled, build(snap))
    return evaluate(grouped, config, state or RuleState(), watch=watch, usage=usage)


def memory_of(*pairs: tuple[Session, int], host: HostMemory | None = HOST) -> Usage:
    return Usage(proc=True, memory={s.pid: m for s, m in pairs}, host=host)


def pids(decision: Decision) -> set[int]:
    return {s.session.pid for s in decision.signals}


@pytest.mark.parametrize(("text", "size"), [("512MB", 512 * MB), ("2GiB", 2 * 1024**3), ("1.5GB", 1_500_000_000),
                                            ("300 MB", 300 * MB), ("1024", 1024), (4096, 4096), ("10kib", 10240)])
def test_sizes_are_read_in_the_units_the_readme_states(text: Any, size: int) -> None:
    """Decimal and binary units, case aside; a plain number is bytes."""
    assert parse_size(text) == size
    assert parse_size(format_size(size)) == size or format_size(size).endswith("iB")


def test_a_bad_size_or_share_is_an_error_naming_its_field() -> None:
    """`pgparent check` names the field of a size it cannot read, and of a share out of range."""
    with pytest.raises(ConfigInvalid, match=r"test: rules\.0\.max_session_memory: invalid size '300XB'"):
        make_config({"name": "r", "max_session_memory": "300XB"})
    with pytest.raises(ConfigInvalid, match=r"rules\.0\.host_memory_available_below: a share is more than 0%"):
        make_config({"name": "r", "max_group_memory": "1GB", "host_memory_available_below": "120%"})
    with pytest.raises(ConfigInvalid, match=r"rules\.0: .*escalate follows a cancel"):
        make_config({"name": "r", "max_group_memory": "1GB", "action": "terminate", "escalate": {"after": "5s"}})
    assert parse_threshold("10%").bytes_of(HOST.total) == pytest.approx(1.6 * GB)


def test_max_session_memory_signals_only_the_session_over_it() -> None:
    """One session over the limit is signalled; its group's other session, under it, is not."""
    config = make_config({"name": "m", "max_session_memory": "300MB", "action": "cancel"})
    big, small = session("A:1"), session("A:1")
    d = decide(config, big, small, usage=memory_of((big, 400 * MB), (small, 100 * MB)))
    assert pids(d) == {big.pid}
    [signal] = d.signals
    assert signal.figure == 400 * MB and signal.host_available == HOST.available


def test_max_group_memory_signals_the_largest_until_within_the_limit() -> None:
    """200 + 150 + 50 MB over a 300 MB limit: only the 200 MB session, which leaves 200 MB."""
    config = make_config({"name": "g", "max_group_memory": "300MB", "action": "terminate"})
    a, b, c = session("G:1"), session("G:1"), session("G:1")
    d = decide(config, a, b, c, usage=memory_of((a, 200 * MB), (b, 150 * MB), (c, 50 * MB)))
    assert pids(d) == {a.pid}
    d = decide(config, a, b, c, usage=memory_of((a, 200 * MB), (b, 150 * MB), (c, 160 * MB)))
    assert pids(d) == {a.pid, c.pid}  # biggest first: 200, then 160, leaving 150


def test_a_guard_condition_without_figures_never_fires() -> None:
    """Where /proc shows no server process, memory and CPU are not zero: the rule never fires, and is inactive."""
    config = make_config({"name": "m", "max_session_memory": "0", "action": "terminate"},
                         {"name": "c", "max_group_cpu": 0, "action": "terminate"},
                         {"name": "q", "max_query_duration": "1h", "action": "terminate"})
    d = decide(config, session("A:1"), usage=Usage())
    assert d.signals == () and d.violating == {"m": 0, "c": 0, "q": 0}
    missing = inactive(config, Sources.of(proc="not_visible", proc_io="not_visible", backend_stats="needs_pg18"))
    assert missing == {"m": "not_visible", "c": "not_visible"}
    assert inactive(config, Sources.of(proc=None, proc_io=None, backend_stats=None)) == {}


def test_the_host_pressure_gate_both_ways() -> None:
    """A gated rule acts only while the server's memory available is below its threshold (a size or a share), and
    not at all where that figure is unknown."""
    s = session("A:1")
    for below, acts in (("4GB", False), ("10GB", True), ("40%", False), ("60%", True)):
        config = make_config({"name": "m", "max_session_memory": "300MB", "action": "terminate",
                              "host_memory_available_below": below})
        assert bool(decide(config, s, usage=memory_of((s, 400 * MB))).signals) is acts, below
    config = make_config({"name": "m", "max_session_memory": "300MB", "action": "terminate",
                          "host_memory_available_below": "60%"})
    assert decide(config, s, usage=memory_of((s, 400 * MB), host=None)).signals == ()


def history(label: str, cpu_per_second: float, load_per_second: float, seconds: int) -> tuple[Point, ...]:
    return tuple(Point(NOW - timedelta(seconds=seconds - t), {label: cpu_per_second * t},
                       {label: load_per_second * t}) for t in range(seconds + 1))


def test_cpu_and_load_over_the_window_and_not_before_it_is_spanned() -> None:
    """A group using 1.5 cores and 3 active sessions on average over 60 s fires max_group_cpu 1 and max_group_load
    2; an idle group does not; a history shorter than the window measures nothing."""
    config = make_config({"name": "c", "max_group_cpu": 1, "action": "terminate"},
                         {"name": "l", "max_group_load": 2, "window": "30s", "action": "terminate"})
    busy, idle = session("Busy:1"), session("Idle:1", state="idle", query_age=None)
    points = tuple(Point(p.now, {**p.cpu, "Idle:1": 0.0}, {**p.load, "Idle:1": 0.0})
                   for p in history("Busy:1", 1.5, 3.0, 60))
    d = decide(config, busy, idle, usage=Usage(proc=True, history=points))
    assert d.violating == {"c": 1, "l": 1} and pids(d) == {busy.pid}
    assert {s.figure for s in d.signals} <= {1.5, 3.0}
    short = Usage(proc=True, history=points[-20:])
    assert decide(config, busy, idle, usage=short).violating == {"c": 0, "l": 0}


def test_escalation_cancels_then_terminates_after_the_delay_if_it_still_holds() -> None:
    """A cancel first (step cancel); at a poll `after` later, the condition still holding for the same session, a
    terminate (step terminate); a session running no query gets a no_query cancel step, then the terminate."""
    config = make_config({"name": "e", "max_session_memory": "300MB", "action": "cancel",
                          "escalate": {"after": "30s"}})
    running = session("A:1")
    idle = session("A:1", state="idle in transaction", query_age=None, xact_age=5, idle_since=4)
    usage = memory_of((running, 400 * MB), (idle, 500 * MB))
    first = decide(config, running, idle, usage=usage)
    assert [(s.session.pid, s.action, s.step) for s in first.signals] == [(running.pid, "cancel", "cancel")]
    assert [(s.session.pid, s.step) for s in first.no_query] == [(idle.pid, "cancel")]
    soon = decide(config, running, idle, usage=usage, state=first.state, now=NOW + timedelta(seconds=10))
    assert soon.signals == () and soon.no_query == ()
    later = decide(config, running, idle, usage=usage, state=soon.state, now=NOW + timedelta(seconds=31))
    assert {(s.session.pid, s.action, s.step) for s in later.signals} == {
        (running.pid, "terminate", "terminate"), (idle.pid, "terminate", "terminate")}
    relieved = decide(config, running, usage=memory_of((running, 10 * MB)), state=first.state,
                      now=NOW + timedelta(seconds=31))
    assert relieved.signals == () and relieved.state.cancelled == {}


def test_the_sampler_acts_on_a_crossing_between_polls_with_the_polls_protections() -> None:
    """Sessions of a group under a memory rule are watched after a poll; a sample over the limit signals that
    session (trigger sample), never a protected one, and a rule with `for:` not yet held does not act."""
    config = make_config({"name": "m", "match": {"parent": "[AK]:*"}, "max_session_memory": "300MB",
                          "action": "cancel"},
                         {"name": "slow", "match": {"parent": "B:*"}, "max_session_memory": "300MB", "for": "1m",
                          "action": "cancel"}, protect={"applications": ["K:*"]})
    a, b = session("A:1"), session("B:1")
    kept = session("K:1")
    d = decide(config, a, b, kept, usage=memory_of((a, 10 * MB), (b, 10 * MB), (kept, 10 * MB)), watch=True)
    watch = memory_watch(d, snapshot(a, b, kept))
    assert {pid for pid, _ in watch.processes} == {a.pid, b.pid, kept.pid}
    memory = session_memory(watch, {a.pid: 400 * MB, b.pid: 400 * MB, kept.pid: 900 * MB})
    [signal] = crossings(watch, memory, HOST, NOW, config.protect)
    assert (signal.session.pid, signal.trigger, signal.action, signal.figure) == (a.pid, "sample", "cancel", 400 * MB)
    assert crossings(watch, session_memory(watch, {a.pid: 100 * MB}), HOST, NOW, config.protect) == ()


def test_the_sampler_spares_superusers_sessions_where_pgparent_is_none() -> None:
    """A memory sample over the limit never signals a superuser's session where pgparent's own role is no superuser
    (the watch carries the poll's view of that role); where it is one, it does."""
    config = make_config({"name": "m", "match": {"parent": "S:*"}, "max_session_memory": "300MB",
                          "action": "terminate"})
    su = replace(session("S:1", user="provider_admin"), superuser=True)
    d = decide(config, su, usage=memory_of((su, 10 * MB)), watch=True)
    for pgparent_superuser, signalled in ((False, 0), (True, 1)):
        watch = memory_watch(d, replace(snapshot(su), pgparent_superuser=pgparent_superuser))
        memory = session_memory(watch, {su.pid: 400 * MB})
        assert len(crossings(watch, memory, HOST, NOW, config.protect)) == signalled


def test_polls_come_as_often_as_the_shortest_time_limit_needs() -> None:
    """A 2 s limit at a 5 s interval polls every 1 s; limits longer than two intervals, log rules and deadlines off
    leave the interval alone; the cadence never goes below half a second."""
    assert cadence(make_config({"name": "q", "max_query_duration": "2s", "action": "cancel"}, interval="5s")) == 1.0
    assert cadence(make_config({"name": "q", "max_query_duration": "20s", "action": "cancel"}, interval="5s")) == 5.0
    assert cadence(make_config({"name": "q", "max_query_duration": "2s"}, interval="5s")) == 5.0
    assert cadence(make_config({"name": "q", "max_query_duration": "2s", "action": "cancel"}, interval="5s",
                               deadlines=False)) == 5.0
    assert cadence(make_config({"name": "q", "max_query_duration": "200ms", "action": "cancel"})) == 0.5


def test_check_warns_of_limits_the_host_cannot_reach() -> None:
    """A memory limit above the host's memory, a CPU limit above its cores, a window shorter than two polls."""
    config = make_config({"name": "m", "max_group_memory": "64GB", "action": "cancel"},
                         {"name": "c", "max_group_cpu": 8, "window": "5s", "action": "terminate"})
    lines = warnings(config, HOST, 4)
    assert any(line.startswith("rules.0.max_group_memory: rule 'm': 64GB is more than") for line in lines)
    assert any(line.startswith("rules.1.max_group_cpu: rule 'c': 8 cores is more than the host's 4") for line in lines)
    assert any(line.startswith("rules.1.window:") for line in lines)
    assert warnings(make_config({"name": "m", "max_group_memory": "1GB", "action": "cancel"}), HOST, 4) == []


def test_a_glance_schedules_the_deadline_of_a_query_begun_since_the_poll() -> None:
    """A glance between polls that finds a query begun 0.3 s ago under a 2 s limit schedules its deadline at its
    start + 2 s (guarded by that very query_start); a log rule and a rule on size schedule none."""
    from exporter.core.assess import glance

    config = make_config({"name": "q", "match": {"parent": "Q:*"}, "max_query_duration": "2s", "action": "cancel"},
                         {"name": "l", "max_query_duration": "1s"}, {"name": "n", "max_sessions": 0,
                                                                     "action": "terminate"}, interval="5s")
    fresh = session("Q:1", query_age=0.3)
    [deadline] = glance(snapshot(fresh), config, "default")
    assert deadline.rule == "q" and deadline.crossing is not None
    assert deadline.at - fresh.query_start == timedelta(seconds=2, milliseconds=1)  # type: ignore[operator]
    assert deadline.crossing.guard.query_start == fresh.query_start
