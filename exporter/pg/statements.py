"""The SQL pgparent runs, one `.sql` file a statement (queries/), loaded once by name."""

from __future__ import annotations

from functools import cache
from importlib.resources import files


@cache
def load_query(name: str) -> str:
    """The text of `queries/<name>.sql`, read once, without its leading comment lines (they document the file, and
    need not travel to the server or show up in pg_stat_activity)."""
    text = files("exporter.pg").joinpath("queries", f"{name}.sql").read_text(encoding="utf-8")
    lines = text.splitlines()
    while lines and (not lines[0].strip() or lines[0].lstrip().startswith("--")):
        lines.pop(0)
    return "\n".join(lines) + "\n"
