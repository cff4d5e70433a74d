"""Budgets are pure: which sessions a trimming rule ends, in which order, under which guard, and what it never ends."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from exporter.core.assess import assess
from exporter.core.model import Capacity, Session
from exporter.core.policy import Decision
from exporter.core.settings import Config
from tests.support.config import make_config
from tests.unit.factory import NOW, ago, session, snapshot


def rule(**fields: Any) -> dict[str, Any]:
    return {"name": "budget", "match": {"parent": "A:*"}, "action": "terminate", **fields}


def run(config: Config, *sessions: Session) -> Decision:
    return assess(snapshot(*sessions), config).decision


def idle(seconds: float, app: str = "A:1") -> Session:
    return session(app, state="idle", idle_since=seconds, query_age=seconds + 0.5)


def in_transaction(seconds: float) -> Session:
    return session("A:1", state="idle in transaction", idle_since=seconds, xact_age=seconds + 1)


def running(query_seconds: float) -> Session:
    return session("A:1", state="active", query_age=query_seconds)


def listening(seconds: float) -> Session:
    return replace(idle(seconds), listening=True)


def pids(decision: Decision) -> list[int]:
    return [s.session.pid for s in decision.signals]


def test_a_budget_ends_only_the_sessions_beyond_it_the_longest_idle_first() -> None:
    """max_sessions 20 with scope: excess on 30 idle and 5 active sessions ends 15 idle ones, the longest idle, and
    none of the active ones; each signal carries the budget and the count."""
    idle_ones = [idle(100 + i) for i in range(30)]
    active_ones = [running(5) for _ in range(5)]
    decision = run(make_config(rule(max_sessions=20, scope="excess")), *idle_ones, *active_ones)
    longest = sorted(idle_ones, key=lambda s: s.state_change or NOW)[:15]
    assert pids(decision) == [s.pid for s in longest]
    budget = decision.signals[0].budget
    assert budget is not None and (budget.condition, budget.limit, budget.count, budget.trimmed) == (
        "max_sessions", 20.0, 35, 15)
    assert decision.violating == {"budget": 1}


def test_a_budget_takes_idle_then_idle_in_transaction_and_never_running_sessions() -> None:
    """Beyond the idle sessions a budget ends those idle in a transaction, longest first; running ones never, even
    when the group stays over its budget."""
    idle_ones = [idle(10), idle(30)]
    in_tx = [in_transaction(5), in_transaction(50), in_transaction(20)]
    active_ones = [running(1), running(2)]
    everything = (*idle_ones, *in_tx, *active_ones)
    decision = run(make_config(rule(max_sessions=4, scope="excess")), *everything)
    assert pids(decision) == [idle_ones[1].pid, idle_ones[0].pid, in_tx[1].pid]
    zero = run(make_config(rule(max_sessions=0, scope="excess")), *everything)
    assert pids(zero) == [idle_ones[1].pid, idle_ones[0].pid, in_tx[1].pid, in_tx[2].pid, in_tx[0].pid]


def test_trim_active_ends_running_sessions_last_the_newest_query_first() -> None:
    """With trim_active, once no idle session is left, a budget ends running ones, the newest query first."""
    old, new = running(60), running(1)
    decision = run(make_config(rule(max_sessions=1, scope="excess", trim_active=True)), old, new, idle(3))
    assert pids(decision)[1:] == [new.pid]
    assert decision.signals[1].guard.query_start == new.query_start


def test_each_trimmed_session_is_guarded_by_its_very_spell() -> None:
    """An idle session is signalled only while still idle since the same state_change (outside a transaction); one
    idle in a transaction while still in that spell; so one that ran a statement since is left alone."""
    quiet, in_tx = idle(40), in_transaction(30)
    decision = run(make_config(rule(max_sessions=0, scope="excess")), quiet, in_tx)
    guards = {s.session.pid: s.guard for s in decision.signals}
    assert guards[quiet.pid].state_change == quiet.state_change and guards[quiet.pid].idle
    assert guards[in_tx.pid].state_change == in_tx.state_change and not guards[in_tx.pid].idle


def test_without_scope_excess_max_sessions_still_ends_the_whole_group() -> None:
    """The default scope keeps max_sessions's meaning: a group over it is ended whole (a runaway fan-out)."""
    group = [idle(1), idle(2), running(1)]
    decision = run(make_config(rule(max_sessions=2)), *group)
    assert sorted(pids(decision)) == sorted(s.pid for s in group)


