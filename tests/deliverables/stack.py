"""A live monitoring stack for the dashboard checks and its picture: PostgreSQL with tagged sessions, a real
`pgparent run`, and a real Prometheus scraping it every second with the alert rules loaded.

The scenario gives every dashboard panel something to show:

- FakeParent:1001, three sessions of an application role running a long query: rule runaway-1001 terminates them;
- admin:ops, three sessions of the superuser running a long query: rule admin-runaway tries to terminate them and
  fails with permission_denied every poll (pgparent's least-privilege role may not signal a superuser), and
  limits.max_terminations_per_cycle = 2 defers the third signal each poll;
- etl:42, one session idle in a transaction that holds an advisory lock, one waiting for that lock, one running a
  long query: rule etl-long-transactions (action log) keeps the group violating;
- app:web, three idle sessions: rule web-pool (max_sessions 2, for 1h) keeps the group pending;
- one untagged idle session.
"""

from __future__ import annotations

import json
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
from psycopg.conninfo import conninfo_to_dict

from exporter.pgcluster import free_port
from tests.deliverables.grafana import ALERTS, Target, substitute
from tests.support import Clients, DaemonProcess, Server, daemon, eventually, require_tool, unique_name

JOB = "pgparent"
SCRAPE_INTERVAL = "1s"
APP_PASSWORD, MONITOR_PASSWORD = "dash-app-pw", "dash-monitor-pw"
LOCK_KEY = (7001, 42)
"""The etl:42 advisory lock, in the two-int4 key space so it cannot meet a single-bigint key another tool uses."""

LONG_QUERY = "SELECT pg_sleep(600)"

DAEMON_RULES = """
interval: 1s
limits:
  max_terminations_per_cycle: 2
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
    started: float = field(default_factory=time.time)

    @property
    def instance(self) -> str:
        return f"127.0.0.1:{self.daemon.port}"

    def expr(self, target: Target, rate_interval: str = "15s") -> str:
        """The target's query as Grafana would send it with this job and instance selected."""
        return substitute(target.expr, job=JOB, instance=self.instance, rate_interval=rate_interval, literal=True)


def _roles(server: Server, app: str, monitor: str) -> tuple[str, str]:
    """(application DSN, monitoring DSN): a plain role, and the least-privilege role of docs/least-privilege.sql."""
    dbname = conninfo_to_dict(server.dsn).get("dbname") or "postgres"
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        for role, password in ((app, APP_PASSWORD), (monitor, MONITOR_PASSWORD)):
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(password))
            )
        conn.execute(sql.SQL("GRANT pg_monitor, pg_signal_backend TO {}").format(sql.Identifier(monitor)))
    return (
        server.dsn_for(str(dbname), user=app, password=APP_PASSWORD),
        server.dsn_for(str(dbname), user=monitor, password=MONITOR_PASSWORD),
    )


def _drop_roles(server: Server, *roles: str) -> None:
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        for role in roles:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def start_scenario(clients: Clients, held: HeldSessions, app_dsn: str) -> None:
    """Open the scenario's sessions (see the module docstring)."""
    clients.start("FakeParent:1001", LONG_QUERY, n=3, dsn=app_dsn)
    clients.start("admin:ops", LONG_QUERY, n=3)  # the superuser's own sessions
    lock = "SELECT pg_advisory_xact_lock({}, {})".format(*LOCK_KEY)
    held.open(app_dsn, "etl:42:loader", in_transaction=lock)
    clients.start("etl:42:waiter", lock, dsn=app_dsn)
    clients.start("etl:42:worker", LONG_QUERY, dsn=app_dsn)
    for _ in range(3):
        held.open(app_dsn, "app:web")
    held.open(app_dsn, "reporting")


@contextmanager
def live_stack(server: Server, tmp: Path) -> Iterator[LiveStack]:
    """The scenario's sessions, `pgparent run` as the least-privilege role, and Prometheus scraping it; all stopped,
    closed and dropped on exit. The roles have names of their own: roles are server-wide."""
    with ExitStack() as stack:
        app, monitor = unique_name("pgp_dash_app"), unique_name("pgp_dash_monitor")
        stack.callback(_drop_roles, server, app, monitor)
        app_dsn, monitor_dsn = _roles(server, app, monitor)
        clients = Clients(server.dsn)
        stack.callback(clients.cleanup)
        held = HeldSessions()
        stack.callback(held.close)
        start_scenario(clients, held, app_dsn)
        d = stack.enter_context(daemon(tmp, DAEMON_RULES, monitor_dsn))
        prometheus = Prometheus(tmp, f"127.0.0.1:{d.port}", [ALERTS])
        stack.callback(prometheus.stop)
        yield LiveStack(server, d, prometheus, clients, held, app_dsn)


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
    # now that Prometheus scrapes the counter, makes the terminations panel non-zero for certain.
    (late,) = stack.clients.start("FakeParent:1001", LONG_QUERY, dsn=stack.app_dsn)
    eventually(lambda: late.outcome == "terminated", timeout=timeout, what="the late FakeParent:1001 session killed")
    total = stack.daemon.sample("pgparent_signalled_sessions_total", {"rule": "runaway-1001"})
    eventually(
        lambda: [float(r["value"][1]) for r in stack.prometheus.query(
            f'pgparent_signalled_sessions_total{{job="{JOB}", rule="runaway-1001"}}')] == [total],
        timeout=timeout, interval=0.5, what="Prometheus scraped the late kill",
    )
