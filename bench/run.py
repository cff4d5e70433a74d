"""pgparent's benchmark: its poll cost against the raw read of pg_stat_activity, its /metrics against
postgres_exporter's scrape on the same server, memory, reaction time, and pure grouping at scale.

    scripts/bench                 # N = 100, 500, 1000, 2000; writes bench/results.json, docs/BENCHMARKS.md, the plot
    scripts/bench --quick         # N = 100 only, few repetitions: a smoke run (~1 min), writes only --output
    scripts/bench --only locks    # the lock step's cost alone, merged into bench/results.json and the docs

Everything is measured side by side in one run, interleaved round by round, so noise from a shared machine hits all
contenders alike; tables report medians and ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from exporter.collector import PgparentCollector, Published  # noqa: E402
from exporter.config import load_config  # noqa: E402
from exporter.db import Database  # noqa: E402
from exporter.grouping import group  # noqa: E402
from exporter.model import Session, Snapshot  # noqa: E402
from exporter.pgcluster import Cluster, free_port, start_cluster  # noqa: E402
from exporter.policy import RuleState, evaluate  # noqa: E402
from exporter.target import gc_paused  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
EXPORTER = shutil.which("prometheus-postgres-exporter") or shutil.which("postgres_exporter")


def median_ms(values: list[float]) -> float:
    return round(statistics.median(values) * 1000, 3)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p * (len(ordered) - 1)))]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def scrape(port: int) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as resp:
        resp.read()
    return time.perf_counter() - started


def wait_http(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        try:
            scrape(port)
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing served on {port}")


class Sessions:
    """Client sessions held open: 4 per tagged group, a tenth extra untagged, a quarter running pg_sleep."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.conns: list[psycopg.Connection[tuple[Any, ...]]] = []

    def grow_to(self, n: int) -> None:
        while len(self.conns) < n + n // 10:
            i = len(self.conns)
            app = f"Bench:{i // 4}:w{i % 4}" if i % 11 else f"untagged-{i}"
            conn = psycopg.connect(self.dsn, autocommit=True)
            conn.execute(sql.SQL("SET application_name = {}").format(sql.Literal(app)))
            if i % 4 == 0:
                conn.pgconn.send_query(b"SELECT pg_sleep(3600)")  # active, no thread needed
            self.conns.append(conn)

    def close(self) -> None:
        for conn in self.conns:
            conn.pgconn.finish()


def start_pgparent(dsn: str, rules: str, tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    config = tmp / f"rules-{len(list(tmp.iterdir()))}.yaml"
    config.write_text(rules)
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter", "run", "--config.file", str(config), "--dsn", dsn,
         "--web.listen-address", f"127.0.0.1:{port}", "--log.format", "json", "--log.level", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO,
    )
    wait_http(port, proc)
    return proc, port


