"""Figures the tests measure on the way (recovery times, shutdown times, scrape latencies) for docs/RELIABILITY.md.

They are recorded, never asserted beyond each test's own bound: the machines are shared, and a figure only says what
it was on this run. Several processes may record at once (pytest-xdist's workers), so the file is updated under a
lock on itself.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def figures_path() -> Path:
    """Where tests record measured figures: $PGPARENT_FIGURES, else .pytest_cache/pgparent-figures.json."""
    default = REPO / ".pytest_cache" / "pgparent-figures.json"
    return Path(os.environ.get("PGPARENT_FIGURES", str(default)))


def record_figure(section: str, **values: float | int | str) -> None:
    """Merge measured values into the figures file under `section`, and print them for the test log."""
    path = figures_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file is closed
        f.seek(0)
        try:
            data = json.loads(f.read())
        except json.JSONDecodeError:
            data = {}
        data.setdefault(section, {}).update(values)
        f.seek(0)
        f.truncate()
        f.write(json.dumps(data, indent=2, sort_keys=True))
    print(f"figure {section}: {values}")
