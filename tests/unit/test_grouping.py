"""Grouping is pure: tags from application_name, statistics per group, workers attributed, the cardinality cap."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.core.grouping import group, parent_of, top_groups
from exporter.core.model import KNOWN_STATES, MOMENTS, Session, Stats
from exporter.core.settings import DEFAULT_PATTERN
from tests.unit.factory import NOW, session, snapshot

DEFAULT = re.compile(DEFAULT_PATTERN)


# --- tags --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("app", "parent"),
    [
        ("FakeParent:1001", "FakeParent:1001"),
        ("etl:42:worker-3", "etl:42"),
        ("etl:42:", "etl:42"),
        ("a b:c d:e", "a b:c d"),
        ("psql", None),
        ("", None),
        (":1", None),
        ("a:", None),
        ("::", None),
    ],
)
def test_default_pattern_takes_the_first_two_fields(app: str, parent: str | None) -> None:
    """The default pattern takes Prefix:Id; anything without both parts is untagged."""
    assert parent_of(app, DEFAULT) == parent


def test_custom_pattern_with_named_group() -> None:
    """A custom regex picks the parent from anywhere in the name (searched, not anchored)."""
    pattern = re.compile(r"tenant=(?P<parent>\w+)")
    assert parent_of("job=nightly;tenant=acme", pattern) == "acme"
    assert parent_of("job=nightly", pattern) is None


@pytest.mark.parametrize(
    ("pattern", "app"),
    [
        (r"^(?P<parent>[^:]*)", ":x"),  # the group matches the empty string
        (r"^(?:tag=(?P<parent>\w+))?", "other"),  # the regex matches, the group does not take part
    ],
)
def test_empty_or_absent_parent_is_untagged(pattern: str, app: str) -> None:
    """A match whose parent group is empty or did not participate leaves the session untagged."""
    assert parent_of(app, re.compile(pattern)) is None
    g = group(snapshot(session(app)), pattern)
    assert g.groups == {} and g.untagged.sessions == 1


def test_group_takes_a_pattern_string_or_a_compiled_regex() -> None:
    """group() accepts the pattern as configured (a string) or compiled, with the same result."""
    snap = snapshot(session("etl:1:a"), session("etl:1:b"), session("web:2"))
    by_text = group(snap, r"^(?P<parent>[^:]+)")
    by_regex = group(snap, re.compile(r"^(?P<parent>[^:]+)"))
    assert {p: len(g.sessions) for p, g in by_text.groups.items()} == {"etl": 2, "web": 1}
    assert {p: len(g.sessions) for p, g in by_regex.groups.items()} == {"etl": 2, "web": 1}


# --- statistics --------------------------------------------------------------------------------------------------


def test_stats_by_state_and_durations() -> None:
    """Counts by state (null state as unknown), lock waits, and the oldest query, transaction, idle spell and start."""
    rows = [
        session("g:1", query_age=30, xact_age=40, age=100, wait="Lock"),
        session("g:1", query_age=5, age=50, wait="IO"),
        session("g:1", state="idle", query_age=500, age=600),
        session("g:1", state="idle in transaction", query_age=70, xact_age=80, idle_since=60, age=90),
        session("g:1", state=None, query_age=None, age=None),
    ]
    st = Stats.of(rows, NOW)
    assert st.sessions == 5
    assert st.by_state == {
        "active": 2,
        "idle": 1,
        "idle in transaction": 1,
        "idle in transaction (aborted)": 0,
        "unknown": 1,
    }
    assert st.active == 2 and st.waiting == 1
    assert st.max_query_duration == 30  # the idle session's old query_start does not count
    assert st.max_transaction_duration == 80
    assert st.max_idle_in_transaction == 60
    assert st.age == 600


def test_waiting_counts_only_active_sessions_on_a_lock() -> None:
    """waiting is wait_event_type 'Lock' while active; other waits, and a Lock on a non-active row, do not count."""
    rows = [
        session("g:1", wait="Lock"),
        session("g:1", wait="LWLock"),
        session("g:1", wait="IO"),
        session("g:1", state="idle in transaction", wait="Lock", idle_since=1),
        session("g:1", state="idle", wait="Client"),
    ]
    st = Stats.of(rows, NOW)
    assert st.active == 3 and st.waiting == 1


def test_fastpath_function_call_is_active() -> None:
    """A 'fastpath function call' runs a query: it counts as active and its query is measured."""
    st = Stats.of([session("g:1", state="fastpath function call", query_age=42)], NOW)
    assert st.active == 1 and st.max_query_duration == 42
    assert st.by_state["fastpath function call"] == 1


def test_longest_query_is_over_active_sessions_only() -> None:
    """max_query_duration ignores the last query of idle and idle-in-transaction sessions, however old."""
    rows = [
        session("g:1", state="idle", query_age=9000),
        session("g:1", state="idle in transaction", query_age=8000, idle_since=10),
        session("g:1", state="idle in transaction (aborted)", query_age=7000, idle_since=20),
        session("g:1", state="active", query_age=12.5),
        session("g:1", state="active", query_age=None),
    ]
    assert Stats.of(rows, NOW).max_query_duration == 12.5
    assert Stats.of(rows[:3], NOW).max_query_duration == 0


def test_longest_transaction_is_over_every_session() -> None:
    """max_transaction_duration is the oldest xact_start, whatever the state (idle in transaction included)."""
    rows = [
        session("g:1", xact_age=15),
        session("g:1", state="idle in transaction", xact_age=120, idle_since=100),
        session("g:1", state="idle", xact_age=None),
    ]
    assert Stats.of(rows, NOW).max_transaction_duration == 120


def test_idle_in_transaction_is_measured_from_state_change() -> None:
    """The idle-in-transaction spell runs from state_change, for aborted transactions too; other states never count."""
    rows = [
        session("g:1", state="idle in transaction", xact_age=500, idle_since=30),
        session("g:1", state="idle in transaction (aborted)", xact_age=400, idle_since=45),
        session("g:1", state="idle", idle_since=999),
        session("g:1", state="active", idle_since=888),
    ]
    st = Stats.of(rows, NOW)
    assert st.max_idle_in_transaction == 45
    assert st.by_state["idle in transaction"] == 1 and st.by_state["idle in transaction (aborted)"] == 1


def test_age_is_from_the_oldest_backend_start() -> None:
    """The group's age is the time since its oldest session started; a hidden backend_start is skipped."""
    rows = [session("g:1", age=5), session("g:1", age=3600), session("g:1", age=None, state=None)]
    assert Stats.of(rows, NOW).age == 3600


