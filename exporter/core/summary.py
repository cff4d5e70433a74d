"""Pure: a valid config told in words, for `pgparent check`: a line per item, and the settings that will not do what
they seem to."""

from __future__ import annotations

from exporter.core.conditions import BY_NAME
from exporter.core.settings import Config
from exporter.core.units import format_size


def warnings(config: Config) -> list[str]:
    """Valid settings that will not do what they seem to, one line each, for `pgparent check`."""
    out: list[str] = []
    for i, rule in enumerate(config.rules):
        lock = [n for n in rule.conditions() if BY_NAME[n].blocking]
        if lock and rule.action == "cancel" and rule.escalate is None:
            out.append(
                f"rules.{i}.action: rule {rule.name!r} cancels on {', '.join(lock)}: a blocker idle in a transaction "
                "runs no query, so a cancel cannot release its locks; use terminate"
            )
    return out


def describe(config: Config) -> list[str]:
    """A human summary of a valid config, one line per item, for `pgparent check`."""
    lines = [
        f"interval {config.interval:g}s, dry_run {str(config.dry_run).lower()}, "
        f"max_groups {config.grouping.max_groups}, "
        f"max_terminations_per_cycle {config.limits.max_terminations_per_cycle}",
        "grouping sources, first match wins: " + "; ".join(f"{k} {a}" for k, a in config.grouping.specs()),
        f"audit query_text {config.audit.query_text}",
        f"cost: proc {config.cost.proc}, backend_stats {config.cost.backend_stats}, series of absent groups kept "
        f"{config.cost.retain:g}s",
    ]
    if config.leader_election.enabled:
        lines.append(
            f"leader election: session advisory lock {config.leader_election.lock_key}; pgparent's DSN must reach "
            "PostgreSQL directly, not through a transaction pooler such as PgBouncer (the lock would stay on a pooled "
            "server connection: a replica that detects one does not enforce)"
        )
    if config.targets:
        shard = ", divided among replicas (shard)" if config.leader_election.shard else ""
        lines.append(f"{len(config.targets)} target(s){shard}:")
        for t in config.targets:
            source = f"dsn_file {t.dsn_file}" if t.dsn_file else f"dsn_env {t.dsn_env}" if t.dsn_env else "dsn"
            labels = "".join(f", {k}={v}" for k, v in sorted(t.labels.items()))
            password = f", {t.password.describe()}" if t.password is not None else ""
            lines.append(f"  - {t.name}: {source}{password}{labels}{' (dry run)' if t.dry_run else ''}")
    lines.append(f"{len(config.rules)} rule(s):")
    for rule in config.rules:
        match = ", ".join(
            f"{k}={v}" for k, v in rule.match.model_dump().items() if v is not None and not (k == "target" and v == "*")
        )
        conds = ", ".join(f"{k} > {format_size(v) if BY_NAME[k].kind == 'size' else f'{v:g}'}"
                          for k, v in rule.conditions().items())
        extra = f" for {rule.for_:g}s" if rule.for_ else ""
        if any(BY_NAME[n].windowed for n in rule.conditions()):
            extra += f" over {rule.window:g}s"
        if rule.host_memory_available_below is not None:
            extra += f" while host memory available < {rule.host_memory_available_below}"
        then = f", {rule.escalate.action} {rule.escalate.after:g}s later" if rule.escalate is not None else ""
        dry = " (dry run)" if rule.dry_run or config.dry_run else ""
        lock = any(BY_NAME[n].blocking for n in rule.conditions()) and rule.action != "log"
        scope = f" ({rule.scope.replace('_', ' ')} on lock conditions)" if lock else ""
        trimming = [n for n in rule.conditions() if BY_NAME[n].trims(rule.scope)]
        if trimming:
            running = "then running ones" if rule.trim_active else "never running ones"
            scope += f" (trims on {', '.join(trimming)}: idle first, then idle in transaction, {running})"
        lines.append(f"  - {rule.name}: {match}: {conds}{extra} -> {rule.action}{then}{scope}{dry}")
    return lines
