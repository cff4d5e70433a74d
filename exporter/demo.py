"""`pgparent demo`: the seed scenario, end to end, on a throwaway PostgreSQL it starts and stops itself.

Two `FakeParent:1001` and two `FakeParent:2002` sessions each run `simulate_long_query()` (8 s of pg_sleep, then an
insert into `sample_data`). The daemon runs with one rule: terminate FakeParent:1001 once a query of it has run for 3 s.
The demo narrates what an operator would see: the groups, the metrics, the audit events, 2002 completing.
"""

from __future__ import annotations

import sys
import threading
import time
import urllib.request
from typing import Any

from exporter.cli import groups_table
from exporter.config import parse_config
from exporter.daemon import Daemon
from exporter.db import Database, fetch_rows, run_script, run_tagged
from exporter.grouping import group
from exporter.logs import configure
from exporter.pgcluster import Cluster, free_port, start_cluster

QUERY_LIMIT = 3.0
INTERVAL = 1.0
SESSION_SECONDS = 8.0

DEMO_RULES = {
    "interval": f"{INTERVAL:g}s",
    "rules": [
        {
            "name": "runaway-1001",
            "match": {"parent": "FakeParent:1001"},
            "max_query_duration": f"{QUERY_LIMIT:g}s",
            "action": "terminate",
        }
    ],
}


def _say(text: str = "") -> None:
    print(text, flush=True)


class _Client(threading.Thread):
    """One application session of the seed scenario, remembering how and when it ended."""

    def __init__(self, dsn: str, tag: str) -> None:
        super().__init__(name=tag, daemon=True)
        self.dsn, self.tag = dsn, tag
        self.started = time.monotonic()
        self.outcome: str | None = None
        self.ended: float | None = None

    def run(self) -> None:
        self.outcome = run_tagged(self.dsn, self.tag, "demo_session")
        self.ended = time.monotonic()


def _metric_lines(port: int, prefixes: tuple[str, ...]) -> list[str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text: str = resp.read().decode()
    return [line for line in text.splitlines() if line.startswith(prefixes)]


def _wait(predicate: Any, timeout: float, step: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


def run_demo(hold: float = 0.0) -> int:
    configure("console", "info", stream=sys.stdout)  # one stream, so narration and events interleave in order
    _say("== pgparent demo: the seed scenario on a throwaway PostgreSQL ==")
    cluster: Cluster | None = None
    daemon: Daemon | None = None
    try:
        cluster = start_cluster()
        _say(f"1. Started PostgreSQL {cluster.binaries.major} ({cluster.binaries.source}) on 127.0.0.1:{cluster.port}")
        run_script(cluster.dsn, "demo_create_db")
        dsn = cluster.dsn_for("demo_db")
        run_script(dsn, "demo_setup")
        _say("   created demo_db, table sample_data and function simulate_long_query() (pg_sleep 8 s, then insert)")

        clients = [
            _Client(dsn, tag) for tag in ("FakeParent:1001", "FakeParent:1001", "FakeParent:2002", "FakeParent:2002")
        ]
        for c in clients:
            c.start()
        _say("2. Launched 4 sessions: SET application_name = 'FakeParent:<id>'; SELECT simulate_long_query();")

        probe = Database(dsn)
        try:
            _wait(
                lambda: (
                    sum(g.stats.active for g in group(probe.snapshot(), r"^(?P<parent>[^:]+:[^:]+)").groups.values())
                    >= 4
                ),
                10,
            )
            _say("3. `pgparent groups` now shows:")
            for line in groups_table(group(probe.snapshot(), r"^(?P<parent>[^:]+:[^:]+)")):
                _say("     " + line)
        finally:
            probe.close()

        config = parse_config(DEMO_RULES, "demo rules")
        port = free_port()
        daemon = Daemon(config, Database(dsn), listen=("127.0.0.1", port))
        daemon.start()
        _say(
            f"4. Started the daemon: interval {INTERVAL:g}s, rule runaway-1001 terminates FakeParent:1001 once a "
            f"query has run {QUERY_LIMIT:g}s; /metrics on http://127.0.0.1:{port}/metrics"
        )
        time.sleep(INTERVAL * 1.5)
        _say("   /metrics, per group:")
        for line in _metric_lines(port, ("pgparent_group_sessions", "pgparent_group_max_query")):
            _say("     " + line)

        _say("5. Waiting for the rule; each signal is audited as a session_signal event ...")
        doomed = [c for c in clients if c.tag == "FakeParent:1001"]
        _wait(lambda: all(c.ended is not None for c in doomed), QUERY_LIMIT + 4 * INTERVAL + 5)
        for c in doomed:
            if c.ended is not None:
                late = c.ended - c.started - QUERY_LIMIT
                _say(f"   {c.tag} session {c.outcome}, {late:.2f}s after crossing its {QUERY_LIMIT:g}s limit")
            else:
                _say(f"   {c.tag} session still running: the rule did not act (see the logs above)")
        for line in _metric_lines(port, ("pgparent_signalled_sessions_total", "pgparent_rule_violating_groups")):
            _say("     " + line)

        survivors = [c for c in clients if c.tag == "FakeParent:2002"]
        _say("6. FakeParent:2002 is under no rule; waiting for its sessions to complete ...")
        _wait(lambda: all(c.ended is not None for c in survivors), SESSION_SECONDS + 10)
        for c in survivors:
            _say(f"   {c.tag} session {c.outcome or 'still running'}")
        _say("   rows in sample_data (written by sessions that completed):")
        rows = fetch_rows(dsn, "demo_rows")
        for parent, pid, finished_at in rows:
            _say(f"     parent={parent} pid={pid} finished_at={finished_at:%H:%M:%S}")
        ok = (
            all(c.outcome == "terminated" for c in doomed)
            and all(c.outcome == "completed" for c in survivors)
            and sorted(r[0] for r in rows) == ["FakeParent:2002", "FakeParent:2002"]
        )
        _say(
            "7. "
            + (
                "Result: FakeParent:1001 was terminated by the rule; FakeParent:2002 completed its work."
                if ok
                else "Result: the scenario did not go as expected (see above)."
            )
        )
        if hold > 0:
            _say(f"   holding the server and /metrics for {hold:g}s ...")
            time.sleep(hold)
        return 0 if ok else 1
    finally:
        if daemon is not None:
            daemon.stop()
        if cluster is not None:
            cluster.destroy()
            _say("   stopped the daemon and removed the throwaway server")
