"""The core part (`--only core`): at each N, the raw read of pg_stat_activity (the floor) against pgparent's poll
cycle, pgparent's /metrics against postgres_exporter's scrape of the same server (and its CPU per scrape), both
processes' memory; the reaction of a session-count rule; pure grouping of synthetic snapshots.

Each N is measured in interleaved rounds (floor, poll, pgparent /metrics, postgres_exporter scrape, repeated), so noise
from a shared machine hits all contenders alike; the figures are medians. `run` returns the part's figures: the
top-level keys of results.json (date, machine, postgresql, postgres_exporter, sizes, reaction, synthetic).
"""

from __future__ import annotations

import gc
import json
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from bench.harness import (
    EXPORTER,
    REPO,
    Daemon,
    Served,
    Sessions,
    cpu_seconds,
    machine,
    postgres_exporter,
    rss_mb,
    server,
)
from bench.stats import median_ms, percentile
from exporter.config import load_config
from exporter.core.assess import assess
from exporter.core.model import Session, Snapshot
from exporter.core.policy import RuleState
from exporter.face.collector import PgparentCollector, Published
from exporter.pg.database import Database
from exporter.run.monitor import gc_paused

REACTION_RULES = ("interval: 1s\nrules:\n  - name: react\n    match: {parent: 'React:*'}\n    max_sessions: 3\n"
                  "    action: terminate\n")


def measure_size(n: int, dsn: str, rounds: int, pgp: Served, pge: Served | None) -> dict[str, Any]:
    """One N: floor, poll cycle, /metrics of both exporters, postgres_exporter CPU per scrape, both RSS."""
    config = load_config(REPO / "rules.yaml")
    db = Database(dsn)
    collector = PgparentCollector()
    floor: list[float] = []
    poll: list[float] = []
    ours: list[float] = []
    theirs: list[float] = []
    theirs_cpu: list[float] = []
    with psycopg.connect(dsn, autocommit=True) as raw:
        db.connect()
        state = RuleState()
        for _ in range(rounds):
            t = time.perf_counter()
            raw.execute("SELECT * FROM pg_stat_activity").fetchall()
            floor.append(time.perf_counter() - t)

            t = time.perf_counter()
            snapshot = db.snapshot(config.poll)
            with gc_paused():  # as the daemon's cycle runs it
                assessed = assess(snapshot, config, state, deadlines=True)
            decision = assessed.decision
            state = decision.state
            collector.publish(Published(up=True, grouped=assessed.grouped, violating=decision.violating,
                                        pending=decision.pending))
            poll.append(time.perf_counter() - t)

            # The scrapes with this process's collector paused and its garbage collected first: a collection in the
            # measuring client is neither exporter's time (it fell on whichever scrape came after the poll).
            gc.collect()
            with gc_paused():
                ours.append(pgp.scrape()[0])
                if pge is not None:
                    before = cpu_seconds(pge.pid)
                    theirs.append(pge.scrape()[0])
                    theirs_cpu.append(cpu_seconds(pge.pid) - before)
    db.close()
    row: dict[str, Any] = {
        "n": n,
        "groups": len(assessed.grouped.groups),
        "floor_ms": median_ms(floor),
        "poll_ms": median_ms(poll),
        "poll_over_floor": round(statistics.median(poll) / statistics.median(floor), 2),
        "pgparent_metrics_ms": median_ms(ours),
        "pgparent_rss_mb": rss_mb(pgp.pid),
    }
    if pge is not None:
        row |= {
            "postgres_exporter_scrape_ms": median_ms(theirs),
            "postgres_exporter_cpu_ms_per_scrape": round(statistics.mean(theirs_cpu) * 1000, 2),
            "postgres_exporter_rss_mb": rss_mb(pge.pid),
            "postgres_exporter_over_pgparent_metrics": round(statistics.median(theirs) / statistics.median(ours), 1),
        }
    return row


