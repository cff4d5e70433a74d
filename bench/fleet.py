"""The fleet: throwaway servers with several databases each, one pgparent target per database (`sessions: database`),
client sessions held open on every database, and the watch that sees each target's polls from the servers' side.

Two of the fleet part's scenarios are here, each returning its figures: one process watching every target
(`measure_single`) and a black-holed target among them (`measure_blackhole`); shard mode is bench/shard.py's.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
import yaml
from psycopg import sql

from bench.harness import (
    REPO,
    Cluster,
    Daemon,
    OthersCpu,
    Pressure,
    Sessions,
    cpu_seconds,
    mem_available_mb,
    parse_series,
    peak_rss_mb,
    rss_mb,
    stalling_proxy,
    start_cluster,
)
from bench.stats import median_ms, percentile
from exporter import APPLICATION_NAME

INTERVAL = 1.0
WATCH_APP = "bench-watch"
WATCH_EVERY = 0.5
"""Seconds between the watch's reads of each server's pg_stat_activity (PollWatch). Enough to see every poll: in
dry run with no lock waiters, once a single process leads a target, the poll is the only statement its connection
runs (Monitor.cycle: the leadership statements come before it, nothing after it, and a held lock needs none), so
each poll stays its connection's last query until the next poll starts, an interval or more later; a failed poll
stays until statement_timeout (0.8 of the interval) or the client's deadline (0.9) ends it. A poll that failed
within 0.5 s could be missed, which would merge two gaps into one longer one: an error against pgparent, never
for it."""
REPLICAS = 3
"""Shard-mode replicas, each with one connection per target."""
SCRAPE_TIMEOUT = 10.0
"""Prometheus's default scrape_timeout."""
READ_QUERY = (
    "SELECT a.pid, a.leader_pid, a.backend_type, a.datname, a.usename, a.application_name, host(a.client_addr),"
    " a.state, a.wait_event_type, a.backend_start, a.xact_start, a.query_start, a.state_change, left(a.query, 256),"
    " a.query_id, now() FROM pg_catalog.pg_stat_activity AS a WHERE a.pid <> pg_catalog.pg_backend_pid()"
    " AND a.backend_type IN ('client backend', 'parallel worker') AND a.datname = pg_catalog.current_database()"
)
"""The shape of a `sessions: database` target's poll (exporter/pg/queries/activity.sql), for timing the server's
part."""


