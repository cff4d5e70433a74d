"""Tables and JSON for the terminal (groups, sessions, signal results, query results), shared by cli and demo.

Pure formatting: every function takes records and returns lines or text; printing is the caller's business.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from exporter.core.cost import SOURCES, Cost
from exporter.core.model import PREPARED_XACT, Capacity, Group, Grouped, LockGraph, Session, Snapshot


def fmt_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def ordered_groups(grouped: Grouped) -> list[Group]:
    """The groups largest first, then by parent tag: the order every listing uses."""
    return sorted(grouped.groups.values(), key=lambda g: (-g.stats.sessions, g.parent))


@dataclass(frozen=True, slots=True)
class Costs:
    """What `pgparent groups` shows of each group's cost: over `seconds` (two polls that far apart, with --sample),
    load (average active sessions) and CPU (cores); at the last poll, private memory. A figure whose source the
    server does not give is None."""

    cost: Cost
    seconds: float | None = None
    load: Mapping[str, float] = field(init=False)
    """Active seconds by group over the sample, summed over wait types once for every group's row."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "load", self.cost.totals.load_by_label())

    def of(self, parent: str) -> dict[str, Any]:
        cost, seconds = self.cost, self.seconds
        proc = cost.sources.available("proc")
        memory = cost.memory.get(parent) if proc else None
        load = cpu = None
        if seconds:
            load = self.load.get(parent, 0.0) / seconds
            cpu = cost.totals.cpu.get(parent, 0.0) / seconds if proc else None
        return {
            "load": None if load is None else round(load, 3),
            "cpu_cores": None if cpu is None else round(cpu, 3),
            "memory_bytes": memory[0] if memory else None,
            "max_session_memory_bytes": memory[1] if memory else None,
        }

    def columns(self) -> tuple[str, ...]:
        """The table's cost columns: those whose figures exist."""
        sample, proc = bool(self.seconds), self.cost.sources.available("proc")
        return tuple(c for c, shown in (("LOAD", sample), ("CPU", sample and proc), ("MEM", proc)) if shown)

    def sources(self) -> dict[str, str]:
        return {s: self.cost.sources.unavailable.get(s, "available") for s in SOURCES}


def fmt_bytes(value: int | None) -> str:
    if value is None:
        return "-"
    for unit, size in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if value >= size:
            return f"{value / size:.1f}{unit}" if value < 10 * size else f"{value // size}{unit}"
    return f"{value}B"


def _cost_cells(costs: Costs | None, parent: str) -> tuple[str, ...]:
    if costs is None:
        return ()
    figures = costs.of(parent)
    cells = {"LOAD": f"{figures['load']:.2f}" if figures["load"] is not None else "-",
             "CPU": f"{figures['cpu_cores']:.2f}" if figures["cpu_cores"] is not None else "-",
             "MEM": fmt_bytes(figures["memory_bytes"])}
    return tuple(cells[c] for c in costs.columns())


def _share(capacity: Capacity | None, g: Group) -> float | None:
    return None if capacity is None else capacity.share(g.stats.sessions)


def capacity_line(capacity: Capacity) -> str:
    """The server's connection slots in one line: in use, what ordinary roles may use, the reserve, the headroom."""
    reserved = f"{capacity.superuser_reserved} superuser_reserved_connections"
    if capacity.reserved:
        reserved += f" + {capacity.reserved} reserved_connections"
    return (
        f"connections: {capacity.in_use} in use of max_connections {capacity.max_connections} ({reserved}: "
        f"{capacity.usable} for ordinary roles); headroom {capacity.headroom}"
    )


def capacity_json(capacity: Capacity) -> dict[str, int]:
    return {
        "max_connections": capacity.max_connections,
        "superuser_reserved_connections": capacity.superuser_reserved,
        "reserved_connections": capacity.reserved,
        "usable": capacity.usable,
        "in_use": capacity.in_use,
        "headroom": capacity.headroom,
    }


