"""Pure: decide which sessions to signal, from groups, rules and the previous poll's rule state.

No I/O and no clock reads: the server's clock comes in with the snapshot, and the state a rule's `for:` needs comes in
as `RuleState` and goes out as a new one. One walk of rules x groups decides what to signal now and which (rule,
group) pairs a time limit may fire before the next poll (`Decision.watched`, for exporter/core/deadlines.py). The
enforcer carries out the decision.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from exporter.core.conditions import BY_NAME
from exporter.core.figures import Fired, figure_of, fired_of, gate_closed, guard_figures, reason, selected
from exporter.core.model import (
    ACTIVE_STATES,
    IDLE,
    IDLE_IN_TRANSACTION,
    NO_GUARD,
    QUERY,
    Group,
    Grouped,
    Guard,
    Session,
    SignalAction,
    Stats,
)
from exporter.core.rules import CompiledRule, Protection, eligible, rule_scope
from exporter.core.settings import Config, Protect, Rule
from exporter.core.usage import NO_USAGE, Usage

MANUAL_RULE = "manual"
"""The rule label of signals sent by `pgparent terminate`."""


@dataclass(frozen=True, slots=True)
class Budget:
    """Why a trimmed session was chosen: the budget condition, its limit, what the group held against it at the poll,
    and how many sessions the trim chose (before the per-cycle cap)."""

    condition: str
    limit: float
    count: int
    """What the group held against the limit: sessions (max_sessions), idle sessions (max_idle_sessions), or
    sessions idle longer than the limit (max_idle_duration)."""
    trimmed: int


@dataclass(frozen=True, slots=True)
class Signal:
    """One session to signal for one rule, with why; a `dry_run` signal is reported and never sent."""

    rule: str
    action: SignalAction
    parent: str
    session: Session
    reasons: tuple[str, ...]
    dry_run: bool
    blocking_sessions: int = 0
    """Sessions of other groups (or untagged) this session held up, directly or through a chain, at the poll."""
    max_blocking_seconds: float = 0.0
    """The longest of those waits."""
    guard: Guard = NO_GUARD
    """What must still hold at the signal beyond pid, backend_start and application_name."""
    trigger: Literal["poll", "deadline", "sample"] = "poll"
    """What found it: a poll, a deadline computed at the last poll (exporter/deadlines.py), or a memory sample
    between polls (exporter/run/sampler.py)."""
    tag_source: str | None = None
    """Which source tagged the session into its group (`application_name`, `comment:KEY`, `user`, `database`)."""
    budget: Budget | None = None
    """Set when a budget trims the group: the session is one of those beyond it."""
    figure: float | None = None
    """The figure of a guard condition that fired (memory bytes, CPU cores, average active sessions)."""
    host_available: int | None = None
    """The server's memory available when a guard condition fired (None: not read)."""
    step: Literal["cancel", "terminate"] | None = None
    """For a rule that escalates: the cancel first, or the terminate that follows it."""
    condition: str | None = None
    """The guard condition (memory, CPU, load) that fired, when one did: what pgparent_guard_actions_total counts."""


@dataclass(frozen=True, slots=True)
class Firing:
    """A (rule, group) pair whose condition has held for the rule's `for:`."""

    rule: str
    parent: str
    action: str
    reasons: tuple[str, ...]
    dry_run: bool


@dataclass(frozen=True, slots=True)
class RuleState:
    """Per (rule, parent): since when the condition has held, as the server's clock read it."""

    since: Mapping[tuple[str, str], datetime] = field(default_factory=dict)
    firing: frozenset[tuple[str, str]] = frozenset()
    cancelled: Mapping[tuple[str, int, datetime], datetime] = field(default_factory=dict)
    """(rule, pid, backend_start) -> when an escalating rule cancelled that session (or found it running no query
    to cancel): it is terminated once the rule's `escalate.after` has passed and its condition still holds for it."""

    def with_cancelled(self, signals: Iterable[Signal], at: datetime) -> RuleState:
        """This state, also remembering the escalating cancels among `signals` as sent at `at` (those of the memory
        sampler, between polls)."""
        more = {(s.rule, s.session.pid, s.session.backend_start): at for s in signals
                if s.step == "cancel" and s.session.backend_start is not None}
        if not more:
            return self
        return RuleState(self.since, self.firing, {**more, **self.cancelled})


