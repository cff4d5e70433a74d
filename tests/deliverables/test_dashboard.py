"""The Grafana dashboard, statically: grafana/dashboard-linter's rules re-implemented; promtool parses every query."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.deliverables.grafana import (
    DASHBOARD,
    declared_metrics,
    is_process_wide,
    lint_target,
    load_dashboard,
    panels,
    promtool_check_rules,
    selectors,
    substitute,
    targets,
)

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

# grafana/dashboard-linter's panel-units-rule accepts Grafana's unit ids; these are the ones a pgparent panel could
# sensibly use (time, counts, rates, booleans).
VALID_UNITS = frozenset(
    {"none", "short", "percent", "percentunit", "ns", "µs", "ms", "s", "m", "h", "d", "dtdurations", "dtdurationms",
     "cps", "ops", "reqps", "rps", "wps", "iops", "cpm", "opm", "rpm", "wpm", "bool", "bool_yes_no", "bool_on_off",
     "bytes", "decbytes", "dateTimeAsIso", "dateTimeFromNow"}
)
PANEL_TYPES_WITH_UNITS = frozenset({"stat", "singlestat", "graph", "table", "timeseries", "gauge", "bargauge"})


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return load_dashboard()


def _variable(dashboard: dict[str, Any], name: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = [v for v in dashboard["templating"]["list"] if v.get("name") == name]
    assert len(found) == 1, f"expected one templating variable {name!r}, found {len(found)}"
    return found[0]


def test_plain_json_for_provisioning(dashboard: dict[str, Any]) -> None:
    """The dashboard is provisioning-ready: schema 39, stable uid, null id, no import-time __inputs placeholders."""
    assert dashboard["schemaVersion"] == 39
    assert dashboard["uid"] == "pgparent"
    assert dashboard["id"] is None
    assert dashboard["title"]
    assert "__inputs" not in dashboard and "__requires" not in dashboard
    assert "DS_PROMETHEUS" not in DASHBOARD.read_text(encoding="utf-8")


def test_datasource_variable(dashboard: dict[str, Any]) -> None:
    """template-datasource-rule: a `datasource` variable of type datasource on prometheus, labelled 'Data source'."""
    ds = _variable(dashboard, "datasource")
    assert ds["type"] == "datasource"
    assert ds["query"] == "prometheus"
    assert ds["label"] == "Data source"


@pytest.mark.parametrize("name", ["job", "instance", "target"])
def test_job_instance_and_target_variables(dashboard: dict[str, Any], name: str) -> None:
    """template-job/instance-rule, and the same for `target`: multi-select label_values() on pgparent_up via
    $datasource, .+, refresh 2; instance choices follow the job, target choices the job and the instance."""
    var = _variable(dashboard, name)
    assert var["type"] == "query"
    assert var["datasource"] == DATASOURCE
    assert var["label"] == name.title()
    assert var["multi"] is True and var["includeAll"] is True
    assert var["allValue"] == ".+"
    assert var["refresh"] == 2, "template-on-time-change-reload: refresh must be 2 (on time range change)"
    query = var["query"] if isinstance(var["query"], str) else var["query"]["query"]
    m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
    assert m is not None, query
    assert m.group(2) == name
    (selector,) = selectors(m.group(1))
    assert selector.metric == "pgparent_up"
    if name in ("instance", "target"):
        assert selector.matcher("job") == ("=~", "$job"), f"{name} choices must follow the chosen job"
    if name == "target":
        assert selector.matcher("instance") == ("=~", "$instance"), "target choices must follow the chosen instance"


def test_variables_come_in_order(dashboard: dict[str, Any]) -> None:
    """Data source, job, instance, target, parent, then the cores textbox: each variable's query uses only those
    before it."""
    names = [v["name"] for v in dashboard["templating"]["list"]]
    assert names == ["datasource", "job", "instance", "target", "parent", "cores"]


def test_parent_variable_picks_one_group_with_load(dashboard: dict[str, Any]) -> None:
    """`parent` (labelled Group) is one choice among the groups with load on the chosen job, instances and targets,
    refreshed with the time range; the panels that use it match it exactly and name it in their titles."""
    var = _variable(dashboard, "parent")
    assert (var["type"], var["label"], var["datasource"]) == ("query", "Group", DATASOURCE)
    assert var["multi"] is False and var["includeAll"] is False, "a chosen group: one, matched with parent=\"$parent\""
    assert var["refresh"] == 2
    m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", var["query"])
    assert m is not None and m.group(2) == "parent", var["query"]
    (selector,) = selectors(m.group(1))
    assert selector.metric == "pgparent_group_active_seconds_total"
    for label in ("job", "instance", "target"):
        assert selector.matcher(label) == ("=~", f"${label}"), f"parent choices must follow the chosen {label}"
    using = [t for t in targets(dashboard) if "$parent" in t.expr]
    assert using, "no panel uses $parent"
    for t in using:
        assert all(s.matcher("parent") in (None, ("=", "$parent")) for s in selectors(t.expr)), t.name
        assert "$parent" in t.panel_title, f"{t.name}: the title does not say which group"


def test_cores_variable_is_a_number_that_draws_no_line_by_default(dashboard: dict[str, Any]) -> None:
    """`cores` is a textbox holding the server's CPU cores, 0 by default; every query that reads it is the reference
    line `group without(instance, pod) (pgparent_up{...}) * $cores > 0`: one series per chosen target, none at 0."""
    var = _variable(dashboard, "cores")
    assert var["type"] == "textbox"
    assert var["query"] == var["current"]["value"] == "0"
    sel = 'job=~"$job",instance=~"$instance",target=~"$target"'
    line = f"group without(instance, pod) (pgparent_up{{{sel}}}) * $cores > 0"
    using = [t for t in targets(dashboard) if "$cores" in t.expr]
    assert {t.panel_title for t in using} == {"Database load by group", "CPU cores by group"}
    assert all(t.expr == line for t in using), [t.expr for t in using]


def test_every_panel_and_target_uses_the_datasource_variable(dashboard: dict[str, Any]) -> None:
    """panel-datasource-rule: each panel and each of its targets query ${datasource}, never a fixed data source."""
    wrong = [
        f"panel {p['id']} {p.get('title')!r}"
        for p in panels(dashboard)
        if p.get("type") != "row"
        and (p.get("datasource") != DATASOURCE or any(t.get("datasource") != DATASOURCE for t in p.get("targets", [])))
    ]
    assert not wrong, f"not on ${{datasource}}: {wrong}"


def test_panels_have_titles_descriptions_targets_and_units(dashboard: dict[str, Any]) -> None:
    """panel title/description, no-targets and units rules: each panel has all four, the unit a valid Grafana one."""
    problems: list[str] = []
    for p in panels(dashboard):
        if p.get("type") == "row":
            continue
        name = f"panel {p.get('id')}"
        if not str(p.get("title", "")).strip():
            problems.append(f"{name}: no title")
        if not str(p.get("description", "")).strip():
            problems.append(f"{name}: no description")
        if not p.get("targets") or any(not str(t.get("expr", "")).strip() for t in p["targets"]):
            problems.append(f"{name}: no query, or an empty one")
        unit = p.get("fieldConfig", {}).get("defaults", {}).get("unit")
        if p.get("type") in PANEL_TYPES_WITH_UNITS and unit not in VALID_UNITS:
            problems.append(f"{name}: unit {unit!r} is not a valid Grafana unit")
    assert not problems, problems


def test_panel_ids_are_unique(dashboard: dict[str, Any]) -> None:
    """Every panel has an integer id, and no two panels share one."""
    ids = [p.get("id") for p in panels(dashboard)]
    assert all(isinstance(i, int) for i in ids), ids
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {[i for i in ids if ids.count(i) > 1]}"


def test_grid_positions_fit_24_columns_without_overlap(dashboard: dict[str, Any]) -> None:
    """Each gridPos lies within Grafana's 24 columns, and no two panels cover the same cell."""
    taken: dict[tuple[int, int], int] = {}
    for p in panels(dashboard):
        g = p["gridPos"]
        x, y, w, h = g["x"], g["y"], g["w"], g["h"]
        assert x >= 0 and y >= 0 and w >= 1 and h >= 1, f"panel {p['id']}: {g}"
        assert x + w <= 24, f"panel {p['id']} ends at column {x + w}: {g}"
        for cx in range(x, x + w):
            for cy in range(y, y + h):
                assert (cx, cy) not in taken, f"panels {taken[(cx, cy)]} and {p['id']} overlap at ({cx}, {cy})"
                taken[(cx, cy)] = p["id"]


