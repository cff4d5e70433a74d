"""What Linux's /proc says about one process: the CPU time it has used, its threads, its open sockets.

The HTTP-face benchmark and the HTTP-face tests read the daemon from the outside with these."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time the process has used, in seconds (utime + stime of /proc/PID/stat)."""
    # The command name in parentheses may hold spaces: the fields are counted from after its closing one.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def thread_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def socket_count(pid: int) -> int:
    """Sockets the process holds open (its listeners, its PostgreSQL connections, its clients' connections)."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # a descriptor closed between the listing and the read
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
    return count