@dataclass(frozen=True, slots=True)
class Watched:
    """A (rule, group) pair in the rule's scope and not firing, whose time limits may be crossed before the next
    poll: what exporter/core/deadlines.py schedules, without walking rules x groups again."""

    rule: CompiledRule
    group: Group
    sessions: tuple[Session, ...]
    """The group's sessions the rule looks at (narrowed by its database and user globs)."""
    pending_since: datetime | None
    """Since when the rule's condition holds while it waits out `for:`; None when it does not hold now."""
    dry_run: bool
    firing: bool = False
    """The rule fires on the group now (watched for its memory conditions only: the poll acts on the rest)."""


@dataclass(frozen=True, slots=True)
class Decision:
    signals: tuple[Signal, ...]
    """What to signal this cycle, at most `max_terminations_per_cycle` of them that are not dry-run."""
    deferred: tuple[Signal, ...]
    """Over the per-cycle cap: left for the next poll."""
    firing: tuple[Firing, ...]
    started: tuple[Firing, ...]
    """Pairs that began firing at this poll (the rest were firing already)."""
    resolved: tuple[tuple[str, str], ...]
    """(rule, parent) pairs that were firing at the last poll and are not now."""
    violating: dict[str, int]
    pending: dict[str, int]
    protected: int
    """Sessions of firing groups left alone because `protect:` names their user, database or application, or their
    role is a superuser's (or none) under `protect.superusers`."""
    unguarded: int
    """Sessions of firing groups left alone because their backend_start is hidden (no pg_read_all_stats)."""
    state: RuleState
    unreleased: tuple[Signal, ...] = ()
    """Root blockers a `cancel` rule cannot release: they run no query (idle in a transaction), so a cancel would do
    nothing; audited, never signalled."""
    watched: tuple[Watched, ...] = ()
    """Pairs a deadline or a memory sample may fire before the next poll (only when `evaluate` was asked to
    watch)."""
    no_query: tuple[Signal, ...] = ()
    """The cancel step of an escalating rule for sessions running no query (a cancel would do nothing): audited,
    not sent; their escalation runs from now."""

    @property
    def acts(self) -> bool:
        """Whether carrying the decision out does anything: signals, deferrals or blockers to audit."""
        return bool(self.signals or self.deferred or self.unreleased or self.no_query)

    @classmethod
    def only(cls, signals: tuple[Signal, ...], cap: int | None = None, protected: int = 0, unguarded: int = 0
             ) -> Decision:
        """A decision that only sends `signals` (an operator's request, a deadline): no rule state, no firing;
        with `cap`, real signals beyond it are deferred."""
        chosen, deferred = _plan(list(signals), cap) if cap is not None else (signals, ())
        return cls(
            signals=chosen,
            deferred=deferred,
            firing=(),
            started=(),
            resolved=(),
            violating={},
            pending={},
            protected=protected,
            unguarded=unguarded,
            state=RuleState(),
        )


def _exceeded(conditions: dict[str, float], count: int, measured: Callable[[], Stats],
              figures: Callable[[str], float | None] | None = None) -> dict[str, str]:
    """The conditions exceeded, by name, as `name value > limit` strings. max_sessions needs only the count, so a
    rule on group size never pays for a group's full statistics. A guard condition reads `figures` (None: the rule
    has none); one with no figure (not measured here) is never exceeded."""
    out: dict[str, str] = {}
    for name, limit in conditions.items():
        if name == "max_sessions":
            value: float | None = float(count)
        elif BY_NAME[name].figure is not None:
            value = figures(name) if figures is not None else None
        else:
            value = BY_NAME[name].measure(measured())
        if value is not None and value > limit:
            out[name] = reason(name, value, limit)
    return out


