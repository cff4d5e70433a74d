"""The guard rules against a real server and real memory: a hash aggregate growing past its limit cancelled between
polls (its session kept, a bystander untouched, the postmaster never restarted), a group over its memory limit
relieved of its largest session only, the host-pressure gate both ways, a cancel that cannot relieve escalated to a
terminate, a CPU-bound group stopped and an idle one left, and nothing at all from another PID namespace."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from harness.daemon import DaemonProcess
from harness.proc import rss_anon
from harness.waiting import eventually
from tests.support.config import config_text
from tests.support.daemon import Daemons
from tests.support.servers import Server
from tests.support.sessions import Clients

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MB = 1000**2
ROWS = 6_000_000
"""Rows of the table the growing aggregate reads: far more groups than any limit here lets it hold."""
GROWING = ("SELECT g, count(*) FROM guard_rows WHERE CASE WHEN g % 20000 = 0 THEN pg_sleep(0.01) IS NOT NULL "
           "ELSE true END GROUP BY g")
"""A hash aggregate whose table grows by about 100 MB a second, paced by a 10 ms sleep every 20000 rows."""


def holding(groups: int) -> str:
    """A transaction left idle with an open cursor over a hash aggregate of `groups` groups: it keeps the table's
    memory while it runs no query (about 180 bytes a group)."""
    return (f"BEGIN; DECLARE c CURSOR FOR SELECT g, count(*) FROM generate_series(1, {groups}) g GROUP BY g; "
            "FETCH 1 FROM c")


def connected(dsn: str, pid: int | None) -> bool:
    """Whether the server still has the session `pid` (a held client notices its end only at its next statement)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone() is not None


def postmaster_started(dsn: str) -> Any:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pg_postmaster_start_time()").fetchone()
    assert row is not None
    return row[0]


def sees_processes(d: DaemonProcess) -> None:
    """Skip, saying why, unless pgparent sees the test server's processes (a local cluster; not a container)."""
    d.wait_polls(2)
    if d.sample("pgparent_cost_source_available", {"source": "proc"}) != 1:
        pytest.skip("pgparent does not see the test server's processes here")


def signals(d: DaemonProcess, pid: int | None = None) -> list[dict[str, Any]]:
    return [e for e in d.events("session_signal") if pid is None or e["pid"] == pid]


@pytest.fixture(scope="module")
def rows(pg: Server) -> Iterator[None]:
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS guard_rows")
        conn.execute(f"CREATE TABLE guard_rows AS SELECT g FROM generate_series(1, {ROWS}) g")
        conn.execute("VACUUM ANALYZE guard_rows")
    yield
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS guard_rows")


class Runaway(threading.Thread):
    """A session tagged `tag` that waits to be told to run the growing aggregate, records how it ended, then runs a
    next query on the same connection; its RssAnon is watched from here the whole time."""

    def __init__(self, dsn: str, tag: str) -> None:
        super().__init__(daemon=True)
        self.conn = psycopg.connect(dsn, autocommit=True, application_name=tag)
        self.conn.execute("SET work_mem = '4GB'")
        self.conn.execute("SET max_parallel_workers_per_gather = 0")
        self.pid = self.conn.info.backend_pid
        self.go = threading.Event()
        self.outcome: str | None = None
        self.next_query: object = None
        self.peak = 0
        self.crossed_at: float | None = None
        self.ended_at: float | None = None

    def watch(self, limit: int) -> None:
        while self.outcome is None:
            anon = rss_anon(self.pid) or 0
            if anon > limit and self.crossed_at is None:
                self.crossed_at = time.monotonic()
            self.peak = max(self.peak, anon)
            time.sleep(0.005)

    def run(self) -> None:
        self.go.wait(120)
        try:
            self.conn.execute(GROWING).fetchall()
            self.outcome = "completed"
        except psycopg.errors.QueryCanceled:
            self.outcome = "cancelled"
        except psycopg.Error as exc:
            self.outcome = f"error: {exc!r}"
        self.ended_at = time.monotonic()
        try:
            row = self.conn.execute("SELECT 42").fetchone()
            self.next_query = row[0] if row else None
        except psycopg.Error as exc:
            self.next_query = exc
        self.conn.close()


