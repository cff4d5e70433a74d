"""Pure: the rule conditions, declared once: the config schema, the `Rule` model, policy, deadlines, the guards of a
signal and the README table follow.

Each condition names a statistic of a group (`model.Stats`) and a limit; a rule fires when a statistic it sets exceeds
its limit. A duration condition names the moment of a session it measures from (`model.Moment`): a group's statistic
is the longest time since that moment among its sessions, a deadline is the moment plus the limit, and a deadline's
signal is guarded by that moment. Adding a condition here adds its config key, its validation, its evaluation, its
deadline, its guard and its documentation.

A guard condition (memory, CPU, load) reads what the cost accounting measured (`usage.Usage`) rather than the
group's statistics: its `figure` is None where the figure is not available (another host, a managed service), and a
condition with no figure never fires. It names the source it needs (`needs`), so that a rule reading it is reported
inactive where that source is missing, and which of the group's sessions it signals (`select`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from exporter.core.model import (
    ACTIVE_STATES,
    CONNECTED,
    IDLE,
    IDLE_IN_TRANSACTION,
    IDLE_STATES,
    QUERY,
    TRANSACTION,
    Moment,
    Session,
    Stats,
)
from exporter.core.usage import Usage

Kind = Literal["count", "duration", "size", "rate"]
Select = Literal["group", "over", "largest"]
"""Which of a firing group's sessions a condition signals: all of them (as the rule's action says), only those whose
own figure exceeds the limit, or the largest first until what is left is within the limit."""
Figure = Callable[[Usage, str, tuple[Session, ...], float], float | None]
"""(usage, the group's series label, the sessions the rule looks at, the rule's window) -> the figure, None: not
measured."""

Trim = Callable[[Sequence[Session], float, datetime, bool], tuple[list[Session], int, int]]
"""A trimming condition's choice, given the sessions a rule looks at, its limit, the server's now and whether the rule
lets it end active sessions (`trim_active`): the sessions it may end, in the order it ends them, how many of them to
end, and the count the budget is held against (for the audit). The policy takes them in that order, passing over the
protected and the unguarded."""


def trim_order(sessions: Sequence[Session], active: bool = False) -> list[Session]:
    """The order a budget ends sessions in: idle ones first, longest idle first (`state_change`); then idle in a
    transaction, longest first; then, only when `active`, running ones, the newest query first (the least work lost).
    A LISTEN session waiting for notifications, and a session whose state the role cannot see, are never chosen."""
    idle = [s for s in sessions if IDLE.of(s) is not None]
    in_transaction = [s for s in sessions if IDLE_IN_TRANSACTION.of(s) is not None]
    out = sorted(idle, key=_state_change) + sorted(in_transaction, key=_state_change)
    if active:
        running = [s for s in sessions if s.state in ACTIVE_STATES and s.query_start is not None]
        out += sorted(running, key=_query_start, reverse=True)
    return out


def _state_change(s: Session) -> datetime:
    assert s.state_change is not None  # Moment.of gave it
    return s.state_change


def _query_start(s: Session) -> datetime:
    assert s.query_start is not None
    return s.query_start


Chosen = tuple[list[Session], int, int]


def _beyond_budget(sessions: Sequence[Session], limit: float, now: datetime, active: bool) -> Chosen:
    """max_sessions with `scope: excess`: the sessions beyond the budget, in `trim_order`, held against the group's
    sessions."""
    return trim_order(sessions, active), len(sessions) - int(limit), len(sessions)


def _idle_beyond(sessions: Sequence[Session], limit: float, now: datetime, active: bool) -> Chosen:
    """max_idle_sessions: the longest idle beyond the limit, held against the group's idle sessions."""
    idle = trim_order([s for s in sessions if s.state in IDLE_STATES])
    return idle, len(idle) - int(limit), len(idle)


def _idle_longer(sessions: Sequence[Session], limit: float, now: datetime, active: bool) -> Chosen:
    """max_idle_duration: every session idle (outside a transaction) longer than the limit, longest first, held
    against how many they are."""
    over = [s for s in trim_order([s for s in sessions if s.state in IDLE_STATES])
            if (now - _state_change(s)).total_seconds() > limit]
    return over, len(over), len(over)


@dataclass(frozen=True, slots=True)
class Condition:
    """One rule condition: its config key, what it measures, and how the README describes it."""

    name: str
    kind: Kind
    measure: Callable[[Stats], float]
    doc: str
    blocking: bool = False
    """A lock condition: when only such conditions fire, a rule signals the group's root blockers, not all of it. Its
    duration runs from the longest wait on the group, which only a poll can read again: its deadline asks for a
    poll."""
    moment: Moment | None = None
    """The moment of a session a duration measures from; a deadline signals the session whose moment crosses first,
    guarded by that very moment (`Moment.pin`)."""
    keeps: Moment | None = None
    """What a poll's signal for this condition must still find: the very transaction it measured (xact_start)."""
    trim: Trim | None = None
    """A budget: when only such conditions fire, a rule ends the sessions this picks, not the whole group."""
    trims_with_excess: bool = False
    """The trim applies only to a rule with `scope: excess` (max_sessions: without it, the whole group is ended)."""
    figure: Figure | None = None
    """A guard condition's figure, read from the cost accounting instead of `measure`."""
    needs: str | None = None
    """The cost source (exporter/core/cost.py: SOURCES) its figure comes from; None: SQL alone."""
    select: Select = "group"
    memory: bool = False
    """A memory condition: its sessions are sampled between polls (exporter/run/sampler.py)."""
    windowed: bool = False
    """Measured over the rule's `window:`."""

    def trims(self, scope: str) -> bool:
        """Whether, in a rule of `scope`, this condition ends only the sessions its trim picks."""
        return self.trim is not None and (not self.trims_with_excess or scope == "excess")

    @property
    def time_based(self) -> bool:
        """A duration grows with the clock alone; a count changes only when sessions come, go or change state."""
        return self.kind == "duration"


