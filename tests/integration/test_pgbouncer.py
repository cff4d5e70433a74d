"""Behind a real PgBouncer in transaction mode (started by the fixtures): clients tagged by application_name and by
comment are grouped right, a cancel reaches one client's query and never the next client's (the race made real), the
pool's idle server connections are not counted in comment-tagged groups, the daemon refuses to lead through the
pooler, and application_name_add_host's suffix is coped with by the documented pattern."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest
from structlog.testing import capture_logs

from exporter.core.assess import assess
from exporter.core.model import NO_GUARD, Grouped
from exporter.core.settings import DEFAULT_TARGET, Config
from exporter.face.counters import Counters
from exporter.pg.database import Database
from exporter.run.enforcer import Enforcer
from harness.daemon import DaemonProcess
from harness.waiting import eventually
from tests.support.config import make_config
from tests.support.pgbouncer import PgBouncer, PooledClients
from tests.support.servers import Server
from tests.support.sessions import read_snapshot, server_session

# per_major: the signal statement's guards, and the pooler seen from the server
pytestmark = [pytest.mark.integration, pytest.mark.per_major]

SOURCES = [{"comment": "parent"}, {"application_name": r"^(?P<parent>[^:]+:[^:]+)"}]
ADD_HOST_PATTERN = r"^(?P<parent>[^: ]+:[^: ]+)"
"""The pattern docs/tagging.md gives for application_name_add_host = 1: tags without spaces, so the appended
` - host:port` (or what the 63-byte cut leaves of it) is never part of the parent."""


def _grouped(pg: Server, config: Config) -> Grouped:
    # pgparent's own connection goes to PostgreSQL directly
    return assess(read_snapshot(pg.dsn, config), config).grouped


def test_clients_tagged_by_name_and_by_comment_are_grouped(
    pg: Server, pgbouncer: PgBouncer, pooled: PooledClients
) -> None:
    """Through the pooler, a client's application_name (a startup parameter, which PgBouncer sets on the server
    connection it lends) and a client's query comment both tag the server session running its query."""
    pooled.start(pgbouncer.dsn_for("postgres", "Bouncer:name"), "SELECT pg_sleep(60) -- by name")
    pooled.start(pgbouncer.dsn_for("postgres", "other"), "SELECT pg_sleep(60) /*parent='Bouncer%3Acomment'*/")
    eventually(lambda: server_session(pg.dsn, "by name") and server_session(pg.dsn, "Bouncer%3Acomment"),
               what="both queries running on server connections")
    g = _grouped(pg, make_config(grouping={"sources": SOURCES}))
    assert len(g.groups["Bouncer:name"].sessions) == 1 and len(g.groups["Bouncer:comment"].sessions) == 1
    assert [s.label for s in g.groups["Bouncer:name"].sources] == ["application_name"]
    assert [s.label for s in g.groups["Bouncer:comment"].sources] == ["comment:parent"]


def test_idle_server_connections_are_not_counted_in_comment_groups(
    pg: Server, pgbouncer: PgBouncer, pooled: PooledClients
) -> None:
    """When a client's transaction ends, its server connection goes back to the pool idle, still showing the last
    query and its comment: that connection is not counted in the comment's group."""
    mark = "Pool%3Aidle"
    pooled.start(pgbouncer.dsn_for("postgres"), f"SELECT 1 /*parent='{mark}'*/", hold=True)
    idle = eventually(lambda: server_session(pg.dsn, mark, state="idle"), what="the server connection idle in the pool")
    config = make_config(grouping={"sources": SOURCES})
    snapshot = read_snapshot(pg.dsn, config)
    seen = {s.pid: s for s in snapshot.sessions}
    assert seen[idle[0]].state == "idle" and mark in (seen[idle[0]].query or "")  # the comment is there, and stale
    assert "Pool:idle" not in assess(snapshot, config).grouped.groups


def test_a_cancel_cancels_one_clients_query_and_never_anothers(
    pg: Server, pgbouncer: PgBouncer, pooled: PooledClients, tmp_path: Path
) -> None:
    """End to end, the daemon connected to PostgreSQL directly: a cancel rule on one comment-tagged group's long
    query cancels that query, through the pooler the client sees the cancel, and another client's query on the same
    pool runs on."""
    victim = pooled.start(pgbouncer.dsn_for("postgres"), "SELECT pg_sleep(60) /*parent='Cancel%3Avictim'*/")
    bystander = pooled.start(pgbouncer.dsn_for("postgres"), "SELECT pg_sleep(60) /*parent='Cancel%3Aother'*/")
    eventually(lambda: server_session(pg.dsn, "Cancel%3Avictim") and server_session(pg.dsn, "Cancel%3Aother"),
               what="both queries running")
    rules = (
        "interval: 0.5s\ngrouping:\n  sources:\n    - comment: parent\n"
        "rules:\n  - name: cancel-victim\n    match: {parent: 'Cancel:victim'}\n    max_query_duration: 0s\n"
        "    action: cancel\n"
    )
    with DaemonProcess(tmp_path, rules, pg.dsn) as d:
        eventually(lambda: victim.outcome == "cancelled", timeout=30, what="the victim's query cancelled")
        d.wait_polls(3)
        (audit,) = [e for e in d.events("session_signal") if e.get("result") == "ok"]
    assert audit["parent"] == "Cancel:victim" and audit["tag_source"] == "comment:parent"
    assert audit["action"] == "cancel"
    assert bystander.outcome is None and server_session(pg.dsn, "Cancel%3Aother") is not None


