"""Reading /proc for the server's processes only: the parsers against the kernel's own files, the proof that a pid is
the session's backend (start time and parent), and the host's or cgroup's memory, on real processes and on made-up
/proc and cgroup trees."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from exporter.core.cost import Sources
from exporter.core.settings import CostSettings
from exporter.host.procfs import (
    CLK_TCK,
    Found,
    ServerProcesses,
    boot_time,
    find_server,
    host_memory,
    io_bytes,
    limited_cgroups,
    private_memory,
    read_stat,
    run_time,
    stat_fields,
)
from exporter.pg.database import Capabilities
from exporter.run.costs import Costs
from harness.proc import cpu_seconds
from harness.waiting import eventually


def status_kb(pid: int | str, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(field)


def started_at(pid: int) -> datetime:
    """A process's start as the server would give its backend_start."""
    stat = read_stat(pid)
    assert stat is not None
    return datetime.fromtimestamp(stat.started, UTC)


def test_private_memory_from_statm_is_rssanon_of_status() -> None:
    """Resident minus shared pages of /proc/<pid>/statm is status's RssAnon, read for a process holding 64 MiB."""
    held = bytearray(64 << 20)
    held[:: 4096] = b"x" * len(held[:: 4096])  # touched: resident
    statm = Path("/proc/self/statm").read_bytes()
    anon = status_kb("self", "RssAnon") * 1024
    assert abs(private_memory(statm) - anon) <= 2 << 20
    assert private_memory(statm) > 64 << 20
    del held