def test_max_idle_sessions_ends_the_longest_idle_beyond_it() -> None:
    """max_idle_sessions 2 on five idle sessions ends the three longest idle, and nothing idle in a transaction or
    running."""
    idle_ones = [idle(s) for s in (5, 50, 20, 40, 1)]
    decision = run(make_config(rule(max_idle_sessions=2)), *idle_ones, in_transaction(500), running(500))
    assert pids(decision) == [idle_ones[1].pid, idle_ones[3].pid, idle_ones[2].pid]
    assert run(make_config(rule(max_idle_sessions=5)), *idle_ones).signals == ()


def test_max_idle_duration_ends_each_session_idle_longer() -> None:
    """max_idle_duration 30s ends the sessions idle more than 30 s, longest first, and only them."""
    quiet = [idle(s) for s in (10, 31, 90, 30)]
    decision = run(make_config(rule(max_idle_duration="30s")), *quiet, in_transaction(500))
    assert pids(decision) == [quiet[2].pid, quiet[1].pid]
    budget = decision.signals[0].budget
    assert budget is not None and (budget.condition, budget.count) == ("max_idle_duration", 2)


def test_a_listen_session_is_never_trimmed_nor_counted_as_idle() -> None:
    """A session idle after LISTEN waits for notifications: the idle conditions do not count it, and a budget
    passes over it (it still counts as a connection)."""
    listener, other = listening(500), idle(10)
    assert run(make_config(rule(max_idle_duration="1m")), listener, other).signals == ()
    assert run(make_config(rule(max_idle_sessions=1)), listener, other).signals == ()
    decision = run(make_config(rule(max_sessions=1, scope="excess")), listener, other, running(1))
    assert pids(decision) == [other.pid]


def test_a_budget_passes_over_protected_sessions_and_ends_the_next_one() -> None:
    """A protected session is never ended; the budget takes the next one in its order instead."""
    kept = replace(idle(100), usename="azuresu")
    second, third = idle(50), idle(10)
    decision = run(make_config(rule(max_sessions=2, scope="excess")), kept, second, third, running(1))
    assert pids(decision) == [second.pid, third.pid]
    assert decision.protected == 1


def test_the_per_cycle_cap_ends_the_longest_idle_first_and_defers_the_rest() -> None:
    """Under max_terminations_per_cycle the budget's order holds: the longest idle now, the rest next poll."""
    idle_ones = [idle(s) for s in (1, 2, 3, 4)]
    decision = run(make_config(rule(max_sessions=0, scope="excess"), limits={"max_terminations_per_cycle": 2}),
                   *idle_ones)
    assert pids(decision) == [idle_ones[3].pid, idle_ones[2].pid]
    assert [s.session.pid for s in decision.deferred] == [idle_ones[1].pid, idle_ones[0].pid]


def test_a_max_idle_duration_deadline_ends_only_the_crossing_session() -> None:
    """Between polls, max_idle_duration's deadline names the session idle longest, guarded by its idle spell and the
    limit on the server's clock, and nothing else of the group."""
    first, later = idle(20), idle(5)
    assessed = assess(snapshot(first, later, running(1)), make_config(rule(max_idle_duration="30s")), deadlines=True)
    (deadline,) = assessed.deadlines
    assert deadline.crossing is not None and deadline.crossing.session.pid == first.pid
    guard = deadline.crossing.guard
    assert (guard.state_change, guard.idle, guard.exceeded) == (first.state_change, True, 30.0)
    assert deadline.others == ()
    assert deadline.at > ago(-10)


def test_capacity_counts_what_ordinary_roles_may_use() -> None:
    """Usable slots are max_connections less both reserves; headroom is what is left of them, never below 0; a
    group's share is its sessions over the usable slots."""
    capacity = Capacity(max_connections=60, superuser_reserved=3, reserved=2, in_use=37)
    assert (capacity.reserved_total, capacity.usable, capacity.headroom) == (5, 55, 18)
    assert capacity.share(11) == 0.2
    assert Capacity(10, 3, 0, 9).headroom == 0
