"""Pure: the figures of a rule's guard conditions (exporter/core/usage.py) as the policy reads them: whether a
host-pressure gate lets a rule act, each guard condition's figure for a (rule, group) pair, which sessions the exceeded
ones single out, and what an audit event says of them. No I/O, no clock."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from exporter.core.conditions import BY_NAME
from exporter.core.model import Group, Session
from exporter.core.settings import Rule
from exporter.core.units import format_size
from exporter.core.usage import Usage


def reason(name: str, value: float, limit: float) -> str:
    """`name value > limit`, a size in its units (`max_session_memory 412.3MiB > 300MB`)."""
    if BY_NAME[name].kind == "size":
        return f"{name} {format_size(value)} > {format_size(limit)}"
    return f"{name} {value:g} > {limit:g}"


def gate_closed(rule: Rule, usage: Usage) -> bool:
    """Whether a rule gated by host pressure must not act now: the server's memory available is not below its
    threshold, or is not known here."""
    threshold = rule.host_memory_available_below
    if threshold is None:
        return False
    host = usage.host
    return host is None or host.available >= threshold.bytes_of(host.total)


def guard_figures(rule: Rule, grp: Group, sessions: tuple[Session, ...], usage: Usage
                  ) -> Callable[[str], float | None]:
    """The guard conditions' figures of one (rule, group) pair, each read once."""
    cache: dict[str, float | None] = {}

    def figure(name: str) -> float | None:
        if name not in cache:
            read = BY_NAME[name].figure
            cache[name] = read(usage, grp.parent, sessions, rule.window) if read is not None else None
        return cache[name]

    return figure


def selected(conditions: dict[str, float], exceeded: Iterable[str], sessions: tuple[Session, ...], usage: Usage
             ) -> tuple[Session, ...] | None:
    """The sessions the exceeded guard conditions single out (None: a condition that signals the whole group fired):
    those over a per-session limit, and the largest of a group over its limit, biggest first, until what is left is
    within it."""
    chosen: dict[int, Session] = {}
    for name in exceeded:
        select, limit = BY_NAME[name].select, conditions[name]
        if select == "group":
            return None
        sized = sorted(((m, s) for s in sessions if (m := usage.of(s)) is not None), key=lambda x: -x[0])
        if select == "over":
            chosen.update((s.pid, s) for m, s in sized if m > limit)
        else:
            left = sum(m for m, _ in sized)
            for m, s in sized:
                if left <= limit:
                    break
                chosen[s.pid] = s
                left -= m
    return tuple(chosen.values())


@dataclass(frozen=True, slots=True)
class Fired:
    """The guard condition that fired on a pair (None: none did), its figure for the group, and the server's memory
    available then, for the audit."""

    name: str | None = None
    figure: float | None = None
    host: int | None = None


def fired_of(exceeded: Mapping[str, str], figures: Callable[[str], float | None] | None, usage: Usage) -> Fired:
    """Which guard condition fired on a pair (the first, in declaration order)."""
    if figures is None:
        return Fired()
    name = next((n for n in exceeded if BY_NAME[n].figure is not None), None)
    host = usage.host.available if usage.host is not None else None
    return Fired(name, figures(name) if name is not None else None, host)


def figure_of(session: Session, fired: Fired, usage: Usage) -> float | None:
    """The figure an audit event carries: the session's own memory for a memory condition, the group's figure for
    the others (CPU cores, load)."""
    if fired.name is not None and BY_NAME[fired.name].memory:
        memory = usage.of(session)
        return float(memory) if memory is not None else fired.figure
    return fired.figure
