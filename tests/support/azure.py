"""An emulated Azure Database for PostgreSQL flexible server: the `azure` fixture (one per test module).

A throwaway local cluster (exporter/pgcluster.py) set up as Azure sets up a server, in what pgparent can observe:

- TLS only: `ssl = on` with a server certificate for `localhost` and 127.0.0.1 issued by a CA of the fixture's own,
  and a pg_hba.conf of `hostssl` lines alone, so a connection without TLS is refused;
- the provider's superuser `azuresu`, and its database `azure_maintenance`;
- the server admin the customer gets: `NOSUPERUSER CREATEROLE CREATEDB`, a member of `azure_pg_admin`,
  `pg_monitor` and `pg_signal_backend`. It can see every session, and cannot signal a superuser's.

Its interface, for the tests of pgparent on managed servers (`pgparent run`, `pgparent doctor`):
`AzureServer.dsn_for(dbname, user, password)` (verify-full against `ca_file`, host localhost), `admin` and
`admin_password`, `superuser` and `superuser_password` (azuresu's), `log_path` (the server's log: a refused signal
is logged there as `ERROR:  42501: ...`) and `ca_file`.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from exporter.pgcluster import Cluster, ClusterError, find_binaries
from tests.support.pki import authority, issue
from tests.support.servers import chosen_major

ADMIN = "azureadmin"
"""The server admin's name (Azure lets the customer choose it)."""
SUPERUSER = "azuresu"
"""The provider's superuser, as Azure names it."""
MAINTENANCE_DB = "azure_maintenance"

SETTINGS = {
    "ssl": "on",
    "ssl_cert_file": "'server.crt'",
    "ssl_key_file": "'server.key'",
    # Each ERROR with its SQLSTATE ("ERROR:  42501: ..."): a refused signal reads the same on every major, whose
    # messages differ ("must be a superuser to terminate superuser process" before 16).
    "log_error_verbosity": "verbose",
}

HBA = """\
# TLS only, as Azure: a connection without it matches no line and is refused.
hostssl all all 127.0.0.1/32 scram-sha-256
hostssl all all ::1/128 scram-sha-256
"""


@dataclass(frozen=True, slots=True)
class AzureServer:
    """A running emulated Azure server (see the module's docstring)."""

    cluster: Cluster
    ca_file: Path
    """The CA that issued the server's certificate: what `sslrootcert` names."""
    admin_password: str
    superuser_password: str
    admin: str = ADMIN
    superuser: str = SUPERUSER

    @property
    def log_path(self) -> Path:
        """The server's log: every ERROR with its SQLSTATE (a refused signal: `ERROR:  42501: ...`)."""
        return self.cluster.logfile

    @property
    def port(self) -> int:
        return self.cluster.port

    def dsn_for(self, dbname: str, user: str, password: str) -> str:
        """A DSN as a client of an Azure server writes it: host `localhost`, `sslmode=verify-full` against the CA."""
        return (f"host=localhost port={self.port} dbname={dbname} user={user} password={password} "
                f"sslmode=verify-full sslrootcert={self.ca_file} connect_timeout=5")

    @property
    def admin_dsn(self) -> str:
        """The server admin's DSN to the `postgres` database."""
        return self.dsn_for("postgres", self.admin, self.admin_password)

    @property
    def superuser_dsn(self) -> str:
        """azuresu's DSN to the `postgres` database."""
        return self.dsn_for("postgres", self.superuser, self.superuser_password)


def _certificates(cluster: Cluster) -> Path:
    """A CA and the server's certificate and key for localhost and 127.0.0.1, in the data directory as the server
    reads them (owned by the server's OS user, the key 0600, which postgres insists on); the CA's path (outside it)."""
    pki = cluster.base / "pki"
    pki.mkdir()
    ca = authority(pki)
    issue(pki, "server", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth", "localhost")
    for name in ("server.crt", "server.key"):
        target = cluster.data / name
        target.write_bytes((pki / name).read_bytes())
        target.chmod(0o600)
        _own(cluster, target)
    return ca


def _own(cluster: Cluster, path: Path) -> None:
    owner = cluster.data.stat()
    os.chown(path, owner.st_uid, owner.st_gid)


def start_azure() -> AzureServer:
    """Start an emulated Azure server (see the module's docstring) from the first local server binaries built with
    TLS, PGPARENT_TEST_PG_MAJOR's first when set (the wheels' binaries have none); skip the test where there are
    none."""
    major = chosen_major()
    for binaries in sorted(find_binaries(), key=lambda b: major is not None and b.major != major):
        cluster = Cluster(binaries, settings=SETTINGS)
        try:
            return _set_up(cluster)
        except ClusterError:
            log = cluster.logfile.read_text(errors="replace") if cluster.logfile.exists() else ""
            cluster.destroy()
            if "SSL is not supported" not in log:
                raise
        except BaseException:
            cluster.destroy()
            raise
    pytest.skip("no local PostgreSQL server binaries built with TLS for an emulated Azure server")


def _set_up(cluster: Cluster) -> AzureServer:
    """initdb, the certificates and pg_hba.conf, start, then the roles and the database Azure has."""
    cluster.init()
    ca = _certificates(cluster)
    hba = cluster.data / "pg_hba.conf"
    hba.write_text(HBA)
    _own(cluster, hba)
    cluster.start()
    server = AzureServer(cluster, ca, admin_password=secrets.token_urlsafe(12),
                         superuser_password=secrets.token_urlsafe(12))
    with psycopg.connect(server.dsn_for("postgres", cluster.user, cluster.password), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN SUPERUSER PASSWORD {}").format(
            sql.Identifier(SUPERUSER), sql.Literal(server.superuser_password)))
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
            sql.Identifier(MAINTENANCE_DB), sql.Identifier(SUPERUSER)))
        conn.execute("CREATE ROLE azure_pg_admin NOLOGIN")
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER CREATEROLE CREATEDB PASSWORD {} "
                             "IN ROLE azure_pg_admin, pg_monitor, pg_signal_backend").format(
            sql.Identifier(ADMIN), sql.Literal(server.admin_password)))
    return server


@pytest.fixture(scope="module")
def azure() -> Iterator[AzureServer]:
    """An emulated Azure flexible server of this test module's own (see tests/support/azure.py)."""
    server = start_azure()
    try:
        yield server
    finally:
        server.cluster.destroy()
