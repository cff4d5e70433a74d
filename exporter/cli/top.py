"""`pgparent top`: the live, grouped view of one server, on Textual.

One row per group (exporter/core/top.py makes the rows), refreshed at the interval by one poll on a worker thread
(exporter/run/live.py), so the screen answers keys while a poll is under way; a refresh that finds the previous poll
still running is skipped, never queued. Enter opens a group's sessions, Enter on a session its whole query, `l` the
lock forest; `c` and `t` ask to confirm exactly the pids a cancel or terminate would signal (`core.top.plan`, the
guards of `pgparent terminate`), `y` sends them on the same thread, audited as a manual action. A lost connection is
a banner above the last rows; the next refresh connects again.

Textual, because its test harness (`App.run_test` and its pilot) drives the real widgets at any terminal size in
the test process, it redraws only what changed, and it restores the terminal on every way out.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import ScrollableContainer, Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import DataTable, Footer, Input, Static
from textual.widgets.data_table import CellDoesNotExist, RowDoesNotExist

from exporter.cli import render
from exporter.cli.terminate import carry_out
from exporter.cli.toprows import RowTable, layout, parent_of_key, seconds
from exporter.core import top
from exporter.core.model import SignalAction
from exporter.errors import DatabaseUnavailable
from exporter.logs import get_logger
from exporter.run.live import Frame, Live

T = TypeVar("T")

QUERY_EXCERPT = 60
"""Characters of a session's query in the group view (Enter shows the whole text)."""

VERBS = {"terminate": "terminate", "cancel": "cancel"}
RESULTS = {"ok": "done", "gone": "gone", "not_signalled": "not signalled", "permission_denied": "denied",
           "error": "error", "dry_run": "dry run"}
"""How each signal outcome reads on screen."""


@dataclass
class View:
    """What the operator chose: sort column and order, filter, pause. One state object, changed by the keys."""

    sort: str = top.DEFAULT_SORT
    descending: bool = True
    pattern: str = ""
    paused: bool = False
    columns: tuple[top.Column, ...] = field(default_factory=tuple)

    def shift(self, step: int) -> None:
        """Sort by the next (or previous) shown column; text columns ascending, figures largest first."""
        keys = [c.key for c in self.columns] or [c.key for c in top.COLUMNS]
        at = keys.index(self.sort) if self.sort in keys else 0
        self.sort = keys[(at + step) % len(keys)]
        self.descending = self.sort not in ("tag", "source")


class QueryScreen(ModalScreen[None]):
    """One session's whole query text."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,enter,q", "dismiss", "back")]

    def __init__(self, pid: int, query: str) -> None:
        super().__init__()
        self.pid, self.sql_text = pid, query

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="query"):
            yield Static(Text(f"pid {self.pid}: whole query", style="bold"))
            yield Static(Text(self.sql_text or "(no query text)"))
        yield Footer(compact=True)

    def action_dismiss(self) -> None:  # type: ignore[override]
        self.dismiss(None)


class ConfirmScreen(ModalScreen[bool]):
    """The pids a cancel or terminate would signal, and those left out with why: `y` sends, anything else not."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "yes, signal them"),
        Binding("n,escape,q", "answer(False)", "no"),
    ]

    def __init__(self, plan: top.Plan) -> None:
        super().__init__()
        self.plan = plan

    def compose(self) -> ComposeResult:
        plan = self.plan
        lines = [Text(f"{VERBS[plan.action]} {plan.label}?", style="bold")]
        if plan.pids:
            lines.append(Text(f"will signal {len(plan.pids)} session(s): pids {' '.join(map(str, plan.pids))}"))
        else:
            lines.append(Text("nothing to signal"))
        if plan.left_out:
            by_reason: dict[str, list[int]] = {}
            for pid, why in plan.left_out:
                by_reason.setdefault(why, []).append(pid)
            for why, pids in by_reason.items():
                lines.append(Text(f"left out ({why}): pids {' '.join(map(str, pids))}"))
        lines.append(Text("y: signal   n / Esc: keep them", style="bold" if plan.pids else "dim"))
        with VerticalScroll(id="confirm"):  # a group of hundreds of sessions lists hundreds of pids
            for line in lines:
                yield Static(line)

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes and bool(self.plan.pids))


