"""`pgparent top` driven as a person drives it: in a real terminal (tmux) against a real server with real groups.

Keys are typed with `send-keys`, the screen read with `capture-pane`; every wait is for text on the screen, a
session's end or an audit line, and a test that says something did not happen first waits for refreshes to pass.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import psycopg
import pytest
from psycopg import sql

from harness import waiting
from tests.support.servers import Server
from tests.support.sessions import Clients
from tests.support.terminal import Terminal, top_command

pytestmark = [pytest.mark.integration, pytest.mark.slow]


T = TypeVar("T")


def eventually(fn: Callable[[], T | None], timeout: float = 30.0, what: str = "") -> T:
    """harness.waiting.eventually with room for a loaded machine: the view refreshes twice a second, but the suite
    runs these beside the other slow modules."""
    return waiting.eventually(fn, timeout=timeout, what=what)


def refresh(term: Terminal) -> int:
    """The view's refresh count, from its status line."""
    found = re.findall(r"refresh (\d+)", term.screen())
    return int(found[-1]) if found else -1


def wait_refreshes(term: Terminal, n: int) -> None:
    """Wait until `n` more refreshes have completed and been drawn."""
    start = eventually(lambda: (r := refresh(term)) >= 0 and r + 1, what="a refresh drawn") - 1
    eventually(lambda: refresh(term) >= start + n, what=f"{n} refreshes after refresh {start}")


def audits(log: Path) -> list[dict[str, object]]:
    if not log.exists():
        return []
    return [e for line in log.read_text().splitlines() if (e := json.loads(line)).get("event") == "session_signal"]


def pids_of(text: str) -> set[int]:
    return {int(p) for p in re.findall(r"\d+", text)}


def test_rows_sorting_filter_open_and_quit(pg: Server, clients: Clients, terminal: type[Terminal],
                                         tmp_path: Path) -> None:
    """Each group is a row with its counts; `r`, `<` sort; `/` filters by glob; Enter opens a group and a session's
    whole query; `q` exits 0 and leaves the terminal usable."""
    clients.start("Top:a", n=3)
    clients.start("Top:b")
    idle = clients.start("Top:c", "SELECT 'the whole query of Top:c' AS marker", n=2, hold=True)
    for c in idle:
        assert c.executed.wait(10)
    term = terminal(top_command(pg.dsn, tmp_path / "top.log", "--interval", "0.5s"), width=100, height=30)
    term.wait_for("Top:c")
    eventually(lambda: (a := term.row("Top:a")) is not None and a[1:4] == ["3", "3", "0"], what="Top:a 3 active")
    eventually(lambda: (c := term.row("Top:c")) is not None and c[1:4] == ["2", "0", "2"], what="Top:c 2 idle")
    assert (b := term.row("Top:b")) is not None and b[1:3] == ["1", "1"]

    def order() -> list[str]:
        return [line.split()[0] for line in term.lines() if line.split()[:1] and line.split()[0].startswith("Top:")]

    eventually(lambda: order() == ["Top:a", "Top:c", "Top:b"], what="largest group first")
    term.keys("r")
    term.wait_for("sorted by SESS asc")
    eventually(lambda: order() == ["Top:b", "Top:c", "Top:a"], what="smallest group first")
    term.keys("<")  # the column before SESS: the tag, A to Z
    term.wait_for("sorted by TAG asc")
    eventually(lambda: order() == ["Top:a", "Top:b", "Top:c"], what="by tag")

    term.keys("/")
    term.wait_for("filter tags by glob")
    term.keys("top:C*", literal=True)
    term.keys("Enter")
    term.wait_for("matching 'top:C*'")
    eventually(lambda: order() == ["Top:c"], what="only Top:c")

    term.keys("Enter")
    screen = term.wait_for("Top:c: 2 session(s)")
    assert {c.pid for c in idle} <= pids_of(screen)
    term.keys("Enter")
    # The query's own screen is titled "pid N: whole query" (the group's lists the start of the text too).
    query = term.wait_for(": whole query")
    assert "SELECT 'the whole query of Top:c' AS marker" in query
    term.keys("Escape")
    term.wait_gone(": whole query")
    term.keys("Escape")
    term.wait_for("matching 'top:C*'")

    term.keys("q")
    term.wait_for("exit=0")
    term.keys("stty -a | tr ' ' '\\n' | grep -x -e icanon -e echo | tr '\\n' ' '; echo", literal=True)
    term.keys("Enter")
    term.wait_for("icanon echo")


