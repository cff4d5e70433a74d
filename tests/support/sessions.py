"""Client sessions of a test: tagged sessions on background threads (`Client`, the `clients` fixture), and what the
server says about sessions (`read_snapshot`, one poll as the daemon reads it; `server_session`, found by query text).

A session's thread records how it ended (completed, cancelled, terminated, error) for the test to inspect; whatever
a test leaves running is ended when it ends.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any, Generic, Self, TypeVar

import psycopg
import pytest
from psycopg import sql

from exporter.core.model import Reading, Snapshot
from exporter.core.settings import Config
from exporter.pg.database import Database
from tests.support.servers import Server


class SessionThread(threading.Thread):
    """A client on its own thread: `session()` runs once, and how it ended is recorded for the test to inspect
    (`outcome`, `error`). `ready` is set once the session is under way, or has failed to get there."""

    LOST = "terminated"
    """The outcome when the server end of the connection goes away (pg_terminate_backend's AdminShutdown is one)."""

    def __init__(self, name: str, hold: bool) -> None:
        super().__init__(daemon=True, name=name)
        self.hold = hold
        self.ready = threading.Event()
        self.release = threading.Event()
        self.outcome: str | None = None
        self.error: BaseException | None = None

    def session(self) -> None:
        raise NotImplementedError

    def run(self) -> None:
        try:
            self.session()
            self.outcome = "completed"
        except psycopg.errors.QueryCanceled:
            self.outcome = "cancelled"
        except psycopg.OperationalError as exc:
            self.outcome = self.LOST
            self.error = exc
        except BaseException as exc:  # noqa: BLE001 - recorded for the test to inspect
            self.outcome = "error"
            self.error = exc
        finally:
            self.ready.set()

    @property
    def done(self) -> bool:
        return self.outcome is not None


class Client(SessionThread):
    """A client session: tags itself, runs `statement`, and records how it ended."""

    def __init__(self, dsn: str, application_name: str, statement: str, *, setup: str | None = None,
                 hold: bool = False) -> None:
        super().__init__(f"client-{application_name}", hold)
        self.dsn, self.application_name, self.statement, self.setup = dsn, application_name, statement, setup
        self.executed = threading.Event()
        self.pid: int | None = None
        self.backend_start: Any = None

    def session(self) -> None:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("SET application_name = {}").format(sql.Literal(self.application_name)))
            if self.setup:
                conn.execute(self.setup.encode())
            row = conn.execute(
                "SELECT pid, backend_start FROM pg_stat_activity WHERE pid = pg_backend_pid()"
            ).fetchone()
            assert row is not None
            self.pid, self.backend_start = row
            self.ready.set()
            conn.execute(self.statement.encode())
            self.executed.set()
            if self.hold:  # stay connected (idle) until released, then check the session is still there
                self.release.wait(300)
                conn.execute("SELECT 1")


S = TypeVar("S", bound=SessionThread)


class Started(Generic[S]):
    """The sessions a test started on `dsn`'s server; at the end (`cleanup()`, or leaving its `with` block) what is
    left of them is ended."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.started: list[S] = []

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()

    def cleanup(self) -> None:
        raise NotImplementedError


class Clients(Started[Client]):
    """Starts tagged sessions and, at the end, terminates whatever is left of them."""

    def start(self, application_name: str, statement: str = "SELECT pg_sleep(120)", n: int = 1,
              dsn: str | None = None, setup: str | None = None, hold: bool = False) -> list[Client]:
        """Start `n` sessions tagged `application_name` running `statement`; with `hold`, they stay connected and
        idle after it until cleanup."""
        clients = [Client(dsn or self.dsn, application_name, statement, setup=setup, hold=hold) for _ in range(n)]
        for c in clients:
            c.start()
        for c in clients:
            assert c.ready.wait(30), f"session {application_name} did not start"
            if c.pid is None:
                raise AssertionError(f"session {application_name} failed: {c.error!r}")
        self.started += clients
        return clients

    def cleanup(self) -> None:
        pids = [c.pid for c in self.started if c.pid is not None and not c.done]
        if pids:
            try:
                with psycopg.connect(self.dsn, autocommit=True) as conn:
                    conn.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", [pids])
            except psycopg.Error:
                pass  # the server may be down on purpose
        for c in self.started:
            c.release.set()
        for c in self.started:
            c.join(10)


def read_snapshot(dsn: str, config: Config | None = None) -> Snapshot:
    """One poll of the server at `dsn` as the daemon reads it with `config`, on a connection of its own."""
    db = Database(dsn)
    try:
        return db.snapshot(config.poll if config is not None else Reading())
    finally:
        db.close()


def server_session(dsn: str, mark: str, state: str | None = "active") -> tuple[int, Any, Any] | None:
    """(pid, backend_start, query_start) of the server session whose query holds `mark` (in `state`), if any."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT pid, backend_start, query_start FROM pg_stat_activity WHERE strpos(query, %s) > 0"
            " AND (%s::text IS NULL OR state = %s) AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
            [mark, state, state],
        ).fetchone()
    return (int(row[0]), row[1], row[2]) if row else None


@pytest.fixture
def clients(pg: Server) -> Iterator[Clients]:
    """Tagged sessions on the shared server; what is left of them is terminated when the test ends."""
    with Clients(pg.dsn) as c:
        yield c
