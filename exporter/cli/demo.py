"""`pgparent demo`: the seed scenario in the seed's own terms, on a throwaway PostgreSQL it starts and removes itself.

It builds what the seed builds (database `demo_db`, table `sample_data` with its three rows, `simulate_long_query()`),
then plays the scenario twice, each time with two `FakeParent:1001` and two `FakeParent:2002` sessions running the
seed's `SET application_name = '...'; SELECT simulate_long_query();`:

- round 1, by hand: the seed's manual steps done with pgparent: list the sessions and the groups (`pgparent groups`),
  then terminate FakeParent:1001 through the code path of `pgparent terminate`;
- round 2, by rule: the daemon, with one rule, terminates FakeParent:1001 once a query of it has run too long.

It ends as the seed does, with `SELECT * FROM sample_data`: the three demo rows and one "Long query complete" row per
FakeParent:2002 session, none for FakeParent:1001. The exit status is 0 only if all of that happened.
"""

from __future__ import annotations

import sys
import threading
import time
import urllib.request
from collections.abc import Callable

from prometheus_client.parser import text_string_to_metric_families

from exporter.cli import render
from exporter.cli.terminate import signal_group
from exporter.core.assess import assess
from exporter.core.model import Grouped
from exporter.core.settings import Config, parse_config
from exporter.logs import configure
from exporter.pg.database import Database
from exporter.pg.scripts import fetch_table, run_script, run_tagged
from exporter.pgcluster import Cluster, ClusterError, free_port, start_cluster
from exporter.run.daemon import Daemon

SEED_SECONDS = 30.0
"""How long the seed's simulate_long_query() sleeps."""
SESSION_SECONDS = 6.0
"""How long the demo's sleeps: long enough to watch, short enough to wait for twice."""
QUERY_LIMIT = 2.0
INTERVAL = 1.0
DOOMED, SURVIVOR = "FakeParent:1001", "FakeParent:2002"
TAGS = (DOOMED, DOOMED, SURVIVOR, SURVIVOR)
RULE = "runaway-1001"

DEMO_RULES = {
    "interval": f"{INTERVAL:g}s",
    "rules": [
        {
            "name": RULE,
            "match": {"parent": DOOMED},
            "max_query_duration": f"{QUERY_LIMIT:g}s",
            "action": "terminate",
        }
    ],
}


def _say(text: str = "") -> None:
    print(text, flush=True)


def _show(lines: list[str], indent: str = "     ") -> None:
    for line in lines:
        _say(indent + line)


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


def _launch(dsn: str) -> list[_Client]:
    clients = [_Client(dsn, tag) for tag in TAGS]
    for c in clients:
        c.start()
    _say("   launched 4 sessions, as the seed's background jobs, each running one of:")
    for tag in (DOOMED, SURVIVOR):
        _say(f"     SET application_name = '{tag}'; SELECT simulate_long_query();   (x2)")
    return clients