def test_terminate_ends_exactly_that_groups_sessions(pg: Server, clients: Clients, terminal: type[Terminal],
                                                     tmp_path: Path) -> None:
    """`t` on a group lists exactly its pids; `y` ends them, audited as manual, the result shown; a bystander group
    runs on."""
    doomed = clients.start("Kill:1", n=2)
    bystander = clients.start("Kill:10", n=2)
    log = tmp_path / "top.log"
    term = terminal(top_command(pg.dsn, log, "--interval", "0.5s"), width=100, height=30)
    term.wait_for("Kill:10")
    term.keys("/")
    term.wait_for("filter tags by glob")
    term.keys("Kill:[1]", literal=True)
    term.keys("Enter")
    term.wait_for("matching 'Kill:[1]'")
    eventually(lambda: term.row("Kill:10") is None and term.row("Kill:1") is not None, what="Kill:1 alone")

    term.keys("t")
    screen = term.wait_for("terminate Kill:1?")
    listed = next(line for line in screen.splitlines() if "will signal" in line)
    assert pids_of(listed.split("pids", 1)[1]) == {c.pid for c in doomed}
    term.keys("y")
    result = term.wait_for("terminate Kill:1: done 2")
    assert pids_of(next(line for line in result.splitlines() if "done 2" in line).split("pids", 1)[1]) == {
        c.pid for c in doomed}
    eventually(lambda: all(c.outcome == "terminated" for c in doomed), what="Kill:1 ended")
    entries: list[dict[str, object]] = eventually(lambda: a if len(a := audits(log)) == 2 else None,
                                                  what="two audit lines")
    assert {e["rule"] for e in entries} == {"manual"} and {e["pid"] for e in entries} == {c.pid for c in doomed}
    assert all(e["result"] == "ok" and e["parent"] == "Kill:1" for e in entries)

    wait_refreshes(term, 3)
    assert not any(c.done for c in bystander)
    term.keys("/")
    term.wait_for("filter tags by glob")
    term.keys("C-u")
    term.keys("Enter")
    eventually(lambda: (r := term.row("Kill:10")) is not None and r[1] == "2", what="Kill:10 still 2 sessions")
    assert term.row("Kill:1") is None
    term.keys("q")
    term.wait_for("exit=0")


def test_read_only_has_no_signal_keys(pg: Server, clients: Clients, terminal: type[Terminal], tmp_path: Path) -> None:
    """With --read-only the footer has no cancel or terminate key and `t`, `c` do nothing, refresh after refresh."""
    kept = clients.start("Ro:1", n=2)
    log = tmp_path / "top.log"
    term = terminal(top_command(pg.dsn, log, "--interval", "0.5s", "--read-only"), width=100, height=30)
    term.wait_for("Ro:1")
    footer = term.wait_for("quit").rstrip().splitlines()[-1]
    assert "quit" in footer and "terminate" not in footer and "cancel" not in footer
    term.keys("t")
    term.keys("c")
    wait_refreshes(term, 3)
    assert "Ro:1?" not in term.screen()
    term.keys("y")
    wait_refreshes(term, 2)
    assert not any(c.done for c in kept) and audits(log) == []
    assert (r := term.row("Ro:1")) is not None and r[1] == "2"
    term.keys("q")
    term.wait_for("exit=0")


def test_a_server_restart_shows_a_banner_then_the_view_comes_back(private_pg: Server, terminal: type[Terminal],
                                                                  tmp_path: Path) -> None:
    """While the server restarts the view says the connection is lost, never a traceback; then it reconnects and
    shows the groups of the restarted server."""
    with Clients(private_pg.dsn) as clients:
        clients.start("Before:1", n=2)
        term = terminal(top_command(private_pg.dsn, tmp_path / "top.log", "--interval", "0.5s"), width=100,
                        height=30)
        term.wait_for("Before:1")
        private_pg.stop("fast")
        screen = term.wait_for("connection lost")
        assert "Traceback" not in screen
        private_pg.start()
        clients.start("After:2", n=3)
        term.wait_gone("connection lost")
        eventually(lambda: (r := term.row("After:2")) is not None and r[1] == "3", what="the new group's row")
        assert term.row("Before:1") is None and "Traceback" not in term.screen()
        term.keys("q")
        term.wait_for("exit=0")


def test_no_color_draws_in_grey_only(pg: Server, clients: Clients, terminal: type[Terminal], tmp_path: Path) -> None:
    """Under NO_COLOR every colour on screen is a grey; without it the view has colours."""
    clients.start("Colour:1")

    def colours(env: dict[str, str]) -> set[tuple[int, int, int]]:
        term = terminal(top_command(pg.dsn, tmp_path / "top.log", "--interval", "0.5s"), width=80, height=24,
                        env={"COLORTERM": "truecolor", **env})
        term.wait_for("Colour:1")
        found = {(int(r), int(g), int(b)) for r, g, b in re.findall(r"[34]8;2;(\d+);(\d+);(\d+)", term.colours())}
        term.keys("q")
        term.wait_for("exit=0")
        return found

    grey = colours({"NO_COLOR": "1"})
    assert grey and all(r == g == b for r, g, b in grey)
    assert any(not r == g == b for r, g, b in colours({}))


