"""The one-shot commands as a user runs them: groups, terminate, and clear one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from exporter.pgcluster import free_port
from harness.waiting import eventually
from tests.support.cli import pgparent
from tests.support.servers import Server
from tests.support.sessions import Clients

pytestmark = pytest.mark.integration


@pytest.mark.per_major
def test_groups_table_and_json(pg: Server, clients: Clients) -> None:
    """`groups` lists each group with its session count, as a table and as JSON."""
    clients.start("Grp:1", n=3)
    (idle,) = clients.start("Grp:2", "SELECT 1", hold=True)
    assert idle.executed.wait(10)
    table = pgparent("groups", "--dsn", pg.dsn)
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0].split()[:3] == ["PARENT", "SESSIONS", "ACTIVE"]
    row = next(line.split() for line in table.stdout.splitlines() if line.startswith("Grp:1 "))
    assert row[1:3] == ["3", "3"]
    as_json = pgparent("groups", "--output", "json", env={"PGPARENT_DSN": pg.dsn})
    doc = json.loads(as_json.stdout)
    by_parent = {g["parent"]: g for g in doc["groups"]}
    assert by_parent["Grp:1"]["sessions"] == 3 and by_parent["Grp:1"]["states"] == {"active": 3}
    assert by_parent["Grp:2"]["states"] == {"idle": 1}


@pytest.mark.per_major
def test_groups_honours_the_config_pattern(pg: Server, clients: Clients, tmp_path: Path) -> None:
    """With --config.file, `groups` parses tags with that file's pattern."""
    clients.start("tenant=acme;job=9")
    config = tmp_path / "rules.yaml"
    config.write_text("grouping:\n  pattern: 'tenant=(?P<parent>[a-z]+)'\n")
    out = pgparent("groups", "--dsn", pg.dsn, "--config.file", str(config), "--output", "json")
    assert [g["parent"] for g in json.loads(out.stdout)["groups"]] == ["acme"]


@pytest.mark.per_major
def test_terminate_signals_the_group_and_prints_each(pg: Server, clients: Clients) -> None:
    """`terminate PARENT` ends every session of that group only, printing one line each and a total."""
    doomed = clients.start("Term:1", n=2)
    bystander = clients.start("Term:10")
    out = pgparent("terminate", "Term:1", "--dsn", pg.dsn, "--log.format", "json")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert sorted(int(line.split("pid=")[1].split()[0]) for line in lines[:-1]) == sorted(c.pid or 0 for c in doomed)
    assert all("result=ok" in line for line in lines[:-1])
    assert lines[-1].startswith("total: 2 of 2 session(s) of Term:1 terminated; 0 failed")
    eventually(lambda: all(c.outcome == "terminated" for c in doomed), what="group terminated")
    assert not bystander[0].done
    audits = [json.loads(line) for line in out.stderr.splitlines() if '"session_signal"' in line]
    assert {a["rule"] for a in audits} == {"manual"} and len(audits) == 2


@pytest.mark.per_major
def test_terminate_dry_run_and_cancel(pg: Server, clients: Clients) -> None:
    """--dry-run signals nothing; --cancel interrupts running queries and leaves the sessions connected."""
    sessions = clients.start("Term:2", n=2)
    dry = pgparent("terminate", "Term:2", "--dsn", pg.dsn, "--dry-run")
    assert dry.returncode == 0 and "would be terminated" in dry.stdout
    assert not any(c.done for c in sessions)
    cancel = pgparent("terminate", "Term:2", "--dsn", pg.dsn, "--cancel")
    assert cancel.returncode == 0 and "2 of 2 session(s) of Term:2 cancelled" in cancel.stdout
    eventually(lambda: all(c.outcome == "cancelled" for c in sessions), what="queries cancelled")


@pytest.mark.per_major
def test_terminate_unknown_group_is_a_no_op(pg: Server) -> None:
    """Naming a group that has no sessions signals nothing and says so."""
    out = pgparent("terminate", "Nobody:0", "--dsn", pg.dsn)
    assert out.returncode == 0 and "no client session of Nobody:0" in out.stdout


@pytest.mark.parametrize("command", ["groups", "run", "terminate"])
def test_bad_dsn_is_one_clear_line(pg: Server, command: str) -> None:
    """An unparseable DSN exits 2 with one line and no traceback, never echoing the password, for every command."""
    args = [command, "--dsn", "host=x password=hunter2-pw port"] + (["Some:1"] if command == "terminate" else [])
    out = pgparent(*args)
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "invalid DSN" in out.stderr
    assert "hunter2-pw" not in out.stderr + out.stdout and "Traceback" not in out.stderr


@pytest.mark.per_major
def test_unreachable_host_and_wrong_password(pg: Server) -> None:
    """A closed port and a wrong password each exit 1 with one line naming the problem, password masked."""
    closed = pgparent("groups", "--dsn", f"host=127.0.0.1 port={free_port()} user=u password=pw-closed-1")
    assert closed.returncode == 1 and "cannot connect" in closed.stderr
    assert "pw-closed-1" not in closed.stderr and "Traceback" not in closed.stderr
    wrong = pgparent("groups", "--dsn", pg.dsn_for("postgres", password="pw-wrong-2"))
    assert wrong.returncode == 1 and "password authentication failed" in wrong.stderr
    assert "pw-wrong-2" not in wrong.stderr and "Traceback" not in wrong.stderr


def test_bad_listen_address_and_bad_config_exit_2(pg: Server, tmp_path: Path) -> None:
    """`run` with a malformed listen address, or an invalid config file, exits 2 with a one-line reason each."""
    bad_addr = pgparent("run", "--dsn", pg.dsn, "--web.listen-address", "nonsense")
    assert bad_addr.returncode == 2 and "--web.listen-address" in bad_addr.stderr
    config = tmp_path / "bad.yaml"
    config.write_text("interval: soon\nrules: [{name: x, max_sessions: 1, action: explode}]\n")
    bad_config = pgparent("run", "--dsn", pg.dsn, "--config.file", str(config))
    assert bad_config.returncode == 2
    assert bad_config.stderr.splitlines() == [
        f"{config}: interval: invalid duration 'soon': use a number of seconds or units ms, s, m, h, d, w, y, "
        "largest first, each at most once (e.g. 500ms, 1h30m)",
        f"{config}: rules.0.action: Input should be 'terminate', 'cancel' or 'log'",
    ]


def test_listen_address_in_use_is_one_clear_line(pg: Server) -> None:
    """`run` on a port another process holds exits 2 naming the address, with no traceback."""
    import socket

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        out = pgparent("run", "--dsn", pg.dsn, "--web.listen-address", f"127.0.0.1:{port}")
    assert out.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in out.stderr and "Traceback" not in out.stderr
