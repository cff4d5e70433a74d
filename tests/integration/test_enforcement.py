"""Enforcement safety, each promise against a real server: the guard, isolation of failures, what is never signalled,
the per-cycle cap, `for:`, dry runs, and the audit event."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import psycopg
import pytest
from structlog.testing import capture_logs

from exporter.core.assess import assess
from exporter.core.model import Session
from exporter.core.policy import Decision, RuleState, Signal
from exporter.core.settings import DEFAULT_TARGET, Config
from exporter.face.counters import Counters
from exporter.pg.database import Database
from exporter.run.daemon import Daemon
from exporter.run.enforcer import RESEND_AFTER, Enforcer
from harness.waiting import eventually
from tests.support.config import make_config
from tests.support.roles import Role, Roles
from tests.support.servers import Server
from tests.support.sessions import Clients

# per_major: the signal statement and its guards run on the server
pytestmark = [pytest.mark.integration, pytest.mark.per_major]

APP_PASSWORD = "app-pw-1"
MONITOR_PASSWORD = "monitor-pw-1"
INTERVAL = "1s"


def _app_and_monitor(roles: Roles) -> tuple[Role, Role]:
    """A plain application role for client sessions, and a monitoring role with pg_monitor and pg_signal_backend."""
    return (roles.login("pgp_app", APP_PASSWORD),
            roles.login("pgp_monitor", MONITOR_PASSWORD, member_of=("pg_monitor", "pg_signal_backend")))


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


def test_a_signal_that_landed_is_not_sent_again_while_it_takes_effect(pg: Server, clients: Clients) -> None:
    """A poll or a deadline that comes while a signalled backend is still acting on its signal asks for the same signal
    again; within RESEND_AFTER it is not sent, audited or counted a second time, and after it, it is. A cancel of an
    idle session lands (PostgreSQL says true) and changes nothing, so the second request meets the very same backend."""
    (idle,) = clients.start("FakeParent:7", "SELECT 1", hold=True)
    pid = idle.pid
    assert pid is not None
    session = eventually(lambda: s if (s := _session_of(pg.dsn, pid)).state == "idle" else None,
                         what="the session idle")
    order = Signal("resend", "cancel", "FakeParent:7", session, ("test",), dry_run=False)
    db = Database(pg.dsn)
    counters = Counters()
    enforcer = Enforcer(db, counters, DEFAULT_TARGET)
    now = session.backend_start or session.query_start
    assert now is not None
    try:
        with capture_logs() as events:
            first = enforcer.enforce(Decision.only((order,)), now)
            again = enforcer.enforce(Decision.only((order,)), now + RESEND_AFTER / 2)
            later = enforcer.enforce(Decision.only((order,)), now + RESEND_AFTER)
    finally:
        db.close()
    assert (first, again, later) == ({"ok": 1}, {}, {"ok": 1})
    assert [e["result"] for e in _signals([dict(e) for e in events])] == ["ok", "ok"]
    assert _count(counters, "pgparent_signalled_sessions_total", rule="resend", action="cancel") == 2
    assert _session_of(pg.dsn, pid).backend_start == session.backend_start  # still connected


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


def test_a_database_only_connection_reads_and_signals_only_its_database(
    pg: Server, clients: Clients, roles: Roles
) -> None:
    """`sessions: database`: the poll lists only the DSN's database's sessions, and the signal statement itself
    refuses a session of another database, even when handed its exact pid, backend_start and tag."""
    (victim,) = clients.start("FakeParent:1")
    assert victim.pid is not None
    seen = _session_of(pg.dsn, victim.pid)
    db = Database(pg.dsn_for(roles.database("pgp_elsewhere")), database_only=True)
    try:
        assert victim.pid not in {s.pid for s in db.snapshot().sessions}
        assert db.signal("terminate", seen)[0] == "gone"
        assert not victim.done
    finally:
        db.close()


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
    pg: Server, clients: Clients, roles: Roles
) -> None:
    """As a least-privilege role told to try superusers' sessions too (`protect.superusers: false`), a superuser's
    session in the group is refused and counted; the rest are ended."""
    app, monitor = _app_and_monitor(roles)
    plain = clients.start("FakeParent:2", n=2, dsn=app.dsn)
    superuser = clients.start("FakeParent:2")
    config = make_config({"name": "kill2", "match": {"parent": "FakeParent:2"}, "max_sessions": 0,
                          "action": "terminate"}, interval=INTERVAL, protect={"superusers": False})
    counters, events, _ = _one_cycle(monitor.dsn, config)
    results = sorted(e["result"] for e in _signals(events))
    assert results == ["ok", "ok", "permission_denied"]
    assert _count(counters, "pgparent_signalled_sessions_total", rule="kill2", action="terminate") == 2
    assert _count(counters, "pgparent_signal_failures_total", rule="kill2", reason="permission_denied") == 1
    eventually(lambda: all(c.outcome == "terminated" for c in plain), what="plain sessions terminated")
    assert not superuser[0].done


def test_a_least_privilege_role_never_tries_a_superusers_session(pg: Server, clients: Clients, roles: Roles) -> None:
    """As a least-privilege role under the default `protect.superusers: auto`, a superuser's session in a firing
    group is protected: no signal is tried (no permission_denied), the rest are ended."""
    app, monitor = _app_and_monitor(roles)
    plain = clients.start("FakeParent:3", n=2, dsn=app.dsn)
    superuser = clients.start("FakeParent:3")
    config = make_config({"name": "kill3", "match": {"parent": "FakeParent:3"}, "max_sessions": 0,
                          "action": "terminate"}, interval=INTERVAL)
    counters, events, _ = _one_cycle(monitor.dsn, config)
    assert sorted((e["pid"], e["result"]) for e in _signals(events)) == sorted((c.pid, "ok") for c in plain)
    assert _count(counters, "pgparent_signal_failures_total", rule="kill3", reason="permission_denied") is None
    eventually(lambda: all(c.outcome == "terminated" for c in plain), what="plain sessions terminated")
    assert not superuser[0].done


def test_protected_untagged_and_own_sessions_are_never_signalled(
    pg: Server, clients: Clients, roles: Roles
) -> None:
    """A rule over every group leaves protected users, databases, applications and untagged sessions alone."""
    database, user = roles.database("azure_sys"), roles.login("replication", "r-pw")
    victim = clients.start("Prot:1")
    by_db = clients.start("Prot:1", dsn=pg.dsn_for(database))
    by_user = clients.start("Prot:1", dsn=user.dsn)
    by_app = clients.start("pg_dump")
    untagged = clients.start("psql")
    config = make_config(
        {"name": "all", "match": {"parent": "*"}, "max_sessions": 0, "action": "terminate"},
        interval=INTERVAL,
        protect={"users": [user.name], "databases": ["azure_*"], "applications": ["pg_dump", "Prot:1:x"]},
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
    config = make_config({"name": "cap", "match": {"parent": "Cap:1"}, "max_sessions": 0, "action": "terminate"},
                         interval=INTERVAL, limits={"max_terminations_per_cycle": 2})
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
    config = make_config({"name": "wait", "match": {"parent": "For:1"}, "max_sessions": 0, "for": "1s",
                          "action": "terminate"}, interval=INTERVAL)
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
    config = make_config(rule, interval=INTERVAL, dry_run=where == "global")
    counters, events, _ = _one_cycle(pg.dsn, config, force_dry_run=where == "flag")
    assert [e["result"] for e in _signals(events)] == ["dry_run", "dry_run"]
    assert not [m for m in counters.signalled.collect() for x in m.samples]
    db = Database(pg.dsn)
    try:
        assert assess(db.snapshot(), config).grouped.groups[f"Dry:{where}"].stats.sessions == 2
    finally:
        db.close()
    assert not any(c.done for c in group2)


def test_audit_event_has_every_field(pg: Server, clients: Clients, roles: Roles) -> None:
    """One session_signal event per signal, carrying rule, parent, pid, backend_start, user, database, client
    address, state, durations, truncated query, action and result."""
    long_query = "SELECT pg_sleep(60) /* " + "x" * 400 + " */"
    app = roles.login("pgp_app", APP_PASSWORD)
    (victim,) = clients.start("Audit:1", long_query, dsn=app.dsn)
    eventually(lambda: _session_of(pg.dsn, victim.pid or 0).state == "active", what="query running")
    config = make_config({"name": "audit", "match": {"parent": "Audit:*"}, "max_query_duration": 0,
                          "action": "terminate"}, interval=INTERVAL)
    _, events, _ = _one_cycle(pg.dsn, config)
    (event,) = _signals(events)
    assert event["rule"] == "audit" and event["parent"] == "Audit:1" and event["pid"] == victim.pid
    assert event["backend_start"] == victim.backend_start.isoformat()
    assert event["user"] == app.name and event["database"] == "postgres"
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
    config = make_config({"name": "c", "match": {"parent": "Cancel:1"}, "max_active_sessions": 0, "action": "cancel"},
                         interval=INTERVAL)
    _, events, _ = _one_cycle(pg.dsn, config)
    assert [(e["pid"], e["result"]) for e in _signals(events)] == [(busy[0].pid, "ok")]
    eventually(lambda: busy[0].outcome == "cancelled", what="query cancelled")
    idle.release.set()
    eventually(lambda: idle.outcome == "completed", what="idle session still connected and usable")


def test_daemon_cycle_counts_outcomes_on_metrics(pg: Server, clients: Clients) -> None:
    """A daemon cycle that terminates a group publishes the counter and the violating gauge."""
    clients.start("Cyc:1", n=3)
    config = make_config({"name": "cyc", "match": {"parent": "Cyc:1"}, "max_sessions": 2, "action": "terminate"},
                         interval=INTERVAL)
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
