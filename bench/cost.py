"""The cost part (`--only cost`): what the figures of exporter/core/cost.py cost the poll, and how accurate load is.

- **OS figures**: at N sessions (bench.harness.Sessions: a quarter running pg_sleep), the poll cycle (read, /proc,
  assess, publish, as the daemon's cycle runs it) with `cost.proc` off and on, side by side in interleaved rounds on
  connections of their own, each carrying its own ledger; also with no cost accounting at all (the cycle before
  load existed), and on with every backend read in full at every poll (a server whose every session ran since the
  last poll).
- **PostgreSQL 18's counters**: the same cycle on a PostgreSQL 18 server with `cost.backend_stats` off and on, and on
  with every backend's counters read (each pg_stat_get_backend_* call looks the pid up among every backend).
- **Load accuracy**: N sessions of one database busy for T seconds under `pgparent run` at a 1 s interval; the
  increase of their groups' pgparent_group_active_seconds_total against the sessions' own time in their statements
  (N x T) and against pg_stat_database.active_time of their database.

`run` returns the part's figures: results.json's `cost`.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from bench.harness import REPO, Daemon, Sessions, server
from bench.stats import median_ms
from exporter.config import load_config
from exporter.core.assess import assess
from exporter.core.cost import STATS_SETTLE
from exporter.core.policy import RuleState
from exporter.core.settings import Config
from exporter.face.collector import PgparentCollector, Published
from exporter.pg.database import Database
from exporter.pgcluster import find_binaries
from exporter.run.costs import Costs
from exporter.run.monitor import gc_paused
from harness.metrics import samples

LOAD_INTERVAL = 1.0


class Cycle:
    """One variant of the poll cycle: its own connection, ledger and collector, cost settings `cost` (None: no cost
    accounting at all), every backend read at every poll with `every`."""

    def __init__(self, dsn: str, config: Config, cost: dict[str, str] | None, every: bool = False) -> None:
        self.db = Database(dsn)
        self.accounts = cost is not None
        settings = cost if cost is not None else {"proc": "off", "backend_stats": "off"}
        self.config = config.model_copy(update={"cost": config.cost.model_copy(update=settings)})
        self.every = every
        self.costs = Costs()
        self.collector = PgparentCollector()
        self.state = RuleState()
        self.times: list[float] = []
        self.read: list[int] = []

    def __call__(self) -> None:
        config = self.config
        started = time.perf_counter()
        snapshot, _, samples = self.costs.read(self.db, self.db.connect(), config, every=self.every)
        with gc_paused():  # as the daemon runs it
            assessed = assess(snapshot, config, self.state, deadlines=True, samples=samples,
                              cost_state=self.costs.state if self.accounts else None)
        self.costs.took(assessed)
        self.state = assessed.decision.state
        self.collector.publish(Published(up=True, grouped=assessed.grouped, violating=assessed.decision.violating,
                                         pending=assessed.decision.pending, cost=assessed.cost))
        self.times.append(time.perf_counter() - started)
        self.read.append(len(samples.procs) + len(snapshot.backend_stats or {}))

    def close(self) -> None:
        self.costs.close()
        self.db.close()


def side_by_side(dsn: str, variants: dict[str, Cycle], rounds: int, warmup: int = 3) -> dict[str, Any]:
    """Every variant's cycle, round after round in turn, after `warmup` unmeasured rounds (the first poll of a
    ledger reads every backend); medians, and each against the first variant."""
    cycles = list(variants.values())
    for n in range(warmup + rounds):
        for cycle in cycles[n % len(cycles):] + cycles[:n % len(cycles)]:  # each first in turn: no order favoured
            cycle()
            if n < warmup:
                cycle.times.clear()
                cycle.read.clear()
        time.sleep(0.05)  # the sessions' state moves on between polls, as between a daemon's
    base = statistics.median(next(iter(variants.values())).times)
    out: dict[str, Any] = {}
    for name, cycle in variants.items():
        median = statistics.median(cycle.times)
        out[name] = {"cycle_ms": median_ms(cycle.times), "added_pct": round((median / base - 1) * 100, 1),
                     "read_per_poll": round(statistics.median(cycle.read))}
        cycle.close()
    return out


def measure_proc(n: int, rounds: int) -> dict[str, Any]:
    """The poll cycle with the OS figures off and on, at `n` sessions."""
    config = load_config(REPO / "rules.yaml")
    with server(max_connections=str(n * 2 + 100), shared_buffers="128MB") as cluster:
        sessions = Sessions(cluster.dsn)
        try:
            sessions.grow_to(n)
            variants = {
                "off": Cycle(cluster.dsn, config, {"proc": "off"}),
                "on": Cycle(cluster.dsn, config, {"proc": "auto"}),
                "none": Cycle(cluster.dsn, config, None),
                "on_every": Cycle(cluster.dsn, config, {"proc": "auto"}, every=True),
            }
            out = side_by_side(cluster.dsn, variants, rounds)
            sources = variants["on"].costs.sources
        finally:
            sessions.close()
    return {"sessions": n, "postgresql": cluster.binaries.major, "rounds": rounds,
            "proc": sources.available("proc"), "proc_io": sources.available("proc_io"), **out}


def measure_backend_stats(n: int, rounds: int) -> dict[str, Any] | None:
    """The poll cycle with PostgreSQL 18's counters off and on, at `n` sessions; None without PostgreSQL 18."""
    if not any(b.major >= 18 for b in find_binaries()):
        return None
    config = load_config(REPO / "rules.yaml")
    major = max(b.major for b in find_binaries())
    with server(major, max_connections=str(n * 2 + 100), shared_buffers="128MB") as cluster:
        sessions = Sessions(cluster.dsn)
        try:
            sessions.grow_to(n)
            time.sleep(STATS_SETTLE + 1)  # the sessions' connecting is past: only what changes since is read
            # /proc off in all three, so bytes read and written come from the server too (as for a remote server).
            variants = {
                "off": Cycle(cluster.dsn, config, {"proc": "off", "backend_stats": "off"}),
                "on": Cycle(cluster.dsn, config, {"proc": "off", "backend_stats": "auto"}),
                "on_every": Cycle(cluster.dsn, config, {"proc": "off", "backend_stats": "auto"}, every=True),
            }
            out = side_by_side(cluster.dsn, variants, rounds)
        finally:
            sessions.close()
    return {"sessions": n, "postgresql": major, "rounds": rounds, **out}


