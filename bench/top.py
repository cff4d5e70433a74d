"""The top part (`--only top`): what `pgparent top` costs the machine it runs on, in a real terminal.

At N sessions (bench.harness.Sessions: 4 per tagged group, a tenth more untagged, a quarter running pg_sleep) on a
throwaway server, `pgparent top --interval 1s` runs in a tmux window of 200x50 (a large terminal: the most rows
drawn); after a warm-up, its CPU time (utime + stime of its process) over a window against the wall time, its
resident memory, and the refreshes it drew in the window (its status line counts them: one poll each).

`run` returns the part's figures: results.json's `top`.
"""

from __future__ import annotations

import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import Sessions, cpu_seconds, rss_mb, server
from harness.terminal import Terminal
from harness.waiting import eventually

SIZE = (200, 50)
INTERVAL = 1.0


def _refresh(term: Terminal) -> int | None:
    found = re.findall(r"refresh (\d+)", term.screen())
    return int(found[-1]) if found else None


def run(sessions: int = 1000, window: float = 60.0, warmup: float = 5.0) -> dict[str, Any]:
    """`pgparent top` at `sessions` tagged sessions (and a tenth more untagged), measured over `window` seconds."""
    with server(max_connections=str(sessions * 2 + 100), shared_buffers="128MB") as cluster, \
            tempfile.TemporaryDirectory(prefix="pgparent-top-") as tmp:
        clients = Sessions(cluster.dsn, tag="Top")
        try:
            clients.grow_to(sessions)
            command = [sys.executable, "-m", "exporter", "top", "--dsn", cluster.dsn, "--interval", f"{INTERVAL:g}s",
                       "--log.file", str(Path(tmp) / "top.log")]
            term = Terminal(["exec", *command], width=SIZE[0], height=SIZE[1])
            try:
                eventually(lambda: (_refresh(term) or 0) >= 2, timeout=60, what="top's second refresh")
                pid = term.pid()
                time.sleep(warmup)  # a measurement window, not a wait for an event
                cpu0, wall0, refresh0 = cpu_seconds(pid), time.monotonic(), _refresh(term)
                time.sleep(window)
                cpu1, wall1, refresh1 = cpu_seconds(pid), time.monotonic(), _refresh(term)
                rss = rss_mb(pid)
            finally:
                term.close()
        finally:
            clients.close()
        assert refresh0 is not None and refresh1 is not None
        elapsed = wall1 - wall0
        return {
            "sessions": len(clients.conns), "tagged_groups": len({i // 4 for i in range(len(clients.conns)) if i % 11}),
            "postgresql": cluster.binaries.major, "interval_s": INTERVAL, "window_s": round(elapsed, 1),
            "terminal": f"{SIZE[0]}x{SIZE[1]}", "cpu_pct": round(100 * (cpu1 - cpu0) / elapsed, 1),
            "refreshes": refresh1 - refresh0, "rss_mb": round(rss, 1),
        }
