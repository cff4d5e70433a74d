"""The rule conditions, declared once: config validation, the `Rule` model, policy and the README table follow.

Each condition names a statistic of a group (`model.Stats`) and a limit; a rule fires when a statistic it sets exceeds
its limit. Adding a condition here adds its config key, its validation, its evaluation and its documentation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from exporter.core.model import Stats

Kind = Literal["count", "duration"]


@dataclass(frozen=True, slots=True)
class Condition:
    """One rule condition: its config key, what it measures, and how the README describes it."""

    name: str
    kind: Kind
    measure: Callable[[Stats], float]
    doc: str
    blocking: bool = False
    """A lock condition: when only such conditions fire, a rule signals the group's root blockers, not all of it."""
    transaction: bool = False
    """Measures an open transaction: a signal for it must still find the very transaction (xact_start)."""

    @property
    def time_based(self) -> bool:
        """A duration grows with the clock alone; a count changes only when sessions come, go or change state."""
        return self.kind == "duration"


CONDITIONS: tuple[Condition, ...] = (
    Condition("max_sessions", "count", lambda s: float(s.sessions), "client sessions in the group"),
    Condition(
        "max_active_sessions", "count", lambda s: float(s.active), "sessions running a query (state `active`)"
    ),
    Condition(
        "max_query_duration", "duration", lambda s: s.max_query_duration, "the longest running query (`query_start`)"
    ),
    Condition(
        "max_transaction_duration",
        "duration",
        lambda s: s.max_transaction_duration,
        "the longest open transaction (`xact_start`)",
        transaction=True,
    ),
    Condition(
        "max_idle_in_transaction",
        "duration",
        lambda s: s.max_idle_in_transaction,
        "the longest spell `idle in transaction` (since `state_change`)",
        transaction=True,
    ),
    Condition("max_group_age", "duration", lambda s: s.age, "since the group's oldest session connected"),
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