def _root_blockers(sessions: tuple[Session, ...], grp: Group) -> tuple[Session, ...]:
    """The sessions of `sessions` that are root blockers of sessions outside the group: what ending releases."""
    locks = grp.locks
    if locks is None:
        return ()
    own = {s.pid for s in grp.sessions}
    return tuple(s for s in sessions if locks.is_root(s.pid) and locks.downstream[s.pid] - own)


def guard_for(
    action: SignalAction, session: Session, grp: Group | None = None, exceeded: Iterable[str] = ()
) -> Guard:
    """The guard a poll's signal carries: what must still hold so that it lands on what the poll saw.

    - A cancel interrupts only the very query the poll saw (a server connection that moved on to another query,
      perhaps another client's behind a pooler, is left alone).
    - A session `grp` got from a query comment (a query-scoped tag) is signalled only while that query runs
      (query_start), or while it still sits idle in the very transaction around it (state_change): the comment
      described that query, and the server connection may serve another client now.
    - A rule that fired on a condition whose declaration says what it `keeps` (a transaction duration) ends only
      the very transaction it measured (xact_start).
    """
    query_start = state_change = None
    if action == "cancel":
        query_start = session.query_start
    source = grp.source_of(session.pid) if grp is not None else None
    if source is not None and source.query_scoped:
        if session.state in ACTIVE_STATES:
            query_start = session.query_start
        else:
            state_change = session.state_change
    guard = Guard(query_start=query_start, state_change=state_change)
    for name in exceeded:
        kept = BY_NAME[name].keeps if name in BY_NAME else None
        if kept is not None:
            guard = kept.pin(kept.of(session), guard)
    return guard


def trim_guard(session: Session, onto: Guard = NO_GUARD) -> Guard:
    """`onto`, also holding only while a trimmed session is still in the very spell the poll saw: the same idle spell
    (state_change, state idle), the same spell idle in its transaction, or the same running query. A session that
    ran a statement since is left alone."""
    for moment in (IDLE, IDLE_IN_TRANSACTION, QUERY):
        if (value := moment.of(session)) is not None:
            return moment.pin(value, onto)
    return onto


def _take(candidates: list[Session], n: int, action: SignalAction, protection: Protection
          ) -> tuple[list[Session], int, int]:
    """The first `n` of `candidates` that `action` may signal, and how many were passed over as protected and as
    unguarded on the way."""
    chosen: list[Session] = []
    protected = unguarded = 0
    for s in candidates:
        if len(chosen) >= n:
            break
        ok, p, u = eligible((s,), action, protection)
        chosen += ok
        protected += p
        unguarded += u
    return chosen, protected, unguarded


def _trims(
    compiled: CompiledRule,
    grp: Group,
    sessions: tuple[Session, ...],
    exceeded: dict[str, str],
    trimming: list[str],
    action: SignalAction,
    protection: Protection,
    dry: bool,
) -> tuple[list[Signal], int, int]:
    """What the budget conditions `trimming` of a firing rule end in `grp`: each its picks, in its order (idle first,
    never running sessions unless the rule says so), each signal guarded by the session's very spell and carrying
    its budget; and how many sessions were passed over as protected and as unguarded."""
    rule = compiled.rule
    reasons = tuple(exceeded.values())
    signals: list[Signal] = []
    protected = unguarded = 0
    for name in trimming:
        trim, limit = BY_NAME[name].trim, compiled.conditions[name]
        assert trim is not None  # Condition.trims says so
        order, n, count = trim(sessions, limit, grp.now, rule.trim_active)
        chosen, n_protected, n_unguarded = _take(order, n, action, protection)
        protected += n_protected
        unguarded += n_unguarded
        budget = Budget(name, limit, count, len(chosen))
        signals += [
            Signal(rule.name, action, grp.parent, s, reasons, dry,
                   guard=trim_guard(s, guard_for(action, s, grp, exceeded)),
                   tag_source=tag_source(grp, s), budget=budget)
            for s in chosen
        ]
    return signals, protected, unguarded


