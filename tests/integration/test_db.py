"""The poll against a real server: columns, autocommit, own-session exclusion, parallel workers."""

from __future__ import annotations

from datetime import datetime

import psycopg
import pytest
from psycopg import sql

from exporter.core.assess import assess
from exporter.core.model import Grouped
from exporter.core.settings import Config
from exporter.errors import DatabaseUnavailable, UsageError
from exporter.pg.database import Database
from exporter.pg.dsn import mask_dsn, resolve_dsn
from harness.waiting import eventually
from tests.support.roles import Roles, unique_name
from tests.support.servers import Server
from tests.support.sessions import Clients

pytestmark = pytest.mark.integration



@pytest.mark.per_major
def test_capabilities_detect_version_dependent_columns(pg: Server) -> None:
    """leader_pid and query_id are detected from the catalog, matching the server's version."""
    db = Database(pg.dsn)
    try:
        caps = db.connect()
    finally:
        db.close()
    assert caps.has_leader_pid == (caps.server_version_num >= 130000)
    assert caps.has_query_id == (caps.server_version_num >= 140000)
    assert caps.can_read_all_stats and caps.can_signal and not caps.in_recovery


@pytest.mark.per_major
def test_snapshot_sees_tagged_sessions_and_excludes_its_own(pg: Server, clients: Clients) -> None:
    """A poll lists other client sessions with their tags, never its own connection."""
    started = clients.start("FakeParent:1001", n=2)
    db = Database(pg.dsn)
    try:
        snap = db.snapshot()
        own = db.backend_pid
    finally:
        db.close()
    pids = {s.pid for s in snap.sessions}
    assert {c.pid for c in started} <= pids
    assert own not in pids
    assert all(s.backend_type == "client backend" for s in snap.sessions)
    assert assess(snap, Config()).grouped.groups["FakeParent:1001"].stats.sessions == 2


@pytest.mark.per_major
def test_the_poll_tells_superusers_and_role_less_sessions_to_any_monitoring_role(
    pg: Server, clients: Clients, roles: Roles
) -> None:
    """Each row says whether its role is a superuser or it has none (its role dropped while connected), to a role
    with pg_monitor and to one without pg_read_all_stats alike (to which a role-less session looks like a background
    process: no row); the capabilities say pgparent's role is none."""
    plain, dropped = roles.login("pgp_plain", "p-pw"), roles.login("pgp_dropped", "d-pw")
    monitor = roles.login("pgp_monitor", "m-pw", member_of=("pg_monitor",))
    nostats = roles.login("pgp_nostats", "n-pw")
    (su,) = clients.start("Su:1")
    (ordinary,) = clients.start("Su:1", dsn=plain.dsn)
    (orphan,) = clients.start("Su:1", dsn=dropped.dsn)
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(dropped.name)))
    for dsn in (monitor.dsn, nostats.dsn):
        db = Database(dsn)
        try:
            caps, snap = db.connect(), db.snapshot()
        finally:
            db.close()
        flags: dict[int | None, tuple[str | None, bool]] = {s.pid: (s.usename, s.superuser) for s in snap.sessions}
        assert flags[su.pid][1] is True and flags[ordinary.pid] == (plain.name, False)
        assert flags.get(orphan.pid) == ((None, True) if dsn == monitor.dsn else None)
        assert caps.superuser is False and snap.pgparent_superuser is False
    db = Database(pg.dsn)
    try:
        assert db.connect().superuser is True and db.snapshot().pgparent_superuser is True
    finally:
        db.close()


@pytest.mark.per_major
def test_poll_connection_is_autocommit_so_now_moves(pg: Server) -> None:
    """Two polls on one connection see two different server clocks and leave no open transaction behind."""
    db = Database(pg.dsn)
    try:
        first = db.snapshot().now

        def moved() -> datetime | None:  # inside one transaction now() would hold still, and this time out
            now = db.snapshot().now
            return now if now > first else None

        second = eventually(moved, timeout=10, what="the server clock moved between polls")
        own = db.backend_pid
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            row = conn.execute("SELECT state, xact_start FROM pg_stat_activity WHERE pid = %s", [own]).fetchone()
    finally:
        db.close()
    assert second > first
    assert row == ("idle", None)


