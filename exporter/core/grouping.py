"""Pure: split a snapshot into groups by the parent tag its sources give (exporter/core/tags.py), each group with
the poll's blocking forest (exporter/core/locks.py, built by the pipeline). No I/O, no clock."""

from __future__ import annotations

import re
from collections.abc import Callable

from exporter.core.model import Group, Grouped, LockGraph, Session, Snapshot, Stats, TagSource
from exporter.core.tags import Source, Sources

OTHER = "__other__"
"""The parent label that groups beyond `max_groups` fold into on /metrics."""


def parent_of(application_name: str, pattern: re.Pattern[str]) -> str | None:
    """The parent tag of an application_name, or None when the session is untagged."""
    found = pattern.search(application_name)
    if found is None:
        return None
    parent = found.group("parent")
    return parent or None


def group(
    snapshot: Snapshot, sources: Sources | str | re.Pattern[str], locks: LockGraph | None = None
) -> Grouped:
    """Group client sessions by parent tag; attribute parallel workers to their leader's group; hand each group the
    poll's blocking forest `locks` (`locks.build(snapshot)`; None: no session waited on a lock).

    `sources` is the config's compiled `grouping` (`config.grouping.compiled`), or, for a quick call, one regex on
    application_name. Workers are never sessions: they are counted per group and never offered to rules. A worker
    whose leader is not in the snapshot is attributed by its own tags (its application_name and query are the
    leader's); if that group has no client session in the snapshot (the leader ended between the rows), the worker is
    not reported.
    """
    compiled = sources if isinstance(sources, Sources) else Sources.application_name(sources)
    regex = compiled.only_application_name
    if regex is not None:
        return _group_by_name(snapshot, regex, compiled.sources[0], locks)
    return _group_by_sources(snapshot, compiled, locks)


def _workers(
    snapshot: Snapshot, parent_by_pid: dict[int, str | None], own_tag: Callable[[Session], str | None]
) -> tuple[dict[str, int], int]:
    """Parallel workers per group (their leader's, else their own tags'), and how many are untagged."""
    workers: dict[str, int] = {}
    untagged = 0
    for w in snapshot.workers:
        parent = parent_by_pid[w.leader_pid] if w.leader_pid in parent_by_pid else own_tag(w)
        if parent is None:
            untagged += 1
        else:
            workers[parent] = workers.get(parent, 0) + 1
    return workers, untagged


def _group_by_name(snapshot: Snapshot, regex: re.Pattern[str], source: Source, locks: LockGraph | None) -> Grouped:
    """The common case, kept tight: one regex on application_name, then each session filed under its tag."""
    sessions = snapshot.sessions
    search = regex.search
    # parent_of, inlined: a function call per session costs more than the regex does.
    parents = [(m["parent"] or None) if (m := search(s.application_name)) else None for s in sessions]
    members: dict[str, list[Session]] = {}
    untagged: list[Session] = []
    hidden = 0
    for s, parent in zip(sessions, parents, strict=True):
        if s.backend_start is None:
            hidden += 1
        if parent is None:
            untagged.append(s)
            continue
        rows = members.get(parent)
        if rows is None:
            members[parent] = [s]
        else:
            rows.append(s)
    parent_by_pid: dict[int, str | None] = {}  # only for sessions that lead parallel workers
    if snapshot.workers:
        leaders = {w.leader_pid for w in snapshot.workers if w.leader_pid is not None}
        parent_by_pid = {s.pid: p for s, p in zip(sessions, parents, strict=True) if s.pid in leaders}
    workers, untagged_workers = _workers(snapshot, parent_by_pid, lambda w: parent_of(w.application_name, regex))
    return _grouped(snapshot, locks, members, untagged, workers, untagged_workers, hidden, (source.origin,))


def _group_by_sources(snapshot: Snapshot, sources: Sources, locks: LockGraph | None) -> Grouped:
    """Any list of sources: the first that tags a session wins; groups remember which sources tagged them."""
    members: dict[str, list[Session]] = {}
    masks: dict[str, int] = {}  # per group, a bit per source that tagged one of its sessions
    bits = {source: 1 << i for i, source in enumerate(sources.sources)}
    untagged: list[Session] = []
    leaders = {w.leader_pid for w in snapshot.workers if w.leader_pid is not None}
    parent_by_pid: dict[int, str | None] = {}
    tag = sources.tagger()
    reads_comments = bool(sources.comment_keys)
    hidden = missed = 0
    for s in snapshot.sessions:
        if s.backend_start is None:
            hidden += 1
        found = tag(s)
        if reads_comments and s.query_cut and sources.comment_missed(s):
            missed += 1
        if found is None:
            if leaders and s.pid in leaders:
                parent_by_pid[s.pid] = None
            untagged.append(s)
            continue
        parent = found[0]
        if leaders and s.pid in leaders:
            parent_by_pid[s.pid] = parent
        if parent in members:
            members[parent].append(s)
            masks[parent] |= bits[found[1]]
        else:
            members[parent] = [s]
            masks[parent] = bits[found[1]]

    def own_tag(w: Session) -> str | None:
        found = tag(w)
        return found[0] if found is not None else None

    workers, untagged_workers = _workers(snapshot, parent_by_pid, own_tag)

    used: dict[str, tuple[TagSource, ...]] = {}
    tagged_by: dict[str, dict[int, TagSource]] = {}
    for parent, mask in masks.items():
        used[parent] = tuple(src.origin for src, bit in bits.items() if mask & bit)
        if len(used[parent]) > 1:  # a mixed group: say which source tagged each session (tags are memoized)
            tagged_by[parent] = {s.pid: found[1].origin for s in members[parent] if (found := tag(s)) is not None}
    return _grouped(snapshot, locks, members, untagged, workers, untagged_workers, hidden, (), used, tagged_by, missed)


def _grouped(
    snapshot: Snapshot,
    locks: LockGraph | None,
    members: dict[str, list[Session]],
    untagged: list[Session],
    workers: dict[str, int],
    untagged_workers: int,
    hidden: int,
    every: tuple[TagSource, ...],
    used: dict[str, tuple[TagSource, ...]] | None = None,
    tagged_by: dict[str, dict[int, TagSource]] | None = None,
    missed: int = 0,
) -> Grouped:
    """The groups and the untagged rest; `every` is the sources of every group, unless `used` says per group."""
    now = snapshot.now
    used = used or {}
    tagged_by = tagged_by or {}
    build_group = Group.build
    no_tags: dict[int, TagSource] = {}
    groups = {
        parent: build_group(
            parent, tuple(rows), now, workers.get(parent, 0), locks, used.get(parent, every),
            tagged_by.get(parent, no_tags),
        )
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
        comment_missed=missed,
        capacity=snapshot.capacity,
        pgparent_superuser=snapshot.pgparent_superuser,
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
