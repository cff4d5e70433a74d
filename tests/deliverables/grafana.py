"""The Grafana dashboard as data: its panels and targets, Grafana's variable substitution, and a small PromQL reader.

The reader is just enough of PromQL to re-implement grafana/dashboard-linter's selector rules without a Go toolchain:
it finds every series selector with its label matchers, its range, and the function it sits in. It refuses what it
does not understand (raises ValueError), so a new construct in the dashboard fails the tests instead of slipping by.
Whether an expression is valid PromQL at all is promtool's job (test_dashboard.py).
"""

from __future__ import annotations

import functools
import json
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.support.tools import require_tool

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "grafana" / "dashboards" / "pgparent.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERT_TESTS = ROOT / "deploy" / "prometheus" / "alerts.test.yml"
RUNBOOK = ROOT / "docs" / "runbook.md"

RATE_INTERVAL = "15s"
"""A stand-in for Grafana's $__rate_interval (max(step + scrape interval, 4 x scrape interval)) outside Grafana: with
the live checks' 1 s scrapes it spans about 15 samples, plenty for rate()."""

RANGE_FUNCTIONS = frozenset({"rate", "irate", "increase"})
"""The functions a counter may sit in directly (dashboard-linter's target-counter-agg-rule)."""


def load_dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    out: list[dict[str, Any]] = []
    for panel in dashboard.get("panels", []):
        out.append(panel)
        out += panel.get("panels", [])
    return out


@dataclass(frozen=True)
class Target:
    panel_id: int
    panel_title: str
    ref_id: str
    expr: str
    legend: str

    @property
    def name(self) -> str:
        return f"panel {self.panel_id} {self.panel_title!r} target {self.ref_id}"


def targets(dashboard: dict[str, Any]) -> list[Target]:
    return [
        Target(p["id"], p.get("title", ""), t.get("refId", ""), t.get("expr", ""), t.get("legendFormat", ""))
        for p in panels(dashboard)
        for t in p.get("targets", [])
    ]


def _regex_escape_for_promql(value: str) -> str:
    """A multi-value variable's value as Grafana puts it in a PromQL "...": regex-escaped, then backslashes doubled."""
    escaped = re.sub(r"([\\^$*+?.()|{}\[\]])", r"\\\1", value)
    return escaped.replace("\\", "\\\\").replace('"', '\\"')


def substitute(expr: str, job: str = ".+", instance: str = ".+", rate_interval: str = RATE_INTERVAL,
               *, target: str = ".+", parent: str = "", cores: str = "0", literal: bool = False) -> str:
    """The expression Grafana would send: $__rate_interval, $job, $instance, $target, $parent and $cores replaced.

    `literal=True` escapes the multi-value variables' values (job, instance, target) as Grafana does for concrete
    selections; otherwise they are taken as regexes, like the variables' allValue ".+". `parent` is a single-value
    variable matched exactly (`parent="$parent"`): Grafana escapes only its backslashes and quotes. `cores` is a
    textbox holding a number (its default, 0, draws no reference line).
    """

    def value(v: str) -> str:
        return _regex_escape_for_promql(v) if literal else _string_escape(v)

    out = re.sub(r"\$\{__rate_interval\}|\$__rate_interval\b", rate_interval, expr)
    out = re.sub(r"\$\{job\}|\$job\b", lambda _: value(job), out)
    out = re.sub(r"\$\{instance\}|\$instance\b", lambda _: value(instance), out)
    out = re.sub(r"\$\{target\}|\$target\b", lambda _: value(target), out)
    out = re.sub(r"\$\{parent\}|\$parent\b", lambda _: _string_escape(parent), out)
    out = re.sub(r"\$\{cores\}|\$cores\b", lambda _: cores, out)
    return out


