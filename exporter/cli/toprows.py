"""The groups' table of `pgparent top`: each row as one line of text, laid out once per refresh (`layout`), and
`RowTable`, the widget that draws only the lines on screen (a group's sessions, far fewer, stay in a DataTable).
"""

from __future__ import annotations

from typing import ClassVar

from rich.style import Style
from rich.text import Text
from textual import events
from textual.binding import Binding, BindingType
from textual.geometry import Size
from textual.message import Message
from textual.scroll_view import ScrollView
from textual.strip import Strip

from exporter.cli import render
from exporter.core import top


def seconds(value: float | None) -> str:
    return "-" if value is None else render.fmt_seconds(value)


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


UNTAGGED_KEY = "u"
"""The row key of the untagged row; a group's is "g" and its tag, so no tag can be taken for it."""


def row_key(row: top.Row) -> str:
    return UNTAGGED_KEY if row.parent is None else f"g{row.parent}"


def parent_of_key(key: str) -> str | None:
    return None if key == UNTAGGED_KEY else key[1:]


LEFT = frozenset({"tag", "source"})
"""Columns of text, aligned left; the figures align right."""


def _values(row: top.Row) -> dict[str, str]:
    return {
        "tag": row.label, "sessions": str(row.sessions), "active": str(row.active), "idle": str(row.idle),
        "idle_tx": str(row.idle_in_transaction), "waiting": str(row.waiting), "blocking": str(row.blocking),
        "blocked": str(row.blocked), "query": seconds(row.longest_query),
        "transaction": seconds(row.longest_transaction), "load": _figure(row.load), "cpu": _figure(row.cpu),
        "memory": render.fmt_bytes(row.memory), "source": row.source,
    }


def layout(rows: list[top.Row], columns: tuple[top.Column, ...]) -> tuple[Text, list[tuple[str, Text]]]:
    """The heading and each row as one line of text, every column as wide as its widest cell, one space before each;
    a group that blocks others has that count reversed, one that is blocked that count bold, the untagged tag is
    italic: they read without colour."""
    keys = [c.key for c in columns]
    cells = [[v[k] for k in keys] for v in map(_values, rows)]
    widths = [max([len(c.title), *(len(line[i]) for line in cells)]) for i, c in enumerate(columns)]
    starts = [sum(widths[:i]) + i + 1 for i in range(len(widths))]

    def line(values: list[str]) -> str:
        return "".join(" " + (v.ljust(w) if k in LEFT else v.rjust(w)) for v, w, k in zip(values, widths, keys,
                                                                                             strict=True))

    heading = Text(line([c.title for c in columns]))
    out = []
    styled = [(keys.index(k), style) for k, style in (("blocking", "bold reverse"), ("blocked", "bold"))
              if k in keys]
    for row, values in zip(rows, cells, strict=True):
        text = Text(line(values))
        for i, style in styled:
            if values[i] != "0":
                text.stylize(style, starts[i], starts[i] + widths[i])
        if row.parent is None:
            text.stylize("italic", starts[0], starts[0] + widths[0])
        out.append((row_key(row), text))
    return heading, out


class RowTable(ScrollView, can_focus=True):
    """The groups, one line each under a heading line that stays put: a Line API widget that draws only the lines
    on screen, from text laid out once per refresh.

    Its own widget rather than Textual's DataTable because of a measured goal (10% of a core at 1000 sessions and a 1 s
    refresh, bench/top.py): DataTable measures every cell of every row it is given through Rich at each refresh,
    which at 250 groups took more than the poll did.
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("up", "move(-1)", "up", show=False),
        Binding("down", "move(1)", "down", show=False),
        Binding("pageup", "page(-1)", "page up", show=False),
        Binding("pagedown", "page(1)", "page down", show=False),
        Binding("home", "move(-1000000000)", "first", show=False),
        Binding("end", "move(1000000000)", "last", show=False),
        Binding("enter", "choose", "open", show=False),
    ]

    class Chosen(Message):
        """Enter (or a click) on a row."""

        def __init__(self, key: str) -> None:
            super().__init__()
            self.key = key

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.heading = Text()
        self.keys: list[str] = []
        self.texts: list[Text] = []
        self.cursor = 0
        self._strips: dict[int, Strip] = {}

    def show_rows(self, heading: Text, rows: list[tuple[str, Text]]) -> None:
        """Replace the rows (key, line), keeping the cursor on the row it was on while that row is still there."""
        kept = self.selected
        self.heading = heading
        self.keys = [key for key, _ in rows]
        self.texts = [text for _, text in rows]
        self._strips = {}
        if kept in self.keys:
            self.cursor = self.keys.index(kept)
        self.cursor = max(0, min(self.cursor, len(self.keys) - 1))
        width = max([heading.cell_len, *(t.cell_len for t in self.texts)])
        self.virtual_size = Size(width, len(self.texts) + 1)
        self._keep_in_view()
        self.refresh()

    @property
    def selected(self) -> str | None:
        return self.keys[self.cursor] if self.keys else None

    def select(self, key: str) -> None:
        if key in self.keys:
            self.cursor = self.keys.index(key)
            self._keep_in_view()
            self.refresh()

    def _keep_in_view(self) -> None:
        rows = max(self.size.height - 1, 1)
        top = self.scroll_offset.y
        if self.cursor < top:
            self.scroll_to(y=self.cursor, animate=False)
        elif self.cursor >= top + rows:
            self.scroll_to(y=self.cursor - rows + 1, animate=False)

    def action_move(self, step: int) -> None:
        if self.keys:
            self.cursor = max(0, min(self.cursor + step, len(self.keys) - 1))
            self._keep_in_view()
            self.refresh()

    def action_page(self, step: int) -> None:
        self.action_move(step * max(self.size.height - 1, 1))

    def action_choose(self) -> None:
        if self.selected is not None:
            self.post_message(self.Chosen(self.selected))

    def on_click(self, event: events.Click) -> None:
        row = self.scroll_offset.y + event.y - 1
        if event.y >= 1 and 0 <= row < len(self.keys):
            self.cursor = row
            self.refresh()
            if event.chain > 1:
                self.action_choose()

    def render_line(self, y: int) -> Strip:
        scroll_x, scroll_y = self.scroll_offset
        width, base = self.size.width, self.rich_style
        if y == 0:
            strip = Strip(self.heading.render(self.app.console)).apply_style(base + HEADING)
        else:
            row = scroll_y + y - 1
            if row >= len(self.texts):
                return Strip.blank(width, base)
            strip = self._strip(row).apply_style(base)
            if row == self.cursor:
                strip = strip.apply_style(CURSOR if self.has_focus else CURSOR_UNFOCUSED)
        return strip.crop_extend(scroll_x, scroll_x + width, base)

    def _strip(self, row: int) -> Strip:
        strip = self._strips.get(row)
        if strip is None:
            strip = self._strips[row] = Strip(self.texts[row].render(self.app.console))
        return strip


HEADING = Style(bold=True, underline=True)
CURSOR = Style(reverse=True, bold=True)
CURSOR_UNFOCUSED = Style(reverse=True)