def test_times_after_now_count_as_zero() -> None:
    """A timestamp after the snapshot's now (clock skew) gives a duration of 0, never a negative one."""
    rows = [session("g:1", query_age=-5, xact_age=-5, age=-5)]
    st = Stats.of(rows, NOW)
    assert (st.max_query_duration, st.max_transaction_duration, st.age) == (0, 0, 0)


def test_empty_stats_are_zero() -> None:
    """No sessions: zero counts and zero durations, every known state present."""
    st = Stats.of([], NOW)
    assert st.sessions == 0 and st.active == 0 and st.waiting == 0
    assert st.max_query_duration == 0 and st.max_transaction_duration == 0
    assert st.max_idle_in_transaction == 0 and st.age == 0
    assert st.by_state == dict.fromkeys(KNOWN_STATES, 0)


def test_group_stats_use_the_snapshot_clock() -> None:
    """A group's statistics are measured against the snapshot's now, not the wall clock."""
    later = NOW + timedelta(seconds=100)
    g = group(snapshot(session("g:1", query_age=10, age=20), now=later), DEFAULT)
    assert g.groups["g:1"].stats.max_query_duration == 110 and g.groups["g:1"].stats.age == 120


# --- groups ------------------------------------------------------------------------------------------------------


def test_groups_and_untagged() -> None:
    """Sessions split by tag, in snapshot order; untagged ones are aggregated apart."""
    rows = [session("A:1"), session("A:1:x"), session("B:2"), session("psql", state="idle"), session("")]
    g = group(snapshot(*rows), DEFAULT)
    assert {p: grp.stats.sessions for p, grp in g.groups.items()} == {"A:1": 2, "B:2": 1}
    assert [s.pid for s in g.groups["A:1"].sessions] == [rows[0].pid, rows[1].pid]
    assert g.groups["A:1"].parent == "A:1" and g.groups["A:1"].now == NOW
    assert g.untagged.sessions == 2
    assert g.untagged.by_state["idle"] == 1 and g.untagged.by_state["active"] == 1
    assert g.now == NOW


def test_parallel_workers_attributed_to_leader_not_counted() -> None:
    """Workers count under their leader's group via leader_pid, never as sessions."""
    leader = session("etl:7", pid=1)
    rows = [leader, session("etl:7", pid=2, leader=1, worker=True), session("etl:7", pid=3, leader=1, worker=True)]
    g = group(snapshot(*rows), DEFAULT)
    assert g.groups["etl:7"].stats.sessions == 1
    assert g.groups["etl:7"].workers == 2
    assert [s.pid for s in g.groups["etl:7"].sessions] == [1]
    assert g.untagged.sessions == 0 and g.untagged_workers == 0


