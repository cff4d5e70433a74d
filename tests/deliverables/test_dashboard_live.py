"""The dashboard against live data: a real `pgparent run` scraped by a real Prometheus, every panel query answered."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.waiting import eventually
from tests.deliverables.grafana import (
    Target,
    iter_alerts,
    load_dashboard,
    selectors,
    targets,
)
from tests.deliverables.stack import JOB, PARENT, LiveStack, live_stack, wait_for_data
from tests.support.servers import Server

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.deliverables]


@pytest.fixture(scope="module")
def stack(pg: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    tmp: Path = tmp_path_factory.mktemp("dashboard-live")
    with live_stack(pg, tmp) as s:
        wait_for_data(s)
        yield s


def _by_panel(title: str) -> list[Target]:
    found = [t for t in targets(load_dashboard()) if t.panel_title == title]
    assert found, f"no panel titled {title!r}"
    return found


def _instant(stack: LiveStack, title: str, ref: str = "A") -> list[dict[str, str]]:
    """The label sets and values (as "value") of one panel target, queried now."""
    (target,) = [t for t in _by_panel(title) if t.ref_id == ref]
    return [{**r["metric"], "value": r["value"][1]} for r in stack.prometheus.query(stack.expr(target))]


OS_METRICS = frozenset({
    "pgparent_group_cpu_seconds_total",
    "pgparent_group_memory_bytes",
    "pgparent_group_max_session_memory_bytes",
    "pgparent_group_read_bytes_total",
    "pgparent_group_written_bytes_total",
    "pgparent_host_memory_available_bytes",
    "pgparent_host_memory_bytes",
})
"""The figures read from /proc: exported only where pgparent sees the server's processes
(pgparent_cost_source_available{source="proc"} 1), which a PGPARENT_TEST_DSN or container server may not allow."""


def _proc_available(stack: LiveStack) -> bool:
    return stack.daemon.sample("pgparent_cost_source_available", {"source": "proc"}) == 1


def test_every_panel_target_returns_series(stack: LiveStack) -> None:
    """Every panel query, as Grafana sends it for this job and instance, returns series over the last minute."""
    end = time.time()
    proc = _proc_available(stack)
    empty: list[str] = []
    for target in targets(load_dashboard()):
        series = stack.prometheus.query_range(stack.expr(target), start=end - 60, end=end, step=2)
        reads = {s.metric for s in selectors(target.expr)} - {"pgparent_up"}
        if reads & OS_METRICS and not proc:
            continue  # this daemon does not see the server's processes: OS figures are absent, as they should be
        if not series or not all(s["values"] for s in series):
            empty.append(f"{target.name}: {stack.expr(target)}")
    if not stack.prepared:
        # The one exception: a server with max_prepared_transactions = 0 (PostgreSQL's default, so a
        # PGPARENT_TEST_DSN or container server; the local clusters allow 10) cannot hold a prepared transaction, and
        # the prepared-transactions series may then have nothing to show.
        (prepared,) = [t for t in _by_panel("Blocking sessions by group") if t.ref_id == "C"]
        empty = [e for e in empty if not e.startswith(prepared.name + ":")]
    assert not empty, "panel queries without data:\n" + "\n".join(empty)


def test_panels_show_the_scenario(stack: LiveStack) -> None:
    """The panels show the scenario: kills, permission_denied and deferrals, violations, a lock wait, a pending rule."""
    assert {s["value"] for s in _instant(stack, "pgparent up and leader")} == {"1"}

    def parents() -> set[str]:
        return {s["parent"] for s in _instant(stack, "Sessions per group by state")}

    # The poll right after a kill may still see the exiting backend: allow the group a few seconds to go.
    eventually(lambda: "FakeParent:1001" not in parents(), timeout=10, what="terminated group gone from the panel")
    assert {"etl:42", "admin:ops", "app:web"} <= parents()
    sessions = _instant(stack, "Sessions per group by state")
    assert _has(sessions, parent="etl:42", state="idle in transaction", value="1")
    assert _has(sessions, parent="app:web", state="idle", value="3")

    terminations = _range_labels(stack, "Signals per rule", "A")
    assert _has(terminations, rule="runaway-1001", action="terminate")
    failures = _range_labels(stack, "Signal failures and deferred signals", "A")
    assert _has(failures, rule="admin-runaway", reason="permission_denied")
    assert _has(_range_labels(stack, "Signal failures and deferred signals", "B"), rule="admin-runaway")

    violating = {s["rule"]: s["value"] for s in _instant(stack, "Rule violations and pending groups", "A")}
    pending = {s["rule"]: s["value"] for s in _instant(stack, "Rule violations and pending groups", "B")}
    assert violating["etl-long-transactions"] == "1"
    assert violating["admin-runaway"] == "1"
    assert pending["web-pool"] == "1"

    waiting = {s["parent"]: s["value"] for s in _instant(stack, "Lock waits and parallel workers", "A")}
    assert waiting["etl:42"] == "1"
    untagged = _instant(stack, "Groups and untagged sessions", "C")
    assert [s["value"] for s in untagged] == ["3"]  # reporting, and the lock scenario's psql and adhoc-report
    assert {s["value"] for s in _instant(stack, "Poll duration against the interval", "B")} == {"1"}


def test_panels_show_the_lock_chains(stack: LiveStack) -> None:
    """The blocking panels show the lock chains: who blocks how many, through a chain included, untagged sessions and
    the prepared transaction as their own series, and the longest wait; the blocking rule keeps billing:7 violating."""
    # billing:7 blocks ledger:8:a directly and adhoc-report behind it; ledger:8 blocks adhoc-report. Its sessions
    # waiting behind each other would not count, nor does etl:42's waiter on its own loader.
    blocking = {s["parent"]: s["value"] for s in _instant(stack, "Blocking sessions by group", "A")}
    assert blocking == {"billing:7": "2", "ledger:8": "1"}
    assert [s["value"] for s in _instant(stack, "Blocking sessions by group", "B")] == ["1"]  # ledger:8:b on psql
    prepared = [s["value"] for s in _instant(stack, "Blocking sessions by group", "C")]
    if stack.prepared:
        assert prepared == ["1"]  # ledger:8:c
    else:  # no prepared transaction (see test_every_panel_target_returns_series): nothing waits on one
        assert prepared in ([], ["0"])
    waited = {s["parent"]: float(s["value"]) for s in _instant(stack, "Longest block by group")}
    assert set(waited) == {"billing:7", "ledger:8"}
    # ledger:8:a has waited on billing:7 since before the daemon started, and longer than adhoc-report behind it.
    assert waited["billing:7"] >= waited["ledger:8"] > 0
    assert waited["billing:7"] > 20
    assert stack.daemon.sample("pgparent_group_blocked_sessions", {"parent": "ledger:8"}) == (
        3 if stack.prepared else 2)
    assert stack.daemon.sample("pgparent_group_blocked_sessions", {"parent": "billing:7"}) == 0
    violating = {s["rule"]: s["value"] for s in _instant(stack, "Rule violations and pending groups", "A")}
    assert violating["billing-blocking"] == "1"


def test_the_cores_line_follows_the_variable(stack: LiveStack) -> None:
    """The cores reference line is one series per chosen target at the value entered, and none at the default 0."""
    for title in ("Database load by group", "CPU cores by group"):
        (line,) = [t for t in _by_panel(title) if "$cores" in t.expr]
        at_three = stack.prometheus.query(stack.expr(line, cores="3"))
        assert [(r["metric"]["target"], r["value"][1]) for r in at_three] == [("default", "3")], at_three
        assert stack.prometheus.query(stack.expr(line, cores="0")) == []


def test_cost_panels_show_the_scenario(stack: LiveStack) -> None:
    """The cost panels show the scenario: admin:ops keeps 3 sessions busy and etl:42 2 (one sleeping, one waiting on
    a lock), idle app:web none; etl:42's load splits into Lock and Timeout; where pgparent sees the server's
    processes, batch:cpu uses CPU and every group's private memory is set against the host's available memory."""
    load = {s["parent"]: float(s["value"]) for s in _instant(stack, "Database load by group")}
    assert 2.4 <= load["admin:ops"] <= 3.6, load
    assert 1.6 <= load["etl:42"] <= 2.4, load
    assert "app:web" not in load, load
    waits = {s["wait_event_type"]: float(s["value"]) for s in _instant(stack, "Load by wait type: $parent")}
    assert {s["parent"] for s in _instant(stack, "Load by wait type: $parent")} == {PARENT}
    assert waits.get("Lock", 0) > 0.5 and waits.get("Timeout", 0) > 0.5, waits
    if not _proc_available(stack):
        return
    cpu = {s["parent"]: float(s["value"]) for s in _instant(stack, "CPU cores by group")}
    assert cpu.get("batch:cpu", 0) > 0, cpu
    memory = {s["parent"]: float(s["value"]) for s in _instant(stack, "Private memory by group")}
    assert {"admin:ops", "etl:42", "app:web", "batch:cpu"} <= set(memory) and min(memory.values()) > 0, memory
    (available,) = _instant(stack, "Private memory by group", "B")
    assert 0 < float(available["value"]) < float(stack.daemon.sample("pgparent_host_memory_bytes") or 0)


def _has(rows: list[dict[str, str]], **labels: str) -> bool:
    """True if some row carries all of `labels` (and maybe more)."""
    return any(all(row.get(k) == v for k, v in labels.items()) for row in rows)


def _range_labels(stack: LiveStack, title: str, ref: str) -> list[dict[str, str]]:
    """The label sets of one panel target's series that rose above zero at some moment since the stack started:
    from the start, not over the last minute, since the late kill of `wait_for_data` may be minutes old by the time
    this runs on a busy machine."""
    (target,) = [t for t in _by_panel(title) if t.ref_id == ref]
    end = time.time()
    series = stack.prometheus.query_range(stack.expr(target), start=stack.started, end=end, step=2)
    return [s["metric"] for s in series if any(float(v) > 0 for _, v in s["values"])]  # only series that rose


def test_alert_rules_load_and_evaluate_without_errors(stack: LiveStack) -> None:
    """The same Prometheus loaded deploy/prometheus/alerts.yml and evaluates every alert on live data without error."""
    groups = stack.prometheus.api("rules")["groups"]
    rules = [r for g in groups for r in g["rules"] if r["type"] == "alerting"]
    assert sorted(r["name"] for r in rules) == sorted(a["alert"] for a in iter_alerts())
    assert all(r["lastEvaluation"] != "0001-01-01T00:00:00Z" for r in rules), "some rule never evaluated"
    bad = {r["name"]: r.get("lastError") for r in rules if r["health"] != "ok"}
    assert not bad, bad


def test_scrapes_come_from_the_daemon(stack: LiveStack) -> None:
    """Prometheus scraped this daemon (job pgparent, its port) once a second for the last 20 seconds or more."""
    (up,) = stack.prometheus.query(f'count_over_time(up{{job="{JOB}"}}[1m])')
    assert up["metric"]["instance"] == stack.instance
    assert float(up["value"][1]) >= 20
