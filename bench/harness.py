"""The benchmark's outside view of pgparent and PostgreSQL: throwaway servers and client sessions held open, pgparent
and postgres_exporter as processes, their /metrics read over HTTP, and what Linux's /proc says about a process or the
machine.

Every part of bench/ starts, reads and counts processes through this module; what the tests need too (the /proc
readers, the stalling proxy) comes from the shared harness/ package.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psycopg
from psycopg import sql

from exporter.pgcluster import Cluster, free_port, start_cluster
from harness.metrics import series as parse_series
from harness.proc import cpu_seconds, peak_rss_mb, rss_mb, socket_count, thread_count

if TYPE_CHECKING:
    from harness.proxy import StallingProxy

__all__ = [
    "EXPORTER",
    "REPO",
    "Cluster",
    "Daemon",
    "OthersCpu",
    "Pressure",
    "Served",
    "Sessions",
    "cpu_by_process",
    "cpu_seconds",
    "end_client_sessions",
    "free_port",
    "local_ports",
    "machine",
    "mem_available_mb",
    "parse_series",
    "peak_rss_mb",
    "port_owners",
    "postgres_exporter",
    "rss_mb",
    "server",
    "socket_count",
    "stalling_proxy",
    "start_cluster",
    "thread_count",
]

REPO = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
EXPORTER = shutil.which("prometheus-postgres-exporter") or shutil.which("postgres_exporter")
"""The peer compared with: Debian's prometheus-postgres-exporter, or a postgres_exporter on the PATH."""


# Servers and sessions.

@contextlib.contextmanager
def server(major: int | None = None, **settings: str) -> Iterator[Cluster]:
    """A throwaway PostgreSQL server (of `major`, else the first binaries found) with these postgresql.conf
    settings, destroyed on exit."""
    cluster = start_cluster(settings=settings or None, major=major)
    try:
        yield cluster
    finally:
        cluster.destroy()