def tag_source(grp: Group | None, session: Session) -> str | None:
    """The label of the source that tagged `session` into `grp`, for the audit."""
    source = grp.source_of(session.pid) if grp is not None else None
    return source.label if source is not None else None


def _blocking_of(session: Session, grp: Group) -> tuple[int, float]:
    """How many sessions outside the group `session` held up, and the longest of those waits."""
    locks = grp.locks
    if locks is None or session.pid not in locks.downstream:
        return 0, 0.0
    victims = locks.downstream[session.pid] - {s.pid for s in grp.sessions}
    return len(victims), locks.longest(victims)


def manual(
    grouped: Grouped,
    parent: str,
    action: SignalAction,
    protect: Protect,
    dry_run: bool = False,
    pids: frozenset[int] | None = None,
) -> Decision:
    """What `pgparent terminate PARENT` signals: every eligible session of that one group, under the same protections
    as the daemon, with no per-cycle cap (an operator asked for this group by name). With `pids`, only those of the
    group's sessions (`pgparent top`, one session chosen)."""
    grp = grouped.groups.get(parent)
    members = tuple(s for s in grp.sessions if pids is None or s.pid in pids) if grp else ()
    chosen, protected, unguarded = eligible(members, action, Protection.of(protect, grouped.pgparent_superuser))
    signals = tuple(
        Signal(
            MANUAL_RULE,
            action,
            parent,
            s,
            ("requested by an operator",),
            dry_run,
            guard=guard_for(action, s, grp),
            tag_source=tag_source(grp, s),
        )
        for s in chosen
        if grp is not None
    )
    return Decision.only(signals, protected=protected, unguarded=unguarded)


