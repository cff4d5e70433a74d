"""The benchmark harness runs end to end (smoke runs: no timing is asserted, only that every figure is there).

They run once, on the servers the benchmark starts itself: of PGPARENT_TEST_PG_MAJOR when it is set (cluster_env),
else of the first binaries found. Which major does not change what they prove, so they are not `per_major`."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.servers import cluster_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def test_quick_bench_produces_every_section(tmp_path: Path) -> None:
    """`bench/run.py --quick` measures floor, poll, both scrapes, memory, reaction and synthetic grouping."""
    out = tmp_path / "results.json"
    result = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--output", str(out)],
                            capture_output=True, text=True, timeout=600, env=cluster_env())
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    results = json.loads(out.read_text())
    (size,) = results["sizes"]
    for key in ("floor_ms", "poll_ms", "poll_over_floor", "pgparent_metrics_ms", "pgparent_rss_mb",
                "postgres_exporter_scrape_ms", "postgres_exporter_cpu_ms_per_scrape", "postgres_exporter_rss_mb"):
        assert isinstance(size[key], int | float) and size[key] > 0, key
    assert size["n"] == 100 and size["groups"] > 0
    assert results["reaction"]["trials"] == 3 and results["reaction"]["p95_s"] > 0
    assert [s["sessions"] for s in results["synthetic"]] == [1_000, 10_000]


def test_quick_fleet_bench_merges_its_part(tmp_path: Path) -> None:
    """`bench/run.py --only fleet --quick` measures one process, shard-mode replicas and a black-holed target on a
    small fleet, merges them into the results it is given (the other parts untouched) and writes the Fleets docs."""
    out, docs = tmp_path / "results.json", tmp_path / "BENCHMARKS.md"
    shutil.copy(REPO / "bench" / "results.json", out)
    before = json.loads(out.read_text())
    result = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--only", "fleet", "--quick",
                             "--output", str(out), "--docs", str(docs)],
                            capture_output=True, text=True, timeout=600, env=cluster_env())
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    results = json.loads(out.read_text())
    assert {k: v for k, v in results.items() if k != "fleet"} == {k: v for k, v in before.items() if k != "fleet"}
    fleet = results["fleet"]
    assert fleet["targets"] == 6 and fleet["servers"] == 2 and fleet["sessions_in_view"] > 0
    one, shard = fleet["single"], fleet["shard"]
    for key in ("cpu_pct_of_core", "rss_peak_mb", "gap_p99_s", "polls"):
        assert isinstance(one[key], int | float) and one[key] > 0, key
    assert len(shard["spread"]) == 3 and len(shard["spread_after_kill"]) == 2
    assert isinstance(shard["locks_held_again_after_kill_s"], float)
    assert fleet["blackhole"]["proxy_held_traffic"] and fleet["blackhole"]["others_during"]["gaps"] > 0
    assert "## Fleets" in docs.read_text()


def test_handover_bench_merges_its_part(tmp_path: Path) -> None:
    """`bench/run.py --only handover` measures a replica joining and one killed, merged into the results it is given,
    with its section in the docs."""
    out, docs = tmp_path / "results.json", tmp_path / "BENCHMARKS.md"
    shutil.copy(REPO / "bench" / "results.json", out)
    before = json.loads(out.read_text())
    result = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--only", "handover",
                             "--output", str(out), "--docs", str(docs)], capture_output=True, text=True, timeout=600,
                            env=cluster_env())
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    results = json.loads(out.read_text())
    assert {k: v for k, v in results.items() if k != "handover"} == {
        k: v for k, v in before.items() if k != "handover"}
    handover = results["handover"]
    assert sum(handover["join"]["spread"]) == handover["targets"] == sum(handover["kill"]["spread"])
    assert isinstance(handover["kill"]["all_led_again_s"], float)
    assert "Hand-over between replicas" in docs.read_text()


def test_quick_cost_bench_merges_its_part(tmp_path: Path) -> None:
    """`bench/run.py --only cost --quick` measures the poll with the OS figures off and on (and PostgreSQL 18's
    counters where its binaries are here) and load's accuracy, merged into the results it is given, with its section
    and goals in the docs."""
    out, docs = tmp_path / "results.json", tmp_path / "BENCHMARKS.md"
    shutil.copy(REPO / "bench" / "results.json", out)
    before = json.loads(out.read_text())
    result = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--only", "cost", "--quick",
                             "--output", str(out), "--docs", str(docs)], capture_output=True, text=True, timeout=600,
                            env=cluster_env())
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    results = json.loads(out.read_text())
    assert {k: v for k, v in results.items() if k != "cost"} == {k: v for k, v in before.items() if k != "cost"}
    cost = results["cost"]
    for variant in ("none", "off", "on", "on_every"):
        assert cost["proc"][variant]["cycle_ms"] > 0, variant
    assert cost["load"]["counter_s"] > 0 and cost["load"]["active_time_s"] > 0
    page = docs.read_text()
    assert "## What each group costs" in page and "OS figures (/proc) add at most 25%" in page


def test_quick_top_bench_merges_its_part(tmp_path: Path) -> None:
    """`bench/run.py --only top --quick` runs `pgparent top` in a terminal and measures its CPU over refreshes, merged
    into the results it is given, with its section and goal in the docs."""
    out, docs = tmp_path / "results.json", tmp_path / "BENCHMARKS.md"
    shutil.copy(REPO / "bench" / "results.json", out)
    before = json.loads(out.read_text())
    result = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--only", "top", "--quick",
                             "--output", str(out), "--docs", str(docs)], capture_output=True, text=True, timeout=600,
                            env=cluster_env())
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    results = json.loads(out.read_text())
    assert {k: v for k, v in results.items() if k != "top"} == {k: v for k, v in before.items() if k != "top"}
    top = results["top"]
    assert top["sessions"] == 110 and top["refreshes"] >= 5 and top["cpu_pct"] > 0 and top["rss_mb"] > 0
    text = docs.read_text()
    assert "## `pgparent top`" in text and "`pgparent top` at 110 sessions" in text