def test_worker_follows_leader_even_if_names_differ() -> None:
    """A worker is attributed by its leader's tag, and by its own name only when the leader is gone."""
    rows = [
        session("etl:7", pid=1),
        session("other:9", pid=2, leader=1, worker=True),
        session("orphan:3", pid=4, leader=99, worker=True),
        session("etl:7", pid=7, leader=98, worker=True),
        session("psql", pid=5),
        session("whatever:1", pid=6, leader=5, worker=True),
    ]
    g = group(snapshot(*rows), DEFAULT)
    assert g.groups["etl:7"].workers == 2  # one via leader_pid, one (leader gone) via its own name
    assert "other:9" not in g.groups  # the worker's own name does not make a group
    assert "orphan:3" not in g.groups  # its leader ended between the rows: no group to report it under
    assert g.untagged_workers == 1  # the untagged leader's worker


def test_untagged_workers_are_counted_apart() -> None:
    """A worker of an untagged leader, or leaderless with an untagged name, counts as an untagged worker."""
    rows = [
        session("psql", pid=1),
        session("psql", pid=2, leader=1, worker=True),
        session("", pid=3, leader=None, worker=True),
        session("psql", pid=4, leader=77, worker=True),
        session("g:1", pid=5),
    ]
    g = group(snapshot(*rows), DEFAULT)
    assert g.untagged_workers == 3
    assert g.untagged.sessions == 1  # the leader only
    assert g.groups["g:1"].workers == 0


def test_hidden_sessions_are_counted() -> None:
    """Sessions without backend_start (no pg_read_all_stats) are counted as hidden, tagged or not, and still grouped."""
    rows = [session("A:1", age=None, state=None), session("A:1"), session("psql", age=None, state=None)]
    g = group(snapshot(*rows), DEFAULT)
    assert g.hidden == 2
    assert g.groups["A:1"].stats.sessions == 2 and g.groups["A:1"].stats.by_state["unknown"] == 1


def test_sessions_keep_every_field() -> None:
    """Grouping passes the session rows through untouched (the enforcer needs backend_start and pid)."""
    row = replace(session("A:1"), client_addr=None, query_id=123)
    assert group(snapshot(row), DEFAULT).groups["A:1"].sessions == (row,)


# --- the cardinality cap -----------------------------------------------------------------------------------------


def test_top_groups_keeps_the_largest_and_folds_the_rest() -> None:
    """Over max_groups, the largest groups keep their series, ties broken by tag; the rest fold."""
    rows = [session("big:1") for _ in range(3)] + [session("mid:1") for _ in range(2)]
    rows += [session("c:1"), session("a:1"), session("b:1")]
    g = group(snapshot(*rows), DEFAULT)
    kept, folded = top_groups(g.groups, 3)
    assert [k.parent for k in kept] == ["big:1", "mid:1", "a:1"]
    assert [f.parent for f in folded] == ["b:1", "c:1"]
    assert top_groups(g.groups, 10)[1] == []


def test_top_groups_at_the_cap_folds_nothing() -> None:
    """Exactly max_groups groups: all kept, none folded."""
    g = group(snapshot(session("a:1"), session("b:1")), DEFAULT)
    kept, folded = top_groups(g.groups, 2)
    assert sorted(k.parent for k in kept) == ["a:1", "b:1"] and folded == []


def test_top_groups_tie_break_does_not_depend_on_snapshot_order() -> None:
    """The same groups in another row order keep and fold the same tags (stable from one poll to the next)."""
    apps = ["z:1", "y:1", "x:1", "w:1", "w:1"]
    first = top_groups(group(snapshot(*(session(a) for a in apps)), DEFAULT).groups, 2)
    second = top_groups(group(snapshot(*(session(a) for a in reversed(apps))), DEFAULT).groups, 2)
    assert [g.parent for g in first[0]] == [g.parent for g in second[0]] == ["w:1", "x:1"]
    assert [g.parent for g in first[1]] == [g.parent for g in second[1]] == ["y:1", "z:1"]


def test_top_groups_cap_of_one() -> None:
    """With max_groups 1 only the single largest group keeps its name."""
    rows = [session("small:1"), session("large:1"), session("large:1")]
    kept, folded = top_groups(group(snapshot(*rows), DEFAULT).groups, 1)
    assert [k.parent for k in kept] == ["large:1"] and [f.parent for f in folded] == ["small:1"]


_ages = st.none() | st.floats(0, 1000)
_sessions = st.lists(st.builds(
    lambda state, q, x, i, a: session("Job:1", state=state, query_age=q, xact_age=x, idle_since=i, age=a),
    st.sampled_from([*KNOWN_STATES, "idle in transaction (aborted)", "fastpath function call", None]),
    _ages, _ages, _ages, _ages,
), max_size=6)


@given(_sessions)
def test_a_sets_oldest_moment_is_the_earliest_of_its_sessions_moments(sessions: list[Session]) -> None:
    """`Moment.oldest` (what Stats.of reads) agrees with `Moment.of` (what deadlines and guards read), session by
    session: one declaration of which states have which moment."""
    for moment in MOMENTS:
        assert moment.oldest(sessions) == min((m for s in sessions if (m := moment.of(s)) is not None), default=None)