def group_row(g: Group, costs: Costs | None = None, capacity: Capacity | None = None) -> dict[str, Any]:
    """One group as a JSON object; with the server's `capacity`, the group's `share` of what ordinary roles may use
    (a fraction)."""
    st = g.stats
    share = _share(capacity, g)
    return {
        "parent": g.parent,
        "sessions": st.sessions,
        **({} if share is None else {"share": round(share, 4)}),
        "listening": st.listening,
        "states": {k: v for k, v in st.by_state.items() if v},
        "active": st.active,
        "waiting": st.waiting,
        "blocking": st.blocking,
        "blocked": st.blocked,
        "max_blocking_seconds": round(st.max_blocking, 3),
        "parallel_workers": g.workers,
        "max_query_seconds": round(st.max_query_duration, 3),
        "max_transaction_seconds": round(st.max_transaction_duration, 3),
        "age_seconds": round(st.age, 3),
        "sources": [src.label for src in g.sources],
        **(costs.of(g.parent) if costs is not None else {}),
    }


def _sources(g: Group) -> str:
    """Which sources tagged the group: `comment:parent`, or `comment:parent+application_name` for a mix."""
    return "+".join(src.label for src in g.sources) or "-"


def groups_json(grouped: Grouped, costs: Costs | None = None) -> str:
    """The groups and the untagged sessions as one indented JSON document (`pgparent groups --output json`); with
    `costs`, each group's load, CPU and memory (null where the server gives no such figure)."""
    untagged = grouped.untagged
    doc: dict[str, Any] = {
        "taken_at": grouped.now.isoformat(),
        "groups": [group_row(g, costs, grouped.capacity) for g in ordered_groups(grouped)],
        "untagged": {"sessions": untagged.sessions, "states": {k: v for k, v in untagged.by_state.items() if v}},
        "comment_tags_missed": grouped.comment_missed,
    }
    if grouped.capacity is not None:
        doc["capacity"] = capacity_json(grouped.capacity)
    if costs is not None:
        doc["sample_seconds"] = costs.seconds
        doc["cost_sources"] = costs.sources()
    return json.dumps(doc, indent=2)


