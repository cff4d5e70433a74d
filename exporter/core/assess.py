"""Pure: the pipeline, the one place that runs pgparent's stages in order over a poll's snapshot.

    snapshot -> locks.build (the blocking forest) -> grouping.group (groups, given the forest)
             -> cost.account (each group's load, CPU, memory, I/O, WAL; with the samples the OS gave)
             -> usage.usage_of (the figures the guard conditions read: memory by session, CPU and load over
                windows, the server's memory)
             -> policy.evaluate (signals, rule state, the pairs to watch) -> deadlines.schedule

A glance between polls (the sessions that began something since the last poll, for time limits shorter than the
interval) runs the same stages up to deadlines.schedule: `glance`.

The daemon's cycle, `pgparent groups | locks | terminate`, the demo, the tests and the benchmark all call `assess`;
none of them assembles the stages by hand. No I/O, no clock: the server's clock comes in with the snapshot.
"""

from __future__ import annotations

from dataclasses import dataclass

from exporter.core.conditions import BY_NAME
from exporter.core.cost import Cost, CostState, Samples, account
from exporter.core.deadlines import Deadline, schedule
from exporter.core.grouping import group
from exporter.core.locks import build
from exporter.core.model import Grouped, LockGraph, Snapshot
from exporter.core.policy import Decision, RuleState, Watched, evaluate
from exporter.core.rules import CompiledRule, Protection, rule_scope
from exporter.core.settings import DEFAULT_TARGET, Config
from exporter.core.usage import NO_USAGE, Usage, usage_of


@dataclass(frozen=True, slots=True)
class Assessment:
    """What one poll's snapshot comes to under one config: its groups, its blocking forest, what to signal now and
    when to act next without a poll."""

    snapshot: Snapshot
    grouped: Grouped
    decision: Decision
    deadlines: tuple[Deadline, ...] = ()
    """Earliest first; empty unless asked for (`assess(..., deadlines=True)`) and `config.deadlines` is on."""
    cost: Cost | None = None
    """What each group costs, with the counters carried on from `cost_state`; None unless asked for
    (`assess(..., cost_state=...)`)."""
    usage: Usage = NO_USAGE
    """What the guard conditions read, its history carried on from `usage` (pass it to the next poll's assess)."""

    @property
    def locks(self) -> LockGraph | None:
        """The poll's blocking forest; None when no session waited on a lock."""
        return self.grouped.locks


def assess(
    snapshot: Snapshot,
    config: Config,
    state: RuleState | None = None,
    target: str = DEFAULT_TARGET,
    *,
    dry_run: bool = False,
    deadlines: bool = False,
    samples: Samples | None = None,
    cost_state: CostState | None = None,
    max_groups: int | None = None,
    usage: Usage | None = None,
) -> Assessment:
    """Group `snapshot`, read its locks, evaluate the rules that apply to the server `target` against the previous
    poll's `state`, and, with `deadlines` (the target enforces and `config.deadlines` is on), schedule the time
    limits that may be crossed before the next poll. `dry_run` makes every signal a dry run.

    With `cost_state` (the previous poll's `Assessment.cost.state`, or a fresh `CostState()`), account each group's
    cost over the interval since, with what the operating system said (`samples`), its series folded beyond
    `max_groups` (default: the config's). The guard conditions read that cost, and CPU and load over a window the
    history of `usage` (the previous poll's `Assessment.usage`)."""
    grouped = group(snapshot, config.grouping.compiled, build(snapshot))
    cost = None
    if cost_state is not None:
        fold = config.grouping.max_groups if max_groups is None else max_groups
        cost = account(grouped, snapshot, samples, cost_state, max_groups=fold, retain=config.cost.retain)
    measured = usage_of(cost, snapshot, usage, keep=_window(config), memory_wanted=_reads_memory(config))
    decision = evaluate(grouped, config, state or RuleState(), dry_run, target, watch=deadlines, usage=measured)
    protection = Protection.of(config.protect, grouped.pgparent_superuser)
    timed = tuple(schedule(decision.watched, grouped.now, protection)) if deadlines and config.deadlines else ()
    return Assessment(snapshot, grouped, decision, timed, cost, measured)


def _window(config: Config) -> float | None:
    """The longest window a rule's CPU or load condition averages over; None when no rule has one."""
    return max((r.window for r in config.rules if any(BY_NAME[n].windowed for n in r.conditions())), default=None)


def _reads_memory(config: Config) -> bool:
    """Whether a rule reads memory: a memory condition, or any guard condition's audit figure."""
    return any(BY_NAME[n].figure is not None for r in config.rules for n in r.conditions())


def glance(snapshot: Snapshot, config: Config, target: str, *, dry_run: bool = False) -> list[Deadline]:
    """The deadlines of the sessions a glance between polls found (those that began a query, a transaction or a
    connection since the last poll): each enforcing rule's time limits over the groups they form, as a poll would
    schedule them for a pair not yet over its limits. Only deadlines: what a glance sees of a group is its newest
    sessions, so counts and firing are left to the polls."""
    grouped = group(snapshot, config.grouping.compiled, build(snapshot))
    watched: list[Watched] = []
    for compiled in map(CompiledRule.of, config.rules):
        rule = compiled.rule
        if rule.action == "log" or not compiled.timed or not compiled.applies_to(target):
            continue
        dry = dry_run or config.dry_run or rule.dry_run
        for grp in compiled.groups(grouped.groups):
            scope = rule_scope(compiled, grp)
            if scope is not None:
                watched.append(Watched(compiled, grp, scope[0], None, dry))
    return schedule(tuple(watched), snapshot.now, Protection.of(config.protect, grouped.pgparent_superuser))
