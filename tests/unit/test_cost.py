"""What each group costs, accounted without a database: load by wait type from the server's clock, CPU, memory, I/O
and WAL from per-process samples, and counters that never go down whatever sessions exit, retag or fold."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.core.assess import assess
from exporter.core.cost import (
    CPU,
    OTHER_WAIT,
    STATS_SETTLE,
    WAIT_LABELS,
    Cost,
    CostState,
    ProcSample,
    Samples,
    Sources,
    account,
    is_backend,
    stats_reading,
    wait_label,
    wanted,
)
from exporter.core.grouping import OTHER, group
from exporter.core.model import Session, Snapshot
from tests.support.config import make_config
from tests.unit.factory import NOW

PATTERN = r"^(?P<parent>[^:]+:[^:]+)"
BORN = NOW - timedelta(hours=1)
ALL = Sources.of(proc=None, proc_io=None, backend_stats=None)
SQL_ONLY = Sources.of(proc="not_visible", proc_io="not_visible", backend_stats="needs_pg18")


def at(seconds: float) -> datetime:
    """A moment `seconds` after NOW, on the server's clock."""
    return NOW + timedelta(seconds=seconds)


def backend(pid: int, app: str, state: str = "idle", since: float = -600.0, *, wait: str | None = None,
            born: datetime = BORN, leader: int | None = None) -> Session:
    """A client backend (or, with `leader`, a parallel worker) in `state` since `since` seconds after NOW."""
    return Session(pid=pid, leader_pid=leader, backend_type="parallel worker" if leader else "client backend",
                   datname="db", usename="u", application_name=app, client_addr=None, state=state,
                   wait_event_type=wait, backend_start=born, xact_start=None, query_start=at(since),
                   state_change=at(since), query="SELECT 1")


class Polls:
    """Polls of made-up snapshots through the ledger, as the daemon runs them: each returns the new Cost."""

    def __init__(self, max_groups: int = 500, retain: float = 900.0, sources: Sources = ALL) -> None:
        self.state = CostState()
        self.max_groups, self.retain, self.sources = max_groups, retain, sources

    def poll(self, t: float, *sessions: Session, procs: dict[int, ProcSample] | None = None,
             stats: dict[int, tuple[int | None, int | None, int | None]] | None = None) -> Cost:
        snapshot = Snapshot(now=at(t), sessions=tuple(s for s in sessions if not s.leader_pid),
                            workers=tuple(s for s in sessions if s.leader_pid), backend_stats=stats)
        cost = account(group(snapshot, PATTERN), snapshot, Samples(self.sources, procs or {}), self.state,
                       max_groups=self.max_groups, retain=self.retain)
        self.state = cost.state
        return cost


def sample(cpu_s: float, memory: int = 0, read: int | None = None, written: int | None = None,
           born: datetime = BORN) -> ProcSample:
    return ProcSample(born, int(cpu_s * 1e9), memory, read, written)


def load(polls: Polls) -> dict[tuple[str, str], float]:
    return {k: round(v, 6) for k, v in polls.state.totals.load.items()}


def test_wait_labels_are_postgresqls_fixed_set_cpu_and_other() -> None:
    """No wait is CPU; PostgreSQL's wait_event_types are themselves; anything else is Other: 12 labels at most."""
    assert wait_label(None) == CPU
    assert wait_label("Lock") == "Lock" and wait_label("InjectionPoint") == "InjectionPoint"
    assert wait_label("SomethingNew") == OTHER_WAIT
    assert len(WAIT_LABELS) == 12 and len(set(WAIT_LABELS)) == 12


def test_a_process_is_a_backend_only_with_its_start_time_and_the_postmaster_as_parent() -> None:
    """Its start within a second of backend_start and its parent the postmaster: anything else is another's."""
    started = BORN.timestamp()
    assert is_backend(started + 0.4, 100, started, postmaster=100)
    assert not is_backend(started + 1.5, 100, started, postmaster=100)
    assert not is_backend(started, 101, started, postmaster=100)


def test_the_first_poll_only_sets_baselines() -> None:
    """With no previous poll there is no interval: nothing is added, every counter of an available source at 0."""
    polls = Polls()
    polls.poll(0, backend(1, "A:1", "active", -30), procs={1: sample(50.0)})
    assert polls.state.totals.load == {}
    assert polls.state.totals.cpu == {"A:1": 0.0}


