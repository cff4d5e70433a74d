"""Pure: split a snapshot into groups by the parent tag parsed from application_name. No I/O, no clock."""

from __future__ import annotations

import re

from exporter.locks import build
from exporter.model import Group, Grouped, Session, Snapshot, Stats

OTHER = "__other__"
"""The parent label that groups beyond `max_groups` fold into on /metrics."""


def parent_of(application_name: str, pattern: re.Pattern[str]) -> str | None:
    """The parent tag of an application_name, or None when the session is untagged."""
    found = pattern.search(application_name)
    if found is None:
        return None
    parent = found.group("parent")
    return parent or None


def group(snapshot: Snapshot, pattern: str | re.Pattern[str]) -> Grouped:
    """Group client sessions by parent tag; attribute parallel workers to their leader's group.

    Workers are never sessions: they are counted per group and never offered to rules. A worker whose leader is not in
    the snapshot is attributed by its own application_name, which it inherits; if that group has no client session
    in the snapshot (the leader ended between the rows), the worker is not reported.
    """
    regex = re.compile(pattern) if isinstance(pattern, str) else pattern
    members: dict[str, list[Session]] = {}
    untagged: list[Session] = []
    leaders = {w.leader_pid for w in snapshot.workers if w.leader_pid is not None}
    parent_by_pid: dict[int, str | None] = {}  # only for sessions that lead parallel workers
    tags: dict[str, str | None] = {}  # sessions of one job often share a name: parse each name once per poll
    hidden = 0
    for s in snapshot.sessions:
        if s.backend_start is None:
            hidden += 1
        name = s.application_name
        parent = tags[name] if name in tags else tags.setdefault(name, parent_of(name, regex))
        if leaders and s.pid in leaders:
            parent_by_pid[s.pid] = parent
        if parent is None:
            untagged.append(s)
        else:
            members.setdefault(parent, []).append(s)

    workers: dict[str, int] = {}
    untagged_workers = 0
    for w in snapshot.workers:
        if w.leader_pid is not None and w.leader_pid in parent_by_pid:
            parent = parent_by_pid[w.leader_pid]
        else:
            parent = parent_of(w.application_name, regex)
        if parent is None:
            untagged_workers += 1
        else:
            workers[parent] = workers.get(parent, 0) + 1

    now = snapshot.now
    locks = build(snapshot)
    groups = {
        parent: Group(parent=parent, sessions=tuple(rows), now=now, workers=workers.get(parent, 0), locks=locks)
        for parent, rows in members.items()
    }
    return Grouped(
        now=now,
        groups=groups,
        # Untagged sessions are no group: every session waiting on one of them counts, untagged ones too.
        untagged=Stats.of(untagged, now, locks, exclude_own=False),
        untagged_workers=untagged_workers,
        hidden=hidden,
        locks=locks,
    )


def top_groups(groups: dict[str, Group], max_groups: int) -> tuple[list[Group], list[Group]]:
    """Split groups into those exported by name and those folded into `__other__`.

    The largest groups keep their own series: those are the ones an operator is looking for. Ties break on the tag,
    so the choice is stable from one poll to the next (and costs no statistics of the groups that fold).
    """
    if len(groups) <= max_groups:
        return list(groups.values()), []
    ranked = sorted(groups.values(), key=lambda g: (-len(g.sessions), g.parent))
    return ranked[:max_groups], ranked[max_groups:]
