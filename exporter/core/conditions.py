"""Pure: the rule conditions, declared once: the config schema, the `Rule` model, policy, deadlines, the guards of a
signal and the README table follow.

Each condition names a statistic of a group (`model.Stats`) and a limit; a rule fires when a statistic it sets exceeds
its limit. A duration condition names the moment of a session it measures from (`model.Moment`): a group's statistic
is the longest time since that moment among its sessions, a deadline is the moment plus the limit, and a deadline's
signal is guarded by that moment. Adding a condition here adds its config key, its validation, its evaluation, its
deadline, its guard and its documentation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from exporter.core.model import CONNECTED, IDLE_IN_TRANSACTION, QUERY, TRANSACTION, Moment, Stats

Kind = Literal["count", "duration"]


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

    @property
    def time_based(self) -> bool:
        """A duration grows with the clock alone; a count changes only when sessions come, go or change state."""
        return self.kind == "duration"


def _since(moment: Moment) -> Callable[[Stats], float]:
    """A group's longest time since `moment` among its sessions."""
    stat = moment.stat
    return lambda s: float(getattr(s, stat))


CONDITIONS: tuple[Condition, ...] = (
    Condition("max_sessions", "count", lambda s: float(s.sessions), "client sessions in the group"),
    Condition(
        "max_active_sessions", "count", lambda s: float(s.active), "sessions running a query (state `active`)"
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
)

BY_NAME: dict[str, Condition] = {c.name: c for c in CONDITIONS}
NAMES: tuple[str, ...] = tuple(BY_NAME)


def markdown_table() -> str:
    """The README's table of conditions, generated from CONDITIONS (a test keeps the README in step)."""
    example = {"count": "`20`", "duration": "`10m`, `1h30m`, `500ms`"}
    lines = ["| condition | fires when this exceeds the limit | value |", "|---|---|---|"]
    lines += [f"| `{c.name}` | {c.doc} | {c.kind}, e.g. {example[c.kind]} |" for c in CONDITIONS]
    return "\n".join(lines)