def evaluate(
    grouped: Grouped,
    config: Config,
    state: RuleState,
    force_dry_run: bool = False,
    target: str = "default",
    *,
    watch: bool = False,
    usage: Usage = NO_USAGE,
) -> Decision:
    """Evaluate every rule that applies to the server `target` (its `match.target` glob) against every group; return
    what to signal and the rule state for the next poll, and, with `watch`, the pairs whose time limits a deadline,
    or whose memory limits the sampler, may act on before the next poll. Guard conditions read `usage`."""
    now = grouped.now
    cancelled: dict[tuple[str, int, datetime], datetime] = {}
    no_query: list[Signal] = []
    since: dict[tuple[str, str], datetime] = {}
    firing: list[Firing] = []
    candidates: list[Signal] = []
    unreleased: list[Signal] = []
    watched: list[Watched] = []
    violating = {r.name: 0 for r in config.rules}
    pending = {r.name: 0 for r in config.rules}
    protected = unguarded = 0
    protection = Protection.of(config.protect, grouped.pgparent_superuser)

    for compiled in map(CompiledRule.of, config.rules):
        rule = compiled.rule
        if not compiled.applies_to(target):
            continue
        dry = force_dry_run or config.dry_run or rule.dry_run
        size_only = compiled.size_only
        timed = watch and rule.action != "log" and bool(compiled.timed or compiled.memory)
        sampled = watch and rule.action != "log" and bool(compiled.memory)
        closed = compiled.guarded and gate_closed(rule, usage)
        for grp in compiled.groups(grouped.groups):
            if size_only is not None and len(grp.sessions) <= size_only:
                continue  # what rule_scope and _exceeded would find, without building either
            scope = rule_scope(compiled, grp)
            if scope is None:
                continue
            sessions, measured = scope
            figures = guard_figures(rule, grp, sessions, usage) if compiled.guarded else None
            exceeded = {} if closed else _exceeded(compiled.conditions, len(sessions), measured, figures)
            if not exceeded:
                if timed:
                    watched.append(Watched(compiled, grp, sessions, None, dry))
                continue
            reasons = tuple(exceeded.values())
            key = (rule.name, grp.parent)
            started_at = state.since.get(key, now)
            since[key] = started_at
            if (now - started_at).total_seconds() < rule.for_:
                pending[rule.name] += 1
                if timed:
                    watched.append(Watched(compiled, grp, sessions, started_at, dry))
                continue
            violating[rule.name] += 1
            firing.append(Firing(rule.name, grp.parent, rule.action, reasons, dry))
            if sampled:
                watched.append(Watched(compiled, grp, sessions, started_at, dry, firing=True))
            if rule.action == "log":
                continue
            pool = sessions
            trimming = [n for n in exceeded if BY_NAME[n].trims(rule.scope)]
            roots = rule.scope == "root_blockers" and any(BY_NAME[n].blocking for n in exceeded)
            budget = bool(trimming) and all(n in trimming or (roots and BY_NAME[n].blocking) for n in exceeded)
            if budget:
                # A budget: end only the sessions beyond it (and the root blockers, when a lock condition fires
                # beside it), never the whole group.
                trims, n_protected, n_unguarded = _trims(compiled, grp, sessions, exceeded, trimming, rule.action,
                                                         protection, dry)
                candidates += trims
                protected += n_protected
                unguarded += n_unguarded
                if not roots:
                    continue
                pool = _root_blockers(sessions, grp)
            elif (singled := selected(compiled.conditions, exceeded, sessions, usage)
                    if figures is not None else None) is not None:
                pool = singled
            fired = fired_of(exceeded, figures, usage)
            if rule.escalate is not None:
                terminate, cancel, idle = _escalation(rule, pool, state.cancelled, now, cancelled)
                protected_, unguarded_ = _escalated(candidates, no_query, rule, grp, reasons, dry, exceeded, fired,
                                                    (terminate, cancel, idle), protection, usage)
                protected += protected_
                unguarded += unguarded_
                continue
            if not budget and rule.scope == "root_blockers" and all(BY_NAME[n].blocking for n in exceeded):
                pool = _root_blockers(sessions, grp)  # end what blocks, not the group's innocent members
                if rule.action == "cancel":
                    unreleased += [
                        Signal(rule.name, rule.action, grp.parent, s, reasons, dry, *_blocking_of(s, grp))
                        for s in pool
                        if s.state not in ACTIVE_STATES
                    ]
            chosen, n_protected, n_unguarded = eligible(pool, rule.action, protection)
            protected += n_protected
            unguarded += n_unguarded
            candidates += [
                Signal(
                    rule.name,
                    rule.action,
                    grp.parent,
                    s,
                    reasons,
                    dry,
                    *_blocking_of(s, grp),
                    guard=guard_for(rule.action, s, grp, exceeded),
                    tag_source=tag_source(grp, s),
                    figure=figure_of(s, fired, usage),
                    host_available=fired.host,
                    condition=fired.name,
                )
                for s in chosen
            ]

    signals, deferred = _plan(candidates, config.limits.max_terminations_per_cycle)
    for c in signals:
        if c.step == "cancel" and c.session.backend_start is not None:
            cancelled.setdefault((c.rule, c.session.pid, c.session.backend_start), now)
    for c in no_query:
        if c.session.backend_start is not None:
            cancelled.setdefault((c.rule, c.session.pid, c.session.backend_start), now)
    firing_keys = frozenset((f.rule, f.parent) for f in firing)
    return Decision(
        signals=signals,
        deferred=deferred,
        firing=tuple(firing),
        started=tuple(f for f in firing if (f.rule, f.parent) not in state.firing),
        resolved=tuple(sorted(state.firing - firing_keys)),
        violating=violating,
        pending=pending,
        protected=protected,
        unguarded=unguarded,
        state=RuleState(since=since, firing=firing_keys, cancelled=cancelled),
        unreleased=tuple(unreleased),
        watched=tuple(watched),
        no_query=tuple(no_query),
    )


