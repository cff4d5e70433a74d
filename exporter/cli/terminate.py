"""An operator's request to signal one group (`pgparent terminate PARENT`), shared by cli, demo and top.

Poll once through the pipeline (exporter/core/assess.py), let `policy.manual` choose the group's eligible sessions
under the same protections as the daemon, signal them through the enforcer (audited and counted like the daemon's),
and print one line per session and a total.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from exporter.cli import render
from exporter.core.assess import assess
from exporter.core.model import SignalAction
from exporter.core.policy import Decision, manual
from exporter.core.settings import DEFAULT_TARGET, Config
from exporter.face.counters import Counters
from exporter.pg.database import Database
from exporter.run.enforcer import Enforcer, OnResult


@dataclass(frozen=True, slots=True)
class ManualResult:
    """How a request to signal one group went."""

    signals: int
    """Sessions chosen for the signal."""
    done: int
    """Sessions signalled (or, in a dry run, that would have been)."""
    failed: int
    skipped: int
    """Sessions of the group left alone: protected, or without backend_start to guard the signal."""


def signal_group(
    db: Database,
    config: Config,
    parent: str,
    action: SignalAction,
    *,
    dry_run: bool = False,
    out: Callable[[str], None] = print,
    target: str = DEFAULT_TARGET,
) -> ManualResult:
    """Signal every eligible client session of the group `parent` of the server named `target`, writing each
    result and a total to `out`."""
    assessed = assess(db.snapshot(config.poll), config, target=target)
    decision = manual(assessed.grouped, parent, action, config.protect, dry_run=dry_run)
    skipped = decision.protected + decision.unguarded
    if not decision.signals:
        out(render.nothing_to_signal(parent, action, decision.protected, decision.unguarded))
        return ManualResult(signals=0, done=0, failed=0, skipped=skipped)
    results = carry_out(db, decision, assessed.snapshot.now, target,
                        on_result=lambda fields, result: out(render.signal_line(fields, result)))
    done = sum(1 for r in results.values() if r in ("ok", "dry_run"))
    failed = len(results) - done
    out(render.signal_total(parent, action, len(decision.signals), done, failed, skipped, dry_run))
    return ManualResult(signals=len(decision.signals), done=done, failed=failed, skipped=skipped)


def carry_out(
    db: Database, decision: Decision, now: datetime, target: str = DEFAULT_TARGET, on_result: OnResult | None = None
) -> dict[int, str]:
    """Send an operator's `decision` (`policy.manual`) through the enforcer, audited and counted as a manual action
    like the daemon's signals; return each chosen pid's result (`ok`, `gone`, `permission_denied`, ...; `error` for
    those the lost connection left unsent)."""
    results: dict[int, str] = {}

    def record(fields: dict[str, Any], result: str) -> None:
        results[fields["pid"]] = result
        if on_result is not None:
            on_result(fields, result)

    Enforcer(db, Counters(), target).enforce(decision, now, on_result=record)
    return {s.session.pid: results.get(s.session.pid, "error") for s in decision.signals}