def test_load_is_active_time_since_the_previous_poll_split_by_wait() -> None:
    """Active the whole interval: the interval; active since mid-interval: since then; gone idle mid-interval: until
    then, under the wait it had; idle throughout: nothing."""
    polls = Polls()
    polls.poll(0, backend(1, "A:1", "active", -30), backend(2, "A:1"), backend(3, "A:1", "active", -5, wait="Lock"),
               backend(4, "B:1"))
    polls.poll(2, backend(1, "A:1", "active", -30), backend(2, "A:1", "active", 1.5),
               backend(3, "A:1", "idle", 0.5), backend(4, "B:1"))
    assert load(polls) == {("A:1", CPU): 2.0 + 0.5, ("A:1", "Lock"): 0.5}


def test_a_comment_tag_ending_with_its_query_still_counts_the_time_until_then() -> None:
    """A session untagged now (its comment tag ended with its query) that was active at the previous poll gives the
    time until it went idle to its group of then."""
    polls = Polls()
    polls.poll(0, backend(1, "C:1", "active", -10))
    polls.poll(1, backend(1, "psql", "idle", 0.25))
    assert load(polls) == {("C:1", CPU): 0.25}
    assert 1 not in polls.state.procs  # untagged now: the ledger forgets it


def test_cpu_counts_deltas_and_new_backends_whole() -> None:
    """CPU adds each process's increase; a backend started since the previous poll adds all it used; one first seen
    older adds nothing yet; a counter that went down (a reused pid is another backend) adds nothing."""
    polls = Polls()
    polls.poll(0, backend(1, "A:1", "active", -30), procs={1: sample(10.0)})
    young = at(0.5)
    polls.poll(1, backend(1, "A:1", "active", -30), backend(2, "A:1", "active", 0.6, born=young),
               backend(3, "A:1", "active", -100), procs={1: sample(10.75), 2: sample(0.3, born=young), 3: sample(9)})
    assert polls.state.totals.cpu == {"A:1": pytest.approx(0.75 + 0.3)}
    polls.poll(2, backend(1, "A:1", "active", -30), backend(3, "A:1", "active", -100),
               procs={1: sample(10.5), 3: sample(9.2)})
    assert polls.state.totals.cpu == {"A:1": pytest.approx(0.75 + 0.3 + 0.2)}


def test_a_sample_of_another_backend_with_the_same_pid_is_ignored() -> None:
    """A sample is the session's only if it was proven for the same backend_start."""
    polls = Polls()
    polls.poll(0, backend(1, "A:1", "active"), procs={1: sample(1.0)})
    polls.poll(1, backend(1, "A:1", "active"), procs={1: sample(99.0, born=at(-3))})
    assert polls.state.totals.cpu == {"A:1": 0.0}


def test_memory_sums_private_memory_and_keeps_the_largest_process() -> None:
    """Per group, the sum of its processes' private memory and the largest; parallel workers count with their
    leader's group, and give no load."""
    polls = Polls()
    cost = polls.poll(0, backend(1, "A:1", "active"), backend(2, "A:1"), backend(3, "A:1", "active", leader=1),
                      procs={1: sample(1, 300), 2: sample(1, 20), 3: sample(1, 100)})
    assert cost.memory == {"A:1": (420, 300)}
    polls.poll(1, backend(1, "A:1", "active"), backend(2, "A:1"), backend(3, "A:1", "active", leader=1),
               procs={1: sample(2, 300), 3: sample(1.5, 100)})
    assert polls.state.totals.cpu == {"A:1": pytest.approx(1.5)}
    assert load(polls) == {("A:1", CPU): 1.0}


def test_an_idle_process_not_read_keeps_its_last_memory() -> None:
    """A process idle the whole interval is not read again: its memory figure is its last reading."""
    polls = Polls()
    polls.poll(0, backend(1, "A:1"), procs={1: sample(1, 64)})
    cost = polls.poll(5, backend(1, "A:1"))
    assert cost.memory == {"A:1": (64, 64)}


