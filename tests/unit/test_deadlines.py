"""Deadlines are pure: when each group crosses each time limit, `for:` included, and what is signalled then."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from typing import Any

from exporter.core.assess import assess
from exporter.core.deadlines import STRICTLY_AFTER
from exporter.core.model import Blocker, Session
from exporter.core.policy import RuleState
from tests.support.config import make_config
from tests.unit.factory import NOW, ago, session, snapshot


def _schedule(rule: dict[str, Any], *sessions: Session, state: RuleState | None = None) -> Any:
    config = make_config({"name": "r", "action": "terminate", **rule})
    return list(assess(snapshot(*sessions), config, state, deadlines=True).deadlines)


def test_a_query_crosses_its_limit_at_its_start_plus_the_limit() -> None:
    """The earliest-starting query of the group sets the deadline; its guard is its query_start and the limit."""
    old, young = session("g:1", query_age=4), session("g:1", query_age=1)
    [d] = _schedule({"max_query_duration": "10s"}, old, young)
    assert d.at == ago(4) + timedelta(seconds=10) + STRICTLY_AFTER
    assert d.crossing.session.pid == old.pid and d.crossing.guard.query_start == old.query_start
    assert d.crossing.guard.exceeded == 10 and d.crossing.trigger == "deadline"
    assert [t.session.pid for t in d.others] == [young.pid]


def test_for_is_added_and_pending_groups_fire_when_for_ends() -> None:
    """`for:` pushes the deadline back by its length; a group already pending fires when its `for:` ends."""
    s = session("g:1", query_age=2)
    [d] = _schedule({"max_query_duration": "5s", "for": "3s"}, s)
    assert d.at == ago(2) + timedelta(seconds=8) + STRICTLY_AFTER and d.crossing.guard.exceeded == 8
    over = session("g:1", query_age=6)
    pending = RuleState(since={("r", "g:1"): ago(0.5)})
    [d] = _schedule({"max_query_duration": "5s", "for": "3s"}, over, state=pending)
    assert d.at == ago(0.5) + timedelta(seconds=3) + STRICTLY_AFTER and d.crossing.guard.exceeded == 5


def test_each_time_condition_guards_its_own_moment() -> None:
    """Transactions guard xact_start, idle spells state_change (only idle-in-transaction sessions), age the oldest
    backend_start; size limits and log rules have no deadline."""
    tx = session("g:1", xact_age=3)
    [d] = _schedule({"max_transaction_duration": "1m"}, tx)
    assert d.crossing.guard.xact_start == tx.xact_start and d.at == ago(3) + timedelta(minutes=1) + STRICTLY_AFTER
    idle = session("g:1", state="idle in transaction", idle_since=2)
    [d] = _schedule({"max_idle_in_transaction": "30s"}, idle, session("g:1", state="active"))
    assert d.crossing.session.pid == idle.pid and d.crossing.guard.state_change == idle.state_change
    aged = session("g:1", age=100)
    [d] = _schedule({"max_group_age": "1h"}, aged, session("g:1", age=5))
    assert d.crossing.session.pid == aged.pid and d.at == ago(100) + timedelta(hours=1) + STRICTLY_AFTER
    assert _schedule({"max_sessions": 1}, session("g:1")) == []
    assert _schedule({"max_query_duration": "1s", "action": "log"}, session("g:1")) == []


def test_firing_and_protected_groups_are_left_to_the_poll() -> None:
    """A group already firing, or whose crossing session is protected, gets no deadline."""
    s = session("g:1", query_age=6)
    assert _schedule({"max_query_duration": "5s"}, s, state=RuleState(firing=frozenset({("r", "g:1")}))) == []
    assert _schedule({"max_query_duration": "5s"}, session("g:1", user="azuresu")) == []


def test_cancel_deadlines_guard_the_other_queries_too() -> None:
    """A cancel deadline's other sessions are active ones, each guarded by its own query_start."""
    a, b = session("g:1", query_age=3), session("g:1", query_age=1)
    [d] = _schedule({"max_query_duration": "5s", "action": "cancel"}, a, b, session("g:1", state="idle"))
    assert [(t.session.pid, t.guard.query_start) for t in d.others] == [(b.pid, b.query_start)]


def test_lock_wait_deadlines_ask_for_an_early_poll() -> None:
    """max_blocking_duration's deadline has no crossing session: it polls, since the chain must be read again."""
    holder, waiter = session("A:1", state="idle in transaction"), session("B:1", wait="Lock")
    snap = replace(snapshot(holder, waiter),
                   blockers=(Blocker(waiter.pid, holder.pid, "client backend", ago(2), None, None, None),))
    config = make_config({"name": "r", "match": {"parent": "A:*"}, "max_blocking_duration": "10s",
                          "action": "terminate"})
    [d] = assess(snap, config, deadlines=True).deadlines
    assert d.poll and d.at == ago(2) + timedelta(seconds=10) + STRICTLY_AFTER


def test_deadlines_agree_with_the_poll() -> None:
    """Evaluated at the deadline's moment, the poll fires the rule; just before it, not."""
    s = session("g:1", query_age=2)
    config = make_config({"name": "r", "max_query_duration": "5s", "action": "terminate"})
    [d] = assess(snapshot(s), config, deadlines=True).deadlines
    before, at = d.at - NOW - timedelta(milliseconds=2), d.at - NOW
    assert assess(snapshot(s, now=NOW + before), config).decision.signals == ()
    assert assess(snapshot(s, now=NOW + at), config).decision.signals