class Fleet:
    """Throwaway servers with `per_server` databases each (fleet_00, fleet_01, ...), one target per database, and
    client sessions held open on every database (tagged `FleetNN:...`, so no two databases share a group)."""

    def __init__(self, servers: int, per_server: int, max_per_db: int) -> None:
        self.clusters: list[Cluster] = []
        self.targets: list[tuple[str, Cluster]] = []
        self._admin: dict[int, psycopg.Connection[tuple[Any, ...]]] = {}
        # The sessions, every replica's connection to each database, the benchmark's own (watch, lock counts,
        # census), and a margin; a small shared_buffers so that ten servers fit beside 10,000 backends.
        max_connections = per_server * (max_per_db + REPLICAS) + 20
        try:
            for s in range(servers):
                cluster = start_cluster(settings={"max_connections": str(max_connections),
                                                  "shared_buffers": "16MB"})
                self.clusters.append(cluster)
                with psycopg.connect(cluster.dsn, autocommit=True) as admin:
                    for d in range(per_server):
                        name = f"fleet_{s * per_server + d:02d}"
                        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                        self.targets.append((name, cluster))
        except BaseException:
            self.destroy()
            raise
        # Over the Unix socket (trust): thousands of connections without a SCRAM exchange each.
        self.sessions = [Sessions(self.local_dsn(cluster, name), tag=f"Fleet{i:02d}")
                         for i, (name, cluster) in enumerate(self.targets)]

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.targets]

    @staticmethod
    def local_dsn(cluster: Cluster, dbname: str) -> str:
        return f"host={cluster.base} port={cluster.port} dbname={dbname} user={cluster.user}"

    def watch_connections(self) -> list[psycopg.Connection[tuple[Any, ...]]]:
        """One new connection to each server's postgres database, named as the benchmark's own."""
        return [psycopg.connect(self.local_dsn(c, "postgres"), autocommit=True, application_name=WATCH_APP)
                for c in self.clusters]

    def admin(self, cluster: Cluster) -> psycopg.Connection[tuple[Any, ...]]:
        """A connection to the server's postgres database, kept open (for the main thread's checks: a new
        connection each 100 ms to each of ten servers would be load of its own)."""
        conn = self._admin.get(cluster.port)
        if conn is None or conn.closed:
            conn = psycopg.connect(self.local_dsn(cluster, "postgres"), autocommit=True, application_name=WATCH_APP)
            self._admin[cluster.port] = conn
        return conn

    def grow(self, per_db: int, min_available_mb: int) -> int:
        """Open sessions round-robin until every database has `per_db`; stop early, evenly, when the machine's
        available memory falls under `min_available_mb` or a server refuses more. Returns the sessions per database
        reached."""
        reached = min(len(s.conns) for s in self.sessions)
        for count in range(reached + 1, per_db + 1):
            if mem_available_mb() < min_available_mb:
                print(f"fleet: stopping at {reached} sessions per database: under {min_available_mb} MB available",
                      flush=True)
                return reached
            try:
                for sessions in self.sessions:
                    sessions.fill(count)
            except psycopg.OperationalError as exc:
                print(f"fleet: stopping at {reached} sessions per database: {exc}", flush=True)
                return reached
            reached = count
        return reached

    def census(self) -> dict[str, Any]:
        """What the servers hold now: client backends in all, and per database, which is what each target sees
        (`sessions: database`)."""
        per_db: dict[str, int] = {}
        for cluster in self.clusters:
            rows = self.admin(cluster).execute(
                "SELECT datname, count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                "AND application_name NOT IN (%s, %s) GROUP BY 1",
                [APPLICATION_NAME, WATCH_APP],
            ).fetchall()
            per_db.update({str(name): int(n) for name, n in rows})
        in_view = [per_db.get(name, 0) for name in self.names]
        return {"sessions_per_db": min(len(s.conns) for s in self.sessions), "backends": sum(per_db.values()),
                "sessions_in_view": min(in_view), "sessions_in_view_max": max(in_view),
                "available_mb": mem_available_mb()}

    def read_ms(self, rounds: int = 20, query: str = READ_QUERY, params: list[str] | None = None) -> float:
        """Median time of one target's read of its database's sessions (the poll's columns, `datname =
        current_database()`), or of `query`, on the first server: the server lists every backend before the
        filter."""
        name, cluster = self.targets[0]
        with psycopg.connect(self.local_dsn(cluster, name), autocommit=True) as conn:
            took = []
            for _ in range(rounds):
                started = time.perf_counter()
                conn.execute(query, params).fetchall()
                took.append(time.perf_counter() - started)
        return median_ms(took)

    def config(self, *, ports: dict[str, int] | None = None) -> str:
        """The daemon's config: every database a target reading only its database's sessions (over TCP, `ports`
        overriding the server's port per target), rules.yaml's rules in dry run (nothing is ever signalled), a 1 s
        interval."""
        rules = yaml.safe_load((REPO / "rules.yaml").read_text())["rules"]
        targets = []
        for name, cluster in self.targets:
            port = (ports or {}).get(name, cluster.port)
            dsn = (f"host=127.0.0.1 port={port} dbname={name} user={cluster.user} password={cluster.password} "
                   "connect_timeout=5")
            targets.append({"name": name, "dsn": dsn, "sessions": "database",
                            "labels": {"server": f"s{self.clusters.index(cluster)}"}})
        return yaml.safe_dump({"interval": f"{INTERVAL:g}s", "dry_run": True, "targets": targets,
                               "rules": rules}, sort_keys=False)

    def destroy(self) -> None:
        for conn in self._admin.values():
            conn.close()
        for sessions in getattr(self, "sessions", []):
            sessions.close()
        for cluster in self.clusters:
            cluster.destroy()


