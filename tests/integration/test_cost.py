"""What each group costs the server, against real PostgreSQL and real processes: private memory of a hash aggregate
against its backend's own RssAnon, CPU of a busy group against its backend's own utime + stime, counters that never
go down while sessions exit, retag and fold, no OS figure from another PID namespace, and WAL on PostgreSQL 18."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from harness.daemon import REPO, DaemonProcess
from harness.proc import cpu_seconds
from harness.waiting import eventually
from tests.support.daemon import Daemons
from tests.support.figures import record_figure
from tests.support.servers import Server, make_server
from tests.support.sessions import Clients

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FAST = "interval: 0.3s\n"
MB = 1 << 20


def proc_status(pid: int) -> dict[str, int]:
    """/proc/<pid>/status's sizes in bytes (RssAnon, VmRSS, ...), read here, independently of pgparent."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if value.strip().endswith(" kB"):
            out[key] = int(value.split()[0]) * 1024
    return out


def sees_processes(d: DaemonProcess) -> None:
    """Skip, saying why, unless pgparent sees the test server's processes: a local cluster does; a container or a
    PGPARENT_TEST_DSN server may not."""
    d.wait_polls(2)
    if d.sample("pgparent_cost_source_available", {"source": "proc"}) != 1:
        why = [labels["reason"] for labels, _ in d.samples("pgparent_cost_source_unavailable", {"source": "proc"})]
        pytest.skip(f"pgparent does not see the test server's processes here ({', '.join(why)})")


def group_value(d: DaemonProcess, name: str, parent: str) -> float:
    return sum(v for _, v in d.samples(name, {"parent": parent}))


@pytest.fixture(scope="module")
def roomy() -> Iterator[Server]:
    """A server with shared_buffers large enough that a seq scan's pages stay in it (and in the scanning backend's
    resident set): what private memory must leave out."""
    server = make_server({"shared_buffers": "512MB"})
    try:
        yield server
    finally:
        server.destroy()


def test_a_hash_aggregates_memory_is_its_groups_and_a_seq_scans_shared_pages_are_not(
        roomy: Server, daemons: Daemons) -> None:
    """A hash aggregate holding 300+ MB in group A shows as A's private memory, within 20% of its backend's RssAnon
    read independently; group B's backend, which seq-scanned a table larger than its private memory into
    shared_buffers, stays small although its resident set holds the table's pages."""
    with psycopg.connect(roomy.dsn, autocommit=True) as admin:
        admin.execute("DROP TABLE IF EXISTS cost_big")
        admin.execute("CREATE TABLE cost_big AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 450000) g")
    d = daemons.start(FAST, roomy.dsn)
    sees_processes(d)
    with Clients(roomy.dsn) as clients:
        (scan,) = clients.start("Scan:B", "SELECT count(*) FROM cost_big", hold=True)
        (agg,) = clients.start("Hash:A", "BEGIN; DECLARE c CURSOR FOR SELECT g, count(*) FROM "
                               "generate_series(1, 3000000) g GROUP BY g; FETCH 1 FROM c", setup="SET work_mem = '2GB'",
                               hold=True)
        assert scan.executed.wait(60) and agg.executed.wait(120)
        assert agg.pid is not None and scan.pid is not None
        d.wait_polls(2)  # a poll that read both since their statements ended (the aggregate holds its table now)
        figure = group_value(d, "pgparent_group_memory_bytes", "Hash:A")
        anon = proc_status(agg.pid)["RssAnon"]
        assert figure > 300 * MB and abs(figure - anon) <= 0.2 * anon, (figure, anon)
        assert d.sample("pgparent_group_max_session_memory_bytes", {"parent": "Hash:A"}) == figure
        scanned = proc_status(scan.pid)
        b = group_value(d, "pgparent_group_memory_bytes", "Scan:B")
        assert b < 50 * MB, b
        assert scanned["VmRSS"] - b > 30 * MB, (scanned, b)  # the table's shared pages it did not count
        record_figure("cost_memory", hash_aggregate_mb=round(figure / MB, 1), its_rss_anon_mb=round(anon / MB, 1),
                      seq_scan_mb=round(b / MB, 1), seq_scan_vm_rss_mb=round(scanned["VmRSS"] / MB, 1))
    available = d.sample("pgparent_host_memory_available_bytes")
    total = d.sample("pgparent_host_memory_bytes")
    assert available is not None and total is not None and 0 < available <= total


