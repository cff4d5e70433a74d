"""Reaction time of a time limit: from the moment a query crosses `max_query_duration` to its session gone, with
deadlines (at a 5 s and a 1 s interval) and without them (poll only, 5 s), measured side by side on one server.

Each trial starts a tagged `pg_sleep` at a different phase of the poll interval (spread evenly over it), reads the
query's own `query_start` from the server, and watches pg_stat_activity every 2 ms until the session is gone; the
reaction is the server-clock time from query_start + limit to the first read that no longer finds it.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from bench.harness import Daemon, server
from bench.stats import percentile

MARGIN = 1.0
"""The rule's max_query_duration is the interval plus this: every query is seen by a poll before it crosses (a query
that starts and crosses between two polls is the poll's to find)."""
CONFIGURATIONS: tuple[tuple[float, bool, float | None], ...] = (
    (5.0, True, None), (1.0, True, None), (5.0, False, None), (5.0, True, 2.0))
"""(interval, deadlines, limit) side by side: deadlines at a 5 s and a 1 s interval, poll only at 5 s, each with the
limit the interval + MARGIN (None); and a 2 s limit at a 5 s interval, where queries begin after a poll and cross
before the next (the glances between polls find them, docs/guards.md)."""


def _daemon(dsn: str, interval: float, deadlines: bool, tmp: Path, limit: float | None = None) -> Daemon:
    limit = interval + MARGIN if limit is None else limit
    config = (
        f"interval: {interval:g}s\ndeadlines: {str(deadlines).lower()}\nrules:\n"
        f"  - {{name: react, match: {{parent: 'React:*'}}, max_query_duration: {limit:g}s, "
        "action: terminate}\n"
    )
    return Daemon(tmp, config, dsn=dsn, log_level="warning", keep_log=False)


def _run_trials(dsn: str, interval: float, trials: int, limit: float | None = None) -> list[float]:
    """`trials` tagged queries started at phases spread evenly over one interval, all watched by one loop that reads
    pg_stat_activity every 2 ms: each reaction is (first read without it) - (its query_start + limit), the limit
    the interval + MARGIN unless given."""
    limit = interval + MARGIN if limit is None else limit
    conns, pids = [], []
    for trial in range(trials):
        conn = psycopg.connect(dsn, autocommit=True)
        conn.execute(sql.SQL("SET application_name = {}").format(sql.Literal(f"React:{interval:g}-{trial}")))
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        conns.append(conn)
        pids.append(row[0])
    starts: dict[int, Any] = {}
    reactions: dict[int, float] = {}
    begun = time.monotonic()
    launched = 0
    with psycopg.connect(dsn, autocommit=True) as watch:
        try:
            while len(reactions) < trials:
                elapsed = time.monotonic() - begun
                while launched < trials and elapsed >= interval * launched / trials:
                    conns[launched].pgconn.send_query(b"SELECT pg_sleep(60)")
                    launched += 1
                rows = watch.execute(
                    "SELECT pid, query_start, state, clock_timestamp() FROM pg_stat_activity WHERE pid = ANY(%s)",
                    [pids[:launched]],
                ).fetchall()
                now = watch.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index]
                seen = {r[0]: r for r in rows}
                for pid in pids[:launched]:
                    r = seen.get(pid)
                    if r is not None and r[2] == "active" and pid not in starts:
                        starts[pid] = r[1]
                    if r is None and pid in starts and pid not in reactions:
                        reactions[pid] = (now - starts[pid]).total_seconds() - limit
                if elapsed > limit + 3 * interval + 30:
                    raise RuntimeError(f"reaction trials timed out: {len(reactions)} of {trials} ended")
                time.sleep(0.002)
        finally:
            for conn in conns:
                conn.pgconn.finish()
    return list(reactions.values())


def measure(dsn: str, trials: int = 20) -> list[dict[str, Any]]:
    """Reaction p50/p95/max for each of CONFIGURATIONS."""
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for interval, deadlines, given in CONFIGURATIONS:
            limit = interval + MARGIN if given is None else given
            daemon = _daemon(dsn, interval, deadlines, Path(tmp), limit)
            try:
                time.sleep(2.0)  # the daemon's start
                times = _run_trials(dsn, interval, trials, limit)
            finally:
                daemon.stop(10)
            out.append({
                "interval_s": interval,
                "deadlines": deadlines,
                "limit_s": limit,
                "trials": trials,
                "p50_ms": round(percentile(times, 0.5) * 1000, 1),
                "p95_ms": round(percentile(times, 0.95) * 1000, 1),
                "max_ms": round(max(times) * 1000, 1),
                "mean_ms": round(statistics.mean(times) * 1000, 1),
            })
            print(out[-1], flush=True)
    return out


def run(trials: int = 20) -> list[dict[str, Any]]:
    """The deadlines part (`--only deadlines`, results.json's `deadlines`): on a server of its own."""
    with server() as cluster:
        return measure(cluster.dsn, trials)
