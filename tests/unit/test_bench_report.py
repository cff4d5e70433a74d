"""The benchmark's page, goals and results: docs/BENCHMARKS.md is the template filled from bench/results.json, and the
figures it compares with are the runs the results kept."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

from bench.goals import by_key
from bench.parts import keep_earlier
from bench.report import render
from bench.template import TEMPLATE, Blocks, verdict

REPO = Path(__file__).resolve().parents[2]


def _results() -> dict[str, Any]:
    results: dict[str, Any] = json.loads((REPO / "bench" / "results.json").read_text())
    return results


def test_the_benchmark_page_is_the_template_filled_from_the_committed_results() -> None:
    """docs/BENCHMARKS.md is what `bench/run.py --render` makes of bench/results.json: prose and figures in step."""
    page = render(_results(), Path("bench-poll.png"))
    assert page == (REPO / "docs" / "BENCHMARKS.md").read_text()


def test_the_template_names_only_files_that_exist() -> None:
    """Every path of the repository the page's prose names is there."""
    named = set(re.findall(r"\b((?:exporter|bench|tests|docs)/[\w/]+\.\w+)", TEMPLATE.read_text()))
    assert named, "the template names no files: the pattern is stale"
    assert sorted(p for p in named if not (REPO / p).exists()) == []


def test_a_missed_goal_says_by_how_much_in_its_unit() -> None:
    """A fleet at 35.2% of a core misses `CPU < 30%` by 5.2 points; the page says so where it said `met`."""
    results = _results()
    results["fleet"]["single"]["cpu_pct_of_core"] = 35.2
    outcome = by_key(results)["fleet_cpu"]
    assert not outcome.met and verdict(Blocks(), outcome) == "missed by 5.2 points"
    assert "35.2% of a core (goal < 30%: missed by 5.2 points)" in render(results, None)


def test_a_part_measured_again_keeps_the_figures_it_is_compared_with() -> None:
    """The core keeps the run it replaced; the fleet keeps the last run of another layout, not its own last run."""
    before = _results()
    again = copy.deepcopy(before)
    again["sizes"][0]["poll_over_floor"] = 9.99
    kept = keep_earlier(again, before, ["core", "fleet"])
    assert kept["previous"]["sizes"] == before["sizes"] and "previous" not in kept["previous"]
    assert kept["fleet"]["previous"] == before["fleet"]["previous"]  # same layout: the older layout stays
    smaller = copy.deepcopy(before)
    smaller["fleet"]["servers"] = 2
    kept = keep_earlier(smaller, before, ["fleet"])
    assert kept["fleet"]["previous"] == {k: v for k, v in before["fleet"].items() if k != "previous"}
    assert kept.get("previous") == before.get("previous")  # the core was not measured again