class Sessions:
    """Client sessions held open: 4 per tagged group, a tenth extra untagged, a quarter running pg_sleep."""

    def __init__(self, dsn: str, tag: str = "Bench") -> None:
        self.dsn = dsn
        self.tag = tag
        self.conns: list[psycopg.Connection[tuple[Any, ...]]] = []

    def grow_to(self, n: int) -> None:
        """N tagged sessions and a tenth more untagged."""
        self.fill(n + n // 10)

    def fill(self, count: int) -> None:
        """Exactly `count` sessions in all, every eleventh untagged."""
        while len(self.conns) < count:
            i = len(self.conns)
            app = f"{self.tag}:{i // 4}:w{i % 4}" if i % 11 else f"untagged-{i}"
            conn = psycopg.connect(self.dsn, autocommit=True)
            conn.execute(sql.SQL("SET application_name = {}").format(sql.Literal(app)))
            if i % 4 == 0:
                conn.pgconn.send_query(b"SELECT pg_sleep(3600)")  # active, no thread needed
            self.conns.append(conn)

    def close(self) -> None:
        for conn in self.conns:
            conn.pgconn.finish()


def end_client_sessions(dsn: str) -> None:
    """Terminate every other client session and wait for them to go (a backend in pg_sleep outlives its client)."""
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            row = admin.execute("SELECT count(*) FROM pg_stat_activity "
                                "WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()").fetchone()
            if row is not None and row[0] == 0:
                return
            time.sleep(0.05)


def stalling_proxy(port: int) -> StallingProxy:
    """A TCP proxy to `port` on 127.0.0.1 that can stop forwarding without closing anything: a network black hole
    (the tests' own, imported only when a part needs one)."""
    from harness.proxy import StallingProxy

    return StallingProxy(port)


# Processes serving /metrics.

class Served:
    """A process serving /metrics on a local port."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int) -> None:
        self.proc, self.port = proc, port

    @property
    def pid(self) -> int:
        return self.proc.pid

    def scrape(self, timeout: float = 30) -> tuple[float, bytes]:
        """Seconds one GET /metrics took (connect to last byte), and the body."""
        started = time.perf_counter()
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=timeout) as resp:
            body: bytes = resp.read()
        return time.perf_counter() - started, body

    def text(self, timeout: float = 300) -> tuple[float, str]:
        took, body = self.scrape(timeout)
        return took, body.decode()

    def series(self, name: str) -> dict[str, float]:
        return parse_series(self.text()[1], name)

    def serving(self, timeout: float = 30) -> Served:
        """Once /metrics answers; raises if the process exits first or nothing answers within `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"process exited with {self.proc.returncode}")
            try:
                self.scrape()
                return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"nothing served on {self.port}")

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM, and SIGKILL if it has not exited within `timeout`."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


class Daemon(Served):
    """`pgparent run` as a process: `config_text` written to a file in `tmp`, /metrics on a free port, JSON logs at
    `log_level` to a file in `tmp` (or nowhere, with `log_level="warning"` and `keep_log=False`)."""

    def __init__(self, tmp: Path, config_text: str, *extra: str, dsn: str | None = None, log_level: str = "info",
                 keep_log: bool = True) -> None:
        port = free_port()
        config = tmp / f"pgparent-{port}.yaml"
        config.write_text(config_text)
        self.log_path = tmp / f"pgparent-{port}.log"
        args = [sys.executable, "-m", "exporter", "run", "--config.file", str(config), "--web.listen-address",
                f"127.0.0.1:{port}", "--log.format", "json", "--log.level", log_level, *extra]
        if dsn is not None:
            args += ["--dsn", dsn]
        if keep_log:
            with self.log_path.open("wb") as log:
                proc = subprocess.Popen(args, stdout=log, stderr=log, cwd=REPO)
        else:
            proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO)
        super().__init__(proc, port)

    def serving(self, timeout: float = 60) -> Daemon:
        super().serving(timeout)
        return self

    def wait_polled(self, names: Iterable[str], timeout: float = 180) -> None:
        """Until every target has been polled successfully once (not necessarily all up at one moment: an
        overloaded process may fail some polls)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            last = self.series("pgparent_last_poll_timestamp_seconds")
            if all(last.get(n, 0) > 0 for n in names):
                return
            time.sleep(0.5)
        raise RuntimeError(f"not every target polled within {timeout:g}s")

    def events(self, name: str) -> list[dict[str, Any]]:
        """The log's events called `name`, in order."""
        out = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                event = json.loads(line)
                if event.get("event") == name:
                    out.append(event)
        return out

    def first_event(self, name: str, target: str, after: float, timeout: float) -> float | None:
        """The Unix time of the first `name` event for `target` logged after `after`, waiting up to `timeout`."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.events(name):
                when = datetime.fromisoformat(event["timestamp"]).timestamp()
                if event.get("target") == target and when > after:
                    return when
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.1)


def postgres_exporter(cluster: Cluster) -> Served | None:
    """The peer, with its default collectors, serving; None where it is not installed. Its lib/pq wants a URL and
    sslmode=disable on this local server."""
    if EXPORTER is None:
        return None
    port = free_port()
    url = f"postgresql://{cluster.user}:{cluster.password}@127.0.0.1:{cluster.port}/postgres?sslmode=disable"
    proc = subprocess.Popen([EXPORTER, f"--web.listen-address=127.0.0.1:{port}"],
                            env={**os.environ, "DATA_SOURCE_NAME": url},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peer = Served(proc, port).serving()
    if b"pg_up 1" not in peer.scrape()[1]:
        peer.stop()
        raise RuntimeError("postgres_exporter does not reach the server: its figures would measure an error path")
    return peer


# /proc: one process.

def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    with contextlib.suppress(OSError):  # the process is gone
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):  # a descriptor closed between the listing and the read
                link = os.readlink(fd)
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
    return inodes


def port_owners(pids: list[int]) -> dict[int, int]:
    """Local TCP port -> index in `pids` of the process owning that socket (/proc/PID/fd and /proc/net/tcp, tcp6):
    how the server's client_port tells which process a backend serves."""
    owner = {inode: i for i, pid in enumerate(pids) for inode in _socket_inodes(pid)}
    out: dict[int, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[9] in owner:
                    out[int(fields[1].rsplit(":", 1)[1], 16)] = owner[fields[9]]
    return out


def local_ports(pid: int) -> set[int]:
    """The local ports of the process's TCP connections."""
    return set(port_owners([pid]))


# /proc: the machine.

def mem_available_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) // 1024
    return 0


def machine() -> dict[str, Any]:
    """The processor, cores, memory and Python the figures were measured on."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem_kb = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal")))
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem_kb / 1024 / 1024, 1),
            "python": platform.python_version()}


def cpu_by_process() -> dict[int, tuple[int, float]]:
    """Every process on the machine: pid -> (parent pid, CPU seconds so far)."""
    out: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):  # a process gone between listing and reading
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                out[int(entry.name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / CLK_TCK)
    return out


class OthersCpu:
    """The CPU that processes other than the benchmark's used over a stretch of time, as a share of one core: what
    tells whether the run shared the machine. The benchmark's are this process and its descendants (the daemons)
    and the given servers (their postmasters, from postmaster.pid, and their backends). Processes that exit within
    the stretch are not counted."""

    def __init__(self, clusters: Iterable[Cluster]) -> None:
        self._roots = {os.getpid()}
        for cluster in clusters:
            with contextlib.suppress(OSError, ValueError):
                self._roots.add(int((cluster.data / "postmaster.pid").read_text().split()[0]))
        self._start = cpu_by_process()
        self._started = time.monotonic()

    def _others(self, procs: dict[int, tuple[int, float]]) -> dict[int, float]:
        ours: dict[int, bool] = {}

        def is_ours(pid: int) -> bool:
            seen = []
            while pid not in ours:
                if pid in self._roots or pid not in procs or pid <= 1:
                    ours[pid] = pid in self._roots
                    break
                seen.append(pid)
                pid = procs[pid][0]
            for p in seen:
                ours[p] = ours[pid]
            return ours[pid]

        return {pid: cpu for pid, (_, cpu) in procs.items() if not is_ours(pid)}

    def pct_of_core(self) -> float:
        """Since this was made, until now."""
        now, until = self._others(cpu_by_process()), time.monotonic()
        before = self._others(self._start)
        used = sum(cpu - before.get(pid, 0.0) for pid, cpu in now.items())
        return round(used / (until - self._started) * 100, 1)


class Pressure:
    """The kernel's pressure stall information (/proc/pressure) over a stretch of time: the share of it in which
    some task waited for CPU, I/O or memory, and for I/O and memory the share in which every task did (`full`).
    What tells a machine-wide stall from a slow process. Empty where the kernel has no PSI."""

    KINDS = ("cpu", "io", "memory")

    def __init__(self) -> None:
        self._start, self._started = self._totals(), time.monotonic()

    @classmethod
    def _totals(cls) -> dict[str, int]:
        out: dict[str, int] = {}
        for kind in cls.KINDS:
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/pressure/{kind}").read_text().splitlines():
                    which, *fields = line.split()
                    out[f"{kind}_{which}"] = int(dict(f.split("=") for f in fields)["total"])
        return out

    def pct(self) -> dict[str, float]:
        """Since this was made, until now, in % of the time (cpu_full is left out: the kernel counts it as 0)."""
        now, took = self._totals(), (time.monotonic() - self._started) * 1e6
        return {k: round((v - self._start.get(k, v)) / took * 100, 1) for k, v in now.items() if k != "cpu_full"}