def test_a_busy_groups_cpu_counter_follows_its_backend_and_an_idle_groups_stays(pg: Server, daemons: Daemons) -> None:
    """Group C runs CPU-bound queries until its backend has used 5 s of CPU (utime + stime, read here): C's counter
    advances by that within 20%; idle group D's by about nothing."""
    d = daemons.start(FAST, pg.dsn)
    sees_processes(d)
    with psycopg.connect(pg.dsn, autocommit=True, application_name="Busy:C") as busy, \
            psycopg.connect(pg.dsn, autocommit=True, application_name="Idle:D"):
        pid = busy.info.backend_pid
        d.wait_polls(3)  # both seen, their baselines read
        c0, d0 = group_value(d, "pgparent_group_cpu_seconds_total", "Busy:C"), group_value(
            d, "pgparent_group_cpu_seconds_total", "Idle:D")
        start = cpu_seconds(pid)
        while cpu_seconds(pid) - start < 5.0:
            busy.execute("SELECT count(*) FROM generate_series(1, 2000000)")
        used = cpu_seconds(pid) - start
        d.wait_polls(3)
        grew = group_value(d, "pgparent_group_cpu_seconds_total", "Busy:C") - c0
        idle = group_value(d, "pgparent_group_cpu_seconds_total", "Idle:D") - d0
    record_figure("cost_cpu", backend_cpu_s=round(used, 2), counter_s=round(grew, 2), idle_counter_s=round(idle, 3))
    assert abs(grew - used) <= 0.2 * used, (grew, used)
    assert abs(grew - 5.0) <= 0.2 * 5.0 + (used - 5.0), (grew, used)
    assert idle < 0.1, idle


class Scraper(threading.Thread):
    """Reads every counter series of the groups' cost from /metrics, over and over, until stopped."""

    def __init__(self, d: DaemonProcess) -> None:
        super().__init__(daemon=True)
        self.d = d
        self.stop = threading.Event()
        self.seen: dict[tuple[str, frozenset[tuple[str, str]]], list[float]] = {}

    def run(self) -> None:
        while not self.stop.is_set():
            status, text = self.d.get("/metrics")
            if status == 200:
                for family in text_string_to_metric_families(text):
                    if family.type == "counter" and family.name.startswith("pgparent_group_"):
                        for s in family.samples:
                            self.seen.setdefault((s.name, frozenset(s.labels.items())), []).append(s.value)
            self.stop.wait(0.05)


def test_no_counter_series_goes_down_while_sessions_exit_retag_and_fold(pg: Server, daemons: Daemons,
                                                                         clients: Clients) -> None:
    """With max_groups 2, groups fold into __other__ and out of it, a session retags mid-statement, sessions end,
    and pgparent's own connection is cut: every counter series scraped meanwhile only ever grows."""
    d = daemons.start("interval: 0.2s\ngrouping: {max_groups: 2}\n", pg.dsn)
    d.wait_polls(2)
    scraper = Scraper(d)
    scraper.start()
    busy = "DO $$ DECLARE t timestamptz := clock_timestamp(); BEGIN WHILE clock_timestamp() < t + interval '{}' " \
           "LOOP END LOOP; END $$"
    try:
        clients.start("Big:1", busy.format("1.5 s"), n=3)
        clients.start("Mid:1", "SELECT pg_sleep(3)", n=2)
        clients.start("Small:1", f"{busy.format('1 s')}; SET application_name = 'Mid:1'; {busy.format('1 s')}")
        d.wait_polls(5)
        with psycopg.connect(pg.dsn, autocommit=True) as admin:  # a reconnect: the ledger belongs to the target
            admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'pgparent'")
        clients.start("Late:2", "SELECT pg_sleep(2)", n=4)  # now the largest: Mid:1 folds
        eventually(lambda: all(c.done for c in clients.started), timeout=60, what="every session ended")
        d.wait_polls(4)
    finally:
        scraper.stop.set()
        scraper.join(10)
    went_down = {key: values for key, values in scraper.seen.items()
                 if any(b < a for a, b in pairwise(values))}
    assert went_down == {}
    parents = {dict(labels).get("parent") for (_, labels) in scraper.seen}
    assert {"Big:1", "Late:2", "__other__"} <= parents
    assert len(d.events("database_available")) >= 2  # it did reconnect


