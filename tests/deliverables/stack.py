"""A live monitoring stack for the dashboard checks and its picture: PostgreSQL with tagged sessions, a real
`pgparent run`, and a real Prometheus scraping it every second with the alert rules loaded.

The scenario gives every dashboard panel something to show:

- FakeParent:1001, three sessions of an application role running a long query: rule runaway-1001 terminates them;
- admin:ops, three sessions of the superuser running a long query: rule admin-runaway tries to terminate them
  (`protect.superusers: false`; by default pgparent would not try) and fails with permission_denied every poll
  (pgparent's least-privilege role may not signal a superuser), and
  limits.max_terminations_per_cycle = 2 defers the third signal each poll;
- etl:42, one session idle in a transaction that holds an advisory lock, one waiting for that lock, one running a
  long query: rule etl-long-transactions (action log) keeps the group violating;
- app:web, three idle sessions: rule web-pool (max_sessions 2, for 1h) keeps the group pending;
- batch:cpu, one session in a loop that counts a series and sleeps, about a twentieth of a core: CPU for the cost
  panels (no rule matches it);
- one untagged idle session;
- lock chains on the rows of a table of the stack's own: billing:7 sits idle in a transaction holding row 1; ledger:8's
  first session waits on it, and an untagged session waits on row 1 behind ledger:8 (on the tuple lock ledger:8
  holds while it waits): billing:7 blocks 2 sessions, one through the chain, and ledger:8 blocks 1. Rule
  billing-blocking (action log) keeps billing:7 violating. An untagged session idle in a transaction holds row 2, on
  which ledger:8's second session waits; a prepared transaction holds row 3, on which ledger:8's third session
  waits (when the server allows prepared transactions: max_prepared_transactions > 0, as on the local clusters; a
  PGPARENT_TEST_DSN or container server may have the default 0).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import yaml
from psycopg import sql

from exporter.core.settings import DEFAULT_TARGET
from exporter.pgcluster import free_port
from harness.daemon import DaemonProcess
from harness.waiting import eventually
from tests.deliverables.grafana import ALERTS, Target, substitute
from tests.support.roles import Roles, unique_name
from tests.support.servers import Server
from tests.support.sessions import Client, Clients
from tests.support.tools import require_tool

JOB = "pgparent"
SCRAPE_INTERVAL = "1s"
LATE_KILLS = 3
"""At most this many kills of FakeParent:1001 after Prometheus first scraped the counter, until its rate shows."""
APP_PASSWORD, MONITOR_PASSWORD = "dash-app-pw", "dash-monitor-pw"
LOCK_KEY = (7001, 42)
"""The etl:42 advisory lock, in the two-int4 key space so it cannot meet a single-bigint key another tool uses."""

LONG_QUERY = "SELECT pg_sleep(600)"
CPU_LOOP = "DO $$BEGIN LOOP PERFORM count(*) FROM generate_series(1, 50000); PERFORM pg_sleep(0.1); END LOOP; END$$"
"""batch:cpu's statement: a backend that uses some CPU (about 0.05 of a core here), never ending."""
PARENT = "etl:42"
"""The group the dashboard's `parent` variable picks in the live checks and the picture: its active sessions wait on
a lock (etl:42:waiter) and in pg_sleep (etl:42:worker)."""
CORES = str(os.cpu_count() or 1)
"""The dashboard's `cores` variable in the live checks and the picture: the stack's server runs on this machine."""
ROW_UPDATE = "UPDATE {} SET n = n + 1 WHERE id = {}"
ROW_LOCK = "SELECT id FROM {} WHERE id = {} FOR UPDATE"

DAEMON_RULES = """
interval: 1s
limits:
  max_terminations_per_cycle: 2
protect:
  superusers: false  # try the superuser's sessions (admin:ops), for the failures panel: refused every poll
rules:
  - name: runaway-1001
    match: {parent: "FakeParent:1001"}
    max_query_duration: 2s
    action: terminate
  - name: admin-runaway
    match: {parent: "admin:*"}
    max_query_duration: 2s
    action: terminate
  - name: etl-long-transactions
    match: {parent: "etl:*"}
    max_transaction_duration: 3s
    action: log
  - name: web-pool
    match: {parent: "app:*"}
    max_sessions: 2
    for: 1h
    action: terminate
  - name: billing-blocking
    match: {parent: "billing:*"}
    max_blocking_sessions: 1
    max_blocking_duration: 3s
    action: log
"""