def _since(moment: Moment) -> Callable[[Stats], float]:
    """A group's longest time since `moment` among its sessions."""
    stat = moment.stat
    return lambda s: float(getattr(s, stat))


def _session_memory(usage: Usage, label: str, sessions: tuple[Session, ...], window: float) -> float | None:
    """The largest private memory among the sessions (with their workers'); None when none was read."""
    return max((float(m) for s in sessions if (m := usage.of(s)) is not None), default=None)


def _group_memory(usage: Usage, label: str, sessions: tuple[Session, ...], window: float) -> float | None:
    """The sessions' private memory summed; None when none was read."""
    known = [m for s in sessions if (m := usage.of(s)) is not None]
    return float(sum(known)) if known else None


def _rate(which: str) -> Figure:
    return lambda usage, label, sessions, window: usage.rate(which, label, window)


def _no_stat(stats: Stats) -> float:
    raise AssertionError("a guard condition is measured by its figure")


CONDITIONS: tuple[Condition, ...] = (
    Condition(
        "max_sessions",
        "count",
        lambda s: float(s.sessions),
        "client sessions in the group (with `scope: excess`, only those beyond it end)",
        trim=_beyond_budget,
        trims_with_excess=True,
    ),
    Condition(
        "max_active_sessions", "count", lambda s: float(s.active), "sessions running a query (state `active`)"
    ),
    Condition(
        "max_idle_sessions",
        "count",
        lambda s: float(s.idle),
        "sessions `idle` (not after a `LISTEN`); only the longest idle beyond it end",
        trim=_idle_beyond,
    ),
    Condition(
        "max_query_duration", "duration", _since(QUERY), "the longest running query (`query_start`)", moment=QUERY
    ),
    Condition(
        "max_transaction_duration",
        "duration",
        _since(TRANSACTION),
        "the longest open transaction (`xact_start`)",
        moment=TRANSACTION,
        keeps=TRANSACTION,
    ),
    Condition(
        "max_idle_in_transaction",
        "duration",
        _since(IDLE_IN_TRANSACTION),
        "the longest spell `idle in transaction` (since `state_change`)",
        moment=IDLE_IN_TRANSACTION,
        keeps=TRANSACTION,
    ),
    Condition(
        "max_idle_duration",
        "duration",
        _since(IDLE),
        "the longest spell `idle` (since `state_change`; not after a `LISTEN`); only the sessions idle longer end",
        moment=IDLE,
        trim=_idle_longer,
    ),
    Condition(
        "max_group_age", "duration", _since(CONNECTED), "since the group's oldest session connected", moment=CONNECTED
    ),
    Condition(
        "max_blocking_sessions",
        "count",
        lambda s: float(s.blocking),
        "sessions of other groups (or untagged) waiting on the group's sessions, directly or through a chain",
        blocking=True,
    ),
    Condition(
        "max_blocking_duration",
        "duration",
        lambda s: s.max_blocking,
        "the longest any session has waited on the group's sessions (through a chain included)",
        blocking=True,
    ),
    Condition(
        "max_session_memory",
        "size",
        _no_stat,
        "a session's private memory (RssAnon, with its parallel workers'); only that session is signalled",
        figure=_session_memory,
        needs="proc",
        select="over",
        memory=True,
    ),
    Condition(
        "max_group_memory",
        "size",
        _no_stat,
        "the group's private memory summed; its largest sessions are signalled, biggest first, until the rest is "
        "within the limit",
        figure=_group_memory,
        needs="proc",
        select="largest",
        memory=True,
    ),
    Condition(
        "max_group_cpu",
        "rate",
        _no_stat,
        "the group's CPU use over the rule's `window` (utime + stime of its backends and workers)",
        figure=_rate("cpu"),
        needs="proc",
        windowed=True,
    ),
    Condition(
        "max_group_load",
        "rate",
        _no_stat,
        "the group's average active sessions over the rule's `window`",
        figure=_rate("load"),
        windowed=True,
    ),
)

BY_NAME: dict[str, Condition] = {c.name: c for c in CONDITIONS}
NAMES: tuple[str, ...] = tuple(BY_NAME)


def markdown_table() -> str:
    """The README's table of conditions, generated from CONDITIONS (a test keeps the README in step)."""
    example = {"count": "`20`", "duration": "`10m`, `1h30m`, `500ms`",
               "size": "`512MB`, `1.5GB` (powers of 1000), `2GiB` (of 1024), kB to TB, KiB to TiB",
               "rate": "`2`, `0.5` (cores, or sessions)"}
    lines = ["| condition | fires when this exceeds the limit | value |", "|---|---|---|"]
    lines += [f"| `{c.name}` | {c.doc} | {c.kind}, e.g. {example[c.kind]} |" for c in CONDITIONS]
    return "\n".join(lines)
