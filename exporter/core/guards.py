"""Pure: what the guard rules need between polls and around them. No I/O, no clock: the server's clock comes in.

- `MemoryWatch`: the sessions under a memory condition, from the last poll's decision, and `crossings`: which of
  them a memory sample taken since shows over a limit, as signals with the same guards and protections as a poll's
  (exporter/run/sampler.py reads the samples and sends them).
- `inactive`: the rules whose figures a target does not have (another host, a managed service): reported by a
  metric and logged, never fired on a zero.
- `cadence`: how often a target must glance at pg_stat_activity between polls so that every time limit of an
  enforcing rule is seen before it is crossed, and `warnings`:
  guard settings that will not do what they seem to, for `pgparent check` (exporter/core/assess.py's `glance` schedules
  what such a glance found).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from exporter.core.conditions import BY_NAME
from exporter.core.cost import HostMemory, Sources
from exporter.core.figures import gate_closed, reason, selected
from exporter.core.model import Session, Snapshot
from exporter.core.policy import Decision, Signal, Watched, guard_for, tag_source
from exporter.core.rules import Protection, eligible
from exporter.core.settings import Config, Protect, Rule
from exporter.core.units import format_size
from exporter.core.usage import Usage

MIN_CADENCE = 0.5
"""The shortest poll period a time limit may ask for: a full poll of pg_stat_activity more often than this costs
more than it saves (a limit shorter than twice it is acted on up to this late; `pgparent check` says so)."""


@dataclass(frozen=True, slots=True)
class MemoryWatch:
    """The (rule, group) pairs under a memory condition at the last poll, and the processes to sample for them: each
    session and the parallel workers serving it."""

    pairs: tuple[Watched, ...] = ()
    processes: tuple[tuple[int, datetime], ...] = ()
    """(pid, backend_start) of every process to read, sessions and workers."""
    workers: Mapping[int, tuple[int, ...]] = field(default_factory=dict)
    """Session pid -> the pids of the workers serving it."""
    gated: bool = False
    """Some pair's rule is gated by host pressure: the samples need the server's memory too."""
    pgparent_superuser: bool | None = None
    """pgparent's own role is a superuser on the server, from the poll's snapshot (`protect.superusers`)."""

    def __bool__(self) -> bool:
        return bool(self.pairs)


NO_WATCH = MemoryWatch()


def memory_watch(decision: Decision, snapshot: Snapshot) -> MemoryWatch:
    """The pairs of `decision` under a memory condition (evaluated with `watch`) and what to sample for them."""
    pairs = tuple(w for w in decision.watched if w.rule.memory)
    if not pairs:
        return NO_WATCH
    pids = {s.pid for w in pairs for s in w.sessions if s.backend_start is not None}
    processes = {s.pid: s.backend_start for w in pairs for s in w.sessions if s.backend_start is not None}
    workers: dict[int, list[int]] = {}
    for worker in snapshot.workers:
        if worker.leader_pid in pids and worker.backend_start is not None:
            workers.setdefault(worker.leader_pid, []).append(worker.pid)
            processes[worker.pid] = worker.backend_start
    gated = any(w.rule.rule.host_memory_available_below is not None for w in pairs)
    return MemoryWatch(pairs, tuple(processes.items()), {k: tuple(v) for k, v in workers.items()}, gated,
                       snapshot.pgparent_superuser)


def session_memory(watch: MemoryWatch, processes: Mapping[int, int]) -> dict[int, int]:
    """Each watched session's private memory with its workers', from a sample of the processes (pid -> bytes)."""
    out: dict[int, int] = {}
    for pid, _ in watch.processes:
        if pid in processes and pid not in out:
            out[pid] = processes[pid] + sum(processes.get(w, 0) for w in watch.workers.get(pid, ()))
    return out


def _ready(pair: Watched, now: datetime) -> bool:
    """Whether a crossing may act at once: the pair fires already, or its rule has no `for:`, or the condition has
    held since a poll for `for:` already (a crossing first seen between polls starts its `for:` at the next poll)."""
    rule = pair.rule.rule
    if pair.firing or rule.for_ == 0:
        return True
    return pair.pending_since is not None and (now - pair.pending_since).total_seconds() >= rule.for_


def crossings(watch: MemoryWatch, memory: Mapping[int, int], host: HostMemory | None, now: datetime,
              protect: Protect) -> tuple[Signal, ...]:
    """The signals a memory sample calls for: for each watched pair whose memory condition the sample shows exceeded
    (its gate open, its `for:` done), the sessions that condition singles out, under the protections of a poll.

    `memory` is each session's private memory with its workers' (`session_memory`). A cancel is guarded here by the
    query the poll saw, if any: the sampler sends it only once it has read the session's running query again
    (exporter/run/sampler.py), except for a session tagged by a query comment, which is signalled only in the very
    query that carried the comment.
    """
    usage = Usage(proc=True, memory=memory, host=host)
    protection = Protection.of(protect, watch.pgparent_superuser)
    out: list[Signal] = []
    for pair in watch.pairs:
        compiled, grp = pair.rule, pair.group
        rule = compiled.rule
        if not _ready(pair, now) or gate_closed(rule, usage):
            continue
        exceeded: dict[str, str] = {}
        for name, limit in compiled.memory.items():
            figure = BY_NAME[name].figure
            value = figure(usage, grp.parent, pair.sessions, rule.window) if figure is not None else None
            if value is not None and value > limit:
                exceeded[name] = f"{reason(name, value, limit)} (sample)"
        if not exceeded:
            continue
        pool = selected(compiled.conditions, exceeded, pair.sessions, usage) or ()
        action = "cancel" if rule.escalate is not None else rule.action
        assert action != "log", "a log rule is never watched"
        chosen, _, _ = eligible(pool, "terminate", protection)  # the state a cancel needs is read again at the signal
        for s in chosen:
            source = grp.source_of(s.pid)
            if action == "cancel" and source is not None and source.query_scoped and s.query_start is None:
                continue  # idle at the poll: its next query may be another client's (the poll decides)
            held = memory.get(s.pid)
            out.append(Signal(
                rule.name, action, grp.parent, s, tuple(exceeded.values()), pair.dry_run,
                guard=guard_for(action, s, grp, exceeded), trigger="sample", tag_source=tag_source(grp, s),
                figure=float(held) if held is not None else None,
                host_available=host.available if host is not None else None,
                step="cancel" if rule.escalate is not None else None,
                condition=next(iter(exceeded)),
            ))
    return tuple(out)


def needs(rule: Rule) -> tuple[str, ...]:
    """The cost sources a rule's figures come from (its gate reads the server's memory, from /proc)."""
    sources = {BY_NAME[n].needs for n in rule.conditions()} - {None}
    if rule.host_memory_available_below is not None:
        sources.add("proc")
    return tuple(sorted(s for s in sources if s is not None))


def guarded(config: Config) -> list[tuple[str, str, str]]:
    """(rule, guard condition, action) of every signal a guard rule may send: the series of
    pgparent_guard_actions_total."""
    out: list[tuple[str, str, str]] = []
    for rule in config.rules:
        if rule.action == "log":
            continue
        actions = [str(rule.action)] + ([rule.escalate.action] if rule.escalate is not None else [])
        out += [(rule.name, n, a) for n in rule.conditions() if BY_NAME[n].figure is not None for a in actions]
    return out


def inactive(config: Config, sources: Sources) -> dict[str, str]:
    """Rule name -> why it cannot act here (the reason code of the first source it needs that is missing), for each
    rule whose figures the target does not have. Its other conditions still act; its guard conditions never fire."""
    out: dict[str, str] = {}
    for rule in config.rules:
        for source in needs(rule):
            reason = sources.unavailable.get(source)
            if reason is not None:
                out[rule.name] = reason
                break
    return out


def _limits(rule: Rule) -> list[float]:
    """The time limits of a rule a poll must see before they are crossed (its `for:` added)."""
    return [limit + rule.for_ for name, limit in rule.conditions().items()
            if BY_NAME[name].time_based and not BY_NAME[name].blocking]


def cadence(config: Config) -> float:
    """How often to look for new queries: the interval, or more often where an enforcing rule's time limit is shorter
    than it needs.

    A deadline acts the moment a limit is crossed, but only for a query (transaction, idle spell) a poll has seen.
    One that begins after a poll and crosses its limit before the next would wait for that poll: so between polls a
    target glances at pg_stat_activity (the rows that began something since the poll, exporter/run/monitor.py) at
    least every half of its shortest such limit, and a glance always sees it with half the limit to spare (the read's
    own time, a busy machine). Never more often than MIN_CADENCE.
    """
    if not config.deadlines:
        return config.interval
    limits = [x for rule in config.rules if rule.action != "log" for x in _limits(rule)]
    shortest = min(limits, default=None)
    if shortest is None or shortest / 2 >= config.interval:
        return config.interval
    return min(config.interval, max(shortest / 2, MIN_CADENCE))


def describe(config: Config) -> list[str]:
    """What the guard settings imply, for `pgparent check`: the poll cadence, and the memory sampling."""
    lines = []
    every = cadence(config)
    if every < config.interval:
        shortest = min(x for rule in config.rules if rule.action != "log" for x in _limits(rule))
        lines.append(f"cadence: polls every {config.interval:g}s, and between polls reads the sessions that began a "
                     f"query, transaction or connection since, every {every:g}s: the shortest time limit of an "
                     f"enforcing rule is {shortest:g}s, and every query must be seen before it crosses it")
    else:
        lines.append(f"cadence: polls every {every:g}s (no enforcing time limit is shorter than two intervals)")
    memory = [r.name for r in config.rules if r.action != "log" and any(BY_NAME[n].memory for n in r.conditions())]
    if memory:
        lines.append(f"memory sampling: the sessions under {', '.join(memory)} every {config.sample_interval:g}s "
                     "between polls")
    return lines


def warnings(config: Config, host: HostMemory | None, cores: int | None) -> list[str]:
    """Guard settings that will not do what they seem to, one line each, given the memory and cores of the host
    pgparent checks on (the server's own where pgparent reads its figures at all)."""
    out: list[str] = []
    for i, rule in enumerate(config.rules):
        for name, limit in rule.conditions().items():
            if BY_NAME[name].memory and host is not None and limit > host.total:
                out.append(f"rules.{i}.{name}: rule {rule.name!r}: {format_size(limit)} is more than the host's "
                           f"memory ({format_size(host.total)}): it can never fire")
            if name == "max_group_cpu" and cores is not None and limit > cores:
                out.append(f"rules.{i}.{name}: rule {rule.name!r}: {limit:g} cores is more than the host's {cores}: "
                           "it can never fire")
        if any(BY_NAME[n].windowed for n in rule.conditions()) and rule.window < 2 * config.interval:
            out.append(f"rules.{i}.window: rule {rule.name!r}: a window of {rule.window:g}s spans less than two polls "
                       f"({2 * config.interval:g}s): its rate is one poll's, as noisy as that")
        cut = [x for x in _limits(rule) if x < 2 * MIN_CADENCE] if rule.action != "log" and config.deadlines else []
        if cut:
            out.append(f"rules.{i}: rule {rule.name!r}: a time limit of {min(cut):g}s is below {2 * MIN_CADENCE:g}s: "
                       f"a query that begins after a poll may run up to {MIN_CADENCE:g}s past it")
    return out


def sessions_of(watch: MemoryWatch) -> dict[int, Session]:
    """The watched sessions by pid, as the last poll saw them."""
    return {s.pid: s for w in watch.pairs for s in w.sessions}