class Prometheus:
    """A real `prometheus` on a free loopback port, with its own TSDB directory, scraping one target."""

    def __init__(self, tmp: Path, target: str, rule_files: list[Path]) -> None:
        self.dir = tmp / "prometheus"
        (self.dir / "data").mkdir(parents=True)
        self.port = free_port()
        config = {
            "global": {"scrape_interval": SCRAPE_INTERVAL, "scrape_timeout": SCRAPE_INTERVAL,
                       "evaluation_interval": SCRAPE_INTERVAL},
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [target]}]}],
        }
        self.config = self.dir / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(config, sort_keys=False))
        self.log_path = self.dir / "prometheus.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [require_tool("prometheus"), f"--config.file={self.config}", f"--storage.tsdb.path={self.dir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1d"],
            stdout=self._log, stderr=subprocess.STDOUT,
        )
        try:
            eventually(self._ready, timeout=60, interval=0.25, what="prometheus ready")
        except BaseException:
            self.stop()
            raise

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"prometheus exited with {self.proc.returncode}: {self.log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as resp:
                return bool(resp.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def api(self, path: str, **params: str | float) -> Any:
        """GET /api/v1/<path>; the `data` of a successful answer, else AssertionError with Prometheus' error."""
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=30) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read() or b"{}")
            exc.close()
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params: dict[str, str | float] = {"query": expr}
        if at is not None:
            params["time"] = at
        data = self.api("query", **params)
        assert data["resultType"] == "vector", data
        result: list[dict[str, Any]] = data["result"]
        return result

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        data = self.api("query_range", query=expr, start=start, end=end, step=step)
        result: list[dict[str, Any]] = data["result"]
        return result

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


class HeldSessions:
    """Client sessions kept open on this thread: idle, or idle in a transaction."""

    def __init__(self) -> None:
        self.conns: list[psycopg.Connection[tuple[Any, ...]]] = []

    def open(self, dsn: str, application_name: str, *, in_transaction: str | None = None) -> None:
        conn = psycopg.connect(dsn, application_name=application_name, autocommit=in_transaction is None)
        self.conns.append(conn)
        if in_transaction is not None:
            conn.execute(in_transaction.encode())  # leaves the transaction open: "idle in transaction"

    def close(self) -> None:
        for conn in self.conns:
            conn.close()
        self.conns.clear()


@dataclass
class LiveStack:
    server: Server
    daemon: DaemonProcess
    prometheus: Prometheus
    clients: Clients
    held: HeldSessions
    app_dsn: str
    prepared: bool
    """Whether the scenario has its prepared transaction (the server's max_prepared_transactions > 0)."""
    started: float = field(default_factory=time.time)

    @property
    def instance(self) -> str:
        return f"127.0.0.1:{self.daemon.port}"

    def expr(self, target: Target, rate_interval: str = "15s", *, cores: str = CORES) -> str:
        """The target's query as Grafana would send it with this job, instance and server (the daemon's one target,
        `default`) selected, group PARENT chosen and the server's cores entered."""
        return substitute(target.expr, job=JOB, instance=self.instance, rate_interval=rate_interval,
                          target=DEFAULT_TARGET, parent=PARENT, cores=cores, literal=True)


def _rows(server: Server, table: str, app: str) -> None:
    """The lock scenario's table, rows 1 to 3, which the application role may lock and update."""
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (id int PRIMARY KEY, n int NOT NULL DEFAULT 0)").format(
            sql.Identifier(table)))
        conn.execute(sql.SQL("INSERT INTO {} (id) SELECT generate_series(1, 3)").format(sql.Identifier(table)))
        conn.execute(sql.SQL("GRANT SELECT, UPDATE ON {} TO {}").format(sql.Identifier(table), sql.Identifier(app)))


def _drop_rows(server: Server, table: str) -> None:
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))