class DetailScreen(Screen[None]):
    """A table refreshed with each frame: a group's sessions, or the lock forest."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape,backspace", "back", "back")]

    def action_back(self) -> None:
        self.app.pop_screen()

    def on_mount(self) -> None:
        """Drawn at once from the frame on screen, not at the next refresh."""
        app = self.app
        assert isinstance(app, TopApp)
        if app.frame is not None:
            self.show(app.frame)

    def show(self, frame: Frame) -> None:
        raise NotImplementedError


class GroupScreen(DetailScreen):
    """The sessions of one group (or of the untagged row): pid, user, database, state, wait, durations, query."""

    COLUMNS = ("PID", "USER", "DB", "STATE", "WAIT", "QUERY", "XACT", "CONN", "QUERY TEXT")

    def __init__(self, parent: str | None, read_only: bool) -> None:
        super().__init__()
        self.parent_tag = parent
        self.read_only = read_only
        self.queries: dict[int, str] = {}

    def compose(self) -> ComposeResult:
        yield Static(id="title")
        yield Static(id="banner")
        table: DataTable[str] = DataTable(id="sessions", cursor_type="row", zebra_stripes=True)
        table.add_columns(*self.COLUMNS)
        yield table
        yield Static(id="result")
        yield Footer(compact=True)

    def show(self, frame: Frame) -> None:
        assessed = frame.assessed
        found = top.session_rows(assessed.grouped, assessed.snapshot, self.parent_tag)
        label = self.parent_tag or top.UNTAGGED
        self.query_one("#title", Static).update(Text(f"{label}: {len(found)} session(s)", style="bold"))
        table = self.query_one("#sessions", DataTable)
        keep = _selected_key(table)
        table.clear()
        self.queries = {}
        for r in found:
            self.queries[r.pid] = r.query
            excerpt = " ".join(r.query.split())[:QUERY_EXCERPT]
            table.add_row(str(r.pid), r.user or "-", r.database or "-", r.state or "?", r.wait or "-",
                          seconds(r.query_seconds), seconds(r.transaction_seconds), seconds(r.connected_seconds),
                          excerpt, key=str(r.pid))
        _reselect(table, keep)

    def selected_pid(self) -> int | None:
        key = _selected_key(self.query_one("#sessions", DataTable))
        return int(key) if key is not None else None

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        pid = int(str(event.row_key.value))
        self.app.push_screen(QueryScreen(pid, self.queries.get(pid, "")))


class LocksScreen(DetailScreen):
    """The blocking forest, as `pgparent locks` prints it."""

    def compose(self) -> ComposeResult:
        yield Static(Text("lock forest: root blockers and who waits on them", style="bold"))
        yield Static(id="banner")
        with ScrollableContainer():
            yield Static(id="forest")
        yield Footer(compact=True)

    def show(self, frame: Frame) -> None:
        lines = render.locks_table(frame.assessed.grouped, frame.assessed.snapshot)
        forest = self.query_one("#forest", Static)
        forest.styles.width = max(len(line) for line in lines)  # as wide as its longest line: it scrolls, never wraps
        forest.update(Text("\n".join(lines), no_wrap=True, overflow="ignore"))


class FilterScreen(ModalScreen[str | None]):
    """The `/` prompt: a glob on the tag (empty: every group)."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "cancel")]

    def __init__(self, pattern: str) -> None:
        super().__init__()
        self.pattern = pattern

    def compose(self) -> ComposeResult:
        with Vertical(id="filter"):
            yield Static("filter tags by glob (Enter: apply, empty: all, Esc: cancel)")
            yield Input(value=self.pattern, placeholder="e.g. etl:* or billing")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip())

    def action_cancel(self) -> None:
        self.dismiss(None)


def _selected_key(table: DataTable[Any]) -> str | None:
    if table.row_count == 0:
        return None
    try:
        return str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)
    except CellDoesNotExist:  # a cursor past the rows (they shrank): nothing selected
        return None


def _reselect(table: DataTable[Any], key: str | None) -> None:
    """Keep the cursor on the same row across a refresh (the rows are rebuilt each time)."""
    if key is None:
        return
    try:
        table.move_cursor(row=table.get_row_index(key), animate=False)
    except RowDoesNotExist:  # the row is gone: the cursor stays where it was
        return


