"""The benchmark's parts by name, what each measures, and how its figures go into results.json.

- `core` (bench/core.py): the sizes, reaction and synthetic tables, results.json's top-level keys;
- `locks` (bench/locks.py), `deadlines` (bench/reaction.py), `handover` (bench/handover.py), `cost` (bench/cost.py),
  `guards` (bench/guards.py), `top` (bench/top.py): a key each;
- `fleet` (bench/fleet.py and bench/shard.py): one process, shard-mode replicas and a black hole on one fleet.

A part measured again keeps, for the docs' comparisons, figures of the run it replaced: the core the replaced run's
under `previous`; the fleet, under `fleet.previous`, the last run of another layout (servers, targets, sessions per
database), which is what its notes compare with.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import core, cost, guards, handover, locks, reaction, shard, top
from bench.fleet import INTERVAL, REPLICAS, WATCH_EVERY, Fleet, PollWatch, measure_blackhole, measure_single, watching
from bench.harness import REPO
from exporter import APPLICATION_NAME

PARTS = ("core", "locks", "deadlines", "fleet", "handover", "cost", "guards", "top")
SIZES = (100, 500, 1000, 2000)
COMPARED = ("date", "postgres_exporter", "sizes", "reaction", "synthetic")
"""What the core keeps of the run it replaced."""
LAYOUT = ("servers", "targets", "sessions_wanted_per_db")


def run_fleet(quick: bool = False, *, servers: int = 10, per_server: int = 5, per_db: int = 200) -> dict[str, Any]:
    """`servers` servers with `per_server` databases each, one target per database reading only its database's
    sessions, and `per_db` client sessions connected to every database (by default 50 targets and 10,000 backends,
    or as many as the machine's memory holds): one process, three shard-mode replicas, a black-holed target.
    `quick`: 2 servers of 3 databases, 20 sessions each, short windows (a smoke run)."""
    if quick:
        servers, per_server, per_db = 2, 3, 20
    window, stall = (10.0, 8.0) if quick else (60.0, 30.0)
    fleet = Fleet(servers, per_server, per_db)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO)
    out: dict[str, Any] = {
        "commit": commit.stdout.strip(),
        "interval_s": INTERVAL,
        "servers": len(fleet.clusters),
        "databases_per_server": per_server,
        "targets": len(fleet.targets),
        "cores": os.cpu_count(),
        "sessions_wanted_per_db": per_db,
        "watch_every_s": WATCH_EVERY,
    }
    # Kept: the daemons' logs are where a missed goal's cause is read.
    tmp = Path(tempfile.mkdtemp(prefix="pgparent-fleet-"))
    print(f"fleet: daemons' configs and logs in {tmp}", flush=True)
    try:
        # The server's cost of one target's read, at 8 sessions per database and at the full layout.
        fleet.grow(8, min_available_mb=4096)
        read_ms = {str(8 * per_server): fleet.read_ms()}
        fleet.grow(per_db, min_available_mb=4096)
        out.update(fleet.census())
        read_ms[str(out["backends"] // len(fleet.clusters))] = fleet.read_ms()
        out["read_ms_by_backends_per_server"] = read_ms
        out["watch_read_ms"] = fleet.read_ms(query=PollWatch.QUERY, params=[APPLICATION_NAME])
        print(json.dumps(out), flush=True)
        # The watch runs only where its figures are used: shard mode has its own measures.
        with watching(fleet) as watch:
            out["single"] = measure_single(fleet, watch, tmp, window)
        print(json.dumps(out["single"]), flush=True)
        out["shard"] = shard.measure(fleet, tmp, REPLICAS, hold=3.0 if quick else 5.0, steady=round(window / 3),
                                     timeout=180, poll_metrics=True)
        print(json.dumps(out["shard"]), flush=True)
        with watching(fleet) as watch:
            out["blackhole"] = measure_blackhole(fleet, watch, tmp, stall, stall)
        print(json.dumps(out["blackhole"]), flush=True)
    finally:
        fleet.destroy()
    return out


def measure(part: str, *, quick: bool = False, sizes: Sequence[int] = SIZES) -> dict[str, Any]:
    """One part's figures, as the results.json keys they replace. `quick`: the core at N = 100 only with few
    rounds, the fleet small with short windows, the cost at 100 sessions and 4 busy for 5 s, top at 100 sessions for
    10 s (smoke runs)."""
    if part == "core":
        if quick:
            return core.run([100], rounds=5, trials=3, synthetic_sizes=[1_000, 10_000])
        return core.run(list(sizes), rounds=30, trials=20, synthetic_sizes=[10_000, 100_000])
    if part == "locks":
        return {"locks": locks.run(1000, rounds=20)}
    if part == "deadlines":
        return {"deadlines": reaction.run()}
    if part == "fleet":
        return {"fleet": run_fleet(quick=quick)}
    if part == "handover":
        return {"handover": handover.run()}
    if part == "cost":
        if quick:
            return {"cost": cost.run(sessions=100, rounds=5, load_sessions=4, load_seconds=5.0)}
        return {"cost": cost.run()}
    if part == "top":
        if quick:
            return {"top": top.run(sessions=100, window=10.0, warmup=2.0)}
        return {"top": top.run()}
    if part == "guards":
        return {"guards": guards.run(quick=quick)}
    raise ValueError(f"no part {part!r}: {', '.join(PARTS)}")


def _layout(fleet: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(fleet.get(k) for k in LAYOUT)


def keep_earlier(results: dict[str, Any], earlier: dict[str, Any], parts: Sequence[str]) -> dict[str, Any]:
    """`results` whose `parts` replaced those of `earlier`, keeping of `earlier` what the docs compare with."""
    out = dict(results)
    if "core" in parts and earlier.get("sizes"):
        out["previous"] = {k: earlier[k] for k in COMPARED if k in earlier}
    if "fleet" in parts and out.get("fleet") and earlier.get("fleet"):
        before = earlier["fleet"]
        if _layout(before) == _layout(out["fleet"]):
            kept = before.get("previous")
        else:
            kept = {k: v for k, v in before.items() if k != "previous"}
        out["fleet"] = {k: v for k, v in out["fleet"].items() if k != "previous"} | ({"previous": kept} if kept else {})
    return out


def merge(results: dict[str, Any], measured: dict[str, Any], parts: Sequence[str]) -> dict[str, Any]:
    """`results` with `parts` measured again (`measured`: their keys), keeping what the comparisons need."""
    return keep_earlier(results | measured, results, parts)