def _prepare(server: Server, app_dsn: str, table: str, gid: str) -> bool:
    """A prepared transaction of the application role holding row 3 (its locks then belong to no backend); False,
    and nothing prepared, when the server's max_prepared_transactions is 0."""
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        row = conn.execute("SELECT current_setting('max_prepared_transactions')::int").fetchone()
    if row is None or row[0] == 0:
        return False
    with psycopg.connect(app_dsn, autocommit=True) as conn:
        conn.execute("BEGIN")
        conn.execute(sql.SQL(ROW_LOCK).format(sql.Identifier(table), sql.Literal(3)))
        conn.execute(sql.SQL("PREPARE TRANSACTION {}").format(sql.Literal(gid)))
    return True


def _rollback_prepared(server: Server, gid: str) -> None:
    """Roll the prepared transaction back: it outlives every session, and a server restart too."""
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_prepared_xacts WHERE gid = %s", [gid]).fetchone():
            conn.execute(sql.SQL("ROLLBACK PREPARED {}").format(sql.Literal(gid)))


def _waiting_on_lock(server: Server, client: Client) -> bool:
    """Whether `client`'s session waits on a heavyweight lock now."""
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        row = conn.execute("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s",
                           [client.pid]).fetchone()
    return bool(row and row[0])


def start_lock_chains(server: Server, clients: Clients, held: HeldSessions, app_dsn: str, table: str,
                      prepared: bool) -> None:
    """Open the lock scenario's sessions (see the module docstring); row 3 is locked by a prepared transaction if
    `prepared`."""

    def row(statement: str, n: int) -> str:
        return sql.SQL(statement).format(sql.Identifier(table), sql.Literal(n)).as_string(None)

    held.open(app_dsn, "billing:7:holder", in_transaction=row(ROW_LOCK, 1))
    (first,) = clients.start("ledger:8:a", row(ROW_UPDATE, 1), dsn=app_dsn)
    # Only once ledger:8 waits (holding the row's tuple lock) does the next waiter queue behind it, not beside it.
    eventually(lambda: _waiting_on_lock(server, first), what="ledger:8:a waiting on billing:7")
    clients.start("adhoc-report", row(ROW_UPDATE, 1), dsn=app_dsn)
    held.open(app_dsn, "psql", in_transaction=row(ROW_LOCK, 2))
    clients.start("ledger:8:b", row(ROW_UPDATE, 2), dsn=app_dsn)
    if prepared:
        clients.start("ledger:8:c", row(ROW_UPDATE, 3), dsn=app_dsn)


def start_scenario(clients: Clients, held: HeldSessions, app_dsn: str) -> None:
    """Open the scenario's sessions (see the module docstring), the lock chains apart (start_lock_chains)."""
    clients.start("FakeParent:1001", LONG_QUERY, n=3, dsn=app_dsn)
    clients.start("admin:ops", LONG_QUERY, n=3)  # the superuser's own sessions
    lock = "SELECT pg_advisory_xact_lock({}, {})".format(*LOCK_KEY)
    held.open(app_dsn, "etl:42:loader", in_transaction=lock)
    clients.start("etl:42:waiter", lock, dsn=app_dsn)
    clients.start("etl:42:worker", LONG_QUERY, dsn=app_dsn)
    for _ in range(3):
        held.open(app_dsn, "app:web")
    held.open(app_dsn, "reporting")
    clients.start("batch:cpu", CPU_LOOP, dsn=app_dsn)


