"""Hand-over of targets between shard-mode replicas, read from the server's own pg_locks: one server with a database
per target (`sessions: database`, no client sessions: the hand-over alone, not the load of polling), three replicas.

- A replica joins two that lead every target: the longest any target is without a leader lock meanwhile, and when
  the leader locks are spread over the three as the fair share allows.
- The replica leading most is killed with SIGKILL: the time until every target has a leader lock again.

pg_locks is read every 20 ms; a replica is known by the client ports of its connections (from /proc), so the
figures need nothing from the replicas themselves.
"""

from __future__ import annotations

import math
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from bench.harness import Daemon, local_ports, server
from exporter.core.settings import LOCK_KEY

SAMPLE = 0.02


class Locks:
    """Who holds each target database's leader lock, read from pg_locks, every SAMPLE seconds on a thread."""

    def __init__(self, dsn: str, key: int, databases: list[str]) -> None:
        self.dsn, self.databases = dsn, set(databases)
        self.hi, self.lo = (key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF
        self.unled_since: dict[str, float] = {}
        self.longest_unled = 0.0
        self.latest: dict[str, int] = {}
        """database -> client port of the session holding its leader lock."""
        self.latest_at = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def read(self, conn: psycopg.Connection[Any]) -> dict[str, int]:
        rows = conn.execute(
            "SELECT d.datname, a.client_port FROM pg_catalog.pg_locks AS l "
            "JOIN pg_catalog.pg_database AS d ON d.oid = l.database "
            "JOIN pg_catalog.pg_stat_activity AS a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.mode = 'ExclusiveLock' AND l.objsubid = 1 "
            "AND l.classid = %s::oid AND l.objid = %s::oid", [self.hi, self.lo]).fetchall()
        return {name: port for name, port in rows if name in self.databases}

    def _run(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            while not self._stop.is_set():
                now = time.monotonic()
                led = self.read(conn)
                for name in self.databases:
                    if name not in led:
                        self.unled_since.setdefault(name, now)
                    elif name in self.unled_since:
                        self.longest_unled = max(self.longest_unled, now - self.unled_since.pop(name))
                self.latest, self.latest_at = led, now
                time.sleep(SAMPLE)

    def start(self) -> Locks:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def wait(self, check: Callable[[dict[str, int]], bool], timeout: float) -> float | None:
        """Seconds until `check(latest)` holds for a read made since the call, or None after `timeout`."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.latest_at > started and check(self.latest):
                return round(time.monotonic() - started, 3)
            time.sleep(SAMPLE / 2)
        return None


def _per_replica(led: dict[str, int], replicas: list[Daemon]) -> list[int]:
    ports = [local_ports(r.pid) if r.proc.poll() is None else set() for r in replicas]
    return [sum(1 for port in led.values() if port in p) for p in ports]


def run(targets: int = 50, replicas: int = 3, interval: float = 1.0) -> dict[str, Any]:
    """Join and SIGKILL figures for `replicas` shard-mode replicas over `targets` database targets of one server
    (results.json's `handover`)."""
    share_after_join = math.ceil(targets / replicas)
    daemons: list[Daemon] = []
    with server(max_connections=str(targets * (replicas + 1) + 50)) as cluster:
        try:
            names = [f"handover_{i:02d}" for i in range(targets)]
            with psycopg.connect(cluster.dsn, autocommit=True) as admin:
                for name in names:
                    admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            tmp = Path(tempfile.mkdtemp(prefix="pgparent-handover-"))
            config = f"interval: {interval:g}s\nleader_election: {{shard: true}}\ntargets:\n" + "".join(
                f"  - {{name: {n}, dsn: '{cluster.dsn_for(n)}', sessions: database}}\n" for n in names)

            locks = Locks(cluster.dsn, LOCK_KEY, names).start()
            daemons += [Daemon(tmp, config) for _ in range(replicas - 1)]
            all_led = locks.wait(lambda led: len(led) == targets, timeout=60)
            time.sleep(3 * interval)  # the first replicas settle their shares
            locks.longest_unled, locks.unled_since = 0.0, {}
            daemons.append(Daemon(tmp, config))
            joined_at = time.monotonic()
            spread_in = locks.wait(
                lambda led: len(led) == targets and max(_per_replica(led, daemons)) <= share_after_join
                and min(_per_replica(led, daemons)) > 0, timeout=60)
            time.sleep(5 * interval)
            join = {
                "replicas_before": replicas - 1,
                "all_led_at_start_s": all_led,
                "spread_after_join_s": spread_in,
                "longest_without_leader_s": round(locks.longest_unled, 3),
                "still_unled": sorted(locks.unled_since),
                "spread": _per_replica(locks.latest, daemons),
                "watched_s": round(time.monotonic() - joined_at, 1),
            }
            spread = _per_replica(locks.latest, daemons)
            victim = daemons[spread.index(max(spread))]
            gone = local_ports(victim.pid)
            victim.proc.kill()
            killed_at = time.monotonic()
            led_again = locks.wait(lambda led: len(led) == targets and not gone & set(led.values()), timeout=30)
            victim.proc.wait()
            time.sleep(3 * interval)
            kill = {
                "orphaned": max(spread),
                "all_led_again_s": led_again,
                "after_interval_ratio": round(led_again / interval, 2) if led_again is not None else None,
                "spread": [n for n, d in zip(_per_replica(locks.latest, daemons), daemons, strict=True)
                           if d is not victim],
                "watched_s": round(time.monotonic() - killed_at, 1),
            }
            locks.stop()
            return {"targets": targets, "replicas": replicas, "interval_s": interval, "join": join, "kill": kill,
                    "logs": str(tmp)}
        finally:
            for d in daemons:
                d.stop(10)