def test_targets_pass_the_linter_selector_rules(dashboard: dict[str, Any]) -> None:
    """target-job/instance, pgparent's target rule, target-rate-interval and target-counter-agg hold for every query."""
    problems = {t.name: found for t in targets(dashboard) if (found := lint_target(t.expr))}
    assert not problems, problems


def test_up_and_leader_panel_queries_both(dashboard: dict[str, Any]) -> None:
    """The first panel shows pgparent_up and pgparent_leader, and no other panel depends on pgparent_leader (others
    use pgparent_up only to follow the target choice: after `and on(job, instance)`, or as
    `group without(instance, pod) (pgparent_up{...})`, a 1 per chosen target that a reference line scales)."""
    by_metric: dict[str, set[str]] = {}
    for t in targets(dashboard):
        found = selectors(t.expr)
        for s in found:
            by_metric.setdefault(s.metric, set()).add(t.panel_title)
        if t.panel_title != "pgparent up and leader" and any(s.metric == "pgparent_up" for s in found):
            assert found[-1].metric == "pgparent_up" and (
                "and on(job, instance) pgparent_up" in t.expr or "group without(instance, pod) (pgparent_up" in t.expr
            ), t.name
    assert "pgparent up and leader" in by_metric["pgparent_up"]
    assert by_metric["pgparent_leader"] == {"pgparent up and leader"}


