"""The monitored server's processes as Linux's /proc shows them, and the memory its host (or its cgroup) has; read
only where pgparent sees the server's own processes, and for a backend only once it is proven to be that backend.

`find_server` starts from pgparent's own backend (its pid and backend_start, from the server): that pid must be a
process here that started when the backend did, and its parent (the postmaster) must have started when the server
did (pg_postmaster_start_time). Otherwise the server's processes are not these (another host, container or PID
namespace, a managed service, hidepid) and no figure is read at all. `ServerProcesses.read` then reads each wanted
backend's /proc/<pid>/statm (memory), /proc/<pid>/io (bytes read and written, where readable) and, last,
/proc/<pid>/stat (CPU, and the proof: its start time agrees with the session's backend_start and its parent is the
postmaster). A process alive at the stat read and at the poll's snapshot before it was alive between them, so the
files read before it were its own: a pid is never another process's until its process has exited.

Files are read with os.open / os.read / os.close on byte paths: the cheapest way Python has (the poll's share of it
is a goal of the benchmark, bench/cost.py).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from exporter.core.cost import START_SLACK, HostMemory, ProcSample, Sources, is_backend

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
POSTMASTER_SLACK = 10.0
"""Seconds between the postmaster's process start and pg_postmaster_start_time() that still prove it the server's:
the server takes its start time after reading its configuration and creating its shared memory."""
PROC = Path("/proc")
CGROUP = Path("/sys/fs/cgroup")


def boot_time() -> float:
    """The Unix time this kernel booted, to the microsecond: what a process's start time counts from (/proc/stat's
    btime has whole seconds only)."""
    return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


def _read(path: bytes) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 4096)
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class ProcStat:
    """The fields of /proc/<pid>/stat pgparent reads: parent pid (field 4), utime + stime (14, 15) in nanoseconds,
    start time (22) as Unix seconds."""

    ppid: int
    cpu_ns: int
    started: float


def parse_stat(data: bytes, boot: float) -> ProcStat:
    """/proc/<pid>/stat's fields after the command name in parentheses (which may hold spaces and parentheses)."""
    fields = data[data.rindex(b")") + 2:].split(b" ", 20)
    return ProcStat(int(fields[1]), (int(fields[11]) + int(fields[12])) * 1_000_000_000 // CLK_TCK,
                    boot + int(fields[19]) / CLK_TCK)


def private_memory(statm: bytes) -> int:
    """RssAnon, in bytes, from /proc/<pid>/statm: resident minus shared pages (RssFile + RssShmem), the backend's own
    memory without the shared_buffers pages it touched. statm is far cheaper for the kernel to write than status."""
    fields = statm.split(b" ", 3)
    return (int(fields[1]) - int(fields[2])) * PAGE_SIZE


def io_bytes(io: bytes) -> tuple[int, int]:
    """read_bytes and write_bytes of /proc/<pid>/io: what the process had fetched from and sent to storage."""
    fields = io.split()
    return int(fields[9]), int(fields[11])