def _escalation(rule: Rule, pool: tuple[Session, ...], before: Mapping[tuple[str, int, datetime], datetime],
                now: datetime, carried: dict[tuple[str, int, datetime], datetime]
                ) -> tuple[list[Session], list[Session], list[Session]]:
    """An escalating rule's firing pool split into the sessions to terminate (cancelled at least `escalate.after`
    ago and still singled out), to cancel (not yet cancelled, running a query) and to note as running no query (not
    yet cancelled, nothing to cancel); those cancelled more recently wait, their moment carried on in `carried`."""
    assert rule.escalate is not None
    after = rule.escalate.after
    terminate: list[Session] = []
    cancel: list[Session] = []
    idle: list[Session] = []
    for s in pool:
        if s.backend_start is None:
            cancel.append(s)  # counted as unguarded by `eligible`
            continue
        key = (rule.name, s.pid, s.backend_start)
        at = before.get(key)
        if at is not None:
            carried[key] = at
            if (now - at).total_seconds() >= after:
                terminate.append(s)
        elif s.state in ACTIVE_STATES:
            cancel.append(s)
        else:
            idle.append(s)
    return terminate, cancel, idle


def _escalated(candidates: list[Signal], no_query: list[Signal], rule: Rule, grp: Group, reasons: tuple[str, ...],
               dry: bool, exceeded: Mapping[str, str], fired: Fired,
               split: tuple[list[Session], list[Session], list[Session]], protection: Protection,
               usage: Usage
               ) -> tuple[int, int]:
    """The signals of one escalating (rule, group) pair: the cancel step and the terminate step, each under the
    protections and guards of any signal; how many sessions were left alone as protected and as unguarded."""
    assert rule.escalate is not None
    terminate, cancel, idle = split
    protected = unguarded = 0
    steps: tuple[tuple[SignalAction, Literal["cancel", "terminate"], list[Session], list[Signal]], ...] = (
        (rule.escalate.action, "terminate", terminate, candidates),
        ("cancel", "cancel", cancel, candidates),
        ("terminate", "cancel", idle, no_query),  # eligible as for a terminate: a cancel skips idle sessions
    )
    for action, step, sessions, into in steps:
        chosen, n_protected, n_unguarded = eligible(tuple(sessions), action, protection)
        protected += n_protected
        unguarded += n_unguarded
        signal_action: SignalAction = "cancel" if step == "cancel" else action
        extra = (f"escalated: {rule.escalate.after:g}s after its cancel the condition still holds",) \
            if step == "terminate" else ()
        into += [
            Signal(rule.name, signal_action, grp.parent, s, reasons + extra, dry, *_blocking_of(s, grp),
                   guard=guard_for(signal_action, s, grp, exceeded), tag_source=tag_source(grp, s),
                   figure=figure_of(s, fired, usage), host_available=fired.host, step=step, condition=fired.name)
            for s in chosen
        ]
    return protected, unguarded


def _plan(candidates: list[Signal], cap: int) -> tuple[tuple[Signal, ...], tuple[Signal, ...]]:
    """One signal per pid (terminate before cancel, then rule order); real signals capped at `cap` per cycle."""
    ordered = sorted(candidates, key=lambda c: c.action != "terminate")  # stable: keeps rule order within an action
    seen: set[int] = set()
    chosen: list[Signal] = []
    deferred: list[Signal] = []
    real = 0
    for c in ordered:
        if c.session.pid in seen:
            continue
        seen.add(c.session.pid)
        if c.dry_run:
            chosen.append(c)
        elif real < cap:
            chosen.append(c)
            real += 1
        else:
            deferred.append(c)
    return tuple(chosen), tuple(deferred)
