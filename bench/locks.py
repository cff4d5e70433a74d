"""The lock part (`--only locks`): the poll cycle (read, group, evaluate rules.yaml) at about 1000 sessions, of which
0, 10 or 100 wait in chains, side by side with the same poll without the lock step, interleaved round by round.
`run` returns one row of figures per number of waiters (results.json's `locks`)."""

from __future__ import annotations

import json
import time
from typing import Any

import psycopg

from bench.harness import REPO, Sessions, end_client_sessions, server
from bench.stats import median_ms
from exporter.config import load_config
from exporter.core.assess import assess
from exporter.pg.database import Database
from exporter.run.monitor import gc_paused

WAITERS = (0, 10, 100)


def _lock_participants(dsn: str, waiters: int) -> list[psycopg.Connection[tuple[Any, ...]]]:
    """`waiters` sessions waiting in chains on waiters // 10 root blockers: each root holds a row idle in a
    transaction; ten sessions queue on that row (the first waits on the root, the rest behind it on the row lock)."""
    conns: list[psycopg.Connection[tuple[Any, ...]]] = []
    if not waiters:
        return conns
    with psycopg.connect(dsn, autocommit=True) as setup:
        setup.execute("DROP TABLE IF EXISTS bench_locks")
        setup.execute("CREATE TABLE bench_locks (id int PRIMARY KEY, v int NOT NULL DEFAULT 0)")
        setup.execute("INSERT INTO bench_locks (id) SELECT generate_series(1, %s)", [waiters // 10])
    for chain in range(1, waiters // 10 + 1):
        root = psycopg.connect(dsn, autocommit=True, application_name=f"BenchRoot:{chain}")
        root.execute(f"BEGIN; UPDATE bench_locks SET v = v + 1 WHERE id = {chain}".encode())
        conns.append(root)
        for i in range(10):
            c = psycopg.connect(dsn, autocommit=True, application_name=f"BenchWait:{chain}:{i}")
            c.pgconn.send_query(f"UPDATE bench_locks SET v = v + 1 WHERE id = {chain}".encode())
            conns.append(c)
    with psycopg.connect(dsn, autocommit=True) as watch:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            row = watch.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'").fetchone()
            if row is not None and row[0] >= waiters:
                break
            time.sleep(0.05)
        else:
            raise RuntimeError("the lock waiters did not all start waiting")
    return conns


def measure(dsn: str, total: int, rounds: int) -> list[dict[str, Any]]:
    """The poll cycle at `total` sessions with 0, 10 and 100 of them waiting in chains, side by side with the same
    poll without the lock step (interleaved round by round)."""
    config = load_config(REPO / "rules.yaml")
    out = []
    for waiters in WAITERS:
        participants = _lock_participants(dsn, waiters)
        filler = Sessions(dsn)
        filler.grow_to(int((total - len(participants)) / 1.1))
        with_step, without = Database(dsn), Database(dsn, read_blockers=False)
        timings: dict[str, list[float]] = {"with": [], "without": []}
        blocked = 0
        for _ in range(rounds):
            for name, db in (("with", with_step), ("without", without)):
                t = time.perf_counter()
                with gc_paused():
                    grouped = assess(db.snapshot(config.poll), config).grouped
                    if grouped.locks is not None:
                        blocked = len(grouped.locks.waits)
                timings[name].append(time.perf_counter() - t)
        sessions = len(with_step.snapshot().sessions)
        with_step.close()
        without.close()
        end_client_sessions(dsn)
        filler.close()
        for c in participants:
            c.pgconn.finish()
        out.append({
            "sessions": sessions,
            "waiters": waiters,
            "waiters_seen": blocked,
            "with_lock_step_ms": median_ms(timings["with"]),
            "without_lock_step_ms": median_ms(timings["without"]),
        })
        print(json.dumps(out[-1]), flush=True)
    base = out[0]["with_lock_step_ms"]
    for row in out:
        row["over_no_waiters"] = round(row["with_lock_step_ms"] / base, 2)
    return out


def run(total: int = 1000, rounds: int = 20) -> list[dict[str, Any]]:
    """The lock step's cost on a server of its own."""
    with server(max_connections=str(total * 2 + 100), shared_buffers="128MB") as cluster:
        return measure(cluster.dsn, total, rounds)
