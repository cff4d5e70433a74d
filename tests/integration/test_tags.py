"""Parent tags beyond application_name, against a real server: query comments (sqlcommenter, marginalia, at either
end), only for live queries, cut texts reported as missed, hostile encodings survived, tags from the role and the
database, `pgparent groups` naming each group's source, and audit.query_text: none."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo
from structlog.testing import capture_logs

from exporter.core.assess import assess
from exporter.core.model import Grouped
from exporter.core.settings import DEFAULT_TARGET, Config
from exporter.face.counters import Counters
from exporter.pg.database import Database
from exporter.run.enforcer import Enforcer
from harness.waiting import eventually
from tests.support.config import make_config
from tests.support.roles import Roles, unique_name
from tests.support.servers import Server
from tests.support.sessions import Clients, read_snapshot

# per_major: comments, encodings and query cuts are the server's
pytestmark = [pytest.mark.integration, pytest.mark.per_major]

SOURCES = {"sources": [{"comment": "parent"}, {"comment": "job"}, {"application_name": r"^(?P<parent>[^:]+:[^:]+)"}]}


def _grouped(dsn: str, config: Config) -> Grouped:
    db = Database(dsn)
    try:
        return assess(db.snapshot(config.poll), config).grouped
    finally:
        db.close()


def _sources(g: Grouped) -> dict[str, list[str]]:
    return {p: [s.label for s in grp.sources] for p, grp in g.groups.items()}


def test_comment_tags_in_either_form_at_either_end(pg: Server, clients: Clients) -> None:
    """sqlcommenter (URL-decoded) and marginalia comments tag running sessions, at the start or the end of the
    query; the first source that yields wins, and application_name tags the rest."""
    clients.start("web:1", "SELECT pg_sleep(60) /*controller='users',parent='Cm%3A1',traceparent='00-ab-cd-01'*/")
    clients.start("web:1", "/*parent:Cm:2,action:index*/ SELECT pg_sleep(60)")
    clients.start("web:1", "SELECT pg_sleep(60) /*job='nightly'*/;")
    clients.start("web:1", "SELECT pg_sleep(60) /* a note */")
    config = make_config(grouping=SOURCES)

    def polled() -> Grouped | None:
        g = _grouped(pg.dsn, config)
        return g if "Cm:1" in g.groups else None

    g = eventually(polled, what="comment-tagged groups")
    assert {p: len(grp.sessions) for p, grp in g.groups.items() if p in ("Cm:1", "Cm:2", "nightly", "web:1")} == {
        "Cm:1": 1, "Cm:2": 1, "nightly": 1, "web:1": 1,
    }
    sources = _sources(g)
    assert sources["Cm:1"] == sources["Cm:2"] == ["comment:parent"]
    assert sources["nightly"] == ["comment:job"] and sources["web:1"] == ["application_name"]


def test_idle_sessions_are_not_counted_by_their_last_comment(pg: Server, clients: Clients) -> None:
    """An idle session's last comment is stale and tags nothing; idle in a transaction, it still counts."""
    (idle,) = clients.start("psql", "SELECT 1 /*parent='Idle%3A1'*/", hold=True)
    (in_tx,) = clients.start("psql", "BEGIN; SELECT 1 /*parent='Idle%3A1'*/", hold=True)
    assert idle.executed.wait(10) and in_tx.executed.wait(10)
    g = _grouped(pg.dsn, make_config(grouping=SOURCES))
    grp = g.groups["Idle:1"]
    assert [s.pid for s in grp.sessions] == [in_tx.pid]
    assert grp.sessions[0].state == "idle in transaction"
    with psycopg.connect(pg.dsn, autocommit=True) as conn:  # the idle one still shows its comment
        row = conn.execute("SELECT state, query FROM pg_stat_activity WHERE pid = %s", [idle.pid]).fetchone()
    assert row == ("idle", "SELECT 1 /*parent='Idle%3A1'*/")


def test_a_comment_cut_at_track_activity_query_size_is_missed_not_guessed(pg: Server, clients: Clients) -> None:
    """A comment appended to a query longer than track_activity_query_size is cut off by PostgreSQL: the session is
    counted as missed (and untagged), while the same comment put first still tags it."""
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        size = int(str(conn.execute("SHOW track_activity_query_size").fetchone()[0]).removesuffix("kB")) * 1024  # type: ignore[index]
    filler = "x" * (size + 100)
    (cut,) = clients.start("psql", f"SELECT pg_sleep(60), '{filler}' /*parent='Long%3A1'*/")
    (first,) = clients.start("psql", f"/*parent='Long%3A2'*/ SELECT pg_sleep(60), '{filler}'")
    config = make_config(grouping=SOURCES)
    snapshot = read_snapshot(pg.dsn, config)
    by_pid = {s.pid: s for s in snapshot.sessions}
    assert cut.pid is not None and first.pid is not None
    assert by_pid[cut.pid].query_cut and by_pid[first.pid].query_cut
    g = assess(snapshot, config).grouped
    assert "Long:1" not in g.groups and [s.pid for s in g.groups["Long:2"].sessions] == [first.pid]
    assert g.comment_missed == 1


