"""Pure: when each watched (rule, group) pair will next cross one of its time limits, `for:` included, so enforcement
can act at that moment instead of at the next poll. No I/O, no clock: the server's clock comes in with the snapshot.

A query that runs, a transaction that stays open, a session that sits idle in a transaction, a group that ages: each
crosses its limit at a moment known at the poll, the condition's `Moment` of a session plus the limit (plus the rule's
`for:`). A deadline names the session whose moment crosses first, with a guard that holds only while it is still at
that very moment and the limit is really exceeded on the server's clock (exporter/pg/queries/signal.sql), and the
group's other sessions the rule then signals with their own guards, as a poll would. Size limits change only when
sessions come and go: they stay with the poll. Lock-wait limits need the chain read again: their deadline asks for an
early poll.

The pairs come from the policy's one walk of rules x groups (`Decision.watched`); nothing here walks them again.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Literal

from exporter.core.conditions import BY_NAME
from exporter.core.model import Group, Session
from exporter.core.policy import Budget, Signal, Watched, guard_for, tag_source
from exporter.core.rules import Protection, eligible

STRICTLY_AFTER = timedelta(milliseconds=1)
"""Limits are exceeded strictly: act just after the moment the value equals the limit."""


@dataclass(frozen=True, slots=True)
class Deadline:
    """One (rule, group) firing due at `at` (server clock) unless the crossing session moves on first."""

    at: datetime
    rule: str
    parent: str
    condition: str
    crossing: Signal | None
    """The session whose moment crosses, guarded by that moment; None for a deadline that asks for an early poll."""
    others: tuple[Signal, ...] = ()
    """The group's other sessions the rule signals once the crossing one is confirmed (their own guards)."""

    @property
    def poll(self) -> bool:
        return self.crossing is None


def _blocking_moment(grp: Group, sessions: tuple[Session, ...]) -> datetime | None:
    """When the longest wait on the group's sessions began (None: nobody waits on them)."""
    locks = grp.locks
    if locks is None:
        return None
    victims = locks.victims([s.pid for s in sessions])
    starts = [w.since for v in victims if (w := locks.waits.get(v)) is not None and w.since is not None]
    return min(starts, default=None)


def _deadline(pair: Watched, name: str, limit: float, now: datetime, protection: Protection
              ) -> Deadline | None:
    """When the time limit `name` of one watched pair fires, and what it signals then; None when it cannot (no
    session has the condition's moment, or the crossing one may not be signalled: the poll decides then)."""
    rule, grp, sessions = pair.rule.rule, pair.group, pair.sessions
    action = rule.action
    if action == "log":
        return None  # never watched: a log rule signals nothing
    condition = BY_NAME[name]
    if condition.blocking:
        start = _blocking_moment(grp, sessions)
        if start is None:
            return None
        at = start + timedelta(seconds=limit + rule.for_) + STRICTLY_AFTER
        return Deadline(at, rule.name, grp.parent, name, None)
    moment = condition.moment
    assert moment is not None, f"{name}: a duration condition declares its moment"
    moments = [(when, s) for s in sessions if (when := moment.of(s)) is not None]
    if not moments:
        return None
    start, crossing = min(moments, key=lambda m: m[0])
    exceeded_at = start + timedelta(seconds=limit)
    if pair.pending_since is not None and exceeded_at < now:
        # Already over, waiting out `for:` since the poll that first saw it (as the poll counts it).
        at, over = pair.pending_since + timedelta(seconds=rule.for_), limit
    else:
        at, over = exceeded_at + timedelta(seconds=rule.for_), limit + rule.for_
    chosen, _, _ = eligible((crossing,), action, protection)
    if not chosen:
        return None  # a protected or unguarded session: the poll decides, with its full view
    reasons = (f"{name} > {limit:g} (deadline)",)
    guard = replace(moment.pin(start), exceeded=over, since=start)
    trims = condition.trims(rule.scope)
    step: Literal["cancel"] | None = "cancel" if rule.escalate is not None else None
    first = Signal(rule.name, action, grp.parent, crossing, reasons, pair.dry_run, guard=guard,
                   trigger="deadline", tag_source=tag_source(grp, crossing),
                   budget=Budget(name, limit, 1, 1) if trims else None, step=step)
    if trims:
        return Deadline(at + STRICTLY_AFTER, rule.name, grp.parent, name, first)  # a budget ends only the crossing one
    rest, _, _ = eligible(tuple(s for s in sessions if s.pid != crossing.pid), action, protection)
    others = tuple(
        Signal(rule.name, action, grp.parent, s, reasons, pair.dry_run,
               guard=guard_for(action, s, grp, (name,)), trigger="deadline", tag_source=tag_source(grp, s), step=step)
        for s in rest
    )
    return Deadline(at + STRICTLY_AFTER, rule.name, grp.parent, name, first, others)


def schedule(watched: tuple[Watched, ...], now: datetime, protection: Protection) -> list[Deadline]:
    """The next deadline after `now` of each watched pair, earliest first.

    A pair pending on `for:` is due when its `for:` ends; one not yet exceeded is due when its first session crosses,
    plus `for:`. Firing pairs are the poll's business and are not watched.
    """
    out: list[Deadline] = []
    for pair in watched:
        if pair.firing:
            continue  # watched for its memory limits only (exporter/core/guards.py)
        candidates = (_deadline(pair, name, limit, now, protection) for name, limit in pair.rule.timed.items())
        due = [d for d in candidates if d is not None and d.at > now]
        if due:
            out.append(min(due, key=lambda d: d.at))
    out.sort(key=lambda d: d.at)
    return out
