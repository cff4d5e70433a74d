"""The guards part (`--only guards`): how fast a memory guard stops a runaway between polls, what its sampler costs,
and how precisely a time limit shorter than the interval is kept.

- **Memory runaway**: a real hash aggregate growing at about 100 MB/s (a seq scan of a table paced by a 10 ms sleep
  every 20000 rows, work_mem 4GB) under `max_session_memory: 300MB, action: cancel` at a 5 s interval, its session
  seen idle by a poll first. Its backend's RssAnon is read from here every 2 ms: the crossing is the first read over
  the limit, the cancel the moment its client gets the error; the memory at cancel is the highest read.
- **Sampler CPU**: pgparent's own CPU (utime + stime) over a window with 50 idle sessions under a memory rule that
  never fires, against the same daemon with the rule matching none, side by side.
- **Short limits**: `max_query_duration: 2s` at a 5 s interval (the cadence then polls every 1 s), 20 trials at
  phases spread over the interval (bench/reaction.py's watch), and the server's extra cost: the CPU of pgparent's
  backend over a window at that cadence against the 5 s interval.

`run` returns results.json's `guards`.
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg

from bench.harness import Daemon, server
from bench.reaction import _run_trials
from bench.stats import percentile
from exporter import APPLICATION_NAME
from harness.proc import cpu_seconds, rss_anon

MB = 1000**2
LIMIT = 300 * MB
ROWS = 6_000_000
GROWING = ("SELECT g, count(*) FROM guard_rows WHERE CASE WHEN g % 20000 = 0 THEN pg_sleep(0.01) IS NOT NULL "
           "ELSE true END GROUP BY g")


def _runaway(dsn: str, daemon: Daemon, interval: float) -> dict[str, float]:
    """One trial: a session a poll has seen, then its growing aggregate; (crossing to cancel, memory at cancel,
    growth rate)."""
    with psycopg.connect(dsn, autocommit=True, application_name="Runaway:1") as conn:
        conn.execute("SET work_mem = '4GB'")
        conn.execute("SET max_parallel_workers_per_gather = 0")
        pid = conn.info.backend_pid
        polls = daemon.series("pgparent_polls_total").get("default", 0)
        deadline = time.monotonic() + 3 * interval + 10
        while daemon.series("pgparent_polls_total").get("default", 0) <= polls and time.monotonic() < deadline:
            time.sleep(0.05)
        trace: list[tuple[float, int]] = []
        done = threading.Event()

        def watch() -> None:
            while not done.is_set():
                trace.append((time.monotonic(), rss_anon(pid) or 0))
                time.sleep(0.002)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        try:
            conn.execute(GROWING).fetchall()
            cancelled = False
        except psycopg.errors.QueryCanceled:
            cancelled = True
        ended = time.monotonic()
        done.set()
        watcher.join()
        conn.execute("SELECT 1")  # the session is still there
    crossed = next((t for t, m in trace if m > LIMIT), None)
    if not cancelled or crossed is None:
        raise RuntimeError(f"runaway trial: cancelled {cancelled}, crossed {crossed}")
    before = [(t, m) for t, m in trace if t <= crossed]
    start = next((t for t, m in before if m > 50 * MB), before[0][0])
    rate = (LIMIT - 50 * MB) / max(crossed - start, 1e-3)
    return {"cross_to_cancel_ms": (ended - crossed) * 1000, "memory_at_cancel_mb": max(m for _, m in trace) / MB,
            "growth_mb_s": rate / MB}


def measure_runaway(dsn: str, tmp: Path, trials: int, interval: float = 5.0) -> dict[str, Any]:
    config = (f"interval: {interval:g}s\nrules:\n  - {{name: memory, match: {{parent: 'Runaway:*'}}, "
              "max_session_memory: 300MB, action: cancel}\n")
    daemon = Daemon(tmp, config, dsn=dsn, log_level="warning").serving()
    try:
        out = [_runaway(dsn, daemon, interval) for _ in range(trials)]
    finally:
        daemon.stop(10)
    times = [o["cross_to_cancel_ms"] for o in out]
    memory = [o["memory_at_cancel_mb"] for o in out]
    return {
        "interval_s": interval, "limit_mb": LIMIT / MB, "trials": trials, "sample_interval_ms": 100,
        "growth_mb_s": round(sorted(o["growth_mb_s"] for o in out)[len(out) // 2], 1),
        "cross_to_cancel_p50_ms": round(percentile(times, 0.5), 1),
        "cross_to_cancel_p95_ms": round(percentile(times, 0.95), 1),
        "cross_to_cancel_max_ms": round(max(times), 1),
        "memory_at_cancel_p95_mb": round(percentile(memory, 0.95), 1),
        "memory_at_cancel_max_mb": round(max(memory), 1),
    }


def _daemon_cpu(daemon: Daemon, window: float) -> float:
    pid = daemon.proc.pid
    before = cpu_seconds(pid)
    time.sleep(window)  # a window of the daemon's own run, measured from the outside
    return (cpu_seconds(pid) - before) / window * 100


def measure_sampler(dsn: str, tmp: Path, sessions: int = 50, window: float = 30.0, rounds: int = 2
                    ) -> dict[str, Any]:
    """pgparent's CPU (% of a core) with `sessions` idle sessions under a memory rule and with the rule on none."""
    conns = [psycopg.connect(dsn, autocommit=True, application_name=f"Watched:{i % 10}") for i in range(sessions)]
    rule = "max_session_memory: 100GB, action: cancel"
    on = Daemon(tmp, f"interval: 5s\nrules:\n  - {{name: watched, match: {{parent: 'Watched:*'}}, {rule}}}\n",
                dsn=dsn, log_level="warning", keep_log=False).serving()
    off = Daemon(tmp, f"interval: 5s\nrules:\n  - {{name: watched, match: {{parent: 'None:*'}}, {rule}}}\n",
                 dsn=dsn, log_level="warning", keep_log=False).serving()
    try:
        time.sleep(6.0)  # both have polled and armed (or not) their sampler
        with_, without = [], []
        for _ in range(rounds):
            with_.append(_daemon_cpu(on, window / rounds))
            without.append(_daemon_cpu(off, window / rounds))
        samples = on.series("pgparent_memory_samples_total").get("default", 0)
    finally:
        on.stop(10)
        off.stop(10)
        for c in conns:
            c.close()
    w, wo = sum(with_) / rounds, sum(without) / rounds
    return {"sessions": sessions, "window_s": window, "sample_interval_ms": 100, "samples": samples,
            "cpu_pct_with": round(w, 2), "cpu_pct_without": round(wo, 2), "sampler_pct": round(w - wo, 2)}


