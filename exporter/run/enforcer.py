"""The one place that signals backends: carries out a policy `Decision` on one target, audits each signal, counts each
outcome. Every line it logs carries the target it was made for (its logger is bound once)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from exporter.core.model import NO_GUARD
from exporter.core.policy import Decision, Signal
from exporter.errors import DatabaseUnavailable
from exporter.face.counters import Counters
from exporter.logs import get_logger
from exporter.pg.database import Database, SignalOutcome

AUDIT_QUERY_CHARS = 200
"""How much of the query text an audit event carries."""

OnResult = Callable[[dict[str, Any], str], None]
"""Told of each signal as it is audited: its audit fields and its result."""

RESEND_AFTER = timedelta(seconds=10)
"""A signal that landed is not sent again to the same session (and, for a cancel, the same query) for this long: a
backend takes a moment to act on it, and a poll or a deadline in that moment still sees it and would signal it a
second time, audited and counted twice. One that is still there after this long gets the signal again."""

SentKey = tuple[str, int, datetime | None, datetime | None]
"""What a landed signal was sent to: action, pid, backend_start and, for a cancel, the query_start it hit."""


def _seconds(now: datetime, moment: datetime | None) -> float | None:
    return round((now - moment).total_seconds(), 3) if moment is not None else None


def audit_fields(signal: Signal, now: datetime) -> dict[str, Any]:
    """Everything an operator needs to know about one signalled (or would-be signalled) session; for a budget's trim,
    also the budget (condition, limit, the count held against it, how many the trim chose) and how long the session
    had been in its state."""
    s = signal.session
    query = s.query if s.query is None or len(s.query) <= AUDIT_QUERY_CHARS else s.query[:AUDIT_QUERY_CHARS] + "…"
    budget = signal.budget
    trim = {} if budget is None else {
        "budget": {"condition": budget.condition, "limit": budget.limit, "count": budget.count,
                   "trimmed": budget.trimmed},
        "state_seconds": _seconds(now, s.state_change),
    }
    return {
        "rule": signal.rule,
        "parent": signal.parent,
        "tag_source": signal.tag_source,
        "action": signal.action,
        "reasons": list(signal.reasons),
        "pid": s.pid,
        "backend_start": s.backend_start.isoformat() if s.backend_start else None,
        "user": s.usename,
        "database": s.datname,
        "application_name": s.application_name,
        "client_addr": s.client_addr,
        "state": s.state,
        "session_seconds": _seconds(now, s.backend_start),
        "transaction_seconds": _seconds(now, s.xact_start),
        "query_seconds": _seconds(now, s.query_start),
        "query_id": s.query_id,
        "query": query,
        "trigger": signal.trigger,
        "blocking_sessions": signal.blocking_sessions,
        "max_blocking_seconds": round(signal.max_blocking_seconds, 3),
        **trim,
        **_guard_fields(signal),
    }


def _sent_key(order: Signal) -> SentKey:
    s = order.session
    return order.action, s.pid, s.backend_start, s.query_start if order.action == "cancel" else None


def _guard_fields(signal: Signal) -> dict[str, Any]:
    """What a guard rule's signal adds: the figure that fired, the server's memory available, the escalation step."""
    out: dict[str, Any] = {}
    if signal.figure is not None:
        out["figure"] = round(signal.figure, 3)
    if signal.host_available is not None:
        out["host_memory_available_bytes"] = signal.host_available
    if signal.step is not None:
        out["step"] = signal.step
    if signal.condition is not None:
        out["condition"] = signal.condition
    return out


class Enforcer:
    """Signals the sessions of one target (`target`: its name, the label of its counters and of every audit line)."""

    def __init__(self, db: Database, counters: Counters, target: str) -> None:
        self.db = db
        self.counters = counters
        self.target = target
        self.log = get_logger("pgparent.audit").bind(target=target)
        self._recent: dict[SentKey, datetime] = {}
        """The signals that landed within RESEND_AFTER, by what they were sent to, with when (the server's clock)."""
        self.landed: list[Signal] = []
        """The signals of the last `enforce` that were sent (or, dry run, found in the state they would hit)."""

    def enforce(
        self, decision: Decision, now: datetime, on_result: OnResult | None = None
    ) -> dict[SignalOutcome | str, int]:
        """Send each signal of `decision` (one statement each), and return how many ended in each result.

        Dry-run signals are audited with result "dry_run" and never sent. If the connection is lost midway the rest
        are left for the next poll, which will see them again if they still exceed their rule.
        """
        results: dict[SignalOutcome | str, int] = {}
        self._recent = {key: at for key, at in self._recent.items() if now - at < RESEND_AFTER}
        self.landed = []
        for order in decision.signals:
            key = _sent_key(order)
            if not order.dry_run and key in self._recent:
                continue  # already signalled, and not yet gone: once is enough
            fields = audit_fields(order, now)
            try:
                result, detail = self._send(order)
            except DatabaseUnavailable as exc:  # the connection is gone: the rest wait for the next poll
                self.counters.signal_failures.labels(self.target, order.rule, "error", order.trigger).inc()
                self.log.error("session_signal", **fields, result="error", dry_run=False, detail=str(exc))
                results["error"] = results.get("error", 0) + 1
                break
            results[result] = results.get(result, 0) + 1
            if result == "ok" and not order.dry_run:
                self._recent[key] = now
            if result in ("ok", "dry_run"):
                self.landed.append(order)
            if order.step is not None:
                self.counters.escalation_steps.labels(self.target, order.rule, order.step, result).inc()
            if on_result is not None:
                on_result({"target": self.target, **fields}, result)
            level = self.log.warning if result in ("ok", "dry_run") else self.log.error
            level("session_signal", **fields, result=result, dry_run=order.dry_run, detail=detail or None)

        for order in decision.no_query:
            self.counters.escalation_steps.labels(self.target, order.rule, "cancel", "no_query").inc()
            self.log.warning("session_signal", **audit_fields(order, now), result="no_query", dry_run=order.dry_run,
                             detail="a cancel interrupts a running query and this session runs none: not sent; it is "
                             "terminated if the condition still holds once the rule's escalate.after has passed")
        for order in decision.unreleased:
            self.log.warning(
                "blocker_not_released",
                **audit_fields(order, now),
                reason="a cancel interrupts a running query; this blocker runs none (idle in a transaction), so its "
                "locks stay: a rule that must release it needs action terminate",
            )
        if decision.deferred:
            by_rule: dict[str, int] = {}
            for d in decision.deferred:
                by_rule[d.rule] = by_rule.get(d.rule, 0) + 1
                self.counters.deferred.labels(self.target, d.rule).inc()
            self.log.warning(
                "signals_deferred",
                count=len(decision.deferred),
                by_rule=by_rule,
                reason="limits.max_terminations_per_cycle reached; the rest wait for the next poll",
            )
        return results

    def _send(self, order: Signal) -> tuple[SignalOutcome | str, str]:
        """Send one signal (or, for a dry run, probe it when it is guarded) and count its outcome; DatabaseUnavailable
        when the connection is lost sending it."""
        if order.dry_run:
            # A guarded dry run (a deadline, a cancel) still asks whether the session is in the state it would hit.
            # A guard rule's dry run probes even a terminate: the session the figure was read for must still be there.
            if order.guard == NO_GUARD and order.condition is None:
                return "dry_run", ""
            try:
                if not self.db.probe(order.session, order.guard):
                    return "gone", "no longer in the state the guard checks"
            except DatabaseUnavailable as exc:
                return "error", str(exc)
            return "dry_run", ""
        result, detail = self.db.signal(order.action, order.session, order.guard)
        if result == "ok":
            self.counters.signalled.labels(self.target, order.rule, order.action, order.trigger).inc()
            if order.condition is not None:
                self.counters.guard_actions.labels(self.target, order.rule, order.condition, order.action).inc()
        else:
            self.counters.signal_failures.labels(self.target, order.rule, result, order.trigger).inc()
        return result, detail
