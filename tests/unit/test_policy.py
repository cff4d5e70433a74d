"""Policy is pure: which rules fire on which groups, what gets signalled, and what is always left alone."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

import pytest

from exporter.core.assess import assess
from exporter.core.model import Session
from exporter.core.policy import RuleState, manual
from exporter.core.settings import Config
from tests.support.config import make_config
from tests.unit.factory import NOW, session, snapshot


def rule(**fields: Any) -> dict[str, Any]:
    return {"name": "r", "match": {"parent": "*"}, "action": "terminate", **fields}


def run(config: Config, *sessions: Session, state: RuleState | None = None, dry: bool = False, now: Any = NOW
        ) -> Any:
    return assess(snapshot(*sessions, now=now), config, state, dry_run=dry).decision


@pytest.mark.parametrize(
    ("condition", "limit", "over", "at_limit"),
    [
        ("max_sessions", 2, [session("g:1") for _ in range(3)], [session("g:1") for _ in range(2)]),
        ("max_active_sessions", 1, [session("g:1"), session("g:1")], [session("g:1"), session("g:1", state="idle")]),
        ("max_query_duration", "10s", [session("g:1", query_age=11)], [session("g:1", query_age=10)]),
        ("max_transaction_duration", "1m", [session("g:1", xact_age=61)], [session("g:1", xact_age=60)]),
        ("max_idle_in_transaction", "5s",
         [session("g:1", state="idle in transaction", idle_since=6)],
         [session("g:1", state="idle in transaction", idle_since=5)]),
        ("max_group_age", "1h", [session("g:1", age=3601)], [session("g:1", age=3600)]),
    ],
)
def test_each_condition_fires_only_when_exceeded(condition: str, limit: Any, over: list[Session],
                                                 at_limit: list[Session]) -> None:
    """Every condition fires strictly above its limit, never at it."""
    config = make_config(rule(**{condition: limit}))
    fired = run(config, *over)
    assert fired.violating == {"r": 1}
    assert {t.session.pid for t in fired.signals} == {s.pid for s in over}
    assert fired.signals[0].reasons[0].startswith(condition)
    calm = run(config, *at_limit)
    assert calm.violating == {"r": 0} and calm.signals == ()


def test_parent_glob_selects_groups() -> None:
    """match.parent is a glob on the tag: etl:* matches etl:1, not report:1."""
    decision = run(make_config(rule(match={"parent": "etl:*"}, max_sessions=0)), session("etl:1"), session("report:1"))
    assert {t.parent for t in decision.signals} == {"etl:1"}


@pytest.mark.parametrize("glob", ["etl:1", "etl:[1]", "etl:?"])
def test_parent_glob_without_wildcards_is_the_exact_tag(glob: str) -> None:
    """A parent glob with no wildcard names one tag exactly (not a prefix, not another case); one with a wildcard
    is still a glob."""
    sessions = [session("etl:1"), session("etl:10"), session("ETL:1"), session("etl:2")]
    decision = run(make_config(rule(match={"parent": glob}, max_sessions=0)), *sessions)
    expected = {"etl:1", "etl:2"} if glob == "etl:?" else {"etl:1"}
    assert {t.parent for t in decision.signals} == expected


def test_size_only_rule_fires_as_every_rule_does() -> None:
    """A rule on group size alone fires on the groups strictly above the limit, in group order; a database glob
    narrows the sessions it counts."""
    sessions = [*(session("a:1") for _ in range(3)), *(session("b:1") for _ in range(2)),
                *(session("c:1") for _ in range(4))]
    decision = run(make_config(rule(max_sessions=2)), *sessions)
    assert [f.parent for f in decision.firing] == ["a:1", "c:1"] and decision.violating == {"r": 2}
    narrowed = run(make_config(rule(match={"parent": "*", "database": "other"}, max_sessions=2)), *sessions)
    assert narrowed.violating == {"r": 0}


def test_database_and_user_narrow_the_sessions_and_the_stats() -> None:
    """match.database/user make the rule see only those sessions: counted, measured and signalled."""
    rows = [session("g:1", db="prod"), session("g:1", db="prod", user="bob"), session("g:1", db="dev")]
    config = make_config(rule(match={"parent": "g:*", "database": "prod"}, max_sessions=1))
    assert {t.session.datname for t in run(config, *rows).signals} == {"prod"}
    config = make_config(rule(match={"parent": "g:*", "database": "prod", "user": "bob"}, max_sessions=1))
    assert run(config, *rows).violating == {"r": 0}  # only one session of bob in prod: not more than 1


def test_for_waits_then_fires_and_resets() -> None:
    """With for: 30s the rule is pending until the condition held 30 s, and starts over when it stops holding."""
    config = make_config(rule(max_sessions=0, **{"for": "30s"}))
    s = session("g:1")
    first = run(config, s)
    assert first.pending == {"r": 1} and first.signals == () and first.violating == {"r": 0}
    later = run(config, s, state=first.state, now=NOW + timedelta(seconds=29))
    assert later.pending == {"r": 1} and later.signals == ()
    due = run(config, s, state=later.state, now=NOW + timedelta(seconds=30))
    assert due.violating == {"r": 1} and len(due.signals) == 1
    assert [f.parent for f in due.started] == ["g:1"]
    gone = run(config, session("other:1", state="idle"), state=due.state, now=NOW + timedelta(seconds=31))
    assert gone.resolved == (("r", "g:1"),)
    again = run(config, s, state=gone.state, now=NOW + timedelta(seconds=32))
    assert again.pending == {"r": 1}  # the clock restarted


def test_cancel_targets_only_active_sessions_and_log_targets_none() -> None:
    """cancel signals running queries only; log reports the violation and signals nothing."""
    rows = [session("g:1"), session("g:1", state="idle"), session("g:1", state="idle in transaction")]
    cancel = run(make_config(rule(max_sessions=0, action="cancel")), *rows)
    assert [t.session.state for t in cancel.signals] == ["active"]
    log = run(make_config(rule(max_sessions=0, action="log")), *rows)
    assert log.signals == () and log.violating == {"r": 1} and log.firing[0].action == "log"


def test_protected_unguarded_and_untagged_sessions_are_never_targets() -> None:
    """Protected users, databases and applications, hidden backend_start and untagged sessions are left alone."""
    rows = [
        session("g:1", user="azuresu"),
        session("g:1", db="azure_sys"),
        session("g:1", age=None),
        session("g:1"),
        session("psql"),
    ]
    config = make_config(rule(max_sessions=0), protect={"users": ["azure*"], "databases": ["azure_sys"]})
    decision = run(config, *rows)
    assert [t.session.pid for t in decision.signals] == [rows[3].pid]
    assert decision.protected == 2 and decision.unguarded == 1
    by_app = run(make_config(rule(max_sessions=0), protect={"applications": ["g:1*"]}), session("g:1"))
    assert by_app.signals == () and by_app.protected == 1


def test_one_signal_per_pid_terminate_first() -> None:
    """A session claimed by a cancel rule and a terminate rule gets one signal: terminate."""
    config = make_config(
        {"name": "c", "match": {"parent": "*"}, "max_sessions": 0, "action": "cancel"},
        {"name": "t", "match": {"parent": "g:*"}, "max_sessions": 0, "action": "terminate"},
    )
    decision = run(config, session("g:1"), session("h:1"))
    assert sorted((t.rule, t.parent) for t in decision.signals) == [("c", "h:1"), ("t", "g:1")]


def test_cap_defers_the_rest_and_dry_run_is_not_capped() -> None:
    """max_terminations_per_cycle caps real signals; the rest are deferred; dry-run targets are neither."""
    rows = [session("g:1") for _ in range(5)]
    decision = run(make_config(rule(max_sessions=0), limits={"max_terminations_per_cycle": 2}), *rows)
    assert len(decision.signals) == 2 and len(decision.deferred) == 3
    dry = run(make_config(rule(max_sessions=0), limits={"max_terminations_per_cycle": 2}), *rows, dry=True)
    assert len(dry.signals) == 5 and dry.deferred == () and all(t.dry_run for t in dry.signals)


@pytest.mark.parametrize("where", ["global", "rule", "force"])
def test_dry_run_flags_every_target(where: str) -> None:
    """Global dry_run, a rule's dry_run and --dry-run each mark the targets dry-run."""
    config = make_config(rule(max_sessions=0, dry_run=where == "rule"), dry_run=where == "global")
    decision = run(config, session("g:1"), dry=where == "force")
    assert [t.dry_run for t in decision.signals] == [True]


