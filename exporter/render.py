"""Tables and JSON for the terminal (groups, sessions, signal results, query results), shared by cli and demo.

Pure formatting: every function takes records and returns lines or text; printing is the caller's business.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from exporter.model import Group, Grouped, Session


def _fmt_seconds(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def ordered_groups(grouped: Grouped) -> list[Group]:
    """The groups largest first, then by parent tag: the order every listing uses."""
    return sorted(grouped.groups.values(), key=lambda g: (-g.stats.sessions, g.parent))


def group_row(g: Group) -> dict[str, Any]:
    """One group as a JSON object."""
    st = g.stats
    return {
        "parent": g.parent,
        "sessions": st.sessions,
        "states": {k: v for k, v in st.by_state.items() if v},
        "active": st.active,
        "waiting": st.waiting,
        "parallel_workers": g.workers,
        "max_query_seconds": round(st.max_query_duration, 3),
        "max_transaction_seconds": round(st.max_transaction_duration, 3),
        "age_seconds": round(st.age, 3),
    }


def groups_json(grouped: Grouped) -> str:
    """The groups and the untagged sessions as one indented JSON document (`pgparent groups --output json`)."""
    untagged = grouped.untagged
    doc = {
        "taken_at": grouped.now.isoformat(),
        "groups": [group_row(g) for g in ordered_groups(grouped)],
        "untagged": {"sessions": untagged.sessions, "states": {k: v for k, v in untagged.by_state.items() if v}},
    }
    return json.dumps(doc, indent=2)


def groups_table(grouped: Grouped) -> list[str]:
    """The groups as an aligned text table, largest first, and a closing count line."""
    ordered = ordered_groups(grouped)
    header = (
        "PARENT",
        "SESSIONS",
        "ACTIVE",
        "IDLE",
        "IDLE_IN_TX",
        "WAITING",
        "WORKERS",
        "LONGEST_QUERY",
        "LONGEST_TX",
        "AGE",
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
                str(g.workers),
                _fmt_seconds(st.max_query_duration),
                _fmt_seconds(st.max_transaction_duration),
                _fmt_seconds(st.age),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.append(f"{len(ordered)} group(s); {grouped.untagged.sessions} untagged session(s)")
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


def signal_total(parent: str, action: str, targets: int, done: int, failed: int, skipped: int, dry_run: bool) -> str:
    """The closing line of `pgparent terminate`: how many of the group's sessions were signalled, failed, spared."""
    verb = {"terminate": "terminated", "cancel": "cancelled"}[action]
    return (
        f"total: {done} of {targets} session(s) of {parent} {'would be ' if dry_run else ''}{verb}; {failed} failed; "
        f"{skipped} left alone (protected or unguarded)"
    )
