"""Grouping is pure: tags from application_name, statistics per group, workers attributed, the cardinality cap."""

from __future__ import annotations

import re

import pytest

from exporter.config import DEFAULT_PATTERN
from exporter.grouping import group, parent_of, stats, top_groups
from tests.unit.factory import NOW, session, snapshot

DEFAULT = re.compile(DEFAULT_PATTERN)


@pytest.mark.parametrize(
    ("app", "parent"),
    [
        ("FakeParent:1001", "FakeParent:1001"),
        ("etl:42:worker-3", "etl:42"),
        ("etl:42:", "etl:42"),
        ("psql", None),
        ("", None),
        (":1", None),
        ("a:", None),
    ],
)
def test_default_pattern_takes_the_first_two_fields(app: str, parent: str | None) -> None:
    """The default pattern takes Prefix:Id; anything without both parts is untagged."""
    assert parent_of(app, DEFAULT) == parent


def test_custom_pattern_with_named_group() -> None:
    """A custom regex picks the parent from anywhere in the name."""
    assert parent_of("job=nightly;tenant=acme", re.compile(r"tenant=(?P<parent>\w+)")) == "acme"


def test_stats_by_state_and_durations() -> None:
    """Counts by state (null state as unknown), lock waits, and the oldest query, transaction, idle spell and start."""
    rows = [
        session("g:1", query_age=30, xact_age=40, age=100, wait="Lock"),
        session("g:1", query_age=5, age=50, wait="IO"),
        session("g:1", state="idle", query_age=500, age=600),
        session("g:1", state="idle in transaction", query_age=70, xact_age=80, idle_since=60, age=90),
        session("g:1", state=None, query_age=None, age=None),
    ]
    st = stats(rows, NOW)
    assert st.sessions == 5
    assert st.by_state == {"active": 2, "idle": 1, "idle in transaction": 1,
                           "idle in transaction (aborted)": 0, "unknown": 1}
    assert st.active == 2 and st.waiting == 1
    assert st.max_query_duration == 30  # the idle session's old query_start does not count
    assert st.max_transaction_duration == 80
    assert st.max_idle_in_transaction == 60
    assert st.age == 600


def test_empty_stats_are_zero() -> None:
    """No sessions: zero counts and zero durations, every known state present."""
    st = stats([], NOW)
    assert st.sessions == 0 and st.max_query_duration == 0 and st.age == 0
    assert set(st.by_state) == {"active", "idle", "idle in transaction", "idle in transaction (aborted)"}


def test_groups_and_untagged() -> None:
    """Sessions split by tag; untagged ones are aggregated apart."""
    g = group(snapshot(session("A:1"), session("A:1:x"), session("B:2"), session("psql"), session("")), DEFAULT)
    assert {p: grp.stats.sessions for p, grp in g.groups.items()} == {"A:1": 2, "B:2": 1}
    assert g.untagged.sessions == 2


def test_parallel_workers_attributed_to_leader_not_counted() -> None:
    """Workers count under their leader's group via leader_pid, never as sessions."""
    leader = session("etl:7", pid=1)
    rows = [leader, session("etl:7", pid=2, leader=1, worker=True), session("etl:7", pid=3, leader=1, worker=True)]
    g = group(snapshot(*rows), DEFAULT)
    assert g.groups["etl:7"].stats.sessions == 1
    assert g.groups["etl:7"].workers == 2
    assert [s.pid for s in g.groups["etl:7"].sessions] == [1]


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
    assert "orphan:3" not in g.groups  # its leader ended between the rows: no group to report it under
    assert g.untagged_workers == 1


def test_hidden_sessions_are_counted() -> None:
    """Sessions without backend_start (no pg_read_all_stats) are counted as hidden."""
    g = group(snapshot(session("A:1", age=None, state=None), session("A:1")), DEFAULT)
    assert g.hidden == 1


def test_top_groups_keeps_the_largest_and_folds_the_rest() -> None:
    """Over max_groups, the largest groups keep their series, ties broken by tag; the rest fold."""
    rows = [session("big:1") for _ in range(3)] + [session("mid:1") for _ in range(2)]
    rows += [session("c:1"), session("a:1"), session("b:1")]
    g = group(snapshot(*rows), DEFAULT)
    kept, folded = top_groups(g.groups, 3)
    assert [k.parent for k in kept] == ["big:1", "mid:1", "a:1"]
    assert [f.parent for f in folded] == ["b:1", "c:1"]
    assert top_groups(g.groups, 10)[1] == []