def _string_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def promtool_check_rules(exprs: dict[str, str], workdir: Path) -> subprocess.CompletedProcess[str]:
    """`promtool check rules` on a file with one recording rule per expression (keys become rule names)."""
    rules = [{"record": f"pgparent_dashboard:{name}", "expr": expr} for name, expr in exprs.items()]
    path = workdir / "dashboard-exprs.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, sort_keys=False))
    cmd = [require_tool("promtool"), "check", "rules", str(path)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


# -- a small PromQL reader -----------------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`)
  | (?P<range>\[[^\]]*\])
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|\$\w+|\$\{\w+\})  # or a variable standing for one: $cores
  | (?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
  | (?P<op>=~|!~|!=|==|>=|<=|[-+*/%^<>=(){},])
    """,
    re.VERBOSE,
)
_KEYWORDS = frozenset(
    {"and", "or", "unless", "bool", "offset", "atan2", "by", "without", "on", "ignoring", "group_left", "group_right"}
)
_LABEL_LIST_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right"})


@dataclass(frozen=True)
class Selector:
    """One series selector: `metric{matchers}[range]`, and the function whose parentheses directly hold it."""

    metric: str
    matchers: tuple[tuple[str, str, str], ...]
    range: str | None
    call: str | None

    def matcher(self, label: str) -> tuple[str, str] | None:
        for name, op, value in self.matchers:
            if name == label:
                return op, value
        return None


def tokenize(expr: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None:
            raise ValueError(f"cannot read PromQL at {expr[pos:pos + 20]!r} in {expr!r}")
        kind = m.lastgroup
        assert kind is not None
        if kind != "ws":
            tokens.append((kind, m.group()))
        pos = m.end()
    return tokens


def _unquote(token: str) -> str:
    body = token[1:-1]
    return body if token[0] == "`" else re.sub(r"\\(.)", r"\1", body)


def selectors(expr: str) -> list[Selector]:
    """Every series selector of `expr`, in order."""
    tokens = tokenize(expr)
    found: list[Selector] = []
    calls: list[str | None] = []  # for each open "(": the function or aggregation it belongs to
    pending_call: str | None = None  # an aggregation whose "(" comes after a by/without label list
    i = 0

    def skip_label_list(at: int) -> int:
        if at >= len(tokens) or tokens[at][1] != "(":
            raise ValueError(f"expected a label list after {tokens[at - 1][1]!r} in {expr!r}")
        end = at + 1
        while end < len(tokens) and tokens[end][1] != ")":
            if tokens[end][0] not in ("ident", "op") or (tokens[end][0] == "op" and tokens[end][1] != ","):
                raise ValueError(f"unexpected {tokens[end][1]!r} in a label list of {expr!r}")
            end += 1
        return end + 1

    while i < len(tokens):
        kind, text = tokens[i]
        nxt = tokens[i + 1][1] if i + 1 < len(tokens) else ""
        if kind == "ident" and text in ("group_left", "group_right") and nxt != "(":
            i += 1  # no label list: nothing copied from the "one" side
            continue
        if kind == "ident" and text in _LABEL_LIST_KEYWORDS:
            i = skip_label_list(i + 1)
            continue
        if kind == "ident" and nxt == "(":
            calls.append(text)
            i += 2
            continue
        if kind == "ident" and text not in _KEYWORDS and nxt in ("by", "without"):
            pending_call = text  # `sum by (x) (...)`
            i += 1
            continue
        if kind == "ident" and text not in _KEYWORDS:
            i += 1
            matchers: list[tuple[str, str, str]] = []
            if i < len(tokens) and tokens[i][1] == "{":
                i += 1
                while tokens[i][1] != "}":
                    name, op, value = tokens[i], tokens[i + 1], tokens[i + 2]
                    if name[0] != "ident" or op[1] not in ("=", "!=", "=~", "!~") or value[0] != "string":
                        raise ValueError(f"cannot read the label matchers of {text!r} in {expr!r}")
                    matchers.append((name[1], op[1], _unquote(value[1])))
                    i += 3
                    if tokens[i][1] == ",":
                        i += 1
                i += 1
            rng: str | None = None
            if i < len(tokens) and tokens[i][0] == "range":
                rng = tokens[i][1][1:-1]
                i += 1
            found.append(Selector(text, tuple(matchers), rng, calls[-1] if calls else None))
            continue
        if text == "(":
            calls.append(pending_call)
            pending_call = None
        elif text == ")":
            if not calls:
                raise ValueError(f"unbalanced ')' in {expr!r}")
            calls.pop()
        elif kind == "range":
            raise ValueError(f"a range {text} that follows no selector (a subquery?) in {expr!r}")
        elif text == "{":
            raise ValueError(f"a selector without a metric name in {expr!r}")
        i += 1
    if calls:
        raise ValueError(f"unbalanced '(' in {expr!r}")
    return found


@functools.cache
def declared_metrics() -> frozenset[str]:
    """Every series name exporter/face/counters.py declares, as /metrics spells it (a counter with `_total`, the info
    metric with `_info`)."""
    from exporter.face.counters import FAMILIES

    suffix = {"counter": "_total", "info": "_info", "gauge": ""}
    return frozenset(f.name + suffix[f.type] for f in FAMILIES)


@functools.cache
def process_wide_metrics() -> frozenset[str]:
    """The series pgparent exports without a `target` label: the process's own (build, config file, interval, scrape
    errors). Read from a collector publishing one target, so the list is never kept by hand; every other series
    carries `target`. The HTTP face's pgparent_http_* counters are process-wide too (`is_process_wide`)."""
    from exporter.face.collector import PgparentCollector, Published

    collector = PgparentCollector()
    collector.publish(Published(up=True), "one")
    return frozenset(s.name for m in collector.registry.collect() for s in m.samples if "target" not in s.labels)


