"""The monitoring connection: its settings and watchdog, the server's capabilities, the poll, and the guarded signal
statement (exporter/pg/queries/signal.sql says which race each of its clauses closes).

Driver errors are translated here: callers see `DatabaseUnavailable` (never a password in its message) or a
`SignalOutcome`. The monitoring connection is autocommit, so every poll sees a fresh pg_stat_activity and `now()`, and
the session never sits "idle in transaction".
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from functools import cache
from typing import Any, Literal

import psycopg
from psycopg import errors as pgerrors
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.rows import class_row

from exporter import APPLICATION_NAME
from exporter.core.cost import StatsReading
from exporter.core.model import NO_GUARD, Blocker, Capacity, Guard, Reading, Session, SignalAction, Snapshot
from exporter.core.tags import MAX_RAW_BYTES
from exporter.errors import DatabaseUnavailable
from exporter.pg.credentials import CredentialSource
from exporter.pg.dsn import mask_dsn, parse_dsn, scrub
from exporter.pg.failures import connect_failure
from exporter.pg.rows import QUERY_BYTES, SessionRows
from exporter.pg.statements import load_query

COMMENT_BYTES = 1024
"""How far into the query text, from either end, the poll looks for a comment: sqlcommenter comments with a
traceparent and a few keys take a few hundred bytes."""

SignalOutcome = Literal["ok", "gone", "not_signalled", "permission_denied", "error"]

_SIGNAL_FUNCTIONS = {"terminate": "pg_terminate_backend", "cancel": "pg_cancel_backend"}


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What the server and the monitoring role allow, read once per connection."""

    server_version_num: int
    role: str
    has_leader_pid: bool
    has_query_id: bool
    can_read_all_stats: bool
    can_signal: bool
    in_recovery: bool
    server_pid: int = 0
    """The pid of the server session that answered the capabilities statement."""
    track_activity_query_size: int = 1024
    """Bytes of a query text PostgreSQL keeps (it keeps one less, cut to a character boundary)."""
    pooled: bool = False
    """The connection announced a pid other than its server session's: a connection pooler stands between. Then
    statements may run in different server sessions, and a session-level advisory lock (leader election) is held by
    whichever server connection ran it, for as long as the pooler keeps that connection, not by pgparent."""
    system_identifier: int | None = None
    """The cluster's identifier (pg_control_system()), None where the role may not read it."""
    server_started: datetime | None = None
    database: str = ""
    server_pid_started: datetime | None = None
    """The backend_start of the session `server_pid`: with it and `server_started`, exporter/host/procfs.py tells
    whether this host shows the server's processes."""
    backend_stats: bool | None = None
    """pg_stat_get_backend_wal and _io (PostgreSQL 18): None where they do not exist, False where the role may not
    execute them."""
    max_connections: int = 0
    superuser_reserved_connections: int = 0
    reserved_connections: int = 0
    """PostgreSQL 16+; 0 before."""
    server_version: str = ""
    """The server's version as it names itself (`server_version`: "15.8 (Debian 15.8-1)")."""
    superuser: bool = False
    """pgparent's own role is a superuser (`protect.superusers: auto` protects superusers' sessions where it is not)."""
    tls_version: str | None = None
    """The TLS protocol of the connection ("TLSv1.3"), None without TLS."""
    tls: bool = False
    """The connection is encrypted (libpq's PQsslInUse)."""
    sslmode: str = "prefer"
    """The sslmode in effect for the connection (the DSN's, PGSSLMODE's, else libpq's default `prefer`)."""
    host: str = ""
    """The host the connection reached (a directory for a Unix socket)."""

    @property
    def loopback(self) -> bool:
        """The connection stays on this machine: a Unix socket, localhost or a loopback address."""
        host = self.host
        if not host or host.startswith("/") or host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    def capacity(self, in_use: int) -> Capacity:
        """The server's connection slots, `in_use` of them taken."""
        return Capacity(self.max_connections, self.superuser_reserved_connections, self.reserved_connections, in_use)

    @property
    def server(self) -> str:
        """Which running server this is: a standby shares its primary's identifier, not its start time."""
        started = self.server_started.isoformat() if self.server_started else "?"
        return f"{self.system_identifier or '?'}@{started}"