def _wait(predicate: Callable[[], object], timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


def _all_running(grouped: Grouped) -> bool:
    return all(
        tag in grouped.groups and grouped.groups[tag].stats.active >= TAGS.count(tag) for tag in (DOOMED, SURVIVOR)
    )


def _ended(clients: list[_Client], tag: str, outcome: str, timeout: float) -> bool:
    """Wait for the `tag` sessions to end; report each; True if each ended with `outcome`."""
    mine = [c for c in clients if c.tag == tag]
    _wait(lambda: all(c.ended is not None for c in mine), timeout)
    for c in mine:
        _say(f"   {tag} session {c.outcome or 'still running'}")
    return all(c.outcome == outcome for c in mine)


class _Metrics:
    """The daemon's /metrics, as a user would read it."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}/metrics"

    def text(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as resp:
            body: str = resp.read().decode()
        return body

    def sample(self, name: str, labels: dict[str, str]) -> float | None:
        """The sum of the samples of `name` whose labels include `labels` (None when there is none)."""
        values = [
            float(s.value)
            for family in text_string_to_metric_families(self.text())
            for s in family.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        ]
        return sum(values) if values else None

    def lines(self, keep: Callable[[str], bool]) -> list[str]:
        return [line for line in self.text().splitlines() if not line.startswith("#") and keep(line)]


def _round_by_hand(dsn: str, config: Config) -> bool:
    _say()
    _say("Round 1, by hand: the seed's manual steps, done with pgparent")
    clients = _launch(dsn)
    db = Database(dsn)
    try:
        snapshot = db.snapshot(config.poll)
        deadline = time.monotonic() + 10
        while not _all_running(grouped := assess(snapshot, config).grouped) and time.monotonic() < deadline:
            time.sleep(0.1)
            snapshot = db.snapshot(config.poll)
        _say("   validate the active sessions: the seed's listing (pg_stat_activity, application_name LIKE")
        _say("   'FakeParent:%'), from pgparent's poll:")
        _show(render.sessions_table(s for s in snapshot.sessions if s.application_name.startswith("FakeParent:")))
        _say("   and grouped by parent tag, as `pgparent groups` prints them:")
        _show(render.groups_table(grouped))
        _say(f"   terminate the {DOOMED} group, as `pgparent terminate {DOOMED}` does (the seed's")
        _say(f"   pg_terminate_backend(pid) ... WHERE application_name = '{DOOMED}', with pgparent's guards):")
        result = signal_group(db, config, DOOMED, "terminate", out=lambda line: _say("     " + line))
    finally:
        db.close()
    terminated = _ended(clients, DOOMED, "terminated", 5)
    _say(f"   waiting for {SURVIVOR} to finish its work ...")
    completed = _ended(clients, SURVIVOR, "completed", SESSION_SECONDS + 10)
    return result.done == 2 and result.failed == 0 and terminated and completed


def _round_by_rule(dsn: str, config: Config, hold: float) -> bool:
    _say()
    _say("Round 2, by rule: the daemon does the same unattended")
    port = free_port()
    daemon = Daemon(config, Database(dsn), listen=("127.0.0.1", port))
    daemon.start()
    try:
        metrics = _Metrics(port)
        _say(
            f"   started the daemon: interval {INTERVAL:g}s; rule {RULE} terminates {DOOMED} once a query of it has "
            f"run {QUERY_LIMIT:g}s; /metrics on {metrics.url}"
        )
        clients = _launch(dsn)
        _wait(lambda: metrics.sample("pgparent_group_sessions", {"parent": SURVIVOR, "state": "active"}) == 2, 10)
        _say("   /metrics, per group:")
        _show(
            metrics.lines(
                lambda line: (
                    line.startswith("pgparent_group_max_query")
                    or (line.startswith("pgparent_group_sessions") and 'state="active"' in line)
                )
            )
        )
        _say("   waiting for the rule; each signal is audited as a session_signal event ...")
        doomed = [c for c in clients if c.tag == DOOMED]
        _wait(lambda: all(c.ended is not None for c in doomed), QUERY_LIMIT + 4 * INTERVAL + 5)
        for c in doomed:
            if c.ended is not None:
                late = c.ended - c.started - QUERY_LIMIT
                _say(f"   {c.tag} session {c.outcome}, {late:.2f}s after crossing its {QUERY_LIMIT:g}s limit")
            else:
                _say(f"   {c.tag} session still running: the rule did not act (see the logs above)")
        signalled = {"rule": RULE, "action": "terminate"}
        by_rule = _wait(lambda: metrics.sample("pgparent_signalled_sessions_total", signalled) == 2, 5)
        _show(metrics.lines(lambda line: f'rule="{RULE}"' in line))
        _say(f"   waiting for {SURVIVOR}, under no rule, to finish its work ...")
        completed = _ended(clients, SURVIVOR, "completed", SESSION_SECONDS + 10)
        ok = by_rule and all(c.outcome == "terminated" for c in doomed) and completed
        if hold > 0:
            _say(f"   holding the server and /metrics for {hold:g}s ...")
            time.sleep(hold)
        return ok
    finally:
        daemon.stop()


def _final_table(dsn: str) -> bool:
    _say()
    _say("SELECT * FROM sample_data;  (as the seed ends: one 'Long query complete' row per session that finished)")
    columns, rows = fetch_table(dsn, "demo_rows")
    _show(render.psql_table(columns, rows), indent="  ")
    _say("  (NOW() is the start of each session's transaction: a row's time is when its query began, as in the seed)")
    descriptions = [str(r[1]) for r in sorted(rows)]
    expected_long = 2 * TAGS.count(SURVIVOR)  # one per FakeParent:2002 session, two rounds; none for 1001
    return descriptions[:3] == ["Demo entry 1", "Demo entry 2", "Demo entry 3"] and (
        len(descriptions) == 3 + expected_long
        and all(d.startswith("Long query complete at ") for d in descriptions[3:])
    )


def run_demo(hold: float = 0.0, seconds: float = SESSION_SECONDS) -> int:
    """Play the seed scenario; 0 if FakeParent:1001 was terminated both times and only FakeParent:2002 wrote rows."""
    configure("console", "info", stream=sys.stdout)  # one stream, so narration and events interleave in order
    _say("== pgparent demo: the seed scenario on a throwaway PostgreSQL ==")
    cluster: Cluster | None = None
    try:
        try:
            cluster = start_cluster()
        except ClusterError as exc:
            _say(f"cannot start a throwaway PostgreSQL: {exc}")
            return 1
        _say(f"Started PostgreSQL {cluster.binaries.major} ({cluster.binaries.source}) on 127.0.0.1:{cluster.port}")
        run_script(cluster.dsn, "demo_create_db")
        dsn = cluster.dsn_for("demo_db")
        run_script(dsn, "demo_setup", seconds=seconds)
        _say("Created, as the seed does: database demo_db; table sample_data (id, description, created_at) with rows")
        _say("'Demo entry 1' to 'Demo entry 3'; function simulate_long_query(), which sleeps and then inserts")
        _say(
            f"'Long query complete at ' || NOW(). It sleeps {seconds:g} s here, not the seed's {SEED_SECONDS:g} s, "
            "to keep the demo short."
        )
        config = parse_config(DEMO_RULES, "demo rules")
        by_hand = _round_by_hand(dsn, config)
        by_rule = _round_by_rule(dsn, config, hold)
        rows_ok = _final_table(dsn)
        ok = by_hand and by_rule and rows_ok
        _say(
            f"Result: {DOOMED} was terminated by hand, then by rule; {SURVIVOR} completed its work both times."
            if ok
            else "Result: the scenario did not go as expected (see above)."
        )
        return 0 if ok else 1
    finally:
        if cluster is not None:
            cluster.destroy()
            _say("Removed the throwaway server.")