def start_postgres_exporter(cluster: Cluster) -> tuple[subprocess.Popen[bytes], int] | None:
    """The peer, with its default collectors. Its lib/pq wants a URL and sslmode=disable on this local server."""
    if EXPORTER is None:
        return None
    port = free_port()
    url = f"postgresql://{cluster.user}:{cluster.password}@127.0.0.1:{cluster.port}/postgres?sslmode=disable"
    proc = subprocess.Popen([EXPORTER, f"--web.listen-address=127.0.0.1:{port}"],
                            env={**os.environ, "DATA_SOURCE_NAME": url},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_http(port, proc)
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as resp:
        if b"pg_up 1" not in resp.read():
            raise RuntimeError("postgres_exporter does not reach the server: its figures would measure an error path")
    return proc, port


def measure_size(n: int, dsn: str, rounds: int, pgp: tuple[subprocess.Popen[bytes], int],
                 pge: tuple[subprocess.Popen[bytes], int] | None) -> dict[str, Any]:
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
            snap = db.snapshot(config)
            grouped = group(snap, config.grouping.compiled)
            decision = evaluate(grouped, config, state)
            state = decision.state
            collector.publish(Published(up=True, grouped=grouped, violating=decision.violating,
                                        pending=decision.pending))
            poll.append(time.perf_counter() - t)

            ours.append(scrape(pgp[1]))
            if pge is not None:
                before = cpu_seconds(pge[0].pid)
                theirs.append(scrape(pge[1]))
                theirs_cpu.append(cpu_seconds(pge[0].pid) - before)
    db.close()
    row: dict[str, Any] = {
        "n": n,
        "groups": len(grouped.groups),
        "floor_ms": median_ms(floor),
        "poll_ms": median_ms(poll),
        "poll_over_floor": round(statistics.median(poll) / statistics.median(floor), 2),
        "pgparent_metrics_ms": median_ms(ours),
        "pgparent_rss_mb": rss_mb(pgp[0].pid),
    }
    if pge is not None:
        row |= {
            "postgres_exporter_scrape_ms": median_ms(theirs),
            "postgres_exporter_cpu_ms_per_scrape": round(statistics.mean(theirs_cpu) * 1000, 2),
            "postgres_exporter_rss_mb": rss_mb(pge[0].pid),
            "postgres_exporter_over_pgparent_metrics": round(statistics.median(theirs) / statistics.median(ours), 1),
        }
    return row


def measure_reaction(dsn: str, trials: int, tmp: Path) -> dict[str, Any]:
    """interval 1s, rule max_sessions 3: from the 4th session of a group connecting to all 4 being gone."""
    rules = ("interval: 1s\nrules:\n  - name: react\n    match: {parent: 'React:*'}\n    max_sessions: 3\n"
             "    action: terminate\n")
    proc, _ = start_pgparent(dsn, rules, tmp)
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
        proc.terminate()
        proc.wait(10)
    return {
        "interval_s": 1.0,
        "trials": trials,
        "p50_s": round(percentile(times, 0.5), 3),
        "p95_s": round(percentile(times, 0.95), 3),
        "max_s": round(max(times), 3),
    }


def synthetic(n: int, now: datetime) -> Snapshot:
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
            evaluate(group(snap, config.grouping.compiled), config, RuleState())
            times.append(time.perf_counter() - t)
            t = time.perf_counter()
            with gc_paused():  # as the daemon runs it
                evaluate(group(snap, config.grouping.compiled), config, RuleState())
            paused.append(time.perf_counter() - t)
        out.append({
            "sessions": n,
            "median_ms": median_ms(paused),
            "per_session_us": round(statistics.median(paused) / n * 1e6, 2),
            "gc_on_median_ms": median_ms(times),
        })
    return out


def _lock_participants(dsn: str, waiters: int) -> list[psycopg.Connection[tuple[Any, ...]]]:
    """`waiters` sessions waiting in chains on waiters // 10 root blockers: each root holds a row idle in a
    transaction; ten sessions queue on that row (the first waits on the root, the rest behind it on the row lock)."""
    conns: list[psycopg.Connection[tuple[Any, ...]]] = []
    if not waiters:
        return conns
    setup = psycopg.connect(dsn, autocommit=True)
    setup.execute("DROP TABLE IF EXISTS bench_locks")
    setup.execute("CREATE TABLE bench_locks (id int PRIMARY KEY, v int NOT NULL DEFAULT 0)")
    setup.execute("INSERT INTO bench_locks (id) SELECT generate_series(1, %s)", [waiters // 10])
    setup.close()
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


def _end_client_sessions(dsn: str) -> None:
    """Terminate every other client session and wait for them to go (a backend in pg_sleep outlives its client)."""
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            row = admin.execute("SELECT count(*) FROM pg_stat_activity "
                                "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()").fetchone()
            if row is not None and row[0] == 0:
                return
            time.sleep(0.05)


def measure_locks(dsn: str, total: int, rounds: int) -> list[dict[str, Any]]:
    """The poll cycle at `total` sessions with 0, 10 and 100 of them waiting in chains, side by side with the same
    poll without the lock step (interleaved round by round)."""
    config = load_config(REPO / "rules.yaml")
    out = []
    for waiters in (0, 10, 100):
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
                    grouped = group(db.snapshot(config), config.grouping.compiled)
                    evaluate(grouped, config, RuleState())
                    if grouped.locks is not None:
                        blocked = len(grouped.locks.waits)
                timings[name].append(time.perf_counter() - t)
        sessions = len(with_step.snapshot().sessions)
        with_step.close()
        without.close()
        _end_client_sessions(dsn)
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


def machine() -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem_kb = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal")))
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem_kb / 1024 / 1024, 1),
            "python": platform.python_version()}


def run(sizes: list[int], rounds: int, trials: int, synthetic_sizes: list[int]) -> dict[str, Any]:
    cluster: Cluster = start_cluster(settings={"max_connections": str(max(sizes) * 2 + 100),
                                               "shared_buffers": "128MB"})
    sessions = Sessions(cluster.dsn)
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "postgresql": cluster.binaries.major,
        "postgres_exporter": EXPORTER is not None,
    }
    with tempfile.TemporaryDirectory() as tmp:
        pgp = start_pgparent(cluster.dsn, "interval: 5s\n", Path(tmp))
        pge = start_postgres_exporter(cluster)
        try:
            results["sizes"] = []
            for n in sizes:
                sessions.grow_to(n)
                time.sleep(6)  # let pgparent poll the new population before its /metrics is timed
                results["sizes"].append(measure_size(n, cluster.dsn, rounds, pgp, pge))
                print(json.dumps(results["sizes"][-1]), flush=True)
        finally:
            for proc, _ in (p for p in (pgp, pge) if p is not None):
                proc.terminate()
                proc.wait(10)
            sessions.close()
        try:
            # Its own daemon (the one above held the leader lock), on a quiet server.
            results["reaction"] = measure_reaction(cluster.dsn, trials, Path(tmp))
            print(json.dumps(results["reaction"]), flush=True)
        finally:
            cluster.destroy()
    results["synthetic"] = measure_synthetic(synthetic_sizes, 5)
    print(json.dumps(results["synthetic"]), flush=True)
    return results


