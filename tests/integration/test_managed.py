"""pgparent on a managed server, against an emulated Azure flexible server (tests/support/azure.py): TLS only, the
provider's superuser azuresu beside the customer's admin, who is no superuser. The provider's sessions are never
signalled (no refused signal in the server's log), and what pgparent can see and do is exported."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from exporter.pg.database import SYSTEM_BUNDLES, Database, use_system_roots
from harness.daemon import DaemonProcess
from harness.waiting import eventually
from tests.support.azure import AzureServer
from tests.support.config import config_text
from tests.support.daemon import Daemons
from tests.support.sessions import Client, Clients

pytestmark = pytest.mark.integration

APP_PASSWORD = "app-Secret-31"


def test_a_connection_without_tls_is_refused_and_one_verified_by_the_ca_is_encrypted(azure: AzureServer) -> None:
    """The emulated server refuses a connection without TLS (pg_hba.conf has hostssl lines only) and accepts the
    admin's under verify-full against the fixture's CA, encrypted."""
    plain = f"host=127.0.0.1 port={azure.port} dbname=postgres user={azure.admin} password={azure.admin_password}"
    with pytest.raises(psycopg.OperationalError, match="no encryption"):
        psycopg.connect(plain + " sslmode=disable connect_timeout=5").close()
    with psycopg.connect(azure.admin_dsn) as conn:
        row = conn.execute("SELECT ssl, rolsuper FROM pg_stat_ssl, pg_roles "
                           "WHERE pid = pg_backend_pid() AND rolname = current_user").fetchone()
    assert row == (True, False)


@contextlib.contextmanager
def _group_ended(azure: AzureServer, daemons: Daemons, name: str, protect: dict[str, Any]
                 ) -> Iterator[tuple[DaemonProcess, Client, list[Client], str]]:
    """A group `Azure:NAME` of one azuresu session (in azure_maintenance) and two of an ordinary role under a
    terminating rule, pgparent connected as the admin with `protect`: once the two have ended and three whole polls
    more have run, the daemon, the provider's session, the ordinary ones and what the server logged meanwhile."""
    app = f"app_{name}"
    with psycopg.connect(azure.admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(app),
                                                                        sql.Literal(APP_PASSWORD)))
    parent = f"Azure:{name}"
    rules = config_text({"name": "end", "match": {"parent": parent}, "max_sessions": 0, "action": "terminate"},
                        interval="0.5s", protect=protect)
    with Clients(azure.superuser_dsn) as clients:
        (provider,) = clients.start(parent, dsn=azure.dsn_for("azure_maintenance", azure.superuser,
                                                              azure.superuser_password))
        ordinary = clients.start(parent, n=2, dsn=azure.dsn_for("postgres", app, APP_PASSWORD))
        logged = azure.log_path.stat().st_size
        d = daemons.start(rules, azure.admin_dsn)
        eventually(lambda: all(c.outcome == "terminated" for c in ordinary), what="the ordinary sessions ended")
        d.wait_polls(4)  # three whole polls more, the rule still firing on the provider's session alone
        yield d, provider, ordinary, azure.log_path.read_bytes()[logged:].decode(errors="replace")


@pytest.mark.parametrize("lists", ["default", "none"])
def test_pgparent_as_the_admin_ends_a_group_and_never_tries_azuresus_session(
    azure: AzureServer, daemons: Daemons, lists: str
) -> None:
    """pgparent connected as the admin (verify-full) under a terminating rule ends the group's two ordinary sessions
    and never tries its azuresu session, whether the default protect lists name azuresu or, with none, its role alone
    tells it apart: no refused signal in the server's log after more polls, the session counted as protected. The
    capabilities say tls 1, superuser 0, read_all_stats 1, signal_backend 1."""
    protect: dict[str, Any] = {"users": [], "databases": []} if lists == "none" else {}
    with _group_ended(azure, daemons, lists, protect) as (d, provider, ordinary, server_log):
        assert not provider.done
        assert {e["pid"] for e in d.events("session_signal")} == {c.pid for c in ordinary}
        assert d.sample("pgparent_rule_violating_groups", {"rule": "end"}) == 1
        assert d.sample("pgparent_protected_sessions") == 1
        assert d.sample("pgparent_signal_failures_total", {"rule": "end", "reason": "permission_denied"}) is None
        assert "ERROR:  42501:" not in server_log  # a refused signal, on every major
        capabilities = {labels["capability"]: value for labels, value in d.samples("pgparent_capability")}
        assert capabilities == {"superuser": 0, "read_all_stats": 1, "signal_backend": 1, "in_recovery": 0,
                                "pooler": 0, "tls": 1}
        [(tls, value)] = d.samples("pgparent_connection_tls_info")
        assert value == 1 and tls["sslmode"] == "verify-full" and tls["version"].startswith("TLSv")
        assert (d.sample("pgparent_track_activity_query_size_bytes") or 0) >= 100
        [available] = d.events("database_available")
        assert (available["tls"], available["sslmode"], available["superuser"]) == (True, "verify-full", False)
        assert d.events("connection_insecure") == []


def test_told_to_try_superusers_sessions_pgparent_is_refused_as_the_server_logs(
    azure: AzureServer, daemons: Daemons
) -> None:
    """With no protect lists and `protect.superusers: false`, pgparent tries the azuresu session and is refused:
    counted as permission_denied, logged by the server as 42501 (what the test above finds absent)."""
    protect = {"users": [], "databases": [], "superusers": False}
    with _group_ended(azure, daemons, "tried", protect) as (d, provider, _, server_log):
        assert not provider.done
        assert (d.sample("pgparent_signal_failures_total", {"rule": "end", "reason": "permission_denied"}) or 0) >= 1
        assert d.sample("pgparent_protected_sessions") == 0
        assert "ERROR:  42501:" in server_log


def test_sslrootcert_system_verifies_against_the_systems_roots(azure: AzureServer, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """`sslrootcert=system`, as the managed pages advise: the OpenSSL of psycopg's binary wheel looks for roots in a
    directory no system has, so pgparent names the system's bundle (here one that also holds the fixture's CA, as
    the system's holds Azure's roots): verify-full then succeeds; where SSL_CERT_FILE is set already, it is kept."""
    system = next((Path(p) for p in SYSTEM_BUNDLES if Path(p).is_file()), None)
    if system is None:
        pytest.skip("no system bundle of root certificates on this machine")
    bundle = tmp_path / "ca-certificates.crt"
    bundle.write_bytes(system.read_bytes() + azure.ca_file.read_bytes())
    monkeypatch.setattr("exporter.pg.database.SYSTEM_BUNDLES", (str(bundle),))
    monkeypatch.setenv("SSL_CERT_FILE", "")  # restored at the end, whatever the test sets
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    dsn = azure.admin_dsn.replace(f"sslrootcert={azure.ca_file}", "sslrootcert=system")
    db = Database(dsn)
    try:
        caps = db.connect()
    finally:
        db.close()
    assert (caps.tls, caps.sslmode) == (True, "verify-full")
    assert os.environ["SSL_CERT_FILE"] == str(bundle)
    assert use_system_roots() is None  # the environment says now: left alone