def test_manual_targets_one_group_with_the_same_protections() -> None:
    """`terminate PARENT` picks that group's sessions only, minus protected and unguarded ones, uncapped."""
    rows = [session("g:1") for _ in range(150)] + [session("g:1", user="replication"), session("g:2")]
    config = make_config()
    decision = manual(assess(snapshot(*rows), config).grouped, "g:1", "terminate", config.protect)
    assert len(decision.signals) == 150 and decision.protected == 1
    assert {t.rule for t in decision.signals} == {"manual"}
    empty = manual(assess(snapshot(*rows), config).grouped, "nope:0", "terminate", config.protect)
    assert empty.signals == ()


def _superuser(app: str, **fields: Any) -> Session:
    return replace(session(app, user="provider_admin", **fields), superuser=True)


def _roleless(app: str) -> Session:
    return replace(session(app), usename=None, superuser=True)


@pytest.mark.parametrize(
    ("mode", "pgparent_superuser", "spared"),
    [
        ("auto", False, {"superuser", "roleless"}),
        ("auto", None, {"superuser", "roleless"}),
        ("auto", True, {"roleless"}),
        ("true", True, {"superuser", "roleless"}),
        ("false", False, set()),
    ],
)
def test_superusers_sessions_are_protected_as_protect_superusers_says(
    mode: str, pgparent_superuser: bool | None, spared: set[str]
) -> None:
    """`protect.superusers` auto spares superusers' sessions where pgparent's role is none (unknown counts as none),
    and role-less sessions always; true spares both, false neither; the spared count as protected."""
    rows = {"superuser": _superuser("g:1"), "roleless": _roleless("g:1"), "plain": session("g:1")}
    config = make_config(rule(max_sessions=0), protect={"superusers": mode})
    snap = replace(snapshot(*rows.values()), pgparent_superuser=pgparent_superuser)
    decision = assess(snap, config).decision
    assert {t.session.pid for t in decision.signals} == {s.pid for k, s in rows.items() if k not in spared}
    assert decision.protected == len(spared) and decision.unguarded == 0
    asked = manual(assess(snap, config).grouped, "g:1", "terminate", config.protect)
    assert asked.protected == len(spared)


