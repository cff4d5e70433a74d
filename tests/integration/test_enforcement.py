"""Enforcement safety, each promise against a real server: the guard, isolation of failures, what is never signalled,
the per-cycle cap, `for:`, dry runs, and the audit event."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from structlog.testing import capture_logs

from exporter.core.assess import assess
from exporter.core.model import Session
from exporter.core.policy import RuleState
from exporter.core.settings import DEFAULT_TARGET, Config, parse_config
from exporter.face.counters import Counters
from exporter.pg.database import Database
from exporter.run.daemon import Daemon
from exporter.run.enforcer import Enforcer
from tests.support import Clients, Server, eventually, role_and_database, unique_name

pytestmark = pytest.mark.integration

APP_PASSWORD = "app-pw-1"
MONITOR_PASSWORD = "monitor-pw-1"


@pytest.fixture(scope="module")
def roles(pg: Server) -> Iterator[dict[str, str]]:
    """A plain application role for client sessions, and a least-privilege monitoring role, of this module's own."""
    app, monitor = unique_name("pgp_app"), unique_name("pgp_monitor")
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        for role, password in ((app, APP_PASSWORD), (monitor, MONITOR_PASSWORD)):
            create = sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}")
            conn.execute(create.format(sql.Identifier(role), sql.Literal(password)))
        conn.execute(sql.SQL("GRANT pg_monitor, pg_signal_backend TO {}").format(sql.Identifier(monitor)))
    try:
        yield {
            "app": pg.dsn_for("postgres", user=app, password=APP_PASSWORD),
            "monitor": pg.dsn_for("postgres", user=monitor, password=MONITOR_PASSWORD),
        }
    finally:
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            for role in (app, monitor):
                conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


@pytest.fixture
def protectable(pg: Server) -> Iterator[tuple[str, str]]:
    """(database, role) of this test's own, for the protect lists; dropped once their sessions have ended."""
    database, role = unique_name("azure_sys"), unique_name("replication")
    with role_and_database(pg.dsn, role, database, "r-pw"):
        yield database, role


def _config(rules: list[dict[str, Any]], **top: Any) -> Config:
    return parse_config({"interval": "1s", "rules": rules, **top}, "test")


def _one_cycle(dsn: str, config: Config, state: RuleState | None = None, force_dry_run: bool = False
               ) -> tuple[Counters, list[dict[str, Any]], RuleState]:
    """Poll once, evaluate, enforce; return counters, captured log events and the new rule state."""
    db = Database(dsn)
    counters = Counters()
    try:
        with capture_logs() as events:
            assessed = assess(db.snapshot(), config, state, dry_run=force_dry_run)
            decision = assessed.decision
            Enforcer(db, counters, DEFAULT_TARGET).enforce(decision, assessed.snapshot.now)
    finally:
        db.close()
    return counters, [dict(e) for e in events], decision.state


def _count(counters: Counters, name: str, **labels: str) -> float | None:
    extra = {} if name == "pgparent_signals_deferred_total" else {"trigger": "poll"}
    return counters.registry.get_sample_value(name, {"target": "default", **extra, **labels})


def _signals(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["event"] == "session_signal"]


def _session_of(dsn: str, pid: int) -> Session:
    db = Database(dsn)
    try:
        return next(s for s in db.snapshot().sessions if s.pid == pid)
    finally:
        db.close()


def test_guard_skips_a_pid_whose_backend_start_differs(pg: Server, clients: Clients) -> None:
    """A pid now held by a session that started at another moment (pid reuse) matches no row and is left alone."""
    (victim,) = clients.start("FakeParent:1")
    assert victim.pid is not None
    seen = _session_of(pg.dsn, victim.pid)
    assert seen.backend_start is not None
    impostor = replace(seen, backend_start=seen.backend_start - timedelta(microseconds=1))
    db = Database(pg.dsn)
    try:
        assert db.signal("terminate", impostor)[0] == "gone"
        assert db.signal("terminate", replace(seen, application_name="FakeParent:other"))[0] == "gone"
        assert not victim.done
        assert db.signal("terminate", seen)[0] == "ok"
    finally:
        db.close()
    eventually(lambda: victim.outcome == "terminated", what="the real session terminated")