def test_a_signal_for_a_query_that_moved_on_is_left_alone(
    pg: Server, pgbouncer: PgBouncer, pooled: PooledClients
) -> None:
    """The race made real: one server connection (a pool of one) runs client A's tagged query at the poll; between
    the poll and the cancel, A's query ends and the pooler lends the connection to client B. The cancel re-checks
    query_start in its own statement and leaves B's query alone ("gone"); the same stale target sent with the old
    guard (pid, backend_start, application_name only) would have cancelled B's query, which shows the race was
    there."""
    one = pgbouncer.dsn_for("single", "shared-app")
    with psycopg.connect(pg.dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_advisory_lock(4242)")
        a = pooled.start(one, "SELECT pg_advisory_xact_lock(4242) /*parent='Race%3AA'*/")
        held = eventually(lambda: server_session(pg.dsn, "Race%3AA"), what="A's query waiting on the server")
        b = pooled.start(one, "SELECT pg_sleep(60) /*parent='Race%3AB'*/")  # queued: the pool's one connection is A's
        config = make_config({"name": "cancel-a", "match": {"parent": "Race:A"}, "max_query_duration": "0s",
                              "action": "cancel"}, grouping={"sources": SOURCES})
        db = Database(pg.dsn)
        try:
            assessed = assess(db.snapshot(config.poll), config)
            decision = assessed.decision
            (signal,) = decision.signals
            assert signal.session.pid == held[0] and signal.guard.query_start == held[2]
            # Between the poll and the signal: A's query ends, and the pooler gives the connection to B.
            admin.execute("SELECT pg_advisory_unlock(4242)")
            eventually(lambda: a.outcome == "completed", what="A's query done")
            moved = eventually(lambda: server_session(pg.dsn, "Race%3AB"), what="B's query on the same connection")
            assert moved[0] == held[0] and moved[1] == held[1] and moved[2] != held[2]
            with capture_logs() as events:
                results = Enforcer(db, Counters(), DEFAULT_TARGET).enforce(decision, assessed.snapshot.now)
            assert results == {"gone": 1}
            (audit,) = [e for e in events if e["event"] == "session_signal"]
            assert audit["result"] == "gone" and "guard" in (audit["detail"] or "")
            assert b.outcome is None and server_session(pg.dsn, "Race%3AB") is not None
            # The control: without the query_start check the same signal lands on B's query.
            assert db.signal("cancel", signal.session, NO_GUARD) == ("ok", "")
        finally:
            db.close()
    eventually(lambda: b.outcome == "cancelled", what="B's query cancelled by the unguarded signal")


def test_the_daemon_through_the_pooler_monitors_but_does_not_lead(
    pgbouncer: PgBouncer, tmp_path: Path
) -> None:
    """pgparent's DSN pointing at PgBouncer: it detects the pooler (the pid its connection announced is not its
    server session's), says so, polls, and refuses the leader lock, so it never enforces from there."""
    with DaemonProcess(tmp_path, "interval: 0.5s\n", pgbouncer.dsn_for("postgres")) as d:
        d.wait_polls(2)
        assert d.sample("pgparent_up") == 1
        assert d.sample("pgparent_leader") == 0 and d.sample("pgparent_enforcing") == 0
        (warning,) = d.events("connection_pooler")
        assert "connect pgparent to PostgreSQL directly" in warning["reason"]
        assert any("connection pooler" in e.get("reason", "") for e in d.events("enforcement_off"))


@pytest.fixture
def add_host_bouncer(pg: Server) -> Any:
    bouncer = PgBouncer(pg, application_name_add_host="1")
    try:
        yield bouncer
    finally:
        bouncer.stop(pg)


def test_application_name_add_host_is_coped_with(pg: Server, add_host_bouncer: PgBouncer,
                                                 pooled: PooledClients) -> None:
    """With application_name_add_host = 1 PgBouncer appends ` - host:port` to each client's name: the default pattern
    then folds the host into the tag, and the documented pattern keeps the tag as the client set it."""
    pooled.start(add_host_bouncer.dsn_for("postgres", "FakeParent:1001"), "SELECT pg_sleep(60) -- add_host 1")
    pooled.start(add_host_bouncer.dsn_for("postgres", "etl:42:worker-3"), "SELECT pg_sleep(60) -- add_host 2")
    eventually(lambda: server_session(pg.dsn, "add_host 1") and server_session(pg.dsn, "add_host 2"),
               what="both queries running")
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        (name,) = conn.execute("SELECT application_name FROM pg_stat_activity WHERE query LIKE '%%add_host 1'"
                               ).fetchone() or ("",)
    assert name.startswith("FakeParent:1001 - 127.0.0.1:")
    default = _grouped(pg, make_config(grouping={"sources": [{"application_name": r"^(?P<parent>[^:]+:[^:]+)"}]}))
    assert "FakeParent:1001 - 127.0.0.1" in default.groups  # what the default pattern makes of it
    coping = _grouped(pg, make_config(grouping={"sources": [{"application_name": ADD_HOST_PATTERN}]}))
    assert len(coping.groups["FakeParent:1001"].sessions) == 1 and len(coping.groups["etl:42"].sessions) == 1