@dataclass(frozen=True, slots=True)
class ServerFacts:
    """What `pgparent doctor` asks of a server beyond its capabilities (queries/server_facts.sql)."""

    roles: tuple[str, ...]
    """Those of the names asked about that exist as roles."""
    databases: tuple[str, ...]
    settings: tuple[str, ...]
    """Settings of the managed services' own prefixes (azure.*, rds.*, cloudsql.*, alloydb.*)."""
    hidden: int
    """Client sessions of other roles the monitoring role sees only in part (no pg_read_all_stats)."""


SYSTEM_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu, Alpine
    "/etc/pki/tls/certs/ca-bundle.crt",  # Fedora, RHEL
    "/etc/ssl/ca-bundle.pem",  # openSUSE
    "/etc/ssl/cert.pem",  # macOS, the BSDs
)
"""Where operating systems keep their trusted root certificates, as one file."""


def use_system_roots() -> str | None:
    """Make `sslrootcert=system` mean this system's roots; the bundle chosen, or None when the environment already
    says (SSL_CERT_FILE, SSL_CERT_DIR) or no bundle is found.

    libpq loads OpenSSL's default roots for it, and the OpenSSL that psycopg's binary wheel bundles looks in its own
    build's directory (/usr/lib/psycopg-openssl), which no system has: every verify-full connection would fail with
    "certificate verify failed". OpenSSL reads SSL_CERT_FILE at each connection, so naming the system's bundle there
    is enough."""
    if os.environ.get("SSL_CERT_FILE") or os.environ.get("SSL_CERT_DIR"):
        return None
    for path in SYSTEM_BUNDLES:
        if os.path.isfile(path):
            os.environ["SSL_CERT_FILE"] = path
            return path
    return None