def test_every_metric_a_panel_reads_is_declared(dashboard: dict[str, Any]) -> None:
    """Every metric a panel query or a variable reads is one exporter/face/counters.py declares, so a renamed metric
    cannot leave a panel empty."""
    known = declared_metrics()
    exprs = [(t.name, t.expr) for t in targets(dashboard)]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            m = re.fullmatch(r"label_values\((.+),\s*\w+\)", var["query"])
            assert m is not None, var["query"]
            exprs.append((f"variable {var['name']}", m.group(1)))
    unknown = {f"{name}: {s.metric}" for name, expr in exprs for s in selectors(expr) if s.metric not in known}
    assert not unknown, sorted(unknown)


def test_cost_panels_read_what_they_show(dashboard: dict[str, Any]) -> None:
    """The four cost panels: load by group (active seconds summed over wait types) and CPU cores by group, stacked
    with the cores line; load by wait type of the chosen group, stacked; private memory by group, stacked, in bytes,
    against host memory available."""
    by_title = {p["title"]: p for p in panels(dashboard)}
    expected = {
        "Database load by group": ("short", [("pgparent_group_active_seconds_total", "rate"), ("pgparent_up", None)]),
        "Load by wait type: $parent": ("short", [("pgparent_group_active_seconds_total", "rate")]),
        "CPU cores by group": ("short", [("pgparent_group_cpu_seconds_total", "rate"), ("pgparent_up", None)]),
        "Private memory by group": ("bytes", [("pgparent_group_memory_bytes", None),
                                              ("pgparent_host_memory_available_bytes", None)]),
    }
    for title, (unit, reads) in expected.items():
        panel = by_title[title]
        defaults = panel["fieldConfig"]["defaults"]
        assert (panel["type"], defaults["unit"]) == ("timeseries", unit), title
        assert defaults["custom"]["stacking"]["mode"] == "normal", f"{title}: not stacked"
        found = [(s.metric, s.call if s.range else None) for t in panel["targets"] for s in selectors(t["expr"])]
        assert found == reads, f"{title}: {found}"
    load = by_title["Database load by group"]["targets"][0]["expr"]
    assert load.startswith("sum without(wait_event_type) (max without(instance, pod) (rate("), load


def test_reference_lines_are_dashed_and_outside_the_stack(dashboard: dict[str, Any]) -> None:
    """In a stacked panel, a reference (the cores line, host memory available) is a query of its own drawn dashed,
    unfilled and unstacked, so the groups' stack can be read against it."""
    for p in panels(dashboard):
        if p.get("fieldConfig", {}).get("defaults", {}).get("custom", {}).get("stacking", {}).get("mode") != "normal":
            continue
        for t in p["targets"]:
            if "$cores" not in t["expr"] and "pgparent_host_memory" not in t["expr"]:
                continue
            (override,) = [o for o in p["fieldConfig"]["overrides"]
                           if o["matcher"] == {"id": "byFrameRefID", "options": t["refId"]}]
            props = {q["id"]: q["value"] for q in override["properties"]}
            assert props["custom.stacking"]["mode"] == "none", f"panel {p['id']} {t['refId']}: stacked"
            assert props["custom.lineStyle"]["fill"] == "dash" and props["custom.fillOpacity"] == 0, p["id"]