@pytest.mark.per_major
def test_a_growing_hash_aggregate_is_cancelled_between_polls_and_nothing_else_is(
        pg: Server, rows: None, daemons: Daemons, clients: Clients) -> None:
    """Group A's hash aggregate grows past 300 MB under max_session_memory 300MB, cancel, at a 5 s interval: its
    query is cancelled before its RssAnon reaches 600 MB (by the sampler, between polls), its session stays
    connected and runs a next query; group B's session beside it is untouched; the postmaster never restarts."""
    started = postmaster_started(pg.dsn)
    rules = config_text({"name": "memory", "max_session_memory": "300MB", "action": "cancel"},
                        interval="5s", sample_interval="50ms")
    d = daemons.start(rules, pg.dsn)
    sees_processes(d)
    runaway = Runaway(pg.dsn, "Hash:A")
    [bystander] = clients.start("Calm:B", "SELECT pg_sleep(60)")
    runaway.start()
    d.wait_polls(1)  # a poll has seen A's session (idle): the sampler watches it from here
    watcher = threading.Thread(target=runaway.watch, args=(300 * MB,), daemon=True)
    watcher.start()
    runaway.go.set()
    runaway.join(120)
    assert runaway.outcome == "cancelled", runaway.outcome
    assert runaway.next_query == 42
    assert runaway.peak < 600 * MB, runaway.peak
    [event] = eventually(lambda: signals(d, runaway.pid), what="the cancel's audit line")
    assert event["action"] == "cancel" and event["result"] == "ok" and event["rule"] == "memory"
    assert event["trigger"] in ("sample", "poll") and event["figure"] > 300 * MB
    assert event["host_memory_available_bytes"] > 0
    d.wait_polls(2)
    assert not bystander.done and signals(d, bystander.pid) == []
    assert postmaster_started(pg.dsn) == started
    assert (d.sample("pgparent_memory_samples_total") or 0) > 0


def test_a_group_over_its_memory_limit_loses_its_largest_session_only(
        pg: Server, daemons: Daemons, clients: Clients) -> None:
    """Three sessions of one group holding about 200, 150 and 50 MB over max_group_memory 300MB: only the 200 MB
    one is signalled (the rest, about 200 MB, is within the limit)."""
    big, mid, small = (clients.start("Trio:1", holding(n), setup="SET work_mem = '2GB'", hold=True)[0]
                       for n in (1_100_000, 800_000, 260_000))
    for c in (big, mid, small):
        assert c.executed.wait(120)
    sizes = {c.pid: rss_anon(c.pid or 0) or 0 for c in (big, mid, small)}
    assert sum(sizes.values()) > 300 * MB and sum(sizes.values()) - sizes[big.pid or 0] <= 300 * MB, sizes
    rules = config_text({"name": "group", "match": {"parent": "Trio:*"}, "max_group_memory": "300MB",
                         "action": "terminate"}, interval="0.3s")
    d = daemons.start(rules, pg.dsn)
    sees_processes(d)
    eventually(lambda: not connected(pg.dsn, big.pid), timeout=30, what="the largest session ended")
    d.wait_polls(4)
    assert {e["pid"] for e in signals(d)} == {big.pid}
    assert connected(pg.dsn, mid.pid) and connected(pg.dsn, small.pid)


@pytest.mark.parametrize("below", ["1MB", "100%"])
def test_a_rule_gated_by_host_pressure_acts_only_below_its_threshold(
        below: str, pg: Server, daemons: Daemons, clients: Clients) -> None:
    """The same rule over a session holding 100+ MB: gated at 1MB of memory available (the host has far more) it
    does nothing through several polls; gated at 100% (always below) it acts."""
    [c] = clients.start("Gate:1", holding(700_000), setup="SET work_mem = '2GB'", hold=True)
    assert c.executed.wait(120)
    rules = config_text({"name": "gated", "match": {"parent": "Gate:*"}, "max_session_memory": "50MB",
                         "host_memory_available_below": below, "action": "terminate"}, interval="0.3s")
    d = daemons.start(rules, pg.dsn)
    sees_processes(d)
    if below == "100%":
        eventually(lambda: not connected(pg.dsn, c.pid), timeout=30, what="the gated rule acted")
        [event] = eventually(lambda: signals(d, c.pid), what="its audit line")
        assert event["result"] == "ok" and event["host_memory_available_bytes"] > 0
    else:
        d.wait_polls(6)
        assert connected(pg.dsn, c.pid) and signals(d) == []
        assert d.sample("pgparent_rule_violating_groups", {"rule": "gated"}) == 0


