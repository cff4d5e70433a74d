"""The Prometheus alerts: promtool accepts them, their unit tests pass, and every alert is documented in the runbook."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from tests.deliverables.grafana import (
    ALERT_TESTS,
    ALERTS,
    RUNBOOK,
    declared_metrics,
    is_process_wide,
    iter_alerts,
    markdown_anchors,
    selectors,
    target_dropped,
)
from tests.support.tools import require_tool

pytestmark = pytest.mark.deliverables

EXPECTED_ALERTS = {
    "PgparentDown",
    "PgparentPollsFailing",
    "PgparentGroupViolatingTooLong",
    "PgparentGroupBlocking",
    "PgparentGroupMemoryHigh",
    "PgparentConnectionHeadroomLow",
    "PgparentGuardActed",
    "PgparentSignalsFailing",
    "PgparentSignalSpike",
    "PgparentConfigReloadFailed",
    "PgparentNoLeader",
}


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([require_tool("promtool"), *args], capture_output=True, text=True, timeout=120)


def test_promtool_check_rules_accepts_the_alerts() -> None:
    """`promtool check rules deploy/prometheus/alerts.yml` exits 0."""
    result = _promtool("check", "rules", str(ALERTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_pass() -> None:
    """`promtool test rules deploy/prometheus/alerts.test.yml` exits 0."""
    result = _promtool("test", "rules", str(ALERT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_expected_alerts_exist() -> None:
    """alerts.yml defines exactly the agreed alerts, each once."""
    names = [rule["alert"] for rule in iter_alerts()]
    assert sorted(names) == sorted(EXPECTED_ALERTS)


def test_every_metric_an_alert_reads_is_declared() -> None:
    """Every metric an alert's expression reads is Prometheus' own `up` or one exporter/face/counters.py declares, so a
    renamed metric cannot silence an alert."""
    known = declared_metrics() | {"up"}
    unknown = {
        f"{r['alert']}: {s.metric}" for r in iter_alerts() for s in selectors(r["expr"]) if s.metric not in known
    }
    assert not unknown, sorted(unknown)


def test_every_alert_is_unit_tested_firing_and_not_firing() -> None:
    """alerts.test.yml has, for every alert, an evaluation where it fires and one where it must not."""
    tests = yaml.safe_load(ALERT_TESTS.read_text(encoding="utf-8"))["tests"]
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in tests:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert firing == EXPECTED_ALERTS, f"no firing case for {EXPECTED_ALERTS - firing}"
    assert quiet == EXPECTED_ALERTS, f"no not-firing case for {EXPECTED_ALERTS - quiet}"


@pytest.mark.parametrize("alert", sorted(EXPECTED_ALERTS))
def test_alert_keeps_the_target_and_names_it(alert: str) -> None:
    """No aggregation of the alert drops `target` (so two servers of a fleet never merge into one alert), and an
    alert on per-target series names the target in its summary and description."""
    (rule,) = [r for r in iter_alerts() if r["alert"] == alert]
    assert target_dropped(rule["expr"]) == []
    if any(not is_process_wide(s.metric) and s.metric != "up" for s in selectors(rule["expr"])):
        for key in ("summary", "description"):
            assert "$labels.target" in rule["annotations"][key], f"{alert}: the {key} does not name the target"


def test_every_alert_on_target_series_is_tested_with_two_targets() -> None:
    """alerts.test.yml has, for every alert on per-target series, a case with two or more targets in which it fires
    for some of them and not for the others."""
    tests = yaml.safe_load(ALERT_TESTS.read_text(encoding="utf-8"))["tests"]
    per_target = {
        r["alert"] for r in iter_alerts() if any(not is_process_wide(s.metric) and s.metric != "up"
                                                 for s in selectors(r["expr"]))
    }
    covered: set[str] = set()
    for case in tests:
        given = {s.matcher("target") for series in case["input_series"] for s in selectors(series["series"])}
        given.discard(None)
        for check in case.get("alert_rule_test", []):
            fired = {a["exp_labels"].get("target") for a in check.get("exp_alerts", [])}
            if len(given) >= 2 and fired and {("=", t) for t in fired} < given:
                covered.add(check["alertname"])
    assert per_target - covered == set(), f"no two-target case for {sorted(per_target - covered)}"


@pytest.mark.parametrize("alert", sorted(EXPECTED_ALERTS))
def test_alert_has_severity_annotations_and_a_runbook_section(alert: str) -> None:
    """The alert carries labels.severity, a summary, a description and a runbook_url whose anchor is in the runbook."""
    (rule,) = [r for r in iter_alerts() if r["alert"] == alert]
    assert rule.get("labels", {}).get("severity") in ("critical", "warning", "info")
    annotations = rule.get("annotations", {})
    for key in ("summary", "description", "runbook_url"):
        assert str(annotations.get(key, "")).strip(), f"{alert}: no {key}"
    page, _, anchor = annotations["runbook_url"].partition("#")
    assert page.endswith("docs/runbook.md"), annotations["runbook_url"]
    assert anchor == alert.lower()
    assert anchor in markdown_anchors(RUNBOOK.read_text(encoding="utf-8")), f"docs/runbook.md has no #{anchor}"


@pytest.mark.parametrize("alert", sorted(EXPECTED_ALERTS))
def test_runbook_section_says_what_how_and_what_to_do(alert: str) -> None:
    """Each alert's runbook section explains what it means, how to check, and what to do."""
    text = RUNBOOK.read_text(encoding="utf-8")
    start = text.index(f"\n## {alert}\n")
    end = text.find("\n## ", start + 1)
    section = text[start : end if end != -1 else len(text)]
    for part in ("**What it means.**", "**How to check.**", "**What to do.**"):
        assert part in section, f"{alert}: no {part}"
