"""`pgparent top`'s layout through Textual's own harness (App.run_test and its pilot), against a real server: at
80x24 every key and every figure of a row is on screen; on a large terminal every column is, with nothing cut."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
from textual.pilot import Pilot

from exporter.cli.top import GroupScreen, TopApp
from exporter.cli.toprows import RowTable
from exporter.core.settings import Config
from exporter.pg.database import Database
from exporter.run.live import Live
from tests.support.servers import Server
from tests.support.sessions import Clients

pytestmark = pytest.mark.integration

KEYS = ("quit", "open", "filter", "sort", "reverse", "locks", "pause", "cancel", "terminate")


def screen_lines(app: TopApp) -> list[str]:
    """The screen as text, line by line, as the terminal would show it (Textual's compositor renders it)."""
    return [strip.text for strip in app.screen._compositor.render_strips()]


async def until(pilot: Pilot[int], condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Let the app run until `condition` holds (it is checked between the app's own steps)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.05)


def on_screen(app: TopApp, text: str) -> bool:
    return any(text in line for line in screen_lines(app))


def row_of(app: TopApp, tag: str) -> list[str] | None:
    return next((line.split() for line in screen_lines(app) if line.split()[:1] == [tag]), None)


def _drive(pg: Server, size: tuple[int, int], scenario: Callable[[TopApp, Pilot[int]], object]) -> None:
    live = Live(Database(pg.dsn), Config(), "default")
    app = TopApp(live, 0.25)

    async def run() -> None:
        async with app.run_test(size=size) as pilot:
            await scenario(app, pilot)  # type: ignore[misc]

    try:
        asyncio.run(run())
    finally:
        app.shut()


def test_at_80x24_rows_figures_and_keys_fit(pg: Server, clients: Clients) -> None:
    """On an 80x24 terminal a group's row shows its counts through MEM, the footer lists every key, and a group's
    sessions open in a view of their own that fits too."""
    clients.start("Lay:small", n=3)

    async def scenario(app: TopApp, pilot: Pilot[int]) -> None:
        await until(pilot, lambda: (r := row_of(app, "Lay:small")) is not None and r[1:3] == ["3", "3"],
                    "the group's row with 3 active sessions")
        lines = screen_lines(app)
        assert len(lines) == 24 and all(len(line) <= 80 for line in lines), lines
        assert lines[0].startswith("PostgreSQL ") and "headroom" in lines[0]
        header = next(line for line in lines if line.split()[:2] == ["TAG", "SESS"])
        assert header.split()[:10] == ["TAG", "SESS", "ACT", "IDLE", "IDLTX", "WAIT", "BLKG", "BLKD", "QUERY",
                                       "XACT"]
        await until(pilot, lambda: all(key in screen_lines(app)[-1] for key in KEYS), "every key in the footer")
        await until(pilot, lambda: "LOAD" in " ".join(screen_lines(app)), "the LOAD column from the second refresh")
        row = row_of(app, "Lay:small")
        assert row is not None and len(row) >= 11  # the LOAD figure is on screen, not scrolled off
        app.query_one("#groups", RowTable).select("gLay:small")
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, GroupScreen) and on_screen(app, "Lay:small: 3 session(s)"),
                    "the group's sessions")
        session_lines = [line for line in screen_lines(app) if line.split()[:1] and line.split()[0].isdigit()]
        assert len(session_lines) == 3 and all(line.split()[3] == "active" for line in session_lines), session_lines
        assert all(len(line) <= 80 for line in screen_lines(app))
        await pilot.press("q")

    _drive(pg, (80, 24), scenario)


def test_on_a_large_terminal_every_column_shows_in_full(pg: Server, clients: Clients) -> None:
    """On a 200x50 terminal every column, SOURCE included, is on screen with its values uncut."""
    clients.start("Lay:large-group-with-a-long-tag", n=2)

    async def scenario(app: TopApp, pilot: Pilot[int]) -> None:
        await until(pilot, lambda: on_screen(app, "LOAD"), "a second refresh")
        row = row_of(app, "Lay:large-group-with-a-long-tag")
        assert row is not None and row[1] == "2" and row[-1] == "application_name"
        header = next(line for line in screen_lines(app) if line.split()[:2] == ["TAG", "SESS"])
        assert header.split()[-1] == "SOURCE"
        assert len(screen_lines(app)) == 50
        await pilot.press("q")

    _drive(pg, (200, 50), scenario)