@pytest.mark.per_major
def test_a_cancel_that_cannot_relieve_is_escalated_to_a_terminate(
        pg: Server, daemons: Daemons, clients: Clients) -> None:
    """A session idle in its transaction with an open cursor over a hash aggregate keeps its memory with no query to
    cancel: under a cancel rule escalating after 2 s, its cancel step is audited (no_query), and at least 2 s later
    it is terminated, both steps audited and counted."""
    [c] = clients.start("Stuck:1", holding(700_000), setup="SET work_mem = '2GB'", hold=True)
    assert c.executed.wait(120)
    rules = config_text({"name": "gentle", "match": {"parent": "Stuck:*"}, "max_session_memory": "50MB",
                         "action": "cancel", "escalate": {"after": "2s", "action": "terminate"}}, interval="0.3s")
    d = daemons.start(rules, pg.dsn)
    sees_processes(d)
    eventually(lambda: not connected(pg.dsn, c.pid), timeout=60, what="the session terminated")
    steps = eventually(lambda: [e for e in signals(d, c.pid) if len(signals(d, c.pid)) >= 2], what="both steps")
    first, second = steps[0], steps[-1]
    assert (first["step"], first["result"], first["action"]) == ("cancel", "no_query", "cancel")
    assert (second["step"], second["result"], second["action"]) == ("terminate", "ok", "terminate")
    assert second["figure"] > 50 * MB
    assert d.sample("pgparent_escalation_steps_total", {"rule": "gentle", "step": "cancel", "result": "no_query"}) == 1
    assert d.sample("pgparent_escalation_steps_total", {"rule": "gentle", "step": "terminate", "result": "ok"}) == 1


def test_max_group_cpu_stops_a_cpu_bound_group_and_leaves_an_idle_one(pg: Server, daemons: Daemons) -> None:
    """Over a 2 s window, a group running CPU-bound queries back to back uses about a core: max_group_cpu 0.3 ends
    it; an idle group under the same rule is never signalled."""
    rules = config_text({"name": "cpu", "match": {"parent": "Cpu:*"}, "max_group_cpu": 0.3, "window": "2s",
                         "action": "terminate"}, interval="0.3s")
    d = daemons.start(rules, pg.dsn)
    sees_processes(d)
    with psycopg.connect(pg.dsn, autocommit=True, application_name="Cpu:busy") as busy, \
            psycopg.connect(pg.dsn, autocommit=True, application_name="Cpu:idle") as idle:
        idle_pid, busy_pid = idle.info.backend_pid, busy.info.backend_pid
        ended = False
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                busy.execute("SELECT count(*) FROM generate_series(1, 3000000)")
            except psycopg.OperationalError:
                ended = True
                break
        assert ended, "the busy group was never stopped"
        [event] = eventually(lambda: signals(d, busy_pid), what="its audit line")
        assert event["rule"] == "cpu" and event["figure"] > 0.3
        d.wait_polls(4)
        assert signals(d, idle_pid) == []
        idle.execute("SELECT 1")


def unshare() -> str:
    path = shutil.which("unshare")
    if path is None or subprocess.run([path, "--pid", "--fork", "--mount-proc", "true"], capture_output=True,
                                      check=False).returncode != 0:
        pytest.skip("cannot make a PID namespace here (unshare missing, or not root)")
    return path


