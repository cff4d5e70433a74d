"""The benchmark harness runs end to end (a smoke run: no timing is asserted, only that every figure is there)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


def test_quick_bench_produces_every_section(tmp_path: Path) -> None:
    """`bench/run.py --quick` measures floor, poll, both scrapes, memory, reaction and synthetic grouping."""
    out = tmp_path / "results.json"
    result = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--output", str(out)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    results = json.loads(out.read_text())
    (size,) = results["sizes"]
    for key in ("floor_ms", "poll_ms", "poll_over_floor", "pgparent_metrics_ms", "pgparent_rss_mb",
                "postgres_exporter_scrape_ms", "postgres_exporter_cpu_ms_per_scrape", "postgres_exporter_rss_mb"):
        assert isinstance(size[key], int | float) and size[key] > 0, key
    assert size["n"] == 100 and size["groups"] > 0
    assert results["reaction"]["trials"] == 3 and results["reaction"]["p95_s"] > 0
    assert [s["sessions"] for s in results["synthetic"]] == [1_000, 10_000]