@contextmanager
def live_stack(server: Server, tmp: Path) -> Iterator[LiveStack]:
    """The scenario's sessions, `pgparent run` as the least-privilege role, and Prometheus scraping it; all stopped,
    closed and dropped on exit. The roles have names of their own: roles are server-wide."""
    with ExitStack() as stack:
        roles = Roles(server)
        stack.callback(roles.drop)
        # A plain role, and a monitoring one with the privileges docs/least-privilege.sql grants.
        app = roles.login("pgp_dash_app", APP_PASSWORD)
        monitor = roles.login("pgp_dash_monitor", MONITOR_PASSWORD, member_of=("pg_monitor", "pg_signal_backend"))
        app_dsn = app.dsn
        table, gid = unique_name("pgp_dash_rows"), unique_name("pgp_dash_prepared")
        stack.callback(_drop_rows, server, table)  # after the rollback below: the prepared transaction locks it
        _rows(server, table, app.name)
        stack.callback(_rollback_prepared, server, gid)
        prepared = _prepare(server, app_dsn, table, gid)
        clients = Clients(server.dsn)
        stack.callback(clients.cleanup)
        held = HeldSessions()
        stack.callback(held.close)
        start_scenario(clients, held, app_dsn)
        start_lock_chains(server, clients, held, app_dsn, table, prepared)
        d = stack.enter_context(DaemonProcess(tmp, DAEMON_RULES, monitor.dsn))
        prometheus = Prometheus(tmp, f"127.0.0.1:{d.port}", [ALERTS])
        stack.callback(prometheus.stop)
        yield LiveStack(server, d, prometheus, clients, held, app_dsn, prepared)


def wait_for_data(stack: LiveStack, timeout: float = 90.0) -> None:
    """Until runaway-1001's sessions are gone and Prometheus holds enough samples of every counter for rate()."""
    killed = [c for c in stack.clients.started if c.application_name == "FakeParent:1001"]
    eventually(lambda: all(c.outcome == "terminated" for c in killed), timeout=timeout,
               what="rule runaway-1001 terminated its sessions")
    wanted = {
        "pgparent_up": 20,
        "pgparent_signalled_sessions_total": 8,
        "pgparent_signal_failures_total": 8,
        "pgparent_signals_deferred_total": 8,
    }

    def enough() -> dict[str, float] | None:
        counts = {}
        for metric in wanted:
            result = stack.prometheus.query(f'max(count_over_time({metric}{{job="{JOB}"}}[1m]))')
            counts[metric] = float(result[0]["value"][1]) if result else 0.0
        return None if any(counts[m] < n for m, n in wanted.items()) else counts

    eventually(enough, timeout=timeout, interval=1.0, what=f"Prometheus holds samples {wanted}")

    # rate() ignores the samples a series is born with, so the first kills may never show as a rate. One more kill,
    # now that Prometheus scrapes the counter, makes the terminations panel non-zero, unless it lands on a series of
    # its own: the counter's `trigger` label says whether a poll or a deadline signalled (the first kills are the
    # deadline's, a late one often a poll's), and a kill by the other is born at 1 too. So kill again until the
    # panel's rate rose at some moment since the stack started (what the panel's test reads): the next kill lands on
    # a series that exists.
    rate = f'sum(rate(pgparent_signalled_sessions_total{{job="{JOB}", rule="runaway-1001"}}[15s]))'

    def rose() -> bool:
        series = stack.prometheus.query_range(rate, start=stack.started, end=time.time(), step=1)
        return any(float(v) > 0 for s in series for _, v in s["values"])

    for _ in range(LATE_KILLS):
        _late_kill(stack, timeout)
        with contextlib.suppress(AssertionError):  # a few scrapes for the rate to show, else one more kill
            eventually(rose, timeout=10, interval=1.0, what="the terminations' rate rose")
            return
    raise AssertionError(f"{LATE_KILLS} late kills of FakeParent:1001 never showed as a rate in Prometheus")


def _late_kill(stack: LiveStack, timeout: float) -> None:
    """One more FakeParent:1001 session, killed by runaway-1001, its kill scraped by Prometheus."""
    (late,) = stack.clients.start("FakeParent:1001", LONG_QUERY, dsn=stack.app_dsn)
    eventually(lambda: late.outcome == "terminated", timeout=timeout, what="the late FakeParent:1001 session killed")
    total = sum(v for _, v in stack.daemon.samples("pgparent_signalled_sessions_total", {"rule": "runaway-1001"}))
    eventually(
        lambda: [float(r["value"][1]) for r in stack.prometheus.query(
            f'sum(pgparent_signalled_sessions_total{{job="{JOB}", rule="runaway-1001"}})')] == [total],
        timeout=timeout, interval=0.5, what="Prometheus scraped the late kill",
    )