def test_in_another_pid_namespace_every_guard_rule_is_inactive_and_nothing_is_signalled(
        pg: Server, daemons: Daemons, clients: Clients, tmp_path: Path) -> None:
    """pgparent in a PID namespace of its own sees none of the server's processes: every memory and CPU rule
    reports inactive (metric, log, and `pgparent check --dsn`), and a session far over their limits is left alone."""
    path = unshare()
    doc = config_text({"name": "session", "max_session_memory": "1MB", "action": "terminate"},
                      {"name": "group", "max_group_memory": "1MB", "action": "terminate"},
                      {"name": "cpu", "max_group_cpu": 0, "window": "1s", "action": "terminate"},
                      {"name": "load", "max_group_load": 1000, "action": "log"}, interval="0.3s")
    [c] = clients.start("Ns:1", holding(300_000), setup="SET work_mem = '2GB'", hold=True)
    assert c.executed.wait(120)
    d = daemons.start(doc, pg.dsn, wrap=(path, "--pid", "--fork", "--mount-proc", "--kill-child=SIGTERM"))
    d.wait_polls(6)
    for rule in ("session", "group", "cpu"):
        assert d.sample("pgparent_rule_active", {"rule": rule}) == 0
    assert d.sample("pgparent_rule_active", {"rule": "load"}) == 1
    assert {e["rule"] for e in d.events("rule_inactive")} == {"session", "group", "cpu"}
    assert signals(d) == [] and connected(pg.dsn, c.pid)
    rules = tmp_path / "guards.yaml"
    rules.write_text(doc)
    out = subprocess.run([path, "--pid", "--fork", "--mount-proc", sys.executable, "-m", "exporter", "check",
                          "--config.file", str(rules), "--dsn", pg.dsn], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert "cost source proc: unavailable, not_visible" in out.stdout
    assert "rule session: inactive on this server (not_visible)" in out.stdout
    assert "rule load: inactive" not in out.stdout


@pytest.mark.per_major
def test_a_query_begun_after_a_poll_is_held_to_a_limit_shorter_than_the_interval(
        pg: Server, daemons: Daemons, clients: Clients) -> None:
    """At a 60 s interval a 2 s query limit still holds for a query that begins after the poll: a glance between
    polls (every 1 s) finds it, and its deadline ends it about 2 s after it began, not at the next poll."""
    rules = config_text({"name": "short", "match": {"parent": "Short:*"}, "max_query_duration": "2s",
                         "action": "terminate"}, interval="60s")
    d = daemons.start(rules, pg.dsn)
    d.wait_polls(1)
    [c] = clients.start("Short:1", "SELECT pg_sleep(120)")
    began = time.monotonic()
    eventually(lambda: c.done, timeout=30, what="the query ended")
    assert c.outcome == "terminated" and time.monotonic() - began < 15  # generous: the benchmark has the figure
    [event] = eventually(lambda: signals(d, c.pid), what="its audit line")
    assert event["trigger"] == "deadline" and event["result"] == "ok"
    assert d.polls() <= 2 and (d.sample("pgparent_glances_total") or 0) >= 1


def test_a_guard_rule_in_dry_run_probes_and_signals_nothing(pg: Server, daemons: Daemons, clients: Clients) -> None:
    """A dry-run memory rule over a session holding 100+ MB audits `dry_run` (its guard probed on the server) with
    the figure that fired, and the session stays connected through several polls."""
    [c] = clients.start("Dry:1", holding(700_000), setup="SET work_mem = '2GB'", hold=True)
    assert c.executed.wait(120)
    rules = config_text({"name": "dry", "match": {"parent": "Dry:*"}, "max_session_memory": "50MB",
                         "action": "terminate", "dry_run": True}, interval="0.3s")
    d = daemons.start(rules, pg.dsn)
    sees_processes(d)
    event = eventually(lambda: signals(d, c.pid)[:1], what="the dry run's audit line")[0]
    assert event["result"] == "dry_run" and event["dry_run"] is True and event["figure"] > 50 * MB
    assert event["condition"] == "max_session_memory"
    d.wait_polls(4)
    assert connected(pg.dsn, c.pid)
    assert (d.sample("pgparent_guard_actions_total", {"rule": "dry", "condition": "max_session_memory",
                                                      "action": "terminate"}) or 0) == 0