def test_blocking_counts_and_the_lock_forest(pg: Server, clients: Clients, terminal: type[Terminal],
                                             tmp_path: Path) -> None:
    """A group holding a lock two sessions of another wait on shows BLKG 2, the waiters' row WAIT and BLKD 2, and `l`
    shows the forest: the root blocker and who waits on it; `p` pauses the view and `p` again goes on."""
    table = f"top_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE TABLE {} (id int)").format(sql.Identifier(table)))
    try:
        [holder] = clients.start("Hold:1", f"BEGIN; LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE", hold=True)
        clients.start("Wait:1", f"SELECT count(*) FROM {table}", n=2)
        term = terminal(top_command(pg.dsn, tmp_path / "top.log", "--interval", "0.5s"), width=200, height=30)
        columns = eventually(lambda: (s := term.lines()) and next(
            (line.split() for line in s if line.split()[:2] == ["TAG", "SESS"]), None), what="the heading")
        blkg, blkd, wait = columns.index("BLKG"), columns.index("BLKD"), columns.index("WAIT")
        eventually(lambda: (r := term.row("Hold:1")) is not None and r[blkg] == "2", what="Hold:1 blocking 2")
        eventually(lambda: (r := term.row("Wait:1")) is not None and r[blkd] == "2" and r[wait] == "2",
                   what="Wait:1 waiting and blocked")
        term.keys("l")
        forest = term.wait_for("root blocker(s)")
        root = next(line for line in forest.splitlines() if line.startswith(f"pid {holder.pid} "))
        assert "Hold:1" in root and "blocks 2" in root
        assert sum("Wait:1" in line and "└─" in line for line in forest.splitlines()) == 2
        assert "2 session(s) waiting" in forest
        term.keys("Escape")
        term.wait_gone("root blocker(s)")

        term.keys("p")
        term.wait_for("PAUSED")
        term.keys("p")
        term.wait_gone("PAUSED")
        wait_refreshes(term, 2)
        term.keys("q")
        term.wait_for("exit=0")
    finally:
        clients.cleanup()
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))


def test_cancel_of_one_session_from_its_groups_view(pg: Server, clients: Clients, terminal: type[Terminal],
                                                    tmp_path: Path) -> None:
    """In a group's view `c` plans the selected session alone; `y` cancels its query and the group's other session
    runs on, connected."""
    first, second = clients.start("Cancel:1", n=2)
    log = tmp_path / "top.log"
    term = terminal(top_command(pg.dsn, log, "--interval", "0.5s"), width=100, height=30)
    term.wait_for("Cancel:1")
    term.keys("/")
    term.wait_for("filter tags by glob")
    term.keys("Cancel:1", literal=True)
    term.keys("Enter")
    term.wait_for("matching 'Cancel:1'")
    term.keys("Enter")
    term.wait_for("Cancel:1: 2 session(s)")
    term.keys("c")
    plan = term.wait_for("cancel Cancel:1 pid ")
    listed = next(line for line in plan.splitlines() if "will signal" in line)
    chosen = pids_of(listed.split("pids", 1)[1])
    assert len(chosen) == 1 and chosen <= {first.pid, second.pid}
    term.keys("y")
    term.wait_for("done 1")
    hit, spared = (first, second) if chosen == {first.pid} else (second, first)
    eventually(lambda: hit.outcome == "cancelled", what="the chosen session's query cancelled")
    [entry] = eventually(lambda: audits(log) or None, what="its audit line")
    assert entry["pid"] == hit.pid and entry["action"] == "cancel" and entry["rule"] == "manual"
    term.keys("Escape")
    term.wait_for("matching 'Cancel:1'")
    wait_refreshes(term, 3)
    assert not spared.done
    term.keys("q")
    term.wait_for("exit=0")


def test_top_wants_a_terminal_and_a_sane_interval(pg: Server) -> None:
    """Without a terminal, or with an interval it cannot keep, `top` says so on one line and exits 2."""
    base = [sys.executable, "-m", "exporter", "top", "--dsn", pg.dsn]
    piped = subprocess.run(base, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert piped.returncode == 2 and piped.stderr.strip() == (
        "pgparent: top needs a terminal (for one-shot output: pgparent groups, pgparent locks)")
    for bad in ("0", "soon", "2h"):
        done = subprocess.run([*base, "--interval", bad], capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and done.stderr.startswith(f"pgparent: --interval {bad}: "), done.stderr
        assert "Traceback" not in done.stderr


def test_one_poll_per_refresh(pg: Server, clients: Clients, terminal: type[Terminal], tmp_path: Path) -> None:
    """The view costs the server one statement per refresh: its connection's database (its own here) commits as
    many transactions as the view draws refreshes, within the lag of the server's statistics (about a second)."""
    clients.start("Polls:1", n=3)
    database = f"top_polls_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg.dsn, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
        try:
            term = terminal(top_command(pg.dsn_for(database), tmp_path / "top.log", "--interval", "0.5s"),
                            width=100, height=30)
            term.wait_for("Polls:1")

            def commits() -> int:
                row = admin.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = %s",
                                    [database]).fetchone()
                assert row is not None
                return int(row[0])

            wait_refreshes(term, 3)
            before, first = commits(), refresh(term)
            wait_refreshes(term, 20)
            after, last = commits(), refresh(term)
            drawn = last - first
            assert drawn >= 20 and abs((after - before) - drawn) <= 3, (after - before, drawn)
            term.keys("q")
            term.wait_for("exit=0")
        finally:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