def _run_ns(pid: int) -> int:
    """A single-threaded process's run time in nanoseconds (/proc/<pid>/schedstat: unrounded, unlike stat's ticks)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])


def _backend_cpu(dsn: str, daemon: Daemon, window: float) -> float:
    """CPU milliseconds per minute of the daemon's backend (its monitoring connection) over `window`."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pid FROM pg_stat_activity WHERE application_name = %s AND backend_type = "
                           "'client backend' ORDER BY backend_start LIMIT 1", [APPLICATION_NAME]).fetchone()
    assert row is not None, "the daemon's connection"
    before = _run_ns(row[0])
    time.sleep(window)  # the daemon's own cadence over a window, measured from the outside
    return (_run_ns(row[0]) - before) / 1e6 / window * 60


def measure_short(dsn: str, tmp: Path, trials: int = 20, interval: float = 5.0, limit: float = 2.0,
                  window: float = 30.0, idle: int = 200) -> dict[str, Any]:
    """The reaction to a `limit` at `interval` (glances every limit / 2), and the CPU of pgparent's backend at that
    cadence and with the limit long (no glances), `idle` idle sessions connected besides (the server's scan of its
    backends is what a glance costs it)."""
    conns = [psycopg.connect(dsn, autocommit=True, application_name=f"Idle:{i % 20}") for i in range(idle)]
    try:
        return _short(dsn, tmp, trials, interval, limit, window) | {"idle_sessions": idle}
    finally:
        for c in conns:
            c.close()


def _short(dsn: str, tmp: Path, trials: int, interval: float, limit: float, window: float) -> dict[str, Any]:
    config = (f"interval: {interval:g}s\nrules:\n  - {{name: react, match: {{parent: 'React:*'}}, "
              f"max_query_duration: {limit:g}s, action: terminate}}\n")
    daemon = Daemon(tmp, config, dsn=dsn, log_level="warning", keep_log=False).serving()
    try:
        time.sleep(2.0)
        times = _run_trials(dsn, interval, trials, limit=limit)
        fast = _backend_cpu(dsn, daemon, window)
        polls = daemon.series("pgparent_polls_total").get("default", 0)
    finally:
        daemon.stop(10)
    slow_config = config.replace(f"max_query_duration: {limit:g}s", "max_query_duration: 1h")
    slow = Daemon(tmp, slow_config, dsn=dsn, log_level="warning", keep_log=False).serving()
    try:
        time.sleep(2.0)
        base = _backend_cpu(dsn, slow, window)
    finally:
        slow.stop(10)
    return {
        "interval_s": interval, "limit_s": limit, "trials": trials, "polls": polls,
        "p50_ms": round(percentile(times, 0.5) * 1000, 1), "p95_ms": round(percentile(times, 0.95) * 1000, 1),
        "max_ms": round(max(times) * 1000, 1),
        "server_cpu_ms_per_min": round(fast, 1), "server_cpu_ms_per_min_at_interval": round(base, 1),
    }


def run(trials: int = 10, quick: bool = False) -> dict[str, Any]:
    """The guards part, on a server of its own."""
    with server() as cluster, tempfile.TemporaryDirectory() as tmp:
        with psycopg.connect(cluster.dsn, autocommit=True) as conn:
            conn.execute(f"CREATE TABLE guard_rows AS SELECT g FROM generate_series(1, {ROWS}) g")
            conn.execute("VACUUM ANALYZE guard_rows")
        out = {"runaway": measure_runaway(cluster.dsn, Path(tmp), 3 if quick else trials)}
        print(out, flush=True)
        out["sampler"] = measure_sampler(cluster.dsn, Path(tmp), window=6.0 if quick else 30.0)
        print(out["sampler"], flush=True)
        out["short_limit"] = measure_short(cluster.dsn, Path(tmp), trials=5 if quick else 20,
                                           window=6.0 if quick else 30.0)
        print(out["short_limit"], flush=True)
        return out
