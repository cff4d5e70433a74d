"""What Linux's /proc says about one process: the CPU time it has used, its threads, its open sockets, its memory."""

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
    """The process's threads now (/proc/PID/task)."""
    return len(os.listdir(f"/proc/{pid}/task"))


def socket_count(pid: int) -> int:
    """Sockets the process holds open (its listeners, its PostgreSQL connections, its clients' connections)."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):  # a descriptor closed between the listing and the read
            count += os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:")
    return count


def _status_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / 1024, 1)  # in kB
    return 0.0


def rss_mb(pid: int) -> float:
    """Resident memory now, in MB (VmRSS); 0.0 for a process that has none (a zombie)."""
    return _status_mb(pid, "VmRSS")


def rss_anon(pid: int) -> int | None:
    """The process's private memory in bytes (RssAnon: what it allocated, not the shared pages it touched), read
    independently of pgparent; None once it has gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return None


def peak_rss_mb(pid: int) -> float:
    """The most resident memory the process has had, in MB (VmHWM)."""
    return _status_mb(pid, "VmHWM")