def test_every_legend_names_the_target(dashboard: dict[str, Any]) -> None:
    """Two servers' series never share a legend: every query whose series carry `target` (its first selector is a
    per-target metric, and no aggregation drops the label: see the lint test) shows {{target}} in its legend; a
    process-wide one (config ok, the interval) does not, since it has no target to show."""
    wrong = []
    for t in targets(dashboard):
        per_target = not is_process_wide(selectors(t.expr)[0].metric)
        if per_target != ("{{target}}" in t.legend):
            wrong.append(f"{t.name}: legend {t.legend!r}")
    assert not wrong, wrong


def test_ref_ids_are_unique_within_each_panel(dashboard: dict[str, Any]) -> None:
    """Grafana keys a panel's queries by refId: each is set and unique within its panel."""
    for p in panels(dashboard):
        refs = [t.get("refId") for t in p.get("targets", [])]
        assert all(refs) and len(refs) == len(set(refs)), f"panel {p['id']}: {refs}"


@pytest.mark.parametrize(
    ("expr", "complaint"),
    [
        ('sum(pgparent_poll_errors_total{job=~"$job",instance=~"$instance"})', "counter must sit directly"),
        ('rate(pgparent_poll_errors_total{job=~"$job",instance=~"$instance"}[5m])', "must use $__rate_interval"),
        ('pgparent_up{instance=~"$instance"}', 'needs job=~"$job"'),
        ('pgparent_up{job=~"$job",instance="x"}', 'needs instance=~"$instance"'),
        ('max_over_time(pgparent_up{job=~"$job",instance=~"$instance"}[5m])', "a range outside"),
        ('rate(pgparent_poll_errors_total{job=~"$job",instance=~"$instance"}[$__rate_interval]) '
         '+ pgparent_poll_errors_total{job=~"$job",instance=~"$instance"}', "counter must sit directly"),
        ("vector(1)", "no series selector"),
        ('pgparent_up{job=~"$job",instance=~"$instance"}', 'needs target=~"$target"'),
        ('pgparent_poll_interval_seconds{job=~"$job",instance=~"$instance"}', 'no selector follows target=~"$target"'),
        ('pgparent_poll_interval_seconds{job=~"$job",instance=~"$instance",target=~"$target"}', "match nothing"),
        ('sum by (rule) (rate(pgparent_signals_deferred_total{job=~"$job",instance=~"$instance",target=~"$target"}'
         '[$__rate_interval]))', "by (rule) drops target"),
        ('max without(instance, target) (pgparent_groups{job=~"$job",instance=~"$instance",target=~"$target"})',
         "without (instance, target) drops target"),
        ('{__name__="pgparent_up"}', "without a metric name"),
        ("$cores > 0", "no series selector"),
    ],
)
def test_lint_rules_catch_bad_queries(expr: str, complaint: str) -> None:
    """The re-implemented linter rules reject each kind of bad query (so the dashboard test above can fail)."""
    assert any(complaint in p for p in lint_target(expr)), lint_target(expr)


def test_every_panel_query_parses_with_promtool(dashboard: dict[str, Any], tmp_path: Path) -> None:
    """Each target, with $__rate_interval, $job, $instance, $target, $parent (a tag with a quote and a backslash) and
    $cores substituted, is a valid recording rule to promtool."""
    exprs = {f"panel{t.panel_id}_{t.ref_id}": substitute(t.expr, job="pgparent", instance="127.0.0.1:10187",
                                                          target="orders-eu", parent='etl:42 "a\\b"', cores="16",
                                                          literal=True) for t in targets(dashboard)}
    assert len(exprs) == len(targets(dashboard))
    result = promtool_check_rules(exprs, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in result.stdout


def test_promtool_check_rejects_a_broken_query(tmp_path: Path) -> None:
    """The promtool harness is not vacuous: an unbalanced query fails `promtool check rules`."""
    result = promtool_check_rules({"broken": 'sum(rate(pgparent_up{job=~".+"}[15s])'}, tmp_path)
    assert result.returncode != 0
