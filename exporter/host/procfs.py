"""The monitored server's processes as Linux's /proc shows them, and the memory its host (or its cgroup) has; read
only where pgparent sees the server's own processes, and for a backend only once it is proven to be that backend.

`find_server` starts from pgparent's own backend (its pid and backend_start, from the server): that pid must be a
process here that started when the backend did, and its parent (the postmaster) must have started when the server
did (pg_postmaster_start_time). Otherwise the server's processes are not these (another host, container or PID
namespace, a managed service, hidepid) and no figure is read at all. `ServerProcesses.read` then opens each wanted
backend's /proc/<pid>/statm (memory), /proc/<pid>/io (bytes read and written, where readable) and
/proc/<pid>/schedstat (CPU), and reads /proc/<pid>/stat last: the proof, its start time agreeing with the session's
backend_start and its parent the postmaster. A process alive at the stat read and at the poll's snapshot before it
was alive between them, so the files opened before it are its own: a pid is never another process's until its
process has exited, and an open file never moves to another process.

Only the processes `cost.wanted` names are read (those that ran or changed state since the previous poll), and the
files of the ones read are kept open for the next poll, read again with one pread each (schedstat alone for a
backend that has not run since): the poll's share of all this is a goal of the benchmark (bench/cost.py).
"""

from __future__ import annotations

import contextlib
import os
import resource
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

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


class ProcStat(NamedTuple):
    """The fields of /proc/<pid>/stat pgparent reads: parent pid (field 4), utime + stime (14, 15) in nanoseconds,
    start time (22) as Unix seconds."""

    ppid: int
    cpu_ns: int
    started: float


def stat_fields(data: bytes, boot: float) -> ProcStat:
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
    """read_bytes and write_bytes of /proc/<pid>/io (its 5th and 6th lines): what the process had fetched from and
    sent to storage."""
    lines = io.split(b"\n", 6)
    return int(lines[4][12:]), int(lines[5][13:])


def run_time(schedstat: bytes) -> int:
    """The process's run time in nanoseconds, the first field of /proc/<pid>/schedstat: the total its utime and stime
    are scaled to, unrounded (stat gives them in clock ticks), and cheaper for the kernel to write than stat."""
    return int(schedstat[:schedstat.index(b" ")])


