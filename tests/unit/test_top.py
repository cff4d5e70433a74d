"""What `pgparent top` shows is pure (exporter/core/top.py): rows per group, sorting, the glob filter, a group's
sessions, and the plan a `c` or `t` confirms (exactly the pids, the rest said and left out)."""

from __future__ import annotations

from exporter.core.assess import assess
from exporter.core.cost import Cost, CostState, Sources, Totals
from exporter.core.model import Snapshot
from exporter.core.settings import Config, Protect
from exporter.core.top import (
    COLUMNS,
    UNTAGGED,
    Figures,
    Row,
    arrange,
    matches,
    plan,
    rates,
    rows,
    session_rows,
)
from tests.unit.factory import NOW, ago, session, snapshot

CONFIG = Config()


def _snapshot() -> Snapshot:
    return snapshot(
        session("etl:1", pid=11, query_age=30, xact_age=40),
        session("etl:1", pid=12, state="idle", query_age=None),
        session("etl:1", pid=13, state="idle in transaction", query_age=None, xact_age=90),
        session("web:2", pid=21, query_age=2),
        session("web:2", pid=22, query_age=3, user="replication"),
        session("Billing:3", pid=31, query_age=500, xact_age=500),
        session("psql", pid=41, query_age=1),
        session("psql", pid=42, state="idle", query_age=None),
    )


def _rows() -> list[Row]:
    assessed = assess(_snapshot(), CONFIG)
    return rows(assessed.grouped)


def test_one_row_per_group_with_its_counts_and_the_untagged_row() -> None:
    """Each group is a row with its sessions by state and its longest query and transaction; untagged is one row."""
    by_label = {r.label: r for r in _rows()}
    assert set(by_label) == {"etl:1", "web:2", "Billing:3", UNTAGGED}
    etl = by_label["etl:1"]
    assert (etl.sessions, etl.active, etl.idle, etl.idle_in_transaction) == (3, 1, 1, 1)
    assert etl.longest_query == 30 and etl.longest_transaction == 90
    assert etl.source == "application_name"
    assert by_label[UNTAGGED].parent is None and by_label[UNTAGGED].sessions == 2


def test_sorting_by_any_column_keeps_the_untagged_row_last() -> None:
    """Every column sorts (ties by tag); the untagged row stays at the bottom whatever the order."""
    for column in COLUMNS:
        for descending in (True, False):
            shown = arrange(_rows(), column.key, descending)
            assert shown[-1].parent is None, column.key
    assert [r.label for r in arrange(_rows(), "sessions")][:3] == ["etl:1", "web:2", "Billing:3"]
    assert [r.label for r in arrange(_rows(), "query")][:3] == ["Billing:3", "etl:1", "web:2"]
    assert [r.label for r in arrange(_rows(), "tag", descending=False)][:3] == ["Billing:3", "etl:1", "web:2"]


def test_the_filter_is_a_case_insensitive_glob_or_a_substring() -> None:
    """`etl:*` and `ETL` find etl:1; a pattern with no wildcard matches tags containing it; untagged only if named."""
    assert matches("etl:*", "etl:1") and matches("ETL", "etl:1") and matches("bill", "Billing:3")
    assert not matches("etl", "web:2") and not matches("web:?0", "web:2")
    assert [r.label for r in arrange(_rows(), pattern="*:[12]")] == ["etl:1", "web:2"]
    assert [r.label for r in arrange(_rows(), pattern="untag")] == [UNTAGGED]


def test_a_groups_sessions_longest_transaction_first() -> None:
    """Opening a group lists its sessions with state and durations; the untagged row opens the untagged sessions."""
    assessed = assess(_snapshot(), CONFIG)
    etl = session_rows(assessed.grouped, assessed.snapshot, "etl:1")
    assert [r.pid for r in etl] == [13, 11, 12]
    assert etl[1].query_seconds == 30 and etl[0].query_seconds is None and etl[0].state == "idle in transaction"
    assert [r.pid for r in session_rows(assessed.grouped, assessed.snapshot, None)] == [41, 42]


def test_the_plan_lists_exactly_the_pids_and_says_what_is_left_out() -> None:
    """`t` on a group plans every eligible session; protected ones, idle ones for a cancel, untagged ones are left
    out with why; one session's plan holds only that pid."""
    assessed = assess(_snapshot(), CONFIG)
    grouped, snap = assessed.grouped, assessed.snapshot
    term = plan(grouped, snap, "web:2", "terminate", Protect())
    assert term.pids == (21,) and term.left_out == ((22, "protected"),)
    cancel = plan(grouped, snap, "etl:1", "cancel", Protect())
    assert cancel.pids == (11,) and dict(cancel.left_out) == {12: "idle", 13: "idle"}
    one = plan(grouped, snap, "etl:1", "terminate", Protect(), pid=13)
    assert one.pids == (13,) and one.left_out == () and one.label == "etl:1 pid 13"
    untagged = plan(grouped, snap, None, "terminate", Protect())
    assert untagged.pids == () and dict(untagged.left_out) == {41: "untagged", 42: "untagged"}
    assert all(s.rule == "manual" for s in term.decision.signals)


def test_rates_are_the_counters_growth_over_the_seconds_between_refreshes() -> None:
    """LOAD and CPU are the growth of the ledger's counters divided by the seconds between the polls; MEM the last
    poll's; no rate without a previous poll, no CPU or MEM where /proc is not visible."""
    proc = Sources.of(proc=None)
    before = Cost(CostState(ago(2), totals=Totals(load={("a", "CPU"): 1.0}, cpu={"a": 0.5})), proc)
    after = Cost(CostState(NOW, totals=Totals(load={("a", "CPU"): 3.0, ("a", "Lock"): 1.0}, cpu={"a": 1.5})), proc,
                 memory={"a": (4096, 2048)})
    assert rates(before, after, 2.0)["a"] == Figures(load=1.5, cpu=0.5, memory=4096)
    assert rates(None, after, None)["a"] == Figures(memory=4096)
    hidden = Cost(after.state, Sources.of(proc="not_visible"))
    assert rates(before, hidden, 2.0)["a"] == Figures(load=1.5)
