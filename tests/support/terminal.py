"""A real terminal for a test (harness/terminal.py: tmux, its own socket), closed when the test ends; and the
command line of `pgparent top` to run in it."""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.terminal import Terminal

__all__ = ["Terminal", "terminal", "top_command"]


def top_command(dsn: str, log: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "exporter", "top", "--dsn", dsn, "--log.file", str(log), *args]


@pytest.fixture
def terminal() -> Iterator[type[Terminal]]:
    """Open terminals with `terminal(command, ...)`; each is closed when the test ends."""
    if shutil.which("tmux") is None:
        missing = "tmux is not installed (scripts/setup --test-tools installs it)"
        if os.environ.get("CI") == "true":
            pytest.fail(missing)
        pytest.skip(missing)
    opened: list[Terminal] = []

    class Opened(Terminal):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            opened.append(self)

    try:
        yield Opened
    finally:
        for t in opened:
            t.close()