class Busy(threading.Thread):
    """A session of group `tag` that, once `go` is set, runs `statement` and times it, then stays idle until `done`."""

    def __init__(self, dsn: str, tag: str, statement: str, go: threading.Event, done: threading.Event) -> None:
        super().__init__(daemon=True)
        self.dsn, self.tag, self.statement, self.go, self.done = dsn, tag, statement, go, done
        self.took: float | None = None

    def run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("SET application_name = {}").format(sql.Literal(self.tag)))
            self.go.wait()
            started = time.perf_counter()
            conn.execute(self.statement.encode())
            self.took = time.perf_counter() - started
            self.done.wait()  # idle until the daemon has polled past the end


def _active_total(d: Daemon) -> float:
    """The groups' pgparent_group_active_seconds_total, summed over every wait type."""
    text = d.text()[1]
    return sum(v for labels, v in samples(text, "pgparent_group_active_seconds_total")
               if labels.get("parent", "").startswith("Load:"))


def measure_load(n: int, seconds: float) -> dict[str, Any]:
    """`n` sessions of one database (groups of four; two of them run a CPU-bound loop, the others pg_sleep) busy
    for `seconds`, under `pgparent run` at a 1 s interval: the counter's increase against their time in their
    statements and against pg_stat_database.active_time."""
    with server(max_connections=str(n + 50)) as cluster, tempfile.TemporaryDirectory() as tmp:
        with psycopg.connect(cluster.dsn, autocommit=True) as admin:
            admin.execute("CREATE DATABASE bench_load")
        dsn = cluster.dsn_for("bench_load")
        d = Daemon(Path(tmp), f"interval: {LOAD_INTERVAL:g}s\n", dsn=cluster.dsn, log_level="warning",
                   keep_log=False).serving(30)
        go, done = threading.Event(), threading.Event()
        loop = (f"DO $$ DECLARE t timestamptz := clock_timestamp(); BEGIN WHILE clock_timestamp() < t + "
                f"interval '{seconds:g} s' LOOP END LOOP; END $$")
        busy = [Busy(dsn, f"Load:{i // 4}", loop if i < 2 else f"SELECT pg_sleep({seconds:g})", go, done)
                for i in range(n)]
        try:
            for b in busy:
                b.start()
            time.sleep(2 * LOAD_INTERVAL + 1)  # connected and tagged, idle: seen by two polls
            with psycopg.connect(dsn, autocommit=True) as watch:
                active_before, counter_before = _active_time(watch), _active_total(d)
                go.set()
                while any(b.took is None for b in busy):
                    time.sleep(0.1)
                time.sleep(2 * LOAD_INTERVAL + 1)  # two polls past the end: every session's last spell counted
                counter = _active_total(d) - counter_before
                done.set()
                for b in busy:
                    b.join(30)
                # A backend's active time reaches pg_stat_database when it is published: at its exit at the latest.
                while watch.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = 'bench_load' "
                                    "AND pid <> pg_backend_pid()").fetchone() != (0,):
                    time.sleep(0.05)
                active = _active_time(watch) - active_before
        finally:
            done.set()
            d.stop(10)
    spent = sum(b.took or 0.0 for b in busy)
    return {"sessions": n, "seconds": seconds, "interval_s": LOAD_INTERVAL, "postgresql": cluster.binaries.major,
            "statements_s": round(spent, 2), "active_time_s": round(active, 2), "counter_s": round(counter, 2),
            "vs_statements_pct": round((counter / spent - 1) * 100, 2),
            "vs_active_time_pct": round((counter / active - 1) * 100, 2)}


def _active_time(conn: psycopg.Connection[Any]) -> float:
    """pg_stat_database.active_time of this database, in seconds (PostgreSQL 14+), read afresh."""
    conn.execute("SELECT pg_stat_clear_snapshot()")
    row = conn.execute("SELECT active_time FROM pg_stat_database WHERE datname = current_database()").fetchone()
    assert row is not None
    return float(row[0]) / 1000


def run(sessions: int = 2000, rounds: int = 30, load_sessions: int = 20, load_seconds: float = 30.0
        ) -> dict[str, Any]:
    """The part's figures (results.json's `cost`)."""
    out: dict[str, Any] = {"proc": measure_proc(sessions, rounds)}
    print(json.dumps(out["proc"]), flush=True)
    out["backend_stats"] = measure_backend_stats(sessions, rounds)
    print(json.dumps(out["backend_stats"]), flush=True)
    out["load"] = measure_load(load_sessions, load_seconds)
    print(json.dumps(out["load"]), flush=True)
    return out
