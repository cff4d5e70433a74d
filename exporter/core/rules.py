"""Pure: a rule prepared once per evaluation (`CompiledRule`: its conditions and globs compiled, what a deadline or
the memory sampler may act on), the sessions of a group it looks at (`rule_scope`), and which of them an action may
signal on one server (`Protection`; `excluded`, `eligible`: idle for a cancel, protected, unguarded).
exporter/core/policy.py evaluates them."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Literal

from exporter.core.conditions import BY_NAME
from exporter.core.model import ACTIVE_STATES, Group, Session, SignalAction, Stats
from exporter.core.settings import Protect, Rule


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """A rule prepared once per evaluation: its conditions and its globs as compiled matchers (None: match all)."""

    rule: Rule
    conditions: dict[str, float]
    parent: Callable[[str], object] | None
    database: Callable[[str], object] | None
    user: Callable[[str], object] | None
    exact_parent: str | None = None
    """The parent glob when it has no wildcard: the one group it can match is looked up, not searched for."""
    size_only: float | None = None
    """The limit when `max_sessions` is the rule's one condition and no database or user glob narrows its groups:
    a group no larger than this is passed over without building its scope."""
    timed: dict[str, float] = field(default_factory=dict)
    """The rule's time limits (durations), by condition name: what a deadline may act on between polls."""
    memory: dict[str, float] = field(default_factory=dict)
    """The rule's memory limits, by condition name: what the sampler may act on between polls."""
    guarded: bool = False
    """The rule has a guard condition (memory, CPU, load) or a host-pressure gate: it reads the usage."""

    @classmethod
    def of(cls, rule: Rule) -> CompiledRule:
        def matcher(glob: str | None) -> Callable[[str], object] | None:
            return None if glob is None or glob == "*" else re.compile(fnmatch.translate(glob)).match

        m = rule.match
        conditions = rule.conditions()
        parent, database, user = matcher(m.parent), matcher(m.database), matcher(m.user)
        exact = m.parent if m.parent is not None and not _GLOB_MAGIC.search(m.parent) else None
        narrowed = database is not None or user is not None
        size_only = conditions["max_sessions"] if list(conditions) == ["max_sessions"] and not narrowed else None
        timed = {n: limit for n, limit in conditions.items() if BY_NAME[n].time_based}
        memory = {n: limit for n, limit in conditions.items() if BY_NAME[n].memory}
        guarded = rule.host_memory_available_below is not None or any(BY_NAME[n].figure for n in conditions)
        return cls(rule, conditions, parent, database, user, exact, size_only, timed, memory, guarded)

    def applies_to(self, target: str) -> bool:
        """Whether the rule covers the server named `target` (its `match.target` glob)."""
        glob = self.rule.match.target
        return glob == "*" or fnmatchcase(target, glob)

    def groups(self, groups: Mapping[str, Group]) -> Iterable[Group]:
        """The groups whose parent tag the rule's parent glob matches, in the order of `groups`."""
        if self.exact_parent is not None:
            found = groups.get(self.exact_parent)
            return () if found is None else (found,)
        if self.parent is None:
            return groups.values()
        return [groups[p] for p in filter(self.parent, groups)]


_GLOB_MAGIC = re.compile(r"[*?[]")
"""What makes an fnmatch glob more than a literal."""


def rule_scope(rule: CompiledRule, grp: Group) -> tuple[tuple[Session, ...], Callable[[], Stats]] | None:
    """The sessions of `grp` that `rule` looks at, and how to get their stats; None when the rule does not apply.

    Sessions pgparent sees only in part (no pg_read_all_stats: no state, no timestamps) are never among them: what
    is not seen is not counted, timed or signalled, so no rule fires on them (pgparent_hidden_sessions counts them).
    """
    if rule.parent is not None and not rule.parent(grp.parent):
        return None
    if rule.database is None and rule.user is None and not grp.stats.hidden:
        return grp.sessions, lambda: grp.stats
    db, user = rule.database, rule.user
    sessions = tuple(
        s
        for s in grp.sessions
        if s.backend_start is not None
        and (db is None or (s.datname is not None and db(s.datname)))
        and (user is None or (s.usename is not None and user(s.usename)))
    )
    if not sessions:
        return None
    subset = Stats.of(sessions, grp.now, grp.locks)
    return sessions, lambda: subset


def _matches(patterns: tuple[str, ...], value: str | None) -> bool:
    return value is not None and any(fnmatchcase(value, p) for p in patterns)


Exclusion = Literal["idle", "protected", "unguarded"]
"""Why a session of a group is left alone: `cancel` and no query running, `protect:` names it (or its role is a
superuser's, or it has none, under `protect.superusers`), or its backend_start is hidden (no pg_read_all_stats), so
the signal could not be guarded against pid reuse."""


@dataclass(frozen=True, slots=True)
class Protection:
    """What `protect:` leaves alone on one server: the configured lists, and `protect.superusers` decided for the
    role pgparent has there."""

    protect: Protect
    superusers: bool
    """Sessions whose role is a superuser are protected."""
    roleless: bool
    """Sessions with no role (usename NULL) are protected."""

    @classmethod
    def of(cls, protect: Protect, pgparent_superuser: bool | None) -> Protection:
        """`protect` on a server where pgparent's own role is a superuser or not (None: not known, taken as not).
        Under `auto`, superusers' sessions are protected where pgparent is no superuser: a signal to one would fail
        with 42501 (on a managed server they are the provider's own); role-less sessions always."""
        mode = protect.superusers
        if mode == "false":
            return cls(protect, superusers=False, roleless=False)
        if mode == "true":
            return cls(protect, superusers=True, roleless=True)
        return cls(protect, superusers=pgparent_superuser is not True, roleless=True)


def excluded(session: Session, action: SignalAction, protection: Protection) -> Exclusion | None:
    """Why `action` must leave `session` alone, or None when it may signal it."""
    if action == "cancel" and session.state not in ACTIVE_STATES:
        return "idle"
    protect = protection.protect
    if (
        _matches(protect.users, session.usename)
        or _matches(protect.databases, session.datname)
        or _matches(protect.applications, session.application_name)
        or (session.superuser and (protection.roleless if session.usename is None else protection.superusers))
    ):
        return "protected"
    if session.backend_start is None:
        return "unguarded"
    return None


def eligible(
    sessions: tuple[Session, ...], action: SignalAction, protection: Protection
) -> tuple[list[Session], int, int]:
    """The sessions `action` may signal, and how many were left alone as protected and as unguarded.

    `cancel` only touches sessions running a query. A session whose backend_start is hidden (the monitoring role
    lacks pg_read_all_stats) cannot be guarded against pid reuse, so it is never signalled.
    """
    chosen: list[Session] = []
    protected = unguarded = 0
    for s in sessions:
        why = excluded(s, action, protection)
        if why is None:
            chosen.append(s)
        elif why == "protected":
            protected += 1
        elif why == "unguarded":
            unguarded += 1
    return chosen, protected, unguarded
