"""Terminal rendering is pure: the groups table and JSON, psql's aligned layout, the seed's session listing."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

from exporter.cli.render import groups_json, groups_table, psql_table, sessions_table
from exporter.core.grouping import group
from exporter.core.model import Capacity
from tests.unit.factory import session, snapshot

PATTERN = r"^(?P<parent>[^:]+:[^:]+)"


def test_psql_table_lays_rows_out_as_psql_does() -> None:
    """Headers centred (the odd space on the right), numbers right-aligned, text left, `(N rows)` below."""
    rows = [
        (1, "Demo entry 1", datetime(2025, 3, 22, 10, 0, 0, tzinfo=UTC)),
        (12, "Demo entry 2", datetime(2025, 3, 22, 10, 0, 1, 120000, tzinfo=UTC)),
    ]
    assert psql_table(("id", "description", "created_at"), rows) == [
        " id | description  |        created_at",
        "----+--------------+---------------------------",
        "  1 | Demo entry 1 | 2025-03-22 10:00:00+00",
        " 12 | Demo entry 2 | 2025-03-22 10:00:01.12+00",
        "(2 rows)",
    ]


def test_psql_table_nulls_offsets_and_one_row() -> None:
    """NULL is blank; an offset with minutes keeps them; a single row is `(1 row)`."""
    india = timezone(timedelta(hours=5, minutes=30))
    lines = psql_table(("a", "b"), [(None, datetime(2025, 1, 2, 3, 4, 5, tzinfo=india))])
    assert lines[2] == "   | 2025-01-02 03:04:05+05:30"
    assert lines[-1] == "(1 row)"


def test_sessions_table_has_the_seeds_columns_in_tag_then_pid_order() -> None:
    """The seed's listing: pid, usename, application_name, client_addr, backend_start, state, query."""
    lines = sessions_table([session("FakeParent:2002", pid=7), session("FakeParent:1001", pid=9)])
    assert [c.strip() for c in lines[0].split("|")] == [
        "pid", "usename", "application_name", "client_addr", "backend_start", "state", "query",
    ]
    assert [line.split("|")[2].strip() for line in lines[2:4]] == ["FakeParent:1001", "FakeParent:2002"]
    assert lines[-1] == "(2 rows)"


def test_groups_table_and_json_list_largest_first() -> None:
    """Both listings put the larger group first and count the untagged sessions."""
    grouped = group(snapshot(session("B:1"), session("A:1"), session("B:1"), session("psql")), PATTERN)
    table = groups_table(grouped)
    assert [line.split()[0] for line in table[1:3]] == ["B:1", "A:1"]
    assert table[-1] == "2 group(s); 1 untagged session(s)"
    doc = json.loads(groups_json(grouped))
    assert [g["parent"] for g in doc["groups"]] == ["B:1", "A:1"]
    assert doc["untagged"] == {"sessions": 1, "states": {"active": 1}}


def test_groups_table_and_json_show_the_capacity_and_each_groups_share() -> None:
    """With the server's capacity, the table has a SHARE column and a closing capacity line; the JSON has each
    group's share and the capacity."""
    capacity = Capacity(max_connections=60, superuser_reserved=3, reserved=2, in_use=16)
    rows = replace(snapshot(*(session("B:1") for _ in range(11)), session("A:1")), capacity=capacity)
    grouped = group(rows, PATTERN)
    table = groups_table(grouped)
    header = table[0].split()
    assert header[-2:] == ["SHARE", "SOURCE"]
    assert table[1].split()[header.index("SHARE")] == "20.0%"
    assert table[-1] == ("connections: 16 in use of max_connections 60 (3 superuser_reserved_connections + 2 "
                         "reserved_connections: 55 for ordinary roles); headroom 39")
    doc = json.loads(groups_json(grouped))
    assert doc["groups"][0]["share"] == 0.2
    assert doc["capacity"] == {"max_connections": 60, "superuser_reserved_connections": 3, "reserved_connections": 2,
                               "usable": 55, "in_use": 16, "headroom": 39}
