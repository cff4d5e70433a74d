"""The `pgparent` command as a user runs it: a process of its own, with none of this environment's libpq settings."""

from __future__ import annotations

import os
import subprocess
import sys


def pgparent(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `pgparent ARGS...` to its end: its exit status, standard output and error. PG* and DATA_SOURCE_NAME are
    removed from the environment (they would stand in for a missing --dsn), then `env` added."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PG", "DATA_SOURCE_NAME"))}
    return subprocess.run([sys.executable, "-m", "exporter", *args], capture_output=True, text=True, timeout=timeout,
                          env={**clean, **(env or {})})