def test_without_proc_there_is_no_memory_cpu_or_io_series() -> None:
    """Where /proc does not show the server's processes, only load is accounted: no CPU, memory or I/O series, not
    even at 0."""
    polls = Polls(sources=SQL_ONLY)
    polls.poll(0, backend(1, "A:1", "active", -30))
    cost = polls.poll(1, backend(1, "A:1", "active", -30))
    totals = polls.state.totals
    assert cost.memory == {} and totals.cpu == {} and totals.read == {} and totals.wal == {}
    assert load(polls) == {("A:1", CPU): 1.0}


def test_folded_groups_add_to_other_and_a_group_unfolding_starts_its_own_series() -> None:
    """Beyond max_groups a group's increments go to __other__; once it is exported by name they go to its own series,
    and the group it displaced, folded now, adds to __other__ while its own series keeps what it had."""
    polls = Polls(max_groups=1)
    big = [backend(i, "Big:1", "active", -30) for i in (1, 2)]
    polls.poll(0, *big, backend(3, "Small:1", "active", -30))
    polls.poll(1, *big, backend(3, "Small:1", "active", -30))
    assert load(polls) == {("Big:1", CPU): 2.0, (OTHER, CPU): 1.0}
    grown = [backend(i, "Small:1", "active", -30) for i in (3, 4, 5)]
    polls.poll(2, *big, *grown)
    assert load(polls) == {("Big:1", CPU): 2.0, (OTHER, CPU): 1.0 + 2.0, ("Small:1", CPU): 3.0}


def test_series_of_absent_groups_are_dropped_after_retain() -> None:
    """A series no group maps to for `retain` seconds goes; one still mapped stays, idle or not."""
    polls = Polls(retain=10)
    polls.poll(0, backend(1, "A:1", "active", -30), backend(2, "B:1"))
    polls.poll(1, backend(1, "A:1", "active", -30), backend(2, "B:1"))
    polls.poll(8, backend(2, "B:1"))
    assert ("A:1", CPU) in polls.state.totals.load and "A:1" in polls.state.totals.cpu
    polls.poll(12, backend(2, "B:1"))
    assert ("A:1", CPU) not in polls.state.totals.load and "A:1" not in polls.state.totals.cpu
    assert "B:1" in polls.state.totals.cpu


def test_absent_series_are_capped_at_max_groups() -> None:
    """However tags churn within `retain`, at most max_groups series of absent groups are kept (the longest absent
    go first)."""
    polls = Polls(max_groups=2)
    for t in range(6):
        polls.poll(t, backend(t + 1, f"Job:{t}"))
    assert sorted(polls.state.totals.cpu) == ["Job:3", "Job:4", "Job:5"]


def test_wal_and_backend_io_count_where_the_server_published_them() -> None:
    """PostgreSQL 18's counters add their deltas where read; bytes read and written come from /proc/<pid>/io when it
    is readable, else from the backend's I/O."""
    polls = Polls()
    polls.poll(0, backend(1, "A:1"), procs={1: sample(0, read=100, written=10)}, stats={1: (1000, 5, 6)})
    polls.poll(1, backend(1, "A:1", "idle", 0.5), procs={1: sample(0, read=150, written=30)},
               stats={1: (3000, 50, 60)})
    totals = polls.state.totals
    assert (totals.wal, totals.read, totals.written) == ({"A:1": 2000}, {"A:1": 50}, {"A:1": 20})
    remote = Polls(sources=Sources.of(proc="not_visible", proc_io="not_visible", backend_stats=None))
    remote.poll(0, backend(1, "A:1"), stats={1: (1000, 5, 6)})
    remote.poll(1, backend(1, "A:1", "idle", 0.5), stats={1: (3000, 50, 60)})
    totals = remote.state.totals
    assert (totals.wal, totals.read, totals.written) == ({"A:1": 2000}, {"A:1": 45}, {"A:1": 54})