def test_a_database_only_connection_reads_and_signals_only_its_database(pg: Server, clients: Clients) -> None:
    """`sessions: database`: the poll lists only the DSN's database's sessions, and the signal statement itself
    refuses a session of another database, even when handed its exact pid, backend_start and tag."""
    (victim,) = clients.start("FakeParent:1")
    assert victim.pid is not None
    seen = _session_of(pg.dsn, victim.pid)
    name = unique_name("pgp_elsewhere")
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    db = Database(pg.dsn_for(name), database_only=True)
    try:
        assert victim.pid not in {s.pid for s in db.snapshot().sessions}
        assert db.signal("terminate", seen)[0] == "gone"
        assert not victim.done
    finally:
        db.close()
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def test_guard_never_signals_non_client_backends_or_itself(pg: Server) -> None:
    """The checkpointer and the daemon's own session cannot be signalled, even when asked for by pid."""
    db = Database(pg.dsn)
    try:
        db.connect()
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            rows = conn.execute(
                "SELECT pid, backend_start FROM pg_stat_activity WHERE backend_type = 'checkpointer'"
                " OR pid = %s ORDER BY backend_type",
                [db.backend_pid],
            ).fetchall()
        assert len(rows) == 2
        for pid, started in rows:
            fake = Session(pid, None, "client backend", "postgres", "postgres", "", None, "active", None, started,
                           None, None, None, None)
            fake_tagged = replace(fake, application_name="pgparent")
            assert db.signal("terminate", fake)[0] == "gone"
            assert db.signal("terminate", fake_tagged)[0] == "gone"
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            alive = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY(%s)", [[pid for pid, _ in rows]]
            ).fetchone()
        assert alive == (2,)
    finally:
        db.close()


def test_a_permission_error_on_one_session_does_not_stop_the_others(
    pg: Server, clients: Clients, roles: dict[str, str]
) -> None:
    """As a least-privilege role, a superuser's session in the group is refused and counted; the rest are ended."""
    plain = clients.start("FakeParent:2", n=2, dsn=roles["app"])
    superuser = clients.start("FakeParent:2")
    config = _config([{"name": "kill2", "match": {"parent": "FakeParent:2"}, "max_sessions": 0,
                       "action": "terminate"}])
    counters, events, _ = _one_cycle(roles["monitor"], config)
    results = sorted(e["result"] for e in _signals(events))
    assert results == ["ok", "ok", "permission_denied"]
    assert _count(counters, "pgparent_signalled_sessions_total", rule="kill2", action="terminate") == 2
    assert _count(counters, "pgparent_signal_failures_total", rule="kill2", reason="permission_denied") == 1
    eventually(lambda: all(c.outcome == "terminated" for c in plain), what="plain sessions terminated")
    assert not superuser[0].done


def test_protected_untagged_and_own_sessions_are_never_signalled(
    pg: Server, clients: Clients, protectable: tuple[str, str]
) -> None:
    """A rule over every group leaves protected users, databases, applications and untagged sessions alone."""
    database, user = protectable
    victim = clients.start("Prot:1")
    by_db = clients.start("Prot:1", dsn=pg.dsn_for(database))
    by_user = clients.start("Prot:1", dsn=pg.dsn_for("postgres", user=user, password="r-pw"))
    by_app = clients.start("pg_dump")
    untagged = clients.start("psql")
    config = _config(
        [{"name": "all", "match": {"parent": "*"}, "max_sessions": 0, "action": "terminate"}],
        protect={"users": [user], "databases": ["azure_*"], "applications": ["pg_dump", "Prot:1:x"]},
    )
    _, events, _ = _one_cycle(pg.dsn, config)
    signalled = {e["pid"] for e in _signals(events)}
    assert victim[0].pid in signalled
    for spared in (by_db, by_user, by_app, untagged):
        assert spared[0].pid not in signalled
    eventually(lambda: victim[0].done, what="the unprotected session ended")
    assert not any(c[0].done for c in (by_db, by_user, by_app, untagged))


def test_max_terminations_per_cycle_holds(pg: Server, clients: Clients) -> None:
    """With a cap of 2, a group of 5 loses 2 sessions per poll; the rest are deferred and logged."""
    group5 = clients.start("Cap:1", n=5)
    config = _config([{"name": "cap", "match": {"parent": "Cap:1"}, "max_sessions": 0, "action": "terminate"}],
                     limits={"max_terminations_per_cycle": 2})
    counters, events, _ = _one_cycle(pg.dsn, config)
    assert [e["result"] for e in _signals(events)] == ["ok", "ok"]
    assert _count(counters, "pgparent_signals_deferred_total", rule="cap") == 3
    assert any(e["event"] == "signals_deferred" and e["count"] == 3 for e in events)
    eventually(lambda: sum(c.done for c in group5) == 2, what="two sessions ended")
    counters, events, _ = _one_cycle(pg.dsn, config)
    assert len(_signals(events)) == 2
    eventually(lambda: sum(c.done for c in group5) == 4, what="four sessions ended")