def groups_table(grouped: Grouped, costs: Costs | None = None) -> list[str]:
    """The groups as an aligned text table, largest first, and a closing count line; with `costs`, the LOAD, CPU and
    MEM columns whose figures exist; when the poll read the server's capacity, a SHARE column (each group's sessions
    over what ordinary roles may use) and a last line with the capacity and the headroom."""
    ordered = ordered_groups(grouped)
    capacity = grouped.capacity
    header = (
        "PARENT",
        "SESSIONS",
        "ACTIVE",
        "IDLE",
        "IDLE_IN_TX",
        "WAITING",
        "BLOCKING",
        "BLOCKED",
        "WORKERS",
        "LONGEST_QUERY",
        "LONGEST_TX",
        "AGE",
        *(costs.columns() if costs is not None else ()),
        *(("SHARE",) if capacity is not None else ()),
        "SOURCE",
    )
    rows = [header]
    for g in ordered:
        st = g.stats
        idle_tx = st.by_state.get("idle in transaction", 0) + st.by_state.get("idle in transaction (aborted)", 0)
        rows.append(
            (
                g.parent,
                str(st.sessions),
                str(st.active),
                str(st.by_state.get("idle", 0)),
                str(idle_tx),
                str(st.waiting),
                str(st.blocking),
                str(st.blocked),
                str(g.workers),
                fmt_seconds(st.max_query_duration),
                fmt_seconds(st.max_transaction_duration),
                fmt_seconds(st.age),
                *_cost_cells(costs, g.parent),
                *((f"{100 * capacity.share(st.sessions):.1f}%",) if capacity is not None else ()),
                _sources(g),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    missed = (
        f"; {grouped.comment_missed} whose query text was cut before its comment (track_activity_query_size)"
        if grouped.comment_missed
        else ""
    )
    lines.append(f"{len(ordered)} group(s); {grouped.untagged.sessions} untagged session(s){missed}")
    if capacity is not None:
        lines.append(capacity_line(capacity))
    return lines


def _psql_timestamp(value: datetime) -> str:
    """A timestamp as psql prints one: microseconds without trailing zeros, the offset as +HH or +HH:MM."""
    text = f"{value:%Y-%m-%d %H:%M:%S}"
    if value.microsecond:
        text += f".{value.microsecond:06d}".rstrip("0")
    offset = value.utcoffset()
    if offset is not None:
        minutes = int(offset.total_seconds()) // 60
        sign = "-" if minutes < 0 else "+"
        hours, mins = divmod(abs(minutes), 60)
        text += f"{sign}{hours:02d}" + (f":{mins:02d}" if mins else "")
    return text


def _psql_cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return _psql_timestamp(value)
    return str(value)


def _centre(text: str, width: int) -> str:
    left = (width - len(text)) // 2  # psql puts the odd space on the right
    return (" " * left + text).ljust(width)


def psql_table(columns: Sequence[str], rows: Iterable[Sequence[object]]) -> list[str]:
    """Rows laid out as psql's aligned format does: centred headers, numbers to the right, `(N rows)` below."""
    values = [list(row) for row in rows]
    cells = [[_psql_cell(v) for v in row] for row in values]
    # psql aligns a column to the right when its type is numeric; judge by the values present.
    right = [
        any(row[i] is not None for row in values)
        and all(isinstance(row[i], int | float | Decimal) for row in values if row[i] is not None)
        for i in range(len(columns))
    ]
    widths = [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(columns)]
    lines = [" " + " | ".join(_centre(c, w) for c, w in zip(columns, widths, strict=True)).rstrip()]
    lines.append("+".join("-" * (w + 2) for w in widths))
    for row in cells:
        padded = (c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right, strict=True))
        lines.append(" " + " | ".join(padded).rstrip())
    lines.append(f"({len(cells)} {'row' if len(cells) == 1 else 'rows'})")
    return lines


SESSION_COLUMNS = ("pid", "usename", "application_name", "client_addr", "backend_start", "state", "query")
"""The seed's "validate the active sessions" listing of pg_stat_activity."""


def sessions_table(sessions: Iterable[Session]) -> list[str]:
    """Sessions as the seed lists them from pg_stat_activity (pid, user, tag, address, start, state, query)."""
    ordered = sorted(sessions, key=lambda s: (s.application_name, s.pid))
    return psql_table(
        SESSION_COLUMNS,
        [(s.pid, s.usename, s.application_name, s.client_addr, s.backend_start, s.state, s.query) for s in ordered],
    )


def signal_line(fields: dict[str, Any], result: str) -> str:
    """One signalled (or would-be signalled) session, from its audit fields."""
    return (
        f"{fields['action']:9} pid={fields['pid']} user={fields['user']} database={fields['database']} "
        f"state={fields['state']} result={result}"
    )


def nothing_to_signal(parent: str, action: str, protected: int, unguarded: int) -> str:
    """What `pgparent terminate` says when the group has no session it may signal."""
    left_alone = f" ({protected} protected, {unguarded} without backend_start)" if protected or unguarded else ""
    return f"no client session of {parent} to {action}{left_alone}"


def signal_total(parent: str, action: str, chosen: int, done: int, failed: int, skipped: int, dry_run: bool) -> str:
    """The closing line of `pgparent terminate`: how many of the group's sessions were signalled, failed, spared."""
    verb = {"terminate": "terminated", "cancel": "cancelled"}[action]
    return (
        f"total: {done} of {chosen} session(s) of {parent} {'would be ' if dry_run else ''}{verb}; {failed} failed; "
        f"{skipped} left alone (protected or unguarded)"
    )


# -- locks: the blocking forest ------------------------------------------------------------------------------------

QUERY_EXCERPT = 60
"""Characters of a root blocker's query shown by `pgparent locks`."""


def _lock_of(locks: LockGraph, pid: int) -> str:
    wait = locks.waits.get(pid)
    if wait is None:
        return ""
    what = wait.relation or wait.locktype or "lock"
    return f"{what} {wait.mode}" if wait.mode else what


def _waiters_of(locks: LockGraph, pid: int) -> list[int]:
    """The sessions waiting directly on `pid`, longest wait first."""
    direct = [w for w, wait in locks.waits.items() if pid in wait.blockers]
    return sorted(direct, key=lambda w: (-locks.waited(w), w))


def locks_forest(grouped: Grouped, snapshot: Snapshot) -> list[dict[str, Any]]:
    """Each root blocker with the tree of sessions waiting on it, biggest tree first (`pgparent locks`).

    A node is listed once per root, at its first place in a depth-first walk, so a cycle or a second path ends there.
    """
    locks = grouped.locks
    if locks is None:
        return []
    sessions = {s.pid: s for s in snapshot.sessions}
    parent_of = {s.pid: g.parent for g in grouped.groups.values() for s in g.sessions}
    roots = sorted({r for rs in locks.roots.values() for r in rs}, key=lambda r: (-len(locks.downstream[r]), r))

    def node(pid: int, seen: set[int]) -> dict[str, Any]:
        seen.add(pid)
        s = sessions.get(pid)
        children = [node(w, seen) for w in _waiters_of(locks, pid) if w not in seen]
        return {
            "pid": pid,
            "group": parent_of.get(pid),
            "user": s.usename if s else None,
            "state": s.state if s else None,
            "waiting_seconds": round(locks.waited(pid), 3),
            "lock": _lock_of(locks, pid),
            "waiters": children,
        }

    out: list[dict[str, Any]] = []
    for root in roots:
        s = sessions.get(root)
        kind = (
            "prepared transaction"
            if root == PREPARED_XACT
            else "client session"
            if s is not None
            else locks.blocker_types.get(root) or "unknown process"
        )
        tree = node(root, set())
        query = s.query if s is not None else None
        tree.update(
            kind=kind,
            blocking=len(locks.downstream[root]),
            transaction_seconds=round((grouped.now - s.xact_start).total_seconds(), 3) if s and s.xact_start else None,
            query=query[:QUERY_EXCERPT] if query else None,
        )
        del tree["waiting_seconds"], tree["lock"]
        out.append(tree)
    return out


def locks_json(grouped: Grouped, snapshot: Snapshot) -> str:
    """The blocking forest as one indented JSON document (`pgparent locks --output json`)."""
    forest = locks_forest(grouped, snapshot)
    doc = {
        "taken_at": grouped.now.isoformat(),
        "roots": forest,
        "deadlocked": sorted(w for w, rs in (grouped.locks.roots.items() if grouped.locks else ()) if not rs),
    }
    return json.dumps(doc, indent=2)


def locks_table(grouped: Grouped, snapshot: Snapshot) -> list[str]:
    """The blocking forest as an indented tree: each root blocker, then who waits on it, how long, on what."""
    forest = locks_forest(grouped, snapshot)
    if not forest:
        return ["no session waits on a lock"]
    lines: list[str] = []

    def walk(children: list[dict[str, Any]], depth: int) -> None:
        for c in children:
            lines.append(
                f"{'  ' * depth}└─ pid {c['pid']}  {c['group'] or 'untagged'}  user={c['user']}  "
                f"waiting {fmt_seconds(c['waiting_seconds'])}  on {c['lock']}"
            )
            walk(c["waiters"], depth + 1)

    for root in forest:
        if root["kind"] == "client session":
            xact = fmt_seconds(root["transaction_seconds"]) if root["transaction_seconds"] is not None else "-"
            lines.append(
                f"pid {root['pid']}  {root['group'] or 'untagged'}  user={root['user']}  state={root['state']}  "
                f"transaction {xact}  blocks {root['blocking']}  query: {root['query'] or ''}"
            )
        else:
            label = f"pid {root['pid']}" if root["pid"] != PREPARED_XACT else "pid 0"
            lines.append(f"{label}  ({root['kind']}, never signalled)  blocks {root['blocking']}")
        walk(root["waiters"], 1)
    waits = len(grouped.locks.waits) if grouped.locks else 0
    lines.append(f"{len(forest)} root blocker(s); {waits} session(s) waiting")
    return lines
