"""A real terminal: a tmux server of its own (its own socket), one window running a command in a shell, keys typed
with `send-keys` and the screen read with `capture-pane`, as a person at that terminal would. The tests drive
`pgparent top` through it; the benchmark measures it running in one."""

from __future__ import annotations

import os
import shlex
import subprocess
import uuid
from collections.abc import Sequence

from harness.waiting import eventually


class Terminal:
    """A `width`x`height` tmux window running `command` in sh; after it ends, the shell prints `exit=CODE` and
    stays, so the test can check the terminal still works."""

    def __init__(self, command: Sequence[str], *, width: int = 100, height: int = 30,
                 env: dict[str, str] | None = None) -> None:
        self.socket = f"pgparent-test-{uuid.uuid4().hex[:12]}"
        clean = {k: v for k, v in os.environ.items()
                 if not k.startswith(("PG", "DATA_SOURCE_NAME", "TMUX")) and k not in ("COLUMNS", "LINES")}
        self.env = {**clean, "TERM": "xterm-256color", **(env or {})}
        line = f"{shlex.join(command)}; echo exit=$?; exec sh"
        self._tmux("new-session", "-d", "-x", str(width), "-y", str(height), "sh", "-c", line)

    def _tmux(self, *args: str) -> str:
        done = subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=30,
                              env=self.env)
        if done.returncode != 0:
            raise AssertionError(f"tmux {args[0]}: {done.stderr.strip()}")
        return done.stdout

    def screen(self) -> str:
        """What the window shows now."""
        return self._tmux("capture-pane", "-p")

    def colours(self) -> str:
        """What the window shows now, with its colours and attributes as SGR escape sequences (trailing cells kept:
        they carry the background)."""
        return self._tmux("capture-pane", "-p", "-e", "-N")

    def lines(self) -> list[str]:
        return self.screen().splitlines()

    def keys(self, *keys: str, literal: bool = False) -> None:
        """Type `keys` (tmux key names: Enter, Escape, Down; or, `literal`, the characters as they are)."""
        self._tmux("send-keys", *(("-l",) if literal else ()), *keys)

    def wait_for(self, text: str, timeout: float = 30.0) -> str:
        """The screen once it shows `text`."""
        def shown() -> str:
            screen = self.screen()
            assert text in screen, f"{text!r} not on screen:\n{screen}"
            return screen

        return eventually(shown, timeout=timeout, what=f"{text!r} on screen")

    def wait_gone(self, text: str, timeout: float = 30.0) -> str:
        def gone() -> str:
            screen = self.screen()
            assert text not in screen, f"{text!r} still on screen:\n{screen}"
            return screen

        return eventually(gone, timeout=timeout, what=f"{text!r} gone from the screen")

    def row(self, tag: str) -> list[str] | None:
        """The cells of the row whose first cell is `tag`, as shown."""
        return next((line.split() for line in self.lines() if line.split()[:1] == [tag]), None)

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=30, env=self.env)

    def pid(self) -> int:
        """The pid of the window's process (the shell, or the command when it was `exec`ed)."""
        return int(self._tmux("display-message", "-p", "#{pane_pid}").strip())
