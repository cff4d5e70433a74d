"""Synthetic sessions and snapshots for the pure tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import count
from urllib.parse import quote

from hypothesis import strategies as st

from exporter.core.model import Session, Snapshot

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
_pids = count(1000)


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


def session(
    app: str,
    *,
    state: str | None = "active",
    query_age: float | None = 1.0,
    xact_age: float | None = None,
    idle_since: float | None = None,
    age: float | None = 10.0,
    user: str = "app",
    db: str = "appdb",
    wait: str | None = None,
    pid: int | None = None,
    leader: int | None = None,
    worker: bool = False,
    comments: tuple[bytes | None, ...] = (),
    query_cut: bool = False,
) -> Session:
    """A client session (or parallel worker) `age` seconds old, running a query `query_age` seconds long;
    `comments` are the raw values the poll read for the configured comment keys (see `sqlcommenter`)."""
    return Session(
        pid=pid if pid is not None else next(_pids),
        leader_pid=leader,
        backend_type="parallel worker" if worker else "client backend",
        datname=db,
        usename=user,
        application_name=app,
        client_addr="127.0.0.1",
        state=state,
        wait_event_type=wait,
        backend_start=ago(age) if age is not None else None,
        xact_start=ago(xact_age) if xact_age is not None else None,
        query_start=ago(query_age) if query_age is not None else None,
        state_change=ago(idle_since) if idle_since is not None else None,
        query="SELECT 1",
        comments=comments,
        query_cut=query_cut,
    )


# Printable text drawn as such (the categories str.isprintable refuses left out, the ASCII space kept), not filtered
# out of any text: newer Hypothesis versions draw so many unprintable characters that a filter trips the health check.
printable = st.characters(exclude_categories=("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp", "Zs"), include_characters=" ")


def sqlcommenter(value: str) -> bytes:
    """A value as the poll reads it from a sqlcommenter comment: `='...'`, URL-encoded, quotes escaped."""
    return b"='" + quote(value, safe="").replace("'", "\\'").encode() + b"'"


def snapshot(*sessions: Session, now: datetime = NOW) -> Snapshot:
    return Snapshot(
        now=now,
        sessions=tuple(s for s in sessions if not s.is_worker),
        workers=tuple(s for s in sessions if s.is_worker),
    )


class UnixClock:
    """A settable Unix clock (seconds), for what reads time.time."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