@pytest.mark.per_major
def test_own_connection_is_named_pgparent(pg: Server) -> None:
    """The daemon's own session carries application_name 'pgparent'."""
    db = Database(pg.dsn)
    try:
        db.connect()
        own = db.backend_pid
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            row = conn.execute("SELECT application_name FROM pg_stat_activity WHERE pid = %s", [own]).fetchone()
    finally:
        db.close()
    assert row == ("pgparent",)


@pytest.mark.per_major
def test_parallel_workers_are_attributed_to_the_leader_and_not_counted(
    pg: Server, clients: Clients, admin: psycopg.Connection[tuple[object, ...]]
) -> None:
    """A forced parallel plan: its workers count under the leader's group, and never as sessions."""
    table = sql.Identifier(unique_name("par_t"))
    admin.execute(sql.SQL("CREATE TABLE {} AS SELECT g AS x FROM generate_series(1, 60) g").format(table))
    try:
        admin.execute(sql.SQL("ALTER TABLE {} SET (parallel_workers = 2)").format(table))  # else a tiny table gets none
        admin.execute(sql.SQL("ANALYZE {}").format(table))
        setup = (
            "SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0; SET min_parallel_table_scan_size = 0;"
            " SET max_parallel_workers_per_gather = 2; SET parallel_leader_participation = off"
        )
        query = sql.SQL("SELECT count(*) FROM {} WHERE pg_sleep(0.2) IS NOT NULL").format(table).as_string(admin)
        clients.start("etl:7:leader", query, setup=setup)
        db = Database(pg.dsn)
        try:

            def grouped_with_workers() -> Grouped | None:
                g = assess(db.snapshot(), Config()).grouped
                etl = g.groups.get("etl:7")
                return g if etl is not None and etl.workers >= 1 else None

            grouped = eventually(grouped_with_workers, timeout=10, what="parallel workers visible")
        finally:
            db.close()
    finally:
        clients.cleanup()
        admin.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))
    etl = grouped.groups["etl:7"]
    assert etl.stats.sessions == 1
    assert etl.workers >= 1
    assert all(s.backend_type == "client backend" for s in etl.sessions)


def test_unreachable_server_raises_database_unavailable_without_password(pg: Server) -> None:
    """A refused connection becomes DatabaseUnavailable whose message names the DSN with the password masked."""
    from exporter.pgcluster import free_port

    dsn = f"host=127.0.0.1 port={free_port()} user=x password=sekrit-pw-123 dbname=x connect_timeout=2"
    db = Database(dsn)
    with pytest.raises(DatabaseUnavailable) as caught:
        db.snapshot()
    assert "sekrit-pw-123" not in str(caught.value)
    assert "password=****" in str(caught.value)


@pytest.mark.per_major
def test_wrong_password_message_never_holds_it(pg: Server) -> None:
    """Authentication failure is reported, and the wrong password never appears in the message."""
    db = Database(pg.dsn_for("postgres", password="not-the-password-42"))
    with pytest.raises(DatabaseUnavailable) as caught:
        db.connect()
    assert "password authentication failed" in str(caught.value)
    assert "not-the-password-42" not in str(caught.value)


def test_dsn_resolution_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """--dsn wins over PGPARENT_DSN, which wins over DATA_SOURCE_NAME; none leaves libpq's PG* variables."""
    monkeypatch.setenv("PGPARENT_DSN", "host=a")
    monkeypatch.setenv("DATA_SOURCE_NAME", "host=b")
    assert resolve_dsn("host=c") == "host=c"
    assert resolve_dsn(None) == "host=a"
    monkeypatch.delenv("PGPARENT_DSN")
    assert resolve_dsn(None) == "host=b"
    monkeypatch.delenv("DATA_SOURCE_NAME")
    assert resolve_dsn(None) == ""


def test_mask_dsn_hides_passwords_in_both_syntaxes() -> None:
    """key=value and URI DSNs are shown with the password masked; an invalid DSN is shown as such, and is a
    UsageError as soon as a Database is made of it, its message without the password."""
    assert "s3cret" not in mask_dsn("host=h user=u password=s3cret")
    assert "s3cret" not in mask_dsn("postgresql://u:s3cret@h:5432/db")
    assert "password=****" in mask_dsn("postgresql://u:s3cret@h:5432/db")
    assert mask_dsn("postgresql://u:s3cret@h:notaport/db?x") == "(unparseable DSN)"
    with pytest.raises(UsageError, match="invalid DSN") as caught:
        Database("postgresql://u:s3cret@h:notaport/db?x")
    assert "s3cret" not in str(caught.value)