def test_stat_fields_survive_a_command_name_with_spaces_and_parentheses() -> None:
    """Fields are counted from the last ')' of the command name: a backend's name cannot shift them."""
    boot = 1_000_000.0
    line = b"4242 (post) gres: a (b)) S 17 4242 4242 0 -1 0 0 0 0 0 250 50 0 0 20 0 1 0 9000 0 0\n"
    ppid, cpu_ns, started = stat_fields(line, boot)
    assert (ppid, cpu_ns) == (17, 300 * 1_000_000_000 // CLK_TCK)
    assert started == boot + 9000 / CLK_TCK


def test_the_kernels_own_files_parse() -> None:
    """io's read_bytes and write_bytes, schedstat's run time, stat's CPU: read for this process."""
    read, written = io_bytes(Path("/proc/self/io").read_bytes())
    assert read >= 0 and written >= 0
    busy = time.process_time() + 0.2
    while time.process_time() < busy:
        pass
    ran = run_time(Path(f"/proc/{os.getpid()}/task/{os.getpid()}/schedstat").read_bytes()) / 1e9
    assert ran > 0.2
    stat = read_stat(os.getpid())
    assert stat is not None and abs(stat.cpu_ns / 1e9 - cpu_seconds(os.getpid())) < 0.05
    assert abs(stat.started - started_at(os.getpid()).timestamp()) < 0.01


@pytest.fixture
def family() -> Iterator[tuple[int, int]]:
    """A made-up server: `sh` as the postmaster and a `sleep` it started as its backend; (postmaster, backend)."""
    proc = subprocess.Popen(["sh", "-c", "sleep 60 & echo $!; wait"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    with proc.stdout:
        child = int(proc.stdout.readline())
    eventually(lambda: read_stat(child) is not None and read_stat(child).ppid == proc.pid,  # type: ignore[union-attr]
               what="the child started")
    try:
        yield proc.pid, child
    finally:
        proc.kill()
        subprocess.run(["kill", str(child)], check=False)
        proc.wait()


def test_a_backend_is_read_only_when_its_start_and_parent_prove_it(family: tuple[int, int]) -> None:
    """The backend's figures are read when its start time agrees with backend_start and its parent is the
    postmaster; with another start (a pid reused), or for a process of another parent, nothing is read."""
    postmaster, child = family
    procs = ServerProcesses(Found(Sources.of(proc=None, proc_io=None), postmaster))
    try:
        start = started_at(child)
        got = procs.read([(child, start)])
        assert set(got) == {child} and got[child].backend_start == start and got[child].memory > 0
        assert procs.read([(child, start - timedelta(seconds=5))]) == {}
        assert procs.read([(os.getpid(), started_at(os.getpid()))]) == {}  # alive, but not the postmaster's
        assert set(procs.read([(child, start)])) == {child}  # read again from its held files
    finally:
        procs.close()


def test_an_exited_backend_reads_as_nothing_and_its_files_are_closed(family: tuple[int, int]) -> None:
    """Once the backend exits, its held files read nothing, and they are closed."""
    postmaster, child = family
    procs = ServerProcesses(Found(Sources.of(proc=None, proc_io=None), postmaster))
    fds = len(os.listdir("/proc/self/fd"))
    start = started_at(child)
    assert set(procs.read([(child, start)])) == {child}
    assert len(os.listdir("/proc/self/fd")) > fds
    os.kill(child, 9)
    eventually(lambda: procs.read([(child, start)]) == {}, what="nothing read of the exited process")
    assert len(os.listdir("/proc/self/fd")) == fds
    procs.close()


def test_find_server_from_its_own_backend(family: tuple[int, int]) -> None:
    """The postmaster is found as the parent of pgparent's own backend, once the backend's start agrees and the
    parent started when the server did; otherwise the server's processes are not these."""
    postmaster, child = family
    own, server = started_at(child), started_at(postmaster)
    found = find_server(child, own, server)
    assert found.postmaster == postmaster and found.sources.available("proc")
    assert find_server(child, own - timedelta(seconds=3), server).sources.unavailable["proc"] == "not_visible"
    assert find_server(2**22 + 7, own, server).sources.unavailable["proc"] == "not_visible"
    late = find_server(child, own, server + timedelta(minutes=5))
    assert late.sources.unavailable == {"proc": "postmaster_unverified", "proc_io": "postmaster_unverified",
                                        "backend_stats": "not_connected"}
    assert find_server(child, own, server, enabled=False).sources.unavailable["proc"] == "off"
    assert find_server(child, own, server, root=Path("/nonexistent")).sources.unavailable["proc"] == "no_procfs"


def fake_proc(root: Path, pid: int, ppid: int, started: float, cgroup: str = "0::/\n") -> None:
    (root / "self").mkdir(parents=True, exist_ok=True)
    ticks = round((started - boot_time()) * CLK_TCK)
    (root / str(pid)).mkdir()
    (root / str(pid) / "stat").write_text(f"{pid} (postgres) S {ppid} 1 1 0 -1 0 0 0 0 0 7 3 0 0 20 0 1 0 {ticks} 0\n")
    (root / str(pid) / "cgroup").write_text(cgroup)


def test_io_not_readable_leaves_cpu_and_memory(tmp_path: Path) -> None:
    """Where /proc/<pid>/io cannot be read (another OS user), CPU and memory still come; bytes read and written do
    not, and the reason says so."""
    now = time.time()
    fake_proc(tmp_path, 200, 100, now - 50)
    fake_proc(tmp_path, 100, 1, now - 3600)
    found = find_server(200, datetime.fromtimestamp(now - 50, UTC), datetime.fromtimestamp(now - 3600, UTC),
                        root=tmp_path)
    assert found.postmaster == 100
    assert found.sources.unavailable == {"proc_io": "not_readable", "backend_stats": "not_connected"}


def test_host_memory_is_the_hosts_or_the_tightest_cgroups(tmp_path: Path) -> None:
    """MemTotal and MemAvailable; or, where a cgroup (v2 or v1) limits the postmaster's memory, its limit and the limit
    less its working set (usage without inactive file pages), never more than the host has."""
    proc, cg = tmp_path / "proc", tmp_path / "cgroup"
    proc.mkdir()
    (proc / "meminfo").write_text("MemTotal:       16384000 kB\nMemFree: 1 kB\nMemAvailable:    8192000 kB\n")
    meminfo = host_memory((), proc)
    assert meminfo is not None and (meminfo.total, meminfo.available, meminfo.source) == (
        16384000 * 1024, 8192000 * 1024, "meminfo")
    pod = cg / "kubepods" / "pod1"
    container = pod / "pg"
    container.mkdir(parents=True)
    (cg / "memory.max").write_text("max\n")
    for path, limit, usage, inactive in ((pod, 4 << 30, 3 << 30, 1 << 30), (container, "max", 3 << 30, 1 << 30)):
        (path / "memory.max").write_text(f"{limit}\n")
        (path / "memory.current").write_text(f"{usage}\n")
        (path / "memory.stat").write_text(f"anon 1\ninactive_file {inactive}\nactive_file 2\n")
    fake_proc(proc, 100, 1, time.time() - 60, "0::/kubepods/pod1/pg\n")
    assert limited_cgroups(100, proc, cg) == (pod,)
    limited = host_memory((pod,), proc)
    assert limited is not None and (limited.total, limited.available, limited.source) == (4 << 30, 2 << 30, "cgroup")
    v1 = cg / "memory" / "docker" / "abc"
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text(f"{1 << 30}\n")
    (v1 / "memory.usage_in_bytes").write_text(f"{768 << 20}\n")
    (v1 / "memory.stat").write_text(f"cache 5\ntotal_inactive_file {256 << 20}\n")
    (cg / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    fake_proc(proc, 101, 1, time.time() - 60, "5:memory:/docker/abc\n0::/\n")
    assert limited_cgroups(101, proc, cg) == (v1,)
    old = host_memory((v1,), proc)
    assert old is not None and (old.total, old.available) == (1 << 30, 512 << 20)
    fake_proc(proc, 102, 1, time.time() - 60, "0::/../elsewhere\n")
    assert limited_cgroups(102, proc, cg) == ()  # outside this cgroup namespace's view: the host's figures


class Said:
    """A logger that keeps what it is told (the target's bound logger, as Costs uses it)."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def info(self, event: str, **fields: Any) -> None:
        self.events.append({"event": event, **fields})


def test_a_targets_sources_are_logged_when_found_and_when_they_change(family: tuple[int, int]) -> None:
    """One `cost_sources` line when a target's sources are first found, none on a reconnect that finds the same,
    one more when they change (here: `cost.proc: off` on a reload), each with the reason of a missing source."""
    postmaster, child = family
    caps = Capabilities(server_version_num=150000, role="r", has_leader_pid=True, has_query_id=True,
                        can_read_all_stats=True, can_signal=True, in_recovery=False, server_pid=child,
                        server_started=started_at(postmaster), server_pid_started=started_at(child))
    logs = Said()
    costs = Costs(logs)
    costs.connected(caps, 1, CostSettings())
    costs.connected(caps, 2, CostSettings())
    costs.connected(caps, 2, CostSettings(proc="off"))
    costs.close()
    lines = [e for e in logs.events if e["event"] == "cost_sources"]
    assert [(e["proc"].split(":")[0], e["backend_stats"].split(":")[0]) for e in lines] == [
        ("available", "needs_pg18"), ("off", "needs_pg18")]
    assert lines[0]["postmaster"] == postmaster