def test_superusers_sessions_are_spared_by_budgets_deadlines_and_escalations() -> None:
    """Where pgparent is no superuser, a budget's trim passes over a superuser's session, a deadline never crosses on
    one, and an escalating rule neither cancels nor terminates one."""
    idle_su = _superuser("B:1", state="idle", idle_since=600)
    idle_plain = session("B:1", state="idle", idle_since=300)
    budget = make_config(rule(match={"parent": "B:*"}, max_sessions=1, scope="excess"))
    snap = replace(snapshot(idle_su, idle_plain), pgparent_superuser=False)
    trimmed = assess(snap, budget).decision
    assert [t.session.pid for t in trimmed.signals] == [idle_plain.pid] and trimmed.protected == 1
    crossing = _superuser("D:1", query_age=1)
    timed = make_config(rule(match={"parent": "D:*"}, max_query_duration="5s"))
    snap = replace(snapshot(crossing), pgparent_superuser=False)
    assert assess(snap, timed, deadlines=True).deadlines == ()
    assert assess(replace(snap, pgparent_superuser=True), timed, deadlines=True).deadlines != ()
    escalating = make_config(rule(match={"parent": "E:*"}, max_sessions=0, action="cancel",
                                  escalate={"after": "10s"}))
    snap = replace(snapshot(_superuser("E:1")), pgparent_superuser=False)
    decision = assess(snap, escalating).decision
    assert decision.signals == () and decision.no_query == () and decision.protected == 1