class PollWatch(threading.Thread):
    """Each target's poll starts, seen from the outside without loading pgparent: the `query_start` of its poll
    statement in its server's pg_stat_activity, sampled every `every` seconds at a fixed rate. These are the
    server's exact timestamps; why sampling every WATCH_EVERY seconds misses none is said there."""

    QUERY = ("SELECT datname, extract(epoch FROM query_start)::float8 FROM pg_catalog.pg_stat_activity "
             "WHERE application_name = %s AND query ~ 'FROM\\s+pg_catalog\\.pg_stat_activity'")

    def __init__(self, fleet: Fleet, every: float = WATCH_EVERY) -> None:
        super().__init__(daemon=True, name="poll-watch")
        self.every = every
        self.starts: dict[str, list[float]] = {name: [] for name in fleet.names}
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._conns = fleet.watch_connections()

    def run(self) -> None:
        next_read = time.monotonic()
        while not self._done.wait(max(0.0, (next_read := next_read + self.every) - time.monotonic())):
            for conn in self._conns:
                rows = conn.execute(self.QUERY, [APPLICATION_NAME]).fetchall()
                with self._lock:
                    for datname, start in rows:
                        seen = self.starts.get(datname)
                        if seen is not None and start is not None and (not seen or start > seen[-1]):
                            seen.append(start)

    def stop(self) -> None:
        self._done.set()
        self.join(5)
        for conn in self._conns:
            conn.close()

    def count(self, names: list[str], since: float, until: float) -> int:
        """Polls of these targets that started in [since, until] (Unix time)."""
        with self._lock:
            return sum(1 for name in names for t in self.starts[name] if since <= t <= until)

    def gaps(self, names: list[str], since: float, until: float) -> list[float]:
        """Gaps between consecutive polls of each target in [since, until] (Unix time). A target whose polls
        stopped counts the time since its last poll (or since `since`) when that is its longest gap."""
        out: list[float] = []
        with self._lock:
            for name in names:
                starts = [t for t in self.starts[name] if since <= t <= until]
                closed = [b - a for a, b in itertools.pairwise(starts)]
                still_open = until - (starts[-1] if starts else since)
                out += closed + ([still_open] if still_open > max(closed, default=0.0) else [])
        return out

    def longest_from(self, names: list[str], since: float, until: float) -> float | None:
        """When (Unix time) the longest closed gap between polls of these targets in [since, until] began."""
        with self._lock:
            pairs = [(b - a, a) for name in names
                     for a, b in itertools.pairwise([t for t in self.starts[name] if since <= t <= until])]
        return max(pairs)[1] if pairs else None


@contextlib.contextmanager
def watching(fleet: Fleet) -> Iterator[PollWatch]:
    watch = PollWatch(fleet)
    watch.start()
    try:
        yield watch
    finally:
        watch.stop()


def gap_figures(gaps: list[float]) -> dict[str, float]:
    return {"gap_p50_s": round(percentile(gaps, 0.5), 3), "gap_p99_s": round(percentile(gaps, 0.99), 3),
            "gap_max_s": round(max(gaps), 3), "gaps": len(gaps)}


def failure_reasons(d: Daemon, since: float, until: float) -> dict[str, int]:
    """The daemon's own words for the failures it logged in [since, until] (`database_unavailable`, logged on the
    first failed poll of each outage), without the DSN, by count."""
    out: dict[str, int] = {}
    for event in d.events("database_unavailable"):
        if since <= datetime.fromisoformat(event["timestamp"]).timestamp() <= until:
            head, *tail = re.split(r" \((?:\w+=\S*\s?)+\): ?", str(event.get("error", "")), maxsplit=1)
            what = f"{head}: {tail[0].splitlines()[0][:80]}" if tail and tail[0] else head
            out[what] = out.get(what, 0) + 1
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def measure_single(fleet: Fleet, watch: PollWatch, tmp: Path, window: float) -> dict[str, Any]:
    """One process watching every target: CPU share and RSS over `window` seconds, the gaps between polls of each
    target (from its server's pg_stat_activity), failed polls and overruns; /metrics scraped every 15 s with
    Prometheus's default 10 s timeout, and timed. The counters are read by scrapes just outside the window."""
    d = Daemon(tmp, fleet.config()).serving()
    try:
        d.wait_polled(fleet.names)
        time.sleep(5)  # every loop past its first, slower, poll
        errors0 = sum(d.series("pgparent_poll_errors_total").values())
        overruns0 = len(d.events("poll_overrun"))
        elsewhere, pressure = OthersCpu(fleet.clusters), Pressure()
        t0, m0, c0 = time.time(), time.monotonic(), cpu_seconds(d.pid)
        scrapes: list[float] = []
        timed_out = 0
        size = 0
        next_scrape = m0
        while (now := time.monotonic()) - m0 < window:
            if now >= next_scrape:
                next_scrape += 15.0
                try:
                    took, body = d.text(SCRAPE_TIMEOUT)
                    scrapes.append(took)
                    size = len(body.encode())
                except OSError:  # timed out, as Prometheus would give up on it
                    timed_out += 1
            time.sleep(max(0.0, min(next_scrape, m0 + window) - time.monotonic()))
        t1, m1, c1 = time.time(), time.monotonic(), cpu_seconds(d.pid)
        rss, peak, load, pressed = rss_mb(d.pid), peak_rss_mb(d.pid), os.getloadavg()[0], pressure.pct()
        last_took, body = d.text()
        errors = sum(parse_series(body, "pgparent_poll_errors_total").values()) - errors0
        overruns = len(d.events("poll_overrun")) - overruns0
        reasons = failure_reasons(d, t0, t1)
        others_pct = elsewhere.pct_of_core()  # after the window: reading /proc of 10,000 backends takes a while
    finally:
        d.stop()
    return {
        "window_s": round(m1 - m0, 1),
        "load_average": round(load, 2),
        "others_cpu_pct_of_core": others_pct,
        "pressure_pct": pressed,
        "cpu_pct_of_core": round((c1 - c0) / (m1 - m0) * 100, 1),
        "rss_mb": rss,
        "rss_peak_mb": peak,
        **gap_figures(watch.gaps(fleet.names, t0, t1)),
        "polls": watch.count(fleet.names, t0, t1),
        "polls_due": round(len(fleet.names) * (m1 - m0) / INTERVAL),
        "failed_polls": int(errors),
        "overrun_warnings": overruns,
        "failure_reasons": reasons,
        "metrics_scrape_ms": median_ms(scrapes) if scrapes else None,
        "metrics_scrapes_timed_out": timed_out,
        "metrics_scrapes": len(scrapes) + timed_out,
        "metrics_last_scrape_s": round(last_took, 2),
        "metrics_kb": round((size or len(body.encode())) / 1024),
    }