def test_for_holds_before_acting(pg: Server, clients: Clients) -> None:
    """A rule with `for: 1s` signals nothing on the first poll, and acts once the condition held that long."""
    (victim,) = clients.start("For:1")
    config = _config([{"name": "wait", "match": {"parent": "For:1"}, "max_sessions": 0, "for": "1s",
                       "action": "terminate"}])
    _, events, state = _one_cycle(pg.dsn, config)
    assert _signals(events) == []
    assert not victim.done
    eventually(lambda: _signals(_one_cycle(pg.dsn, config, state)[1]), timeout=5, what="rule acted after for:")
    eventually(lambda: victim.done, what="session ended")


@pytest.mark.parametrize("where", ["global", "rule", "flag"])
def test_dry_run_signals_nothing_and_audits(pg: Server, clients: Clients, where: str) -> None:
    """Dry run (global, per rule, or --dry-run) audits each would-be signal with result dry_run and signals nothing."""
    group2 = clients.start(f"Dry:{where}", n=2)
    rule: dict[str, Any] = {"name": "dry", "match": {"parent": f"Dry:{where}"}, "max_sessions": 0,
                            "action": "terminate"}
    if where == "rule":
        rule["dry_run"] = True
    config = _config([rule], dry_run=where == "global")
    counters, events, _ = _one_cycle(pg.dsn, config, force_dry_run=where == "flag")
    assert [e["result"] for e in _signals(events)] == ["dry_run", "dry_run"]
    assert not [m for m in counters.signalled.collect() for x in m.samples]
    db = Database(pg.dsn)
    try:
        assert assess(db.snapshot(), config).grouped.groups[f"Dry:{where}"].stats.sessions == 2
    finally:
        db.close()
    assert not any(c.done for c in group2)


def test_audit_event_has_every_field(pg: Server, clients: Clients, roles: dict[str, str]) -> None:
    """One session_signal event per signal, carrying rule, parent, pid, backend_start, user, database, client
    address, state, durations, truncated query, action and result."""
    long_query = "SELECT pg_sleep(60) /* " + "x" * 400 + " */"
    (victim,) = clients.start("Audit:1", long_query, dsn=roles["app"])
    eventually(lambda: _session_of(pg.dsn, victim.pid or 0).state == "active", what="query running")
    config = _config([{"name": "audit", "match": {"parent": "Audit:*"}, "max_query_duration": 0,
                       "action": "terminate"}])
    _, events, _ = _one_cycle(pg.dsn, config)
    (event,) = _signals(events)
    assert event["rule"] == "audit" and event["parent"] == "Audit:1" and event["pid"] == victim.pid
    assert event["backend_start"] == victim.backend_start.isoformat()
    assert event["user"] == conninfo_to_dict(roles["app"])["user"] and event["database"] == "postgres"
    assert event["client_addr"] == "127.0.0.1"
    assert event["state"] == "active" and event["action"] == "terminate" and event["result"] == "ok"
    assert event["query_seconds"] >= 0 and event["session_seconds"] >= event["query_seconds"]
    assert event["transaction_seconds"] is not None
    assert event["query"].startswith("SELECT pg_sleep(60)") and len(event["query"]) <= 201
    assert event["reasons"] and event["reasons"][0].startswith("max_query_duration")


def test_cancel_interrupts_active_queries_and_keeps_sessions(pg: Server, clients: Clients) -> None:
    """action cancel ends the running queries of a group; its idle sessions are not touched."""
    busy = clients.start("Cancel:1", "SELECT pg_sleep(60)")
    (idle,) = clients.start("Cancel:1", "SELECT 1", hold=True)
    assert idle.executed.wait(10)
    config = _config([{"name": "c", "match": {"parent": "Cancel:1"}, "max_active_sessions": 0, "action": "cancel"}])
    _, events, _ = _one_cycle(pg.dsn, config)
    assert [(e["pid"], e["result"]) for e in _signals(events)] == [(busy[0].pid, "ok")]
    eventually(lambda: busy[0].outcome == "cancelled", what="query cancelled")
    idle.release.set()
    eventually(lambda: idle.outcome == "completed", what="idle session still connected and usable")


def test_daemon_cycle_counts_outcomes_on_metrics(pg: Server, clients: Clients) -> None:
    """A daemon cycle that terminates a group publishes the counter and the violating gauge."""
    clients.start("Cyc:1", n=3)
    config = _config([{"name": "cyc", "match": {"parent": "Cyc:1"}, "max_sessions": 2, "action": "terminate"}])
    daemon = Daemon(config, Database(pg.dsn))
    try:
        daemon.cycle()
    finally:
        daemon.close()
    reg = daemon.registry
    labels = {"target": "default", "rule": "cyc", "action": "terminate", "trigger": "poll"}
    assert reg.get_sample_value("pgparent_signalled_sessions_total", labels) == 3
    assert reg.get_sample_value("pgparent_rule_violating_groups", {"target": "default", "rule": "cyc"}) == 1
    assert reg.get_sample_value("pgparent_up", {"target": "default"}) == 1