def run_locks(total: int, rounds: int) -> list[dict[str, Any]]:
    """The lock step's cost on a server of its own."""
    cluster: Cluster = start_cluster(settings={"max_connections": str(total * 2 + 100), "shared_buffers": "128MB"})
    try:
        return measure_locks(cluster.dsn, total, rounds)
    finally:
        cluster.destroy()


def write_docs(results: dict[str, Any], path: Path, plot: Path | None) -> None:
    m = results["machine"]
    lines = [
        "# Benchmarks",
        "",
        f"Measured {results['date']} on {m['cores']} cores of {m['cpu']}, {m['memory_gib']} GiB, Python "
        f"{m['python']}, PostgreSQL {results['postgresql']} (a local throwaway cluster). Reproduce: `scripts/bench` "
        "(writes bench/results.json, this file and the plot). Each N is measured in interleaved rounds (floor, poll, "
        "pgparent /metrics, postgres_exporter scrape, repeated), so noise on this shared machine hits all alike; the "
        "figures are medians.",
        "",
        "N client sessions in N/4 tagged groups, plus N/10 untagged, a quarter running `pg_sleep`.",
        "",
        "| N | groups | floor: `SELECT * FROM pg_stat_activity` | pgparent poll cycle | poll / floor | pgparent "
        "/metrics | postgres_exporter scrape | its CPU per scrape | ratio of the two scrapes | RSS pgparent | RSS "
        "postgres_exporter |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["sizes"]:
        lines.append(
            f"| {r['n']} | {r['groups']} | {r['floor_ms']} ms | {r['poll_ms']} ms | {r['poll_over_floor']}x | "
            f"{r['pgparent_metrics_ms']} ms | {r.get('postgres_exporter_scrape_ms', '-')} ms | "
            f"{r.get('postgres_exporter_cpu_ms_per_scrape', '-')} ms | "
            f"{r.get('postgres_exporter_over_pgparent_metrics', '-')}x | {r['pgparent_rss_mb']} MB | "
            f"{r.get('postgres_exporter_rss_mb', '-')} MB |"
        )
    rx = results["reaction"]
    lines += [
        "",
        f"**Reaction** (interval {rx['interval_s']:g} s, rule `max_sessions: 3`, from the 4th session connecting to "
        f"all four gone, {rx['trials']} trials): p50 **{rx['p50_s']} s**, p95 **{rx['p95_s']} s**, "
        f"max {rx['max_s']} s.",
        "",
        "**Pure grouping + rule evaluation** (rules.yaml, synthetic snapshots with a distinct application_name per "
        "session, no database). The daemon runs this step with the cyclic garbage collector paused (`gc_paused` in "
        "exporter/daemon.py); the last column is the same work with the collector running:",
        "",
        "| sessions | median, as the daemon runs it | per session | with the collector running |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {s['sessions']} | {s['median_ms']} ms | {s['per_session_us']} µs | {s.get('gc_on_median_ms', '-')} ms |"
        for s in results["synthetic"]
    ]
    if plot is not None:
        lines += ["", f"![poll cost and floor against N]({plot.name})"]
    if results.get("locks"):
        lines += [
            "",
            "**Lock chains** (`scripts/bench --only locks`): the poll cycle (read, group, evaluate rules.yaml) at "
            f"about {results['locks'][0]['sessions']} sessions, of which 0, 10 or 100 wait in chains (one root "
            "blocker idle in a transaction per ten waiters, the first waiting on it, the others queued behind the "
            "first), side by side with the same poll without the lock step. The lock step runs only when some "
            "session waits.",
            "",
            "| waiting | sessions | cycle with the lock step | without it | with / with at 0 waiting |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['waiters']} | {r['sessions']} | {r['with_lock_step_ms']} ms | {r['without_lock_step_ms']} ms | "
            f"{r['over_no_waiters']}x |"
            for r in results["locks"]
        ]
    lines += ["", "## Goals", "", "| goal | measured | holds |", "|---|---|---|"]
    lines += [f"| {goal} | {measured} | {'yes' if ok else '**no**'} |" for goal, measured, ok in goals(results)]
    lines += ["", QUERY_NOTE, "", NOTES]
    path.write_text("\n".join(lines) + "\n")


NOTES = """### Reading the figures

- **The poll cycle** is the floor plus pgparent's own Python work: reading its 16 columns into frozen records,
  grouping, evaluating rules.yaml and publishing. The ratio sits at 1.2-1.3x; at small N the fixed cost of a cycle
  weighs most.
- **/metrics** serves the exposition rendered once per poll (exporter/collector.py), so a scrape costs a memory copy
  whatever N is; postgres_exporter queries the server on every scrape and collects many more server-wide metrics.
  The comparison is the one operators face (what a scrape costs), not like-for-like work.
- **Reaction** is bounded by the interval: a limit crossed just after a poll waits for the next one. p95 is
  interval + a few milliseconds of poll and signal.
- **Memory**: a Python process with psycopg, pydantic, structlog and prometheus-client starts at about 50 MB; each
  1000 sessions add about 4 MB. The goal holds at 1000 sessions; at 2000 it is just above 60 MB.
- **100k synthetic sessions: not met.** Grouping and evaluation cost about 2 µs a session (regex parse of the tag,
  list and record creation, one glob per rule and group), growing linearly; 100k sessions take 180-200 ms against the
  150 ms goal, with the garbage collector paused as the daemon does it (about 300 ms with it running). Closing the
  gap would take a compiled tag parser or skipping records for untagged sessions; at the sizes a server actually
  reaches (max_connections in the low thousands) the whole step is a few milliseconds, so the code was kept simple.
"""


QUERY_NOTE = (
    "The poll query (`exporter/queries/activity.sql`) reads the 16 columns pgparent uses, filters to client backends "
    "and parallel workers on the server, and calls one function per row (`left(query, 256)`, bounding what hostile "
    "clients can make it transfer) plus a cast of `client_addr`; the floor reads all of pg_stat_activity's columns."
)


def goals(results: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """Each goal of the performance issue, with the figure that decides it."""
    sizes = {r["n"]: r for r in results["sizes"]}
    out: list[tuple[str, str, bool]] = []
    at = sizes.get(1000) or sizes[max(sizes)]
    out.append(("poll cycle <= 1.3x the floor at 1000 sessions", f"{at['poll_over_floor']}x (N={at['n']})",
                at["poll_over_floor"] <= 1.3))
    if results["postgres_exporter"]:
        slowest = min(r["postgres_exporter_over_pgparent_metrics"] for r in results["sizes"])
        out.append(("/metrics faster than postgres_exporter's scrape at every N",
                    f"postgres_exporter {slowest}x slower at worst", slowest > 1))
    rx = results["reaction"]
    out.append(("reaction p95 <= interval + 0.2 s", f"p95 {rx['p95_s']} s at {rx['interval_s']:g} s",
                rx["p95_s"] <= rx["interval_s"] + 0.2))
    out.append(("resident memory <= 60 MB at 1000 sessions", f"{at['pgparent_rss_mb']} MB (N={at['n']})",
                at["pgparent_rss_mb"] <= 60))
    syn = {s["sessions"]: s for s in results["synthetic"]}
    if 100_000 in syn and 10_000 in syn:
        big, small = syn[100_000], syn[10_000]
        growth = big["per_session_us"] / small["per_session_us"]
        out.append(("100k synthetic sessions grouped and evaluated <= 150 ms, linearly",
                    f"{big['median_ms']} ms; per-session cost 100k/10k = {growth:.2f}",
                    big["median_ms"] <= 150 and growth <= 1.5))
    locks = {r["waiters"]: r for r in results.get("locks", [])}
    if 100 in locks:
        out.append(("poll cycle with 100 sessions waiting in chains <= 1.5x the cycle with none",
                    f"{locks[100]['over_no_waiters']}x", locks[100]["over_no_waiters"] <= 1.5))
    return out


def write_plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = [r["n"] for r in results["sizes"]]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(ns, [r["floor_ms"] for r in results["sizes"]], "o-", label="floor: SELECT * FROM pg_stat_activity")
    ax.plot(ns, [r["poll_ms"] for r in results["sizes"]], "o-", label="pgparent poll cycle")
    if results["postgres_exporter"]:
        ax.plot(ns, [r["postgres_exporter_scrape_ms"] for r in results["sizes"]], "o--",
                label="postgres_exporter scrape")
    ax.plot(ns, [r["pgparent_metrics_ms"] for r in results["sizes"]], "o:", label="pgparent /metrics")
    ax.set_xlabel("client sessions (N)")
    ax.set_ylabel("milliseconds (median)")
    ax.set_title("pgparent: cost against N")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="N=100 only, few rounds: a smoke run")
    parser.add_argument("--sizes", default="100,500,1000,2000")
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "results.json")
    parser.add_argument("--docs", type=Path, default=REPO / "docs" / "BENCHMARKS.md")
    parser.add_argument("--plot", type=Path, default=REPO / "docs" / "bench-poll.png")
    parser.add_argument("--from-results", type=Path, help="only redraw the docs and plot from a results.json")
    parser.add_argument("--only", choices=["locks"], help="measure only this part, merged into --output's results")
    args = parser.parse_args()
    if args.only == "locks":
        results = json.loads(args.output.read_text())
        results["locks"] = run_locks(1000, rounds=20)
        args.output.write_text(json.dumps(results, indent=2) + "\n")
        write_docs(results, args.docs, args.plot if args.plot.exists() else None)
        return 0
    if args.from_results:
        results = json.loads(args.from_results.read_text())
        write_plot(results, args.plot)
        write_docs(results, args.docs, args.plot)
        return 0
    if args.quick:
        results = run([100], rounds=5, trials=3, synthetic_sizes=[1_000, 10_000])
    else:
        results = run([int(n) for n in args.sizes.split(",")], rounds=30, trials=20,
                      synthetic_sizes=[10_000, 100_000])
        results["locks"] = run_locks(1000, rounds=20)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    if not args.quick:
        write_plot(results, args.plot)
        write_docs(results, args.docs, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