def measure_blackhole(fleet: Fleet, watch: PollWatch, tmp: Path, baseline: float, stall: float) -> dict[str, Any]:
    """One target's DSN through a proxy that stops forwarding (a network black hole): the other targets' gaps
    between polls before and during the stall, and, by the daemon's log, how soon the black-holed target is reported
    unavailable and how soon it is back once the proxy forwards again. /metrics is read only outside the stall, so
    the measurement adds no load during it."""
    name, cluster = fleet.targets[0]
    others = fleet.names[1:]
    proxy = stalling_proxy(cluster.port)
    d = Daemon(tmp, fleet.config(ports={name: proxy.port})).serving()
    try:
        d.wait_polled(fleet.names)
        time.sleep(5)
        elsewhere, pressure = OthersCpu(fleet.clusters), Pressure()
        t0 = time.time()
        time.sleep(baseline)
        t1, load_before = time.time(), os.getloadavg()[0]
        others_before, pressure_before = elsewhere.pct_of_core(), pressure.pct()
        errors_before = d.series("pgparent_poll_errors_total")
        elsewhere, pressure = OthersCpu(fleet.clusters), Pressure()
        stalled = time.time()
        proxy.stall()
        time.sleep(stall)
        t2, load_during = time.time(), os.getloadavg()[0]
        held = proxy.held.is_set()
        proxy.resume()
        worst = watch.longest_from(others, stalled, t2)
        stall_pressure = pressure.pct()
        others_pct = elsewhere.pct_of_core()
        back = d.first_event("database_available", name, t2, timeout=60)
        down = d.first_event("database_unavailable", name, stalled, timeout=0)
        errors = d.series("pgparent_poll_errors_total")
    finally:
        d.stop()
        proxy.close()
    return {
        "stall_s": round(t2 - stalled, 1),
        "proxy_held_traffic": held,
        "others_before": gap_figures(watch.gaps(others, t0, t1)),
        "others_during": gap_figures(watch.gaps(others, stalled, t2)),
        "others_longest_gap_from_s": None if worst is None else round(worst - stalled, 1),
        "load_average_before": round(load_before, 2),
        "load_average_during": round(load_during, 2),
        "others_cpu_pct_before": others_before,
        "pressure_pct_before": pressure_before,
        "others_cpu_pct_during": others_pct,
        "pressure_pct_during": stall_pressure,
        "others_failed_polls": int(sum(v - errors_before.get(k, 0) for k, v in errors.items() if k != name)),
        "blackholed_down_after_s": None if down is None else round(down - stalled, 2),
        "blackholed_back_after_s": None if back is None else round(back - t2, 2),
    }