def read_stat(pid: int, root: Path = PROC, boot: float | None = None) -> ProcStat | None:
    """Process `pid`'s stat fields, or None when there is no such process here."""
    try:
        data = (root / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    return parse_stat(data, boot_time() if boot is None else boot)


@dataclass(frozen=True, slots=True)
class Found:
    """What `find_server` found: the cost sources the OS gives for this server, and where its processes are."""

    sources: Sources
    postmaster: int | None = None
    cgroups: tuple[Path, ...] = ()
    """The memory-limited cgroup directories the postmaster runs in, innermost first (v2 or v1)."""

    @property
    def proc(self) -> bool:
        return self.postmaster is not None


def find_server(own_pid: int, own_started: datetime | None, server_started: datetime | None, *, enabled: bool = True,
                backend_stats: str | None = "not_connected", root: Path = PROC, cgroup_root: Path = CGROUP) -> Found:
    """Whether this host shows the server's processes, judged from pgparent's own backend (`own_pid`, which started at
    `own_started`) and its parent, which must have started when the server did (`server_started`).

    `backend_stats` is that source's reason to be unavailable (None: available), passed through to `Found.sources`.
    """
    def without(reason: str) -> Found:
        return Found(Sources.of(proc=reason, proc_io=reason, backend_stats=backend_stats))

    if not enabled:
        return without("off")
    if not (root / "self").exists():
        return without("no_procfs")
    boot = boot_time()
    own = read_stat(own_pid, root, boot)
    if own is None or own_started is None or abs(own.started - own_started.timestamp()) > START_SLACK:
        return without("not_visible")
    postmaster = read_stat(own.ppid, root, boot) if own.ppid > 0 else None
    if postmaster is None or (server_started is not None
                              and abs(postmaster.started - server_started.timestamp()) > POSTMASTER_SLACK):
        return without("postmaster_unverified")
    try:
        _read(os.fsencode(root / str(own_pid) / "io"))
        io: str | None = None
    except OSError:  # another OS user than the server's, without CAP_SYS_PTRACE (or no I/O accounting)
        io = "not_readable"
    return Found(Sources.of(proc=None, proc_io=io, backend_stats=backend_stats), own.ppid,
                 limited_cgroups(own.ppid, root, cgroup_root))


def limited_cgroups(pid: int, root: Path = PROC, cgroup_root: Path = CGROUP) -> tuple[Path, ...]:
    """The cgroup directories of process `pid` and their ancestors that limit its memory, innermost first: cgroup v2
    (`0::/path`, memory.max) or v1 (`N:memory:/path`, memory.limit_in_bytes). Empty where none does, or where the path
    lies outside this cgroup namespace's view (a sidecar sees only its own container's cgroup)."""
    try:
        lines = (root / str(pid) / "cgroup").read_text().splitlines()
    except OSError:
        return ()
    for line in lines:
        hierarchy, controllers, path = line.split(":", 2)
        if hierarchy == "0" and not controllers:
            base, limit = cgroup_root, "memory.max"
        elif "memory" in controllers.split(","):
            base, limit = cgroup_root / "memory", "memory.limit_in_bytes"
        else:
            continue
        here = base / path.lstrip("/")
        if ".." in Path(path).parts or not here.is_dir():
            continue
        out = []
        while True:
            if _limit(here / limit) is not None:
                out.append(here)
            if here == base:
                break
            here = here.parent
        if out:
            return tuple(out)
    return ()


def _limit(path: Path) -> int | None:
    """A cgroup memory limit in bytes; None for none (`max`, v1's page-rounded maximum, or no such file)."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max" or not text.isdigit() or int(text) >= 2**62:
        return None
    return int(text)


def _meminfo(root: Path) -> tuple[int, int]:
    total = available = 0
    for line in (root / "meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            total = int(line.split()[1]) * 1024
        elif line.startswith("MemAvailable:"):
            available = int(line.split()[1]) * 1024
    return total, available


def _stat_field(path: Path, name: str) -> int:
    for line in path.read_text().splitlines():
        key, _, value = line.partition(" ")
        if key == name:
            return int(value)
    return 0


def host_memory(cgroups: Iterable[Path] = (), root: Path = PROC) -> HostMemory | None:
    """The host's MemTotal and MemAvailable or, where a cgroup limits the server's memory, the tightest of them: its
    limit, and the limit less what the cgroup uses without its inactive file pages (the working set, which the kernel
    would not reclaim first), never more than the host has. None when nothing can be read."""
    try:
        total, available = _meminfo(root)
    except OSError:
        return None
    best: HostMemory | None = None
    for path in cgroups:
        v2 = (path / "memory.max").exists()
        limit = _limit(path / ("memory.max" if v2 else "memory.limit_in_bytes"))
        if limit is None:
            continue
        try:
            usage = int((path / ("memory.current" if v2 else "memory.usage_in_bytes")).read_text())
            inactive = _stat_field(path / "memory.stat", "inactive_file" if v2 else "total_inactive_file")
        except (OSError, ValueError):
            continue
        left = max(limit - max(usage - inactive, 0), 0)
        if best is None or left < best.available:
            best = HostMemory(min(limit, total), min(left, available), "cgroup")
    return best or HostMemory(total, available, "meminfo")


class ServerProcesses:
    """The server's backends as /proc shows them, once `find_server` found its postmaster here."""

    def __init__(self, found: Found, root: Path = PROC) -> None:
        assert found.postmaster is not None
        self.found = found
        self.postmaster = found.postmaster
        self.io = found.sources.available("proc_io")
        self._root = os.fsencode(root)

    def read(self, wanted: Iterable[tuple[int, datetime]]) -> dict[int, ProcSample]:
        """A sample of each wanted backend (pid, backend_start) that is still that backend; the others left out."""
        boot = boot_time()
        root, postmaster, io = self._root, self.postmaster, self.io
        out: dict[int, ProcSample] = {}
        for pid, start in wanted:
            base = b"%s/%d/" % (root, pid)
            try:
                memory = private_memory(_read(base + b"statm"))
                read, written = io_bytes(_read(base + b"io")) if io else (None, None)
                stat = parse_stat(_read(base + b"stat"), boot)  # last: the proof that all of it was this backend's
            except (OSError, ValueError, IndexError):
                continue  # exited since the snapshot (or its files were cut short by its exit)
            if is_backend(stat.started, stat.ppid, start, postmaster):
                out[pid] = ProcSample(start, stat.cpu_ns, memory, read, written)
        return out

    def host_memory(self) -> HostMemory | None:
        return host_memory(self.found.cgroups, Path(os.fsdecode(self._root)))
