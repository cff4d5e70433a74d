"""Draw docs/top.png: `pgparent top` from a real run, as the terminal showed it.

Starts a throwaway PostgreSQL with tagged sessions (a few jobs' sessions running, idle and idle in a transaction, one
holding a lock two others of another job wait on, a few untagged), runs `pgparent top` in a tmux window of
--size (default 100x30), waits for a refresh with the LOAD column, reads the window with its colours
(`tmux capture-pane -e`) and draws each cell, its colours and weight, in DejaVu Sans Mono with Pillow.

Usage: .venv/bin/python scripts/render_top.py [--output docs/top.png] [--size 100x30]
Needs Pillow (with matplotlib, the bench extra: .venv/bin/python -m pip install -e '.[bench]'), tmux and the DejaVu
fonts (Debian: fonts-dejavu-core).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import threading
from pathlib import Path

import psycopg
from PIL import Image, ImageDraw, ImageFont
from rich.color import Color
from rich.console import Console
from rich.text import Text

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from exporter.pgcluster import start_cluster  # noqa: E402
from harness.terminal import Terminal  # noqa: E402
from harness.waiting import eventually  # noqa: E402

FONTS = Path("/usr/share/fonts/truetype/dejavu")
FONT_SIZE = 15
DEFAULT_FG, DEFAULT_BG = (224, 224, 224), (18, 18, 18)
"""Where the capture names no colour: Textual's dark theme's text and background."""

JOBS = (
    # tag, sessions, statement (None: connected and idle)
    ("nightly-etl:42", 6, "SELECT pg_sleep(600)"),
    ("billing:7", 3, "BEGIN; SELECT 1"),
    ("web:api", 8, None),
    ("reports:monthly", 2, "SELECT count(*) FROM generate_series(1, 200000000)"),
)


def seed(dsn: str) -> list[psycopg.Connection[tuple[object, ...]]]:
    """The sessions the picture shows; kept open until the caller closes them."""
    conns: list[psycopg.Connection[tuple[object, ...]]] = []

    def connect(tag: str) -> psycopg.Connection[tuple[object, ...]]:
        conn = psycopg.connect(dsn, autocommit=True, application_name=tag)
        conns.append(conn)
        return conn

    connect("setup").execute("CREATE TABLE IF NOT EXISTS ledger (id int PRIMARY KEY, total int)")
    conns[0].execute("INSERT INTO ledger VALUES (1, 0) ON CONFLICT DO NOTHING")
    for tag, n, statement in JOBS:
        for _ in range(n):
            conn = connect(tag)
            if statement is not None:
                conn.pgconn.send_query(statement.encode())
    holder = connect("migrate:v31")
    holder.execute("BEGIN")
    holder.execute("LOCK TABLE ledger IN ACCESS EXCLUSIVE MODE")
    for _ in range(2):
        connect("billing:7").pgconn.send_query(b"UPDATE ledger SET total = total + 1 WHERE id = 1")
    for _ in range(3):
        connect("psql")
    return conns


def _rgb(color: Color | None, default: tuple[int, int, int]) -> tuple[int, int, int]:
    if color is None or color.is_default:
        return default
    triplet = color.get_truecolor()
    return (triplet.red, triplet.green, triplet.blue)


def draw(ansi_lines: list[str], width: int, output: Path) -> None:
    """Each cell of the captured screen in its colours, bold where it was bold."""
    regular = ImageFont.truetype(str(FONTS / "DejaVuSansMono.ttf"), FONT_SIZE)
    bold = ImageFont.truetype(str(FONTS / "DejaVuSansMono-Bold.ttf"), FONT_SIZE)
    ascent, descent = regular.getmetrics()
    cell_w, cell_h = round(regular.getlength("M")), ascent + descent + 2
    image = Image.new("RGB", (cell_w * width + 16, cell_h * len(ansi_lines) + 16), DEFAULT_BG)
    pen = ImageDraw.Draw(image)
    console = Console(width=width * 2, color_system="truecolor")
    for y, line in enumerate(ansi_lines):
        x = 0
        for segment in Text.from_ansi(line).render(console):
            style = segment.style
            fg = _rgb(style.color if style else None, DEFAULT_FG)
            bg = _rgb(style.bgcolor if style else None, DEFAULT_BG)
            if style is not None and style.reverse:
                fg, bg = bg, fg
            font = bold if style is not None and style.bold else regular
            for char in segment.text:
                if char == "\n":
                    continue
                px, py = 8 + x * cell_w, 8 + y * cell_h
                pen.rectangle((px, py, px + cell_w, py + cell_h), fill=bg)
                pen.text((px, py + 1), char, font=font, fill=fg)
                x += 1
    image.save(output, optimize=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "top.png")
    parser.add_argument("--size", default="100x30", help="the terminal, COLUMNSxLINES")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    cluster = start_cluster(settings={"max_connections": "100"})
    conns: list[psycopg.Connection[tuple[object, ...]]] = []
    try:
        conns = seed(cluster.dsn)
        with tempfile.TemporaryDirectory(prefix="pgparent-top-") as tmp:
            command = [sys.executable, "-m", "exporter", "top", "--dsn", cluster.dsn, "--interval", "1s",
                       "--log.file", str(Path(tmp) / "top.log")]
            term = Terminal(command, width=width, height=height, env={"COLORTERM": "truecolor"})
            try:
                eventually(lambda: "LOAD" in term.screen() and "billing:7" in term.screen(), timeout=60,
                           what="a refresh with the cost columns")
                eventually(lambda: "refresh 4" in term.screen(), timeout=60, what="the fourth refresh")
                draw(term.colours().splitlines()[:height], width, args.output)
            finally:
                term.close()
    finally:
        for conn in conns:
            threading.Thread(target=conn.pgconn.finish, daemon=True).start()
        cluster.destroy()
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