def measure_reaction(dsn: str, trials: int, tmp: Path) -> dict[str, Any]:
    """interval 1s, rule max_sessions 3: from the 4th session of a group connecting to all 4 being gone."""
    daemon = Daemon(tmp, REACTION_RULES, dsn=dsn, log_level="warning", keep_log=False).serving(30)
    times: list[float] = []
    try:
        with psycopg.connect(dsn, autocommit=True) as watch:
            for trial in range(trials):
                tag = f"React:{trial}"
                conns = []
                for _ in range(3):
                    c = psycopg.connect(dsn, autocommit=True)
                    c.execute(sql.SQL("SET application_name = {}").format(sql.Literal(tag)))
                    conns.append(c)
                time.sleep(0.3 + (trial % 7) / 7)  # cross the limit at varying phases of the poll
                crossing = time.perf_counter()
                fourth = psycopg.connect(dsn, autocommit=True, application_name=tag)
                conns.append(fourth)
                while True:
                    row = watch.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                                        [tag]).fetchone()
                    if row is not None and row[0] == 0:
                        break
                    if time.perf_counter() - crossing > 10:
                        raise RuntimeError("reaction trial timed out")
                    time.sleep(0.005)
                times.append(time.perf_counter() - crossing)
                for c in conns:
                    c.pgconn.finish()
    finally:
        daemon.stop(10)
    return {
        "interval_s": 1.0,
        "trials": trials,
        "p50_s": round(percentile(times, 0.5), 3),
        "p95_s": round(percentile(times, 0.95), 3),
        "max_s": round(max(times), 3),
    }


def synthetic(n: int, now: datetime) -> Snapshot:
    """A snapshot of `n` made-up sessions, nine in ten tagged with a distinct application_name each."""
    sessions = []
    for i in range(n):
        tagged = i % 10 != 0
        sessions.append(Session(
            pid=10_000 + i, leader_pid=None, backend_type="client backend", datname="app", usename="app",
            application_name=f"Job:{i // 4}:w{i % 4}" if tagged else f"psql-{i}", client_addr="10.0.0.1",
            state="active" if i % 3 else "idle", wait_event_type=None,
            backend_start=now - timedelta(seconds=i % 900 + 60), xact_start=now - timedelta(seconds=i % 60),
            query_start=now - timedelta(seconds=i % 50), state_change=now - timedelta(seconds=i % 40),
            query="SELECT 1",
        ))
    return Snapshot(now=now, sessions=tuple(sessions))


def measure_synthetic(sizes: list[int], repeats: int) -> list[dict[str, Any]]:
    """Pure grouping + rule evaluation (rules.yaml) on made-up snapshots: no database, no I/O."""
    config = load_config(REPO / "rules.yaml")
    now = datetime.now(UTC)
    out = []
    for n in sizes:
        snap = synthetic(n, now)
        times, paused = [], []
        for _ in range(repeats):
            t = time.perf_counter()
            assess(snap, config, deadlines=True)
            times.append(time.perf_counter() - t)
            t = time.perf_counter()
            with gc_paused():  # as the daemon runs it
                assess(snap, config, deadlines=True)
            paused.append(time.perf_counter() - t)
        out.append({
            "sessions": n,
            "median_ms": median_ms(paused),
            "per_session_us": round(statistics.median(paused) / n * 1e6, 2),
            "gc_on_median_ms": median_ms(times),
        })
    return out


def run(sizes: list[int], rounds: int, trials: int, synthetic_sizes: list[int]) -> dict[str, Any]:
    """The part's figures: every N in `sizes` (`rounds` interleaved rounds each), the reaction (`trials`), and the
    synthetic snapshots."""
    results: dict[str, Any] = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "machine": machine()}
    with server(max_connections=str(max(sizes) * 2 + 100), shared_buffers="128MB") as cluster, \
            tempfile.TemporaryDirectory() as tmp:
        results |= {"postgresql": cluster.binaries.major, "postgres_exporter": EXPORTER is not None}
        sessions = Sessions(cluster.dsn)
        pgp = Daemon(Path(tmp), "interval: 5s\n", dsn=cluster.dsn, log_level="warning", keep_log=False)
        pge: Served | None = None
        try:
            pgp.serving(30)
            pge = postgres_exporter(cluster)
            results["sizes"] = []
            for n in sizes:
                sessions.grow_to(n)
                time.sleep(6)  # let pgparent poll the new population before its /metrics is timed
                results["sizes"].append(measure_size(n, cluster.dsn, rounds, pgp, pge))
                print(json.dumps(results["sizes"][-1]), flush=True)
        finally:
            for proc in (p for p in (pgp, pge) if p is not None):
                proc.stop(10)
            sessions.close()
        # Its own daemon (the one above held the leader lock), on a quiet server.
        results["reaction"] = measure_reaction(cluster.dsn, trials, Path(tmp))
        print(json.dumps(results["reaction"]), flush=True)
    results["synthetic"] = measure_synthetic(synthetic_sizes, 5)
    print(json.dumps(results["synthetic"]), flush=True)
    return results
