"""A real PgBouncer (Debian's package) in transaction mode in front of the server under test, and its clients.

Through a transaction pooler a client's server session is whichever the pooler lends it: the fixtures here make the
races and the stale tags that come with that real, instead of imitating them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from exporter.pgcluster import free_port, unprivileged_user
from harness.waiting import eventually
from tests.support.servers import Server
from tests.support.sessions import SessionThread, Started
from tests.support.tools import require_tool


class PgBouncer:
    """A real PgBouncer (Debian's package) on loopback, in transaction mode, in front of the server under test.

    Databases: `*` pools every database of the server (`default_pool_size` server connections per database and
    user); `single` is the server's `postgres` database through a pool of one server connection, so its clients take
    turns on one server session (what makes a signal race with the next client's query). Clients authenticate as
    the server's superuser without a password (auth_type trust, loopback only); PgBouncer logs in to the server with
    the password from its auth file. As root it runs as an unprivileged user, like the test PostgreSQL.
    """

    def __init__(self, server: Server, *, pool_size: int = 4, **settings: str) -> None:
        binary = require_tool("pgbouncer")
        params = conninfo_to_dict(server.dsn)
        self.user = str(params.get("user") or "postgres")
        upstream = f"host={params.get('host', '127.0.0.1')} port={params.get('port', 5432)}"
        self.port = free_port()
        self.base = Path(tempfile.mkdtemp(prefix="pgparent-pgbouncer-"))
        (self.base / "userlist.txt").write_text(f'"{self.user}" "{params.get("password", "")}"\n')
        options = {
            "listen_addr": "127.0.0.1",
            "listen_port": str(self.port),
            "unix_socket_dir": "",
            "auth_type": "trust",
            "auth_file": str(self.base / "userlist.txt"),
            "pool_mode": "transaction",
            "default_pool_size": str(pool_size),
            "max_client_conn": "200",
            "ignore_startup_parameters": "extra_float_digits",
            "server_login_retry": "1",
            "logfile": str(self.base / "pgbouncer.log"),
            "pidfile": "",
            "admin_users": self.user,  # the admin console's SHOW SERVERS names each server connection's pid
            **settings,
        }
        lines = ["[databases]", f"single = {upstream} dbname=postgres pool_size=1", f"* = {upstream}", "[pgbouncer]"]
        lines += [f"{k} = {v}" for k, v in options.items()]
        (self.base / "pgbouncer.ini").write_text("\n".join(lines) + "\n")
        owner = unprivileged_user()
        if owner is not None:
            for path in (self.base, *self.base.iterdir()):
                os.chown(path, owner.pw_uid, owner.pw_gid)
        self.proc = subprocess.Popen(
            [binary, str(self.base / "pgbouncer.ini")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            user=owner.pw_uid if owner else None,
            group=owner.pw_gid if owner else None,
            extra_groups=[] if owner else None,
        )
        try:
            eventually(self._accepts, timeout=30, what="PgBouncer accepting connections")
        except BaseException:
            self.stop()
            raise

    def _accepts(self) -> bool:
        if self.proc.poll() is not None:
            err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
            raise RuntimeError(f"pgbouncer exited with {self.proc.returncode}: {err}{self.log()}")
        try:
            with psycopg.connect(self.dsn_for("postgres"), connect_timeout=2, autocommit=True) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.OperationalError:
            return False

    def dsn_for(self, dbname: str = "postgres", application_name: str | None = None) -> str:
        """A DSN through PgBouncer; `single` is the one-server-connection pool."""
        extra = {"application_name": application_name} if application_name is not None else {}
        return make_conninfo(
            "", host="127.0.0.1", port=self.port, dbname=dbname, user=self.user, connect_timeout=5, **extra
        )

    def log(self) -> str:
        try:
            return (self.base / "pgbouncer.log").read_text(errors="replace")
        except OSError:
            return ""

    def server_pids(self) -> list[int]:
        """The pids of PgBouncer's server connections now (its admin console, which speaks the simple protocol)."""
        with psycopg.connect(self.dsn_for("pgbouncer"), autocommit=True) as conn:
            result = conn.pgconn.exec_(b"SHOW SERVERS")
            names = [result.fname(i) for i in range(result.nfields)]
            column = names.index(b"remote_pid")
            return [int(value) for row in range(result.ntuples) if (value := result.get_value(row, column))]

    def stop(self, server: Server | None = None) -> None:
        """Stop PgBouncer; with `server`, also wait until its server connections have left PostgreSQL, so that no
        later test sees them (idle, still tagged by their last client's application_name)."""
        pids: list[int] = []
        if server is not None and self.proc.poll() is None:
            with contextlib.suppress(psycopg.Error):
                pids = self.server_pids()
        if self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: immediate shutdown
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        shutil.rmtree(self.base, ignore_errors=True)
        if server is not None and pids:
            with psycopg.connect(server.dsn, autocommit=True) as conn:
                conn.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", [pids])
                eventually(lambda: conn.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", [pids])
                           .fetchone() == (0,), what="PgBouncer's server connections gone")


class PooledClient(SessionThread):
    """A client of PgBouncer: connects (its application_name a startup parameter, as PgBouncer tracks it), runs
    `statement` once, and records how it ended. Through a transaction pooler its server session is whichever
    PgBouncer lends it, so it has no pid of its own: find it by its query text."""

    LOST = "disconnected"  # the connection lost is the client's to PgBouncer: a server session may live on

    def __init__(self, dsn: str, statement: str, *, hold: bool = False) -> None:
        super().__init__("pooled-client", hold)
        self.dsn, self.statement = dsn, statement

    def session(self) -> None:
        # No prepared statements: a transaction pooler may run the next statement on another server session.
        with psycopg.connect(self.dsn, autocommit=True, prepare_threshold=None) as conn:
            self.ready.set()
            conn.execute(self.statement.encode())
            if self.hold:
                self.release.wait(300)


class PooledClients(Started[PooledClient]):
    """Starts PgBouncer clients and, at the end, ends what is left of them and of their server sessions (found on
    the server behind the pooler, `dsn` a superuser's connection to it)."""

    def start(self, dsn: str, statement: str, *, hold: bool = False) -> PooledClient:
        client = PooledClient(dsn, statement, hold=hold)
        client.start()
        assert client.ready.wait(30), "a PgBouncer client did not connect"
        if client.outcome is not None and client.outcome != "completed":
            raise AssertionError(f"PgBouncer client failed: {client.error!r}")
        self.started.append(client)
        return client

    def cleanup(self) -> None:
        """Release held clients, and cancel the server-side queries of those still running one."""
        for c in self.started:
            c.release.set()
        running = [c.statement for c in self.started if c.outcome is None]
        if running:
            with contextlib.suppress(psycopg.Error), psycopg.connect(self.dsn, autocommit=True) as conn:
                conn.execute(
                    "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE query = ANY(%s)"
                    " AND pid <> pg_backend_pid()",
                    [running],
                )
        for c in self.started:
            c.join(10)


@pytest.fixture
def pgbouncer(pg: Server) -> Iterator[PgBouncer]:
    """A real PgBouncer in transaction mode in front of the shared server, of this test's own: its server connections
    are gone when the test ends (an idle one keeps its last client's application_name, and would be grouped)."""
    bouncer = PgBouncer(pg)
    try:
        yield bouncer
    finally:
        bouncer.stop(pg)


@pytest.fixture
def pooled(pg: Server) -> Iterator[PooledClients]:
    """Clients of a PgBouncer in front of the shared server; what is left of them is ended when the test ends."""
    with PooledClients(pg.dsn) as c:
        yield c