def test_wanted_reads_only_what_may_have_changed() -> None:
    """The first poll reads every visible process; then those new or changed since, the tagged active ones and the
    tagged ones not read for a while; never an untagged session that neither started nor changed, nor a hidden one."""
    hidden = replace(backend(9, "A:1", "active"), backend_start=None)
    first = Snapshot(now=at(0), sessions=(backend(1, "A:1", "active"), backend(2, "A:1"), backend(3, "psql", "active"),
                                          hidden))
    assert sorted(p for p, _ in wanted(first, CostState())) == [1, 2, 3]
    state = account(group(first, PATTERN), first, Samples(ALL, {p: sample(0) for p in (1, 2)}), CostState(),
                    max_groups=10, retain=900).state
    later = Snapshot(now=at(1), sessions=(backend(1, "A:1", "active"), backend(2, "A:1"), backend(3, "psql", "active"),
                                          backend(4, "A:1", born=at(0.5)), backend(5, "psql", "idle", 0.5), hidden))
    assert sorted(p for p, _ in wanted(later, state)) == [1, 4, 5]
    assert sorted(p for p, _ in wanted(replace(later, now=at(60)), state)) == [1, 2, 4, 5]


def test_backend_counters_are_read_for_what_may_have_published_since() -> None:
    """The poll reads PostgreSQL 18's counters of every backend at first, then of those that started or changed state
    within STATS_SETTLE of the previous poll; bytes read and written only where /proc/<pid>/io does not give them."""
    assert stats_reading(CostState(), SQL_ONLY) is None
    remote = Sources.of(proc="not_visible", proc_io="not_visible", backend_stats=None)
    first = stats_reading(CostState(), remote)
    assert first is not None and first.since is None and first.io
    local = stats_reading(CostState(now=NOW), ALL)
    assert local is not None and local.since == NOW - timedelta(seconds=STATS_SETTLE) and not local.io


def test_assess_accounts_cost_only_when_asked() -> None:
    """The pipeline accounts cost with a ledger to carry on, and folds by the config's max_groups unless told."""
    snapshot = Snapshot(now=NOW, sessions=(backend(1, "A:1", "active"), backend(2, "B:1", "active")))
    config = make_config(grouping={"max_groups": 1})
    assert assess(snapshot, config).cost is None
    cost = assess(snapshot, config, cost_state=CostState(), samples=Samples(ALL, {})).cost
    assert cost is not None and set(cost.totals.cpu) == {"A:1", OTHER}
    unfolded = assess(snapshot, config, cost_state=CostState(), samples=Samples(ALL, {}), max_groups=10).cost
    assert unfolded is not None and set(unfolded.totals.cpu) == {"A:1", "B:1"}


TAGS = ("A:1", "B:1", "C:1", "psql")


@st.composite
def histories(draw: st.DrawFn) -> list[list[tuple[int, str, bool, int]]]:
    """Polls of up to 8 pids: each poll, which are connected, their tag, whether active, and their CPU ticks."""
    polls = []
    ticks = dict.fromkeys(range(8), 0)
    for _ in range(draw(st.integers(2, 12))):
        rows = []
        for pid in sorted(draw(st.sets(st.integers(0, 7), max_size=8))):
            ticks[pid] += draw(st.integers(0, 50))
            rows.append((pid, draw(st.sampled_from(TAGS)), draw(st.booleans()), ticks[pid]))
        polls.append(rows)
    return polls


@settings(max_examples=200, deadline=None)
@given(histories(), st.integers(1, 3))
def test_no_counter_series_ever_goes_down(history: list[list[tuple[int, str, bool, int]]], max_groups: int) -> None:
    """Whatever sessions connect, exit, retag, go active or idle, and however groups fold: from one poll to the next,
    no counter series has a lower value (a series may only appear, or go after `retain`)."""
    polls = Polls(max_groups=max_groups, retain=3600)
    before: dict[tuple[str, object], float] = {}
    for t, rows in enumerate(history):
        sessions = [backend(pid + 1, tag, "active" if active else "idle", t - 0.5) for pid, tag, active, _ in rows]
        polls.poll(t, *sessions, procs={pid + 1: sample(ticks / 100, read=ticks, written=ticks)
                                        for pid, _, _, ticks in rows})
        totals = polls.state.totals
        now: dict[tuple[str, object], float] = {("load", k): v for k, v in totals.load.items()}
        for name in ("cpu", "read", "written"):
            now |= {(name, k): v for k, v in getattr(totals, name).items()}
        assert all(now.get(key, value) >= value for key, value in before.items()), (before, now)
        before = now