class TopApp(App[int]):
    """The live view. `live` polls; `interval` seconds between refreshes; `read_only` leaves out `c` and `t`."""

    TITLE = "pgparent top"
    ENABLE_COMMAND_PALETTE = False
    CSS = """
    Screen { layout: vertical; }
    #server { height: 1; background: $primary-background; color: $text; }
    #banner { height: auto; display: none; }
    #banner.lost { background: $error; color: $text; text-style: bold; }
    #status { height: 1; color: $text-muted; }
    #result { height: auto; text-style: bold; display: none; }
    DataTable, RowTable { height: 1fr; }
    #confirm, #filter { width: 90%; height: auto; max-height: 80%; border: heavy $warning; background: $surface;
                        padding: 0 1; }
    ConfirmScreen, FilterScreen, QueryScreen { align: center middle; }
    #query { width: 95%; height: 90%; border: heavy $accent; background: $surface; padding: 0 1; }
    """

    def __init__(self, live: Live, interval: float, *, read_only: bool = False) -> None:
        super().__init__()
        self.live = live
        self.interval = interval
        self.read_only = read_only
        self.choice = View()
        self.frame: Frame | None = None
        self.lost: str | None = None
        self.refreshes = 0
        """Polls completed (or failed): what a test waits on before saying something did not happen."""
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pgparent-top")
        self._polling = threading.Event()
        self.events = get_logger("pgparent.top").bind(target=live.target)

    # The keys, shown in the footer. The signal keys exist only without --read-only.
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "quit"),
        Binding("o", "open", "open", key_display="⏎"),
        Binding("slash", "filter", "filter"),
        Binding("greater_than_sign,s", "sort(1)", "sort", key_display="<>"),
        Binding("less_than_sign", "sort(-1)", "sort back", show=False),
        Binding("r", "reverse", "reverse"),
        Binding("l", "locks", "locks"),
        Binding("p", "pause", "pause"),
        Binding("c", "signal('cancel')", "cancel"),
        Binding("t", "signal('terminate')", "terminate"),
    ]

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """No signal keys in --read-only (they are not shown either); none on a screen that is not the main one or
        a group's."""
        if action == "signal":
            return not self.read_only and not isinstance(self.screen, (LocksScreen, ModalScreen))
        return True

    def compose(self) -> ComposeResult:
        yield Static(Text("connecting..."), id="server")
        yield Static(id="banner")
        yield RowTable(id="groups")
        yield Static(id="result")
        yield Static(id="status")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self._set_columns(cost=False, proc=False)
        self.poll()
        self.set_interval(self.interval, self.poll)

    def _submit(self, work: Callable[[], T], done: Callable[[Future[T]], None]) -> None:
        def deliver(future: Future[T]) -> None:
            if self.is_running:  # a poll that ends after `q` has no screen to go to
                self.call_from_thread(done, future)

        self._pool.submit(work).add_done_callback(deliver)

    def poll(self) -> None:
        """Start a poll unless paused or the previous one is still running (then this refresh is skipped)."""
        if self.choice.paused or self._polling.is_set():
            return
        self._polling.set()
        self._submit(self.live.poll, self._polled)

    def _polled(self, future: Future[Frame]) -> None:
        self._polling.clear()
        self.refreshes += 1
        try:
            frame = future.result()
        except DatabaseUnavailable as exc:
            self._lose(str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - the loop's edge: logged with its traceback, shown as one line, never raised
            self.events.exception("top_refresh_failed")
            self._lose(f"refresh failed: {type(exc).__name__}: {exc}")
            return
        if self.lost is not None:
            self.events.info("top_reconnected")
        self.lost = None
        self.frame = frame
        self._show_banner()
        self._show(frame)

    def _lose(self, why: str) -> None:
        if self.lost is None:
            self.events.warning("top_connection_lost", detail=why)
        self.lost = why
        self._show_banner()

    def _show_banner(self) -> None:
        text = "" if self.lost is None else f"connection lost, reconnecting every {self.interval:g}s: {self.lost}"
        for screen in (self.screen_stack[0], self.screen):
            for banner in screen.query("#banner").results(Static):
                banner.update(Text(text))
                banner.set_class(self.lost is not None, "lost")
                banner.display = self.lost is not None

    def _show(self, frame: Frame) -> None:
        h = frame.header
        role = "standby (in recovery)" if h.in_recovery else "primary"
        c = h.capacity
        usable = "" if c is None else f"connections {c.in_use}/{c.usable}, headroom {c.headroom}"
        line = Text(f"PostgreSQL {h.version.split(' ')[0]}  {role}  {usable}", style="bold")
        if self.choice.paused:
            line.append("  PAUSED", style="bold reverse")
        self.screen_stack[0].query_one("#server", Static).update(line)
        cost = frame.assessed.cost
        self._set_columns(cost=frame.seconds is not None, proc=cost is not None and cost.sources.available("proc"))
        all_rows = top.rows(frame.assessed.grouped, frame.figures)
        shown = top.arrange(all_rows, self.choice.sort, self.choice.descending, self.choice.pattern)
        self.screen_stack[0].query_one("#groups", RowTable).show_rows(*layout(shown, self.choice.columns))
        groups = sum(1 for r in all_rows if r.parent is not None)
        listed = f"{sum(1 for r in shown if r.parent is not None)} of {groups} group(s)"
        where = f" matching {self.choice.pattern!r}" if self.choice.pattern else ""
        order = f"sorted by {top.BY_KEY[self.choice.sort].title} {'desc' if self.choice.descending else 'asc'}"
        self._status(f"{listed}{where}; {order}; every {self.interval:g}s, refresh {self.refreshes}")
        if isinstance(self.screen, DetailScreen):
            self.screen.show(frame)

    def _status(self, text: str) -> None:
        self.screen_stack[0].query_one("#status", Static).update(Text(text))

    def _said(self, text: str) -> None:
        """The outcome of the last signal request: it stays on its line until the next one."""
        for screen in self.screen_stack:
            for result in screen.query("#result").results(Static):
                result.update(Text(text))
                result.display = True

    def _set_columns(self, *, cost: bool, proc: bool) -> None:
        """The columns whose figures exist: LOAD from the second refresh; CPU and MEM where /proc shows the server."""
        wanted = tuple(c for c in top.COLUMNS if not c.cost or (c.key == "load" and cost)
                       or (c.key == "cpu" and cost and proc) or (c.key == "memory" and proc))
        if wanted == self.choice.columns:
            return
        self.choice.columns = wanted

    def action_open(self) -> None:
        if isinstance(self.screen, GroupScreen):
            return  # its table's own Enter opens the query
        key = self.screen_stack[0].query_one("#groups", RowTable).selected
        if key is not None and self.screen is self.screen_stack[0]:
            self.push_screen(GroupScreen(parent_of_key(key), self.read_only))

    def on_row_table_chosen(self, event: RowTable.Chosen) -> None:
        self.action_open()

    def action_filter(self) -> None:
        if self.screen is not self.screen_stack[0]:
            return

        def apply(pattern: str | None) -> None:
            if pattern is not None:
                self.choice.pattern = pattern
                self._redraw()

        self.push_screen(FilterScreen(self.choice.pattern), apply)

    def action_sort(self, step: int) -> None:
        self.choice.shift(step)
        self._redraw()

    def action_reverse(self) -> None:
        self.choice.descending = not self.choice.descending
        self._redraw()

    def action_pause(self) -> None:
        self.choice.paused = not self.choice.paused
        self._redraw()
        if not self.choice.paused:
            self.poll()

    def action_locks(self) -> None:
        if not isinstance(self.screen, LocksScreen):
            self.push_screen(LocksScreen())

    def _redraw(self) -> None:
        if self.frame is not None:
            self._show(self.frame)

    def action_signal(self, action: SignalAction) -> None:
        """Confirm, then signal, the selected group (main view) or session (a group's view)."""
        frame = self.frame
        if frame is None or self.read_only:
            return
        assessed = frame.assessed
        if isinstance(self.screen, GroupScreen):
            parent, pid = self.screen.parent_tag, self.screen.selected_pid()
            if pid is None:
                return
        else:
            key = self.screen_stack[0].query_one("#groups", RowTable).selected
            if key is None:
                return
            parent, pid = parent_of_key(key), None
        plan = top.plan(assessed.grouped, assessed.snapshot, parent, action, self.live.config.protect, pid)

        def answered(yes: bool | None) -> None:
            if not yes:
                self._said(f"{VERBS[action]} {plan.label}: nothing signalled")
                return
            self._said(f"{VERBS[action]} {plan.label}: signalling {len(plan.pids)} session(s)...")
            self._submit(lambda: carry_out(self.live.db, plan.decision, assessed.snapshot.now, self.live.target),
                         lambda f: self._signalled(plan, f))

        self.push_screen(ConfirmScreen(plan), answered)

    def _signalled(self, plan: top.Plan, future: Future[dict[int, str]]) -> None:
        try:
            results = future.result()
        except DatabaseUnavailable as exc:
            self._said(f"{VERBS[plan.action]} {plan.label}: not sent: {exc}")
            return
        except Exception as exc:  # noqa: BLE001 - the loop's edge, as for a poll
            self.events.exception("top_signal_failed")
            self._said(f"{VERBS[plan.action]} {plan.label}: failed: {type(exc).__name__}")
            return
        counts: dict[str, list[int]] = {}
        for pid, result in results.items():
            counts.setdefault(RESULTS.get(result, result), []).append(pid)
        said = "; ".join(f"{what} {len(p)} (pids {' '.join(map(str, p))})" for what, p in counts.items())
        self._said(f"{VERBS[plan.action]} {plan.label}: {said or 'nothing sent'}")
        self.poll()

    async def action_quit(self) -> None:
        self.exit(0)

    def shut(self) -> None:
        """After the app: let the last poll finish, then close the connection (on the thread that used it)."""
        self._pool.submit(self.live.close)
        self._pool.shutdown(wait=True, cancel_futures=False)


def run_top(live: Live, interval: float, *, read_only: bool = False) -> int:
    """Run the view until `q`; its exit code."""
    app = TopApp(live, interval, read_only=read_only)
    try:
        app.run()
    finally:
        app.shut()
    return app.return_code if app.return_code is not None else 0