def read_stat(pid: int, root: Path = PROC, boot: float | None = None) -> ProcStat | None:
    """Process `pid`'s stat fields, or None when there is no such process here."""
    try:
        data = (root / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    return stat_fields(data, boot_time() if boot is None else boot)


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


HELD_MAX = 1024
"""Backends whose three /proc files pgparent keeps open between polls, across its targets. A held file is read again
with one pread, without the path lookup that costs about two thirds of an open, read and close; while open it costs
the kernel about 4 KiB (its seq_file buffer), so only the processes read at the last poll are held (the active ones,
and those that changed state), never an idle one, and at most this many."""


class _Budget:
    """The held backends of the whole process (every target's), under HELD_MAX and the open-files limit."""

    lock = threading.Lock()
    held = 0
    limit: int | None = None

    @classmethod
    def take(cls) -> bool:
        with cls.lock:
            if cls.limit is None:
                cls.limit = _fd_room()
            if cls.held >= cls.limit:
                return False
            cls.held += 1
            return True

    @classmethod
    def give(cls, n: int) -> None:
        with cls.lock:
            cls.held -= n


def _fd_room() -> int:
    """How many backends may be held: HELD_MAX, once the soft open-files limit is raised towards the hard one to fit
    them (as Go's runtime does for every program), less what the limit leaves for sockets and the rest."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 3 * HELD_MAX + 4096
    if soft != resource.RLIM_INFINITY and soft < want:
        with contextlib.suppress(ValueError, OSError):  # not allowed: fewer backends are held, that is all
            resource.setrlimit(resource.RLIMIT_NOFILE, (want if hard == resource.RLIM_INFINITY else min(want, hard),
                                                        hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return HELD_MAX
    return max(0, min(HELD_MAX, (soft - 4096) // 3))


class _Held:
    """A backend's open /proc files (an open file never moves to another process), the start it was proven by, and
    its last sample."""

    __slots__ = ("backend_start", "cpu", "from_stat", "io", "last", "statm")

    def __init__(self, last: ProcSample, cpu: int, statm: int, io: int, from_stat: bool) -> None:
        self.backend_start = last.backend_start
        self.last = last
        self.cpu = cpu
        """schedstat, or stat on a kernel without schedstat (`from_stat`)."""
        self.statm = statm
        self.io = io
        """-1 where /proc/<pid>/io is not read."""
        self.from_stat = from_stat


def _close(*fds: int) -> None:
    for fd in fds:
        if fd >= 0:
            os.close(fd)


class ServerProcesses:
    """The server's backends as /proc shows them, once `find_server` found its postmaster here; the files of the
    backends read at the last poll kept open for the next (`close()` closes them)."""

    def __init__(self, found: Found, root: Path = PROC) -> None:
        assert found.postmaster is not None
        self.found = found
        self.postmaster = found.postmaster
        self.io = found.sources.available("proc_io")
        self._root = os.fsencode(root)
        self._held: dict[int, _Held] = {}

    def read(self, wanted: Iterable[tuple[int, datetime]], *, full: bool = False) -> dict[int, ProcSample]:
        """A sample of each wanted backend (pid, backend_start) that is still that backend; the others left out.
        The files of the backends read are held for the next poll; those of the others are closed. `full` reads
        every file even of a backend that has not run since its last sample (the benchmark's worst case)."""
        boot = boot_time()
        wanted = list(wanted)
        old, held = self._held, {}
        if old:
            pids = {pid for pid, _ in wanted}
            for pid in [p for p in old if p not in pids]:  # not read at this poll: idle since, or gone
                self._drop(old.pop(pid))
        out: dict[int, ProcSample] = {}
        for pid, start in wanted:
            h = old.pop(pid, None)
            if h is not None and h.backend_start != start:
                self._drop(h)  # the pid of another, earlier backend
                h = None
            sample = self._again(h, boot, full) if h is not None else None
            if h is not None and sample is None:
                self._drop(h)  # exited since the snapshot
                continue
            if h is None:
                h, sample = self._open(pid, start, boot)
            if sample is not None:
                out[pid] = sample
                if h is not None:
                    held[pid] = h
        self._held = held
        return out

    def _again(self, h: _Held, boot: float, full: bool = False) -> ProcSample | None:
        """The held backend's files read again (None once it has exited: its files then fail or read empty). A
        backend whose run time has not moved since its last sample has not run, so it has neither allocated, freed
        nor done I/O: its last sample stands, and only schedstat is read (a session waiting on a lock or a sleep)."""
        pread = os.pread
        try:
            data = pread(h.cpu, 4096, 0)
            if h.from_stat:
                cpu = stat_fields(data, boot).cpu_ns
            else:
                cpu = run_time(data)
                if cpu == h.last.cpu_ns and not full:
                    return h.last
            memory = private_memory(pread(h.statm, 256, 0))
            read, written = io_bytes(pread(h.io, 512, 0)) if h.io >= 0 else (None, None)
        except (OSError, ValueError, IndexError):
            return None
        h.last = ProcSample(h.backend_start, cpu, memory, read, written)
        return h.last

    def _open(self, pid: int, start: datetime, boot: float) -> tuple[_Held | None, ProcSample | None]:
        """Open and read a backend's files, stat last: a process alive when stat is read, and at the snapshot before
        the others were opened, was alive in between, so they are its own. Held when the budget allows."""
        base = b"%s/%d/" % (self._root, pid)
        fds: list[int] = []
        try:
            for name in (b"statm", b"io") if self.io else (b"statm",):
                fds.append(os.open(base + name, os.O_RDONLY))
            try:
                schedstat = os.open(base + b"schedstat", os.O_RDONLY)
            except FileNotFoundError:  # a kernel without CONFIG_SCHED_INFO: CPU from stat's ticks
                schedstat = -1
            fds.append(schedstat)
            stat = os.open(base + b"stat", os.O_RDONLY)
            fds.append(stat)
            ppid, cpu, started = stat_fields(os.read(stat, 4096), boot)
            if not is_backend(started, ppid, start.timestamp(), self.postmaster):
                _close(*fds)
                return None, None
            if schedstat >= 0:
                cpu = run_time(os.read(schedstat, 256))
            memory = private_memory(os.read(fds[0], 256))
            read, written = io_bytes(os.read(fds[1], 512)) if self.io else (None, None)
        except (OSError, ValueError, IndexError):
            _close(*fds)
            return None, None
        sample = ProcSample(start, cpu, memory, read, written)
        if not _Budget.take():
            _close(*fds)
            return None, sample
        if schedstat >= 0:
            _close(stat)
        return _Held(sample, schedstat if schedstat >= 0 else stat, fds[0], fds[1] if self.io else -1,
                     schedstat < 0), sample

    def _drop(self, h: _Held) -> None:
        _close(h.cpu, h.statm, h.io)
        _Budget.give(1)

    def close(self) -> None:
        """Close every held file (a new connection, a changed config, the target removed)."""
        held, self._held = self._held, {}
        for h in held.values():
            self._drop(h)

    def host_memory(self) -> HostMemory | None:
        return host_memory(self.found.cgroups, Path(os.fsdecode(self._root)))


class MemorySampler:
    """The private memory of the processes under a memory guard, read between polls (exporter/run/sampler.py): each
    process's /proc/<pid>/statm opened once, after its stat proves it the backend that started at its backend_start
    (as `ServerProcesses._open` proves it), and read again with one pread per sample. statm carries the same RssAnon
    as /proc/<pid>/status (resident less file and shmem pages) at a small share of the kernel's cost to write it."""

    def __init__(self, postmaster: int, root: Path = PROC) -> None:
        self.postmaster = postmaster
        self._root = os.fsencode(root)
        self._held: dict[int, tuple[datetime, int]] = {}

    def watch(self, processes: Iterable[tuple[int, datetime]]) -> None:
        """Sample these processes (pid, backend_start) from now on; let go of the others."""
        wanted = dict(processes)
        for pid in [p for p, (start, _) in self._held.items() if wanted.get(p) != start]:
            os.close(self._held.pop(pid)[1])
        boot: float | None = None
        for pid, start in wanted.items():
            if pid in self._held:
                continue
            boot = boot_time() if boot is None else boot
            fd = self._open(pid, start, boot)
            if fd is not None:
                self._held[pid] = (start, fd)

    def _open(self, pid: int, start: datetime, boot: float) -> int | None:
        base = b"%s/%d/" % (self._root, pid)
        try:
            fd = os.open(base + b"statm", os.O_RDONLY)
        except OSError:
            return None
        try:
            ppid, _, started = stat_fields(_read(base + b"stat"), boot)
        except (OSError, ValueError, IndexError):
            os.close(fd)
            return None
        if not is_backend(started, ppid, start.timestamp(), self.postmaster):
            os.close(fd)
            return None
        return fd

    def read(self) -> dict[int, int]:
        """Each held process's private memory now, bytes; a process that has exited is left out (and let go)."""
        out: dict[int, int] = {}
        pread = os.pread
        for pid, (_, fd) in list(self._held.items()):
            try:
                data = pread(fd, 256, 0)
                out[pid] = private_memory(data)
            except (OSError, ValueError, IndexError):
                os.close(self._held.pop(pid)[1])
        return out

    @property
    def watched(self) -> int:
        return len(self._held)

    def close(self) -> None:
        held, self._held = self._held, {}
        for _, fd in held.values():
            os.close(fd)