def test_in_another_pid_namespace_no_os_figure_is_exported_and_rules_still_work(
        pg: Server, daemons: Daemons, clients: Clients) -> None:
    """pgparent started in a PID namespace of its own (`unshare --pid --fork --mount-proc`) sees none of the server's
    processes: no CPU, memory or host series, not even 0, nor bytes read and written but from PostgreSQL 18's own
    counters; the availability metric is 0 and says why (and one log line); groups, load and rules work as before."""
    unshare = shutil.which("unshare")
    if unshare is None or subprocess.run([unshare, "--pid", "--fork", "--mount-proc", "true"],
                                         capture_output=True, check=False).returncode != 0:
        pytest.skip("cannot make a PID namespace here (unshare missing, or not root)")
    rules = FAST + "rules:\n  - {name: ns, match: {parent: 'Ns:kill'}, max_sessions: 1, action: terminate}\n"
    d = daemons.start(rules, pg.dsn, wrap=(unshare, "--pid", "--fork", "--mount-proc", "--kill-child=SIGTERM"))
    clients.start("Ns:load", "SELECT pg_sleep(60)")
    d.wait_polls(3)
    text = d.metrics()
    absent = ["pgparent_group_cpu_seconds", "pgparent_group_memory_bytes", "pgparent_group_max_session_memory",
              "pgparent_host_memory"]
    if d.sample("pgparent_cost_source_available", {"source": "backend_stats"}) == 0:
        absent += ["pgparent_group_read_bytes", "pgparent_group_written_bytes"]
    assert [name for name in absent if name in text] == []
    assert d.sample("pgparent_cost_source_available", {"source": "proc"}) == 0
    assert d.sample("pgparent_cost_source_unavailable", {"source": "proc", "reason": "not_visible"}) == 1
    (said,) = d.events("cost_sources")
    assert said["proc"].startswith("not_visible: ")
    assert d.sample("pgparent_group_sessions", {"parent": "Ns:load", "state": "active"}) == 1
    eventually(lambda: (d.sample("pgparent_group_active_seconds_total", {"parent": "Ns:load"}) or 0) > 0.5,
               what="load exported")
    victims = clients.start("Ns:kill", "SELECT pg_sleep(60)", n=2)
    eventually(lambda: all(v.outcome == "terminated" for v in victims), timeout=30, what="the rule enforced")


@pytest.mark.per_major
def test_a_groups_wal_counter_grows_by_the_wal_its_inserts_wrote(pg: Server, daemons: Daemons) -> None:
    """On PostgreSQL 18 a group's WAL counter grows by about the WAL its committed inserts wrote (the server's WAL
    position before and after them); before 18 there is no WAL series, and the availability metric says why."""
    d = daemons.start(FAST, pg.dsn)
    d.wait_polls(2)
    with psycopg.connect(pg.dsn, autocommit=True, application_name="Wal:1") as conn:
        major = conn.info.server_version // 10000
        if major < 18:
            assert d.sample("pgparent_cost_source_unavailable", {"source": "backend_stats", "reason": "needs_pg18"}) \
                == 1
            assert "pgparent_group_wal_bytes_total" not in d.metrics()
            return
        conn.execute("DROP TABLE IF EXISTS cost_wal")
        conn.execute("CREATE TABLE cost_wal (x int, pad text)")
        d.wait_polls(3)
        before = group_value(d, "pgparent_group_wal_bytes_total", "Wal:1")
        start = conn.execute("SELECT pg_current_wal_insert_lsn()").fetchone()
        for _ in range(10):
            conn.execute("INSERT INTO cost_wal SELECT g, repeat('x', 100) FROM generate_series(1, 20000) g")
        row = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), %s)", start).fetchone()
        assert row is not None
        wrote = float(row[0])
        # A backend publishes its counters once idle outside a transaction, within PGSTAT_IDLE_INTERVAL (10 s).
        grew = eventually(lambda: (g := group_value(d, "pgparent_group_wal_bytes_total", "Wal:1") - before)
                          >= 0.8 * wrote and g, timeout=45, what="the WAL counter caught up")
    record_figure("cost_wal", wal_written_mb=round(wrote / MB, 2), counter_mb=round(grew / MB, 2))
    assert grew <= 1.05 * wrote, (grew, wrote)


def test_groups_shows_load_cpu_and_memory_over_a_sample(pg: Server, clients: Clients) -> None:
    """`pgparent groups --sample 1` gives a group with one session sleeping a load of about 1, and its memory where
    pgparent sees the server's processes; without --sample there is no LOAD column."""
    clients.start("Sample:1", "SELECT pg_sleep(60)")
    run = [sys.executable, "-m", "exporter", "groups", "--dsn", pg.dsn]
    out = subprocess.run([*run, "--sample", "1", "--output", "json"], capture_output=True, text=True, cwd=REPO,
                         timeout=60, check=True)
    doc = json.loads(out.stdout)
    (row,) = [g for g in doc["groups"] if g["parent"] == "Sample:1"]
    assert 0.8 <= row["load"] <= 1.2, row
    assert doc["sample_seconds"] >= 0.9
    if doc["cost_sources"]["proc"] == "available":
        assert row["memory_bytes"] > 0 and row["cpu_cores"] < 0.2
    else:
        assert row["memory_bytes"] is None and row["cpu_cores"] is None
    table = subprocess.run(run, capture_output=True, text=True, cwd=REPO, timeout=60, check=True).stdout
    assert "LOAD" not in table.splitlines()[0] and "SOURCE" in table.splitlines()[0]
