"""pgparent's benchmark: its poll cost against the raw read of pg_stat_activity, its /metrics against
postgres_exporter's scrape on the same server, memory, reaction time, and pure grouping at scale.

    scripts/bench                 # N = 100, 500, 1000, 2000; writes bench/results.json, docs/BENCHMARKS.md, the plot
    scripts/bench --quick         # N = 100 only, few repetitions: a smoke run (~1 min), writes only --output
    scripts/bench --only locks    # the lock step's cost alone, merged into bench/results.json and the docs
    scripts/bench --only deadlines  # reaction to a time limit with and without deadlines (bench/reaction.py)
    scripts/bench --only core     # the sizes, reaction and synthetic tables alone
    scripts/bench --only fleet    # 50 targets on ten servers: one process, shard-mode replicas, a black hole (~10 min)
    scripts/bench --only handover  # shard-mode replicas joining and killed: targets handed over (bench/handover.py)
    scripts/bench --only cost     # what the cost figures add to the poll, and load's accuracy (bench/cost.py)
    scripts/bench --only top      # `pgparent top` in a terminal, 1000 sessions, 1 s refresh: its CPU (bench/top.py)
    scripts/bench --only guards   # a memory runaway stopped between polls, the sampler's CPU, a 2 s limit at 5 s
    scripts/bench --render        # no measuring: docs/BENCHMARKS.md again from bench/results.json

Everything is measured side by side in one run, interleaved round by round, so noise from a shared machine hits all
contenders alike; tables report medians and ratios. The parts are bench/parts.py's, the page's prose
bench/BENCHMARKS.md.tmpl, the goals bench/goals.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.parts import PARTS, keep_earlier, measure, merge  # noqa: E402
from bench.report import write_docs, write_plot  # noqa: E402


def _read(path: Path) -> dict[str, Any]:
    results: dict[str, Any] = json.loads(path.read_text())
    return results


def _write(results: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(results, indent=2) + "\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="N=100 only, few rounds: a smoke run")
    parser.add_argument("--sizes", default="100,500,1000,2000")
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "results.json")
    parser.add_argument("--docs", type=Path, default=REPO / "docs" / "BENCHMARKS.md")
    parser.add_argument("--plot", type=Path, default=REPO / "docs" / "bench-poll.png")
    parser.add_argument("--from-results", type=Path, help="only redraw the docs and plot from a results.json")
    parser.add_argument("--render", action="store_true",
                        help="only write the docs again from --output's results (the plot linked if it exists)")
    parser.add_argument("--previous", type=Path, metavar="FILE",
                        help="with --render or --from-results: keep FILE (an earlier results.json) in the results "
                        "as the run the docs compare with, as a run that replaced it would")
    parser.add_argument("--only", choices=PARTS,
                        help="measure only this part, merged into --output's results (core: the sizes, reaction and "
                        "synthetic tables; with --quick, a small one: N = 100, a small fleet, short windows)")
    args = parser.parse_args()
    sizes = [int(n) for n in args.sizes.split(",")]
    if args.render or args.from_results:
        source = args.from_results or args.output
        results = _read(source)
        if args.previous:
            results = keep_earlier(results, _read(args.previous), PARTS)
            _write(results, source)
        if args.from_results:
            write_plot(results, args.plot)
        write_docs(results, args.docs, args.plot if args.plot.exists() else None)
        return 0
    earlier = _read(args.output) if args.output.exists() else {}
    if args.only is not None:
        results = merge(earlier, measure(args.only, quick=args.quick, sizes=sizes), [args.only])
        _write(results, args.output)
        write_docs(results, args.docs, args.plot if args.plot.exists() else None)
        return 0
    parts = ["core"] if args.quick else list(PARTS)
    measured: dict[str, Any] = {}
    for part in parts:
        measured |= measure(part, quick=args.quick, sizes=sizes)
    results = keep_earlier(measured, earlier, parts)
    _write(results, args.output)
    if not args.quick:
        write_plot(results, args.plot)
        write_docs(results, args.docs, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
