"""Pure: when each group will next cross each of its time limits, `for:` included, so enforcement can act at that
moment instead of at the next poll. No I/O, no clock: the server's clock comes in with the grouped snapshot.

A query that runs, a transaction that stays open, a session that sits idle in a transaction, a group that ages: each
crosses its limit at a moment known at the poll (its start plus the limit, plus the rule's `for:`). A deadline names
the session whose state crosses, with a guard that holds only while it is still exactly in that state and the limit is
really exceeded on the server's clock (exporter/queries/signal.sql), and the group's other sessions the rule then
signals with their own guards, as a poll would. Size limits change only when sessions come and go: they stay with the
poll. Lock-wait limits need the chain read again: their deadline asks for an early poll.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from exporter.core.conditions import BY_NAME
from exporter.core.model import ACTIVE_STATES, Group, Grouped, Guard, Session
from exporter.core.policy import CompiledRule, RuleState, Target, eligible, guard_for, rule_scope, tag_source
from exporter.core.settings import Config

STRICTLY_AFTER = timedelta(milliseconds=1)
"""Limits are exceeded strictly: act just after the moment the value equals the limit."""


@dataclass(frozen=True, slots=True)
class Deadline:
    """One (rule, group) firing due at `at` (server clock) unless the crossing session moves on first."""

    at: datetime
    rule: str
    parent: str
    condition: str
    crossing: Target | None
    """The session whose state crosses, guarded by that state; None for a deadline that asks for an early poll."""
    others: tuple[Target, ...] = ()
    """The group's other sessions the rule signals once the crossing one is confirmed (their own guards)."""

    @property
    def poll(self) -> bool:
        return self.crossing is None


def _moments(condition: str, sessions: tuple[Session, ...]) -> list[tuple[datetime, Session, Guard]]:
    """Each session's moment from which `condition` measures, with the guard that holds while it is the same."""
    out: list[tuple[datetime, Session, Guard]] = []
    for s in sessions:
        if condition == "max_query_duration" and s.state in ACTIVE_STATES and s.query_start is not None:
            out.append((s.query_start, s, Guard(query_start=s.query_start)))
        elif condition == "max_transaction_duration" and s.xact_start is not None:
            out.append((s.xact_start, s, Guard(xact_start=s.xact_start)))
        elif (
            condition == "max_idle_in_transaction"
            and s.state is not None
            and s.state.startswith("idle in transaction")
            and s.state_change is not None
        ):
            out.append((s.state_change, s, Guard(state_change=s.state_change)))
        elif condition == "max_group_age" and s.backend_start is not None:
            out.append((s.backend_start, s, Guard()))
    return out


def _blocking_moment(grp: Group, sessions: tuple[Session, ...]) -> datetime | None:
    """When the longest wait on the group's sessions began (None: nobody waits on them)."""
    locks = grp.locks
    if locks is None:
        return None
    victims = locks.victims([s.pid for s in sessions])
    starts = [w.since for v in victims if (w := locks.waits.get(v)) is not None and w.since is not None]
    return min(starts, default=None)


def schedule(
    grouped: Grouped, config: Config, state: RuleState, force_dry_run: bool = False, target: str = "default"
) -> list[Deadline]:
    """Every deadline after `grouped.now` for rules that signal, earliest first.

    A (rule, group) already firing is the poll's business; one pending on `for:` is due when its `for:` ends; one
    not yet exceeded is due when its first session crosses, plus `for:`.
    """
    now = grouped.now
    out: list[Deadline] = []
    for compiled in map(CompiledRule.of, config.rules):
        rule = compiled.rule
        if rule.action == "log" or not compiled.applies_to(target):
            continue
        timed = [(n, limit) for n, limit in compiled.conditions.items() if BY_NAME[n].time_based]
        if not timed:
            continue
        dry = force_dry_run or config.dry_run or rule.dry_run
        for grp in compiled.groups(grouped.groups):
            key = (rule.name, grp.parent)
            if key in state.firing:
                continue
            scope = rule_scope(compiled, grp)
            if scope is None:
                continue
            sessions, _ = scope
            pending_since = state.since.get(key)
            best: Deadline | None = None
            for name, limit in timed:
                condition = BY_NAME[name]
                if condition.blocking:
                    start = _blocking_moment(grp, sessions)
                    if start is None:
                        continue
                    at = start + timedelta(seconds=limit + rule.for_) + STRICTLY_AFTER
                    candidate = Deadline(at, rule.name, grp.parent, name, None)
                else:
                    moments = _moments(name, sessions)
                    if not moments:
                        continue
                    start, crossing, guard = min(moments, key=lambda m: m[0])
                    exceeded_at = start + timedelta(seconds=limit)
                    if pending_since is not None and exceeded_at < now:
                        # Already over, waiting out `for:` since the poll that first saw it (as the poll counts it).
                        at, over = pending_since + timedelta(seconds=rule.for_), limit
                    else:
                        at, over = exceeded_at + timedelta(seconds=rule.for_), limit + rule.for_
                    at += STRICTLY_AFTER
                    chosen, _, _ = eligible((crossing,), rule.action, config.protect)
                    if not chosen:
                        continue  # a protected or unguarded session: the poll decides, with its full view
                    reasons = (f"{name} > {limit:g} (deadline)",)
                    first = Target(rule.name, rule.action, grp.parent, crossing, reasons, dry,
                                   guard=replace(guard, exceeded=over), trigger="deadline",
                                   tag_source=tag_source(grp, crossing))
                    rest, _, _ = eligible(tuple(s for s in sessions if s.pid != crossing.pid), rule.action,
                                          config.protect)
                    others = tuple(
                        Target(rule.name, rule.action, grp.parent, s, reasons, dry,
                               guard=guard_for(rule.action, s, grp, (name,)), trigger="deadline",
                               tag_source=tag_source(grp, s))
                        for s in rest
                    )
                    candidate = Deadline(at, rule.name, grp.parent, name, first, others)
                if candidate.at > now and (best is None or candidate.at < best.at):
                    best = candidate
            if best is not None:
                out.append(best)
    out.sort(key=lambda d: d.at)
    return out
