"""The one place that signals backends: carries out a policy `Decision`, audits each signal, counts each outcome."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from exporter.core.model import NO_GUARD
from exporter.core.policy import Decision, Target
from exporter.errors import DatabaseUnavailable
from exporter.face.collector import Counters
from exporter.logs import get_logger
from exporter.pg.database import Database, SignalOutcome

AUDIT_QUERY_CHARS = 200
"""How much of the query text an audit event carries."""

log = get_logger("pgparent.audit")


def _seconds(now: datetime, moment: datetime | None) -> float | None:
    return round((now - moment).total_seconds(), 3) if moment is not None else None


def audit_fields(target: Target, now: datetime) -> dict[str, Any]:
    """Everything an operator needs to know about one signalled (or would-be signalled) session."""
    s = target.session
    query = s.query if s.query is None or len(s.query) <= AUDIT_QUERY_CHARS else s.query[:AUDIT_QUERY_CHARS] + "…"
    return {
        "rule": target.rule,
        "parent": target.parent,
        "tag_source": target.tag_source,
        "action": target.action,
        "reasons": list(target.reasons),
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
        "trigger": target.trigger,
        "blocking_sessions": target.blocking_sessions,
        "max_blocking_seconds": round(target.max_blocking_seconds, 3),
    }


def enforce(
    decision: Decision,
    db: Database,
    counters: Counters,
    now: datetime,
    on_result: Callable[[dict[str, Any], str], None] | None = None,
    server: str = "default",
) -> dict[SignalOutcome | str, int]:
    """Signal each target of `decision` (one statement each) on the server named `server`, and return how many ended
    in each result.

    Dry-run targets are audited with result "dry_run" and never signalled. If the connection is lost midway the rest
    are left for the next poll, which will see them again if they still exceed their rule.
    """
    results: dict[SignalOutcome | str, int] = {}
    for order in decision.targets:
        fields = {"target": server, **audit_fields(order, now)}
        if order.dry_run:
            # A guarded dry run (a deadline, a cancel) still asks whether the session is in the state it would hit.
            result: SignalOutcome | str = "dry_run"
            detail = ""
            if order.guard != NO_GUARD:
                try:
                    if not db.probe(order.session, order.guard):
                        result, detail = "gone", "no longer in the state the guard checks"
                except DatabaseUnavailable as exc:
                    result, detail = "error", str(exc)
        else:
            try:
                result, detail = db.signal(order.action, order.session, order.guard)
            except DatabaseUnavailable as exc:
                counters.signal_failures.labels(server, order.rule, "error", order.trigger).inc()
                log.error("session_signal", **fields, result="error", dry_run=False, detail=str(exc))
                results["error"] = results.get("error", 0) + 1
                break
            if result == "ok":
                counters.signalled.labels(server, order.rule, order.action, order.trigger).inc()
            else:
                counters.signal_failures.labels(server, order.rule, result, order.trigger).inc()
        results[result] = results.get(result, 0) + 1
        if on_result is not None:
            on_result(fields, result)
        level = log.warning if result in ("ok", "dry_run") else log.error
        level("session_signal", **fields, result=result, dry_run=order.dry_run, detail=detail or None)

    for order in decision.unreleased:
        log.warning(
            "blocker_not_released",
            target=server,
            **audit_fields(order, now),
            reason="a cancel interrupts a running query; this blocker runs none (idle in a transaction), so its locks "
            "stay: a rule that must release it needs action terminate",
        )
    if decision.deferred:
        by_rule: dict[str, int] = {}
        for t in decision.deferred:
            by_rule[t.rule] = by_rule.get(t.rule, 0) + 1
            counters.deferred.labels(server, t.rule).inc()
        log.warning(
            "signals_deferred",
            count=len(decision.deferred),
            by_rule=by_rule,
            reason="limits.max_terminations_per_cycle reached; the rest wait for the next poll",
        )
    return results