class _Watchdog:
    """Cuts a connection whose statement outlives its deadline, from a thread of its own.

    statement_timeout only helps while the server can answer; a network that silently drops packets (a black hole)
    leaves the client waiting on a socket that TCP still considers open. Shutting that socket down wakes the waiting
    call with an error, so the loop reconnects instead of hanging.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._deadline: float | None = None
        self._action: Callable[[], None] | None = None
        self.fired = False
        threading.Thread(target=self._run, name="db-watchdog", daemon=True).start()

    def _run(self) -> None:
        with self._cond:
            while True:
                if self._deadline is None:
                    self._cond.wait()
                    continue
                remaining = self._deadline - time.monotonic()
                if remaining > 0:
                    self._cond.wait(remaining)
                    continue
                action, self._deadline, self._action = self._action, None, None
                if action is not None:
                    self.fired = True
                    action()

    @contextlib.contextmanager
    def guard(self, seconds: float, action: Callable[[], None]) -> Iterator[None]:
        with self._cond:
            self.fired = False
            self._deadline, self._action = time.monotonic() + seconds, action
            self._cond.notify()
        try:
            yield
        finally:
            with self._cond:
                self._deadline = self._action = None


def _sslmode(conn: psycopg.Connection[Any]) -> str:
    """The sslmode libpq applied to `conn`: its own connection options hold it even where it is the default (which
    the connection's `info.dsn` leaves out)."""
    for option in conn.pgconn.info:
        if option.keyword == b"sslmode" and option.val:
            return option.val.decode()
    return "prefer"


def _shutdown_socket(conn: psycopg.Connection[Any]) -> None:
    """Shut the connection's socket down (both ways) without closing the descriptor psycopg owns."""
    with contextlib.suppress(OSError, psycopg.Error):
        dup = socket.socket(fileno=os.dup(conn.pgconn.socket))
        try:
            dup.shutdown(socket.SHUT_RDWR)
        finally:
            dup.close()


class Database:
    """One long-lived autocommit connection for polling and signalling; reconnects when asked after a failure.

    Every statement runs under a client-side deadline (statement_timeout plus a margin) enforced by a watchdog, so a
    stalled network is noticed within about one statement_timeout. `generation` counts connections made: session
    state (the leader lock) belongs to one generation.
    """

    DEADLINE_FACTOR = 1.125
    """The client gives up on the server at this multiple of statement_timeout."""

    def __init__(
        self,
        dsn: str,
        *,
        connect_timeout: float = 5.0,
        statement_timeout: float = 10.0,
        read_blockers: bool = True,
        database_only: bool = False,
        credentials: CredentialSource | None = None,
    ) -> None:
        """`read_blockers=False` skips the lock step of the poll (the benchmark measures its cost that way);
        `database_only` reads and signals only the sessions of the DSN's database (a target's `sessions: database`);
        `credentials` gives the password of each new connection (exporter/pg/credentials.py), else the DSN's own (or
        libpq's PGPASSWORD, PGPASSFILE) is used."""
        parse_dsn(dsn)  # a malformed DSN is a usage error now, not a failed poll every interval
        self.dsn = dsn
        self.credentials = credentials
        self.database_only = database_only
        self.read_blockers = read_blockers
        self.masked = mask_dsn(dsn)
        self._connect_timeout = connect_timeout
        self._statement_timeout = statement_timeout
        self._conn: psycopg.Connection[Any] | None = None
        self._poll_sql: dict[tuple[bool, bool, bool | None, bool], sql.Composed] = {}
        self._blocking_sql: sql.Composed | None = None
        self._watchdog: _Watchdog | None = None
        self.capabilities: Capabilities | None = None
        self.generation = 0

    @property
    def deadline(self) -> float:
        """Seconds a statement may take, as the client sees it, before the connection is cut."""
        return self._statement_timeout * self.DEADLINE_FACTOR

    @contextlib.contextmanager
    def _guard(self, conn: psycopg.Connection[Any]) -> Iterator[None]:
        """Run the block under the client-side deadline. Only network waits belong inside: rows are best converted
        after it, so that a process short of CPU is not taken for a stalled network."""
        if self._watchdog is None:
            self._watchdog = _Watchdog()
        with self._watchdog.guard(self.deadline, lambda: _shutdown_socket(conn)):
            yield
        if self._watchdog.fired:
            # The answer came as the deadline passed and the socket was cut behind it: the session (and any lock it
            # held) is gone, so say so now rather than fail the next statement on a dead socket.
            self.close()
            raise DatabaseUnavailable(
                f"the answer came only as the {self.deadline:g}s deadline passed, and the connection was cut "
                f"({self.masked}): a slow network, a server short of CPU, or this process short of CPU"
            )

    def _stalled(self) -> str:
        if self._watchdog is not None and self._watchdog.fired:
            return f" (no answer within {self.deadline:g}s: network stalled?)"
        return ""

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.closed

    @property
    def backend_pid(self) -> int | None:
        return self._conn.info.backend_pid if self.connected and self._conn is not None else None

    def _scrubbed(self, exc: Exception) -> str:
        """A driver message with the DSN's password and the password source's tokens masked."""
        return scrub(str(exc), self.dsn, *(self.credentials.secrets() if self.credentials is not None else ()))

    def _fail(self, what: str, exc: Exception, reason: str | None = None) -> DatabaseUnavailable:
        stalled = self._stalled()
        self.close()
        return DatabaseUnavailable(f"{what}{stalled} ({self.masked}): {self._scrubbed(exc)}", reason)

    def forget_password(self) -> None:
        """Fetch the next connection's password afresh (a token the server refused may be cached)."""
        if self.credentials is not None:
            self.credentials.forget()

    def connect(self) -> Capabilities:
        """Open the connection (if not open) and read the server's capabilities.

        A failed attempt raises DatabaseUnavailable with its `reason` (exporter/pg/failures.py); a password source
        that gives nothing raises CredentialUnavailable, before any attempt."""
        if self.connected and self.capabilities is not None:
            return self.capabilities
        params = parse_dsn(self.dsn)
        extra: dict[str, Any] = {"application_name": APPLICATION_NAME}
        # Detect a dead peer in seconds rather than the kernel's two hours; a DSN's own values win.
        defaults = {
            "connect_timeout": max(1, round(self._connect_timeout)),
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
            "tcp_user_timeout": int(self._statement_timeout * 1000) + 5000,
        }
        extra.update({k: v for k, v in defaults.items() if k not in params})
        if self.credentials is not None:
            extra["password"] = self.credentials.password()  # asked at each attempt: tokens expire, passwords rotate
        if (params.get("sslrootcert") or os.environ.get("PGSSLROOTCERT")) == "system":
            use_system_roots()
        try:
            conn = psycopg.connect(make_conninfo(self.dsn, **extra), autocommit=True)
        except psycopg.Error as exc:
            raise self._fail("cannot connect to PostgreSQL", exc, connect_failure(str(exc))) from exc
        self._conn = conn
        self.generation += 1
        try:
            with self._guard(conn):
                conn.execute(
                    sql.SQL("SET statement_timeout = {}").format(
                        sql.Literal(f"{int(self._statement_timeout * 1000)}ms")
                    )
                )
                with conn.cursor(row_factory=class_row(Capabilities)) as cur:
                    caps = cur.execute(load_query("capabilities")).fetchone()
        except psycopg.Error as exc:
            raise self._fail("cannot read server capabilities", exc) from exc
        assert caps is not None
        tls = conn.pgconn.ssl_in_use
        caps = replace(caps, pooled=caps.server_pid != conn.info.backend_pid, tls=tls,
                       tls_version=caps.tls_version if tls else None, sslmode=_sslmode(conn), host=conn.info.host)
        self.capabilities = caps
        self._poll_sql = {}
        waitstart = sql.Identifier("waitstart") if caps.server_version_num >= 140000 else sql.SQL("NULL::timestamptz")
        self._blocking_sql = sql.SQL(load_query("blocking")).format(waitstart=waitstart)
        return caps

    def close(self) -> None:
        conn, self._conn = self._conn, None
        self.capabilities = None
        if conn is not None:
            conn.close()

    def _connection(self) -> psycopg.Connection[Any]:
        self.connect()
        assert self._conn is not None
        return self._conn

    def _poll(self, comments: bool, query_text: bool, stats_io: bool | None = None, recent: bool = False
              ) -> sql.Composed:
        """The poll statement for this server: with the comment reader when comment sources are configured, with the
        query excerpt unless audit.query_text is none, with PostgreSQL 18's counters unless `stats_io` is None (and
        their bytes read and written with it true); composed once per connection and shape."""
        composed = self._poll_sql.get((comments, query_text, stats_io, recent))
        if composed is None:
            caps = self.capabilities
            assert caps is not None
            parts = {
                "leader_pid": sql.SQL("a.leader_pid") if caps.has_leader_pid else sql.SQL("NULL::int"),
                "query_id": sql.SQL("a.query_id") if caps.has_query_id else sql.SQL("NULL::bigint"),
                "query": sql.SQL("substring(pg_catalog.textsend(a.query) FROM 1 FOR %(query_bytes)s)")
                if query_text
                else sql.SQL("NULL::bytea"),
                "comment_values": sql.SQL("v.comment_values" if comments else "NULL::text[]"),
                "query_cut": sql.SQL("w.query_cut" if comments else "false"),
                "comment_join": sql.SQL(load_query("activity_comments") if comments else ""),
                "database": sql.SQL("   AND a.datname = pg_catalog.current_database()" if self.database_only else ""),
                # A whole-server poll's rows are every client backend but pgparent's own: counted from them.
                "connections": sql.SQL(load_query("connections").rstrip() if self.database_only else "NULL::int"),
                "backend_stats": sql.SQL(
                    "" if stats_io is None else ",\n" + load_query("activity_backend_stats" if stats_io
                                                                    else "activity_backend_wal").rstrip()),
                "recent": sql.SQL("   AND greatest(a.backend_start, a.xact_start, a.query_start) > %(recent_since)s"
                                  if recent else ""),
            }
            composed = self._poll_sql[(comments, query_text, stats_io, recent)] = sql.SQL(
                load_query("activity")).format(**parts)
        return composed

    def snapshot(self, reading: Reading = Reading(), stats: StatsReading | None = None,  # noqa: B008
                 recent: datetime | None = None) -> Snapshot:
        """Read pg_stat_activity once: client sessions and parallel workers, with the server's `now()`; then, only if
        some client session waits on a heavyweight lock, who blocks those sessions (one more statement).

        With `recent` (a glance between polls), only the rows that connected, began a transaction or began a query
        since that moment, and no blockers.

        `reading` says what to read beyond the fixed columns (`Config.poll`): the comment keys the tag sources need,
        and the query excerpt unless `audit.query_text` is none (default: no comments, the excerpt). `stats` says
        which PostgreSQL 18 counters to read in the same statement (None: none; ignored where the server has none).
        """
        conn = self._connection()
        assert self._blocking_sql is not None and self.capabilities is not None
        keys, query_text = reading.comment_keys, reading.query_text
        if not self.capabilities.backend_stats:
            stats = None
        params: dict[str, Any] = {"query_bytes": QUERY_BYTES}
        if recent is not None:
            stats = None
            params["recent_since"] = recent
        if stats is not None:
            params["stats_since"] = stats.since
        if keys:
            params |= {
                "comment_keys": [k.replace(".", r"\.") for k in keys],  # the only regex character a key may hold
                "comment_bytes": COMMENT_BYTES,
                "cut_bytes": self.capabilities.track_activity_query_size - 4,
                "value_chars": 4 * (MAX_RAW_BYTES + 1),  # escaped: a byte takes up to 4 characters
            }
        try:
            reader = SessionRows(backend_stats=stats is not None)
            # Binary results: timestamps and the query bytes arrive as they are stored, with no text to parse.
            cur = conn.cursor(row_factory=reader.factory, binary=True)
            # Behind a transaction pooler a prepared statement may not exist on the next server connection.
            prepare = not self.capabilities.pooled
            statement = self._poll(bool(keys), query_text, None if stats is None else stats.io, recent is not None)
            with self._guard(conn):  # the network part: execute returns once the whole result has arrived
                cur.execute(statement, params, prepare=prepare)
            rows = cur.fetchall()  # rows become Sessions off the deadline
            now, connections = reader.now, reader.connections
            if now is None:  # no rows, so no now() column
                with self._guard(conn):
                    now, connections = conn.execute(_CLOCK).fetchone()  # type: ignore[misc]
            sessions: list[Session] = []
            workers: list[Session] = []
            for session in rows:
                (workers if session.backend_type == "parallel worker" else sessions).append(session)
            blocking = self.read_blockers and recent is None
            waiting = [s.pid for s in sessions if s.wait_event_type == "Lock"] if blocking else []
            blockers: list[Blocker] = []
            if waiting:
                with conn.cursor(row_factory=class_row(Blocker)) as bcur:
                    with self._guard(conn):
                        bcur.execute(self._blocking_sql, {"pids": waiting}, prepare=prepare)
                    blockers = self._typed(conn, bcur.fetchall(), sessions, workers)
        except pgerrors.QueryCanceled as exc:
            # statement_timeout fired: the server is alive but too slow; reconnect so no half-read state lingers.
            raise self._fail("poll timed out", exc) from exc
        except psycopg.Error as exc:
            raise self._fail("poll failed", exc) from exc
        if connections is None:  # every client backend is a row of a whole-server poll, but pgparent's own
            connections = len(sessions) + 1
        capacity = self.capabilities.capacity(connections)
        return Snapshot(now=now, sessions=tuple(sessions), workers=tuple(workers), blockers=tuple(blockers),
                        backend_stats=reader.backend_stats, capacity=capacity,
                        pgparent_superuser=self.capabilities.superuser)

    def _row(self, query_name: str, params: dict[str, Any], what: str) -> tuple[Any, ...] | None:
        """The one row of `queries/<query_name>.sql` (None when it returns none); `what` names a failure."""
        conn = self._connection()
        try:
            with self._guard(conn):
                row: tuple[Any, ...] | None = conn.execute(load_query(query_name), params).fetchone()
        except psycopg.Error as exc:
            raise self._fail(what, exc) from exc
        return row

    def _value(self, query_name: str, key: int, what: str) -> object:
        row = self._row(query_name, {"key": key}, what)
        return row[0] if row else None

    def _typed(
        self, conn: psycopg.Connection[Any], blockers: list[Blocker], sessions: list[Session], workers: list[Session]
    ) -> list[Blocker]:
        """Blockers with their backend_type: client sessions and workers from the poll itself; any other pid (an
        autovacuum worker, a walsender, a session newer than the poll) asked of the server, only when there is one.
        Reading pg_stat_activity again costs what the poll did, so the common case (every blocker a client session
        the poll saw) asks nothing."""
        known = {s.pid: s.backend_type for s in (*sessions, *workers)}
        unknown = sorted({b.blocker for b in blockers if b.blocker not in known and b.blocker != 0})
        if unknown:
            with self._guard(conn):
                rows = conn.execute(load_query("backend_types"), {"pids": unknown}).fetchall()
            known.update({pid: kind for pid, kind in rows})
        return [replace(b, blocker_type=known.get(b.blocker)) for b in blockers]

    def server_facts(self, roles: list[str], databases: list[str]) -> ServerFacts:
        """Which of `roles` and `databases` exist on the server, its managed-service settings, and the sessions the
        role sees only in part (queries/server_facts.sql): what `pgparent doctor` recognises a service by."""
        row = self._row("server_facts", {"roles": roles, "databases": databases}, "server facts read failed")
        assert row is not None
        return ServerFacts(tuple(row[0]), tuple(row[1]), tuple(row[2]), int(row[3]))

    def try_lock(self, key: int, shared: bool = False) -> bool:
        """Take the session-level advisory lock `key` on this connection if free (`shared`: in share mode, which
        every replica can hold at once); True when held.

        The server releases it when this connection ends, however it ends: that is what makes one replica the leader.
        """
        query = "member_lock" if shared else "leader_lock"
        return bool(self._value(query, key, "leader lock failed"))

    def unlock(self, key: int) -> bool:
        """Release the exclusive advisory lock `key` this connection holds."""
        return bool(self._value("leader_unlock", key, "leader unlock failed"))

    def lock_holders(self, member: int, leader: int) -> tuple[int, int]:
        """How many sessions hold the shared lock `member` and the exclusive lock `leader` in this database: the live
        replicas, and whether some replica leads."""
        row = self._row("lock_holders", {"member": member, "leader": leader}, "lock count failed")
        return (int(row[0]), int(row[1])) if row else (0, 0)

    def _signal_params(self, session: Session, guard: Guard) -> dict[str, Any]:
        return {
            "database_only": self.database_only,
            "pid": session.pid,
            "backend_start": session.backend_start,
            "application_name": session.application_name,
            "query_start": guard.query_start,
            "xact_start": guard.xact_start,
            "state_change": guard.state_change,
            "spell": "idle" if guard.idle else "idle in transaction%",
            "exceeded": guard.exceeded,
            "since": guard.since,
        }

    def signal(self, action: SignalAction, session: Session, guard: Guard = NO_GUARD) -> tuple[SignalOutcome, str]:
        """Send one guarded signal in its own autocommit statement; return the outcome and a detail message.

        One pid per statement: a permission error on one session does not stop the others. `guard` adds checks of the
        session's query, transaction or idle spell (exporter/queries/signal.sql says which race each closes).
        """
        if session.backend_start is None:
            return "not_signalled", "backend_start unknown: cannot guard against pid reuse"
        conn = self._connection()
        statement = _signal_statement(_SIGNAL_FUNCTIONS[action])
        params = self._signal_params(session, guard)
        try:
            with self._guard(conn):
                row = conn.execute(statement, params).fetchone()
        except pgerrors.InsufficientPrivilege as exc:
            # Not a member of pg_signal_backend, or the target is a superuser's session: count it and go on.
            return "permission_denied", self._scrubbed(exc)
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise self._fail("signal failed", exc) from exc
        except psycopg.Error as exc:
            return "error", self._scrubbed(exc)
        if row is None:
            return "gone", (
                "no session with that pid, backend_start and application_name"
                + ("" if guard == NO_GUARD else " still in the state the guard checks")
            )
        return ("ok", "") if row[0] else ("not_signalled", "PostgreSQL declined to signal the process")

    def running_query(self, session: Session) -> datetime | None:
        """The query_start of the query `session` (the same pid, backend_start and application_name) runs now; None
        when it runs none, or is no longer that session."""
        if session.backend_start is None:
            return None
        row = self._row("running_query", {"pid": session.pid, "backend_start": session.backend_start,
                                          "application_name": session.application_name}, "running query read failed")
        return row[0] if row else None

    def probe(self, session: Session, guard: Guard) -> bool:
        """Whether `session` is still in the state `guard` describes, by the very statement a signal would run, with
        abs(pid) in place of the signal: what a dry run audits at a deadline."""
        if session.backend_start is None:
            return False
        statement = _signal_statement("abs")
        conn = self._connection()
        try:
            with self._guard(conn):
                row = conn.execute(statement, self._signal_params(session, guard)).fetchone()
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise self._fail("probe failed", exc) from exc
        except psycopg.Error:
            return False
        return row is not None


_CLOCK = sql.SQL("SELECT now(), {}").format(sql.SQL(load_query("connections").rstrip()))
"""The server's clock and its connections, for a poll that read no row."""


@cache
def _signal_statement(function: str) -> sql.Composed:
    """queries/signal.sql with `pg_catalog.<function>` applied to the pid it finds (abs: a probe that signals
    nothing)."""
    return sql.SQL(load_query("signal")).format(function=sql.Identifier("pg_catalog", function))