def test_hostile_encodings_survive_the_poll(pg: Server) -> None:
    """A session of a SQL_ASCII database can leave bytes that are not UTF-8 in its query text: the poll succeeds,
    such a value tags nothing, a valid one in the same text still does, and the excerpt shows replacements."""
    database = unique_name("ascii")
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
                     .format(sql.Identifier(database)))
    ascii_dsn = make_conninfo(pg.dsn_for(database), client_encoding="SQL_ASCII")
    conns = [psycopg.connect(ascii_dsn, autocommit=True) for _ in range(3)]
    try:
        conns[0].pgconn.send_query(b"SELECT pg_sleep(60) /*parent='\xff\xfe'*/")
        conns[1].pgconn.send_query(b"SELECT pg_sleep(60) /*parent='caf\xc3\xa9',job:\xc3*/")
        conns[2].pgconn.send_query(b"SELECT pg_sleep(60), '\xff' /*parent:Enc:3*/")
        config = make_config(grouping=SOURCES)

        def polled() -> Grouped | None:
            g = _grouped(pg.dsn, config)
            return g if "Enc:3" in g.groups else None

        g = eventually(polled, what="the SQL_ASCII sessions polled")
        assert "café" in g.groups and "Enc:3" in g.groups
        mine = [s for grp in g.groups.values() for s in grp.sessions if s.datname == database]
        assert len(mine) == 2 and any("\ufffd" in (s.query or "") for s in mine)
        assert g.untagged.sessions >= 1
    finally:
        for c in conns:
            c.pgconn.finish()
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", [database])
            eventually(lambda: conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", [database])
                       .fetchone() == (0,), what="the SQL_ASCII sessions gone")
            conn.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(database)))


def test_user_and_database_sources(pg: Server, clients: Clients, roles: Roles) -> None:
    """`user:` and `database:` sources tag sessions by role and by database (a role and a database named like a
    team's job: etl_<id>, tenant_<id>)."""
    role, database = roles.login("etl", "etl-pw", superuser=True), roles.database("tenant")
    clients.start("psql", dsn=role.dsn)
    clients.start("psql", dsn=pg.dsn_for(database))
    config = make_config(grouping={"sources": [{"user": r"^etl_(?P<parent>\w+)$"},
                                               {"database": r"^(?P<parent>tenant_\w+)$"}]})
    g = _grouped(pg.dsn, config)
    assert _sources(g)[role.name.removeprefix("etl_")] == ["user"]
    assert _sources(g)[database] == ["database"]


def test_groups_command_names_each_groups_source(pg: Server, clients: Clients, tmp_path: Path) -> None:
    """`pgparent groups` shows, for each group, the source that tagged it (table and JSON)."""
    clients.start("Src:1")
    clients.start("psql", "SELECT pg_sleep(60) /*parent='Src%3A2'*/")
    config = tmp_path / "rules.yaml"
    config.write_text(json.dumps({"grouping": SOURCES}))
    run = [sys.executable, "-m", "exporter", "groups", "--dsn", pg.dsn, "--config.file", str(config)]
    table = subprocess.run(run, capture_output=True, text=True, timeout=60, check=True).stdout.splitlines()
    assert table[0].split()[-1] == "SOURCE"
    rows = {line.split()[0]: line.split()[-1] for line in table[1:-1]}
    assert rows["Src:1"] == "application_name" and rows["Src:2"] == "comment:parent"
    doc = json.loads(subprocess.run([*run, "--output", "json"], capture_output=True, text=True, timeout=60,
                                    check=True).stdout)
    assert {g["parent"]: g["sources"] for g in doc["groups"]}["Src:2"] == ["comment:parent"]


def test_audit_query_text_none_reads_no_query_text(pg: Server, clients: Clients) -> None:
    """With audit.query_text: none the poll reads no query text at all and audit events carry none; comment tags
    are still read (on the server)."""
    clients.start("psql", "SELECT pg_sleep(60), 'password=hunter2' /*parent='Secret%3A1'*/")
    config = make_config({"name": "audit", "match": {"parent": "Secret:*"}, "max_sessions": 0, "action": "terminate",
                          "dry_run": True}, grouping=SOURCES, audit={"query_text": "none"})
    db = Database(pg.dsn)
    try:
        snapshot = db.snapshot(config.poll)
        assert snapshot.sessions and all(s.query is None for s in snapshot.sessions)
        with capture_logs() as events:
            decision = assess(snapshot, config).decision
            Enforcer(db, Counters(), DEFAULT_TARGET).enforce(decision, snapshot.now)
    finally:
        db.close()
    (audit,) = [e for e in events if e["event"] == "session_signal"]
    assert audit["parent"] == "Secret:1" and audit["tag_source"] == "comment:parent"
    assert audit["query"] is None and "hunter2" not in json.dumps(audit, default=str)