def is_process_wide(metric: str) -> bool:
    return metric.startswith("pgparent_http_") or metric in process_wide_metrics()


def aggregations(expr: str) -> list[tuple[str, tuple[str, ...]]]:
    """Every grouping clause of `expr`, as ("by" or "without", its labels), in order."""
    tokens = tokenize(expr)
    out: list[tuple[str, tuple[str, ...]]] = []
    for i, (kind, text) in enumerate(tokens):
        if kind == "ident" and text in ("by", "without") and i + 1 < len(tokens) and tokens[i + 1][1] == "(":
            end = next(j for j in range(i + 2, len(tokens)) if tokens[j][1] == ")")
            out.append((text, tuple(t for k, t in tokens[i + 2 : end] if k == "ident")))
    return out


def target_dropped(expr: str) -> list[str]:
    """The grouping clauses of `expr` that lose the `target` label (`by` without it, `without` with it), which would
    add up or merge the series of different servers; an empty list means every aggregation keeps it."""
    return [
        f"{kind} ({', '.join(labels)}) drops target"
        for kind, labels in aggregations(expr)
        if (kind == "by") != ("target" in labels)
    ]


def lint_target(expr: str) -> list[str]:
    """dashboard-linter's target rules for one expression, and pgparent's rule for its `target` variable; an empty
    list means it passes.

    - target-job-rule / target-instance-rule: every selector has job=~"$job" and instance=~"$instance";
    - every selector of a per-target series has target=~"$target"; a process-wide series (no `target` label) has no
      target matcher, and the expression then follows the choice through another selector that has one (`and
      on(job, instance) pgparent_up{..., target=~"$target"}`); no aggregation drops `target`;
    - target-rate-interval-rule: a range inside rate() or irate() is $__rate_interval;
    - target-counter-agg-rule: a counter (name ending in _total) is a range directly inside rate, irate or increase.
    """
    problems: list[str] = []
    try:
        found = selectors(expr)
    except ValueError as exc:
        return [str(exc)]
    if not found:
        problems.append("no series selector")
    elif not any(s.matcher("target") == ("=~", "$target") for s in found):
        problems.append('no selector follows target=~"$target"')
    problems += target_dropped(expr)
    for s in found:
        for label in ("job", "instance"):
            if s.matcher(label) != ("=~", f"${label}"):
                problems.append(f'{s.metric}: needs {label}=~"${label}"')
        if is_process_wide(s.metric) and s.matcher("target") is not None:
            problems.append(f"{s.metric}: has no target label, a target matcher would match nothing")
        elif not is_process_wide(s.metric) and s.matcher("target") != ("=~", "$target"):
            problems.append(f'{s.metric}: needs target=~"$target"')
        if s.range is not None and s.call in ("rate", "irate") and s.range not in ("$__rate_interval",
                                                                                 "${__rate_interval}"):
            problems.append(f"{s.metric}[{s.range}]: rate() and irate() must use $__rate_interval")
        if s.range is not None and s.call not in RANGE_FUNCTIONS:
            problems.append(f"{s.metric}[{s.range}]: a range outside rate(), irate() or increase()")
        if s.metric.endswith("_total") and (s.range is None or s.call not in RANGE_FUNCTIONS):
            problems.append(f"{s.metric}: a counter must sit directly in rate(), irate() or increase()")
    return problems


def iter_alerts() -> Iterator[dict[str, Any]]:
    data = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    for group in data["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                yield rule


def markdown_anchors(text: str) -> set[str]:
    """GitHub's anchors for the headings of a Markdown document (lower case, punctuation dropped, spaces to -)."""
    anchors: set[str] = set()
    in_code = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_code = not in_code
            continue
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m and not in_code:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            anchors.add(slug)
    return anchors
