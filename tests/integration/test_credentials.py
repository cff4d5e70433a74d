"""Passwords that expire or rotate, against a real server: each new connection asks its source (a command, a file)
again, a daemon reconnects across server restarts with whatever password is current, a refused password is fetched
once more at once and then backed off long, and a source that fails is a clear error."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from exporter import APPLICATION_NAME
from exporter.errors import CredentialUnavailable, DatabaseUnavailable
from exporter.pg.credentials import CommandSource, FileSource
from exporter.pg.database import Database
from exporter.pgcluster import Cluster, free_port
from exporter.run.monitor import AuthBackoff
from harness.waiting import eventually
from tests.support.cli import pgparent
from tests.support.daemon import Daemons
from tests.support.roles import Role, Roles
from tests.support.servers import Server

pytestmark = pytest.mark.integration

RULES = "interval: 0.5s\n"


def without_password(dsn: str) -> str:
    """`dsn` with its password taken out: the password comes from a source instead."""
    params = conninfo_to_dict(dsn)
    params.pop("password", None)
    return make_conninfo("", **params)


def password_command(tmp_path: Path, body: str) -> Path:
    """A shell script that appends a line to `runs` each time it runs, then does `body` (printing the password)."""
    path = tmp_path / "password.sh"
    path.write_text(f"#!/bin/sh\necho run >> {tmp_path / 'runs'}\n{body}\n")
    path.chmod(0o755)
    return path


def runs(tmp_path: Path) -> int:
    path = tmp_path / "runs"
    return len(path.read_text().splitlines()) if path.exists() else 0


def rotate(server: Server, role: Role, password: str) -> None:
    """Give `role` a new password (its open sessions stay logged in, as they do when a token expires)."""
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(sql.Identifier(role.name), sql.Literal(password)))


def pgparent_sessions(server: Server, role: Role) -> int:
    """pgparent's sessions logged in as `role`, as pg_stat_activity shows them."""
    with psycopg.connect(server.dsn, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE usename = %s AND application_name = %s",
                           [role.name, APPLICATION_NAME]).fetchone()
    return int(row[0]) if row else 0


def refused(dsn: str, password: str) -> bool:
    try:
        psycopg.connect(dsn, password=password, connect_timeout=5).close()
    except psycopg.OperationalError as exc:
        return "password authentication failed" in str(exc)
    return False


def restart_and_wait_reconnected(server: Server, role: Role, up: Callable[[], bool]) -> None:
    """Restart the server (every session ends) and wait for pgparent's new session as `role` and for `up`."""
    server.stop()
    server.start()
    eventually(lambda: pgparent_sessions(server, role) >= 1 and up(), timeout=60, interval=0.1,
               what="pgparent reconnected to the restarted server")


@pytest.mark.slow
def test_a_daemon_reconnects_with_the_rotated_password_after_every_restart(private_pg: Server, tmp_path: Path,
                                                                           daemons: Daemons) -> None:
    """The password rotates and the server restarts, three times: each time the daemon's password command gives the
    current password and the daemon is back up with a new session."""
    role = Roles(private_pg).login("rotating", "pw-0-start", member_of=["pg_monitor"])
    current = tmp_path / "current"
    current.write_text("pw-0-start\n")
    command = password_command(tmp_path, f"exec cat {current}")
    d = daemons.start(RULES, without_password(role.dsn), "--password.command", str(command))
    eventually(lambda: d.sample("pgparent_up") == 1, timeout=30, what="up with the first password")
    passwords = ["pw-0-start"]
    for n in range(1, 4):
        password = f"pw-{n}-{uuid.uuid4().hex[:8]}"
        rotate(private_pg, role, password)
        current.write_text(password + "\n")
        restart_and_wait_reconnected(private_pg, role, lambda: d.sample("pgparent_up") == 1)
        assert refused(without_password(role.dsn), passwords[-1])  # the old one no longer logs in
        passwords.append(password)
    d.wait_polls(2)
    assert d.sample("pgparent_up") == 1  # and stays up
    assert runs(tmp_path) >= 4  # once per connection at least: the first and one per restart
    log = d.log_path.read_text()
    assert not [p for p in passwords if p in log]
    assert d.sample("pgparent_connect_failures_total", {"reason": "auth"}) == 0


@pytest.mark.per_major  # libpq's words for each failure come from the server
def test_a_refused_password_is_fetched_again_once_at_once_then_backed_off_long(roles: Roles, tmp_path: Path,
                                                                               daemons: Daemons) -> None:
    """A command printing a wrong password: two auth failures in the first poll (the second with a password fetched
    afresh), then a wait of at least the auth backoff's floor, logged with reason auth."""
    role = roles.login("refused", "the-right-pw", member_of=["pg_monitor"])
    command = password_command(tmp_path, "echo wrong-pw-1234")
    d = daemons.start(RULES, without_password(role.dsn), "--password.command", str(command))
    eventually(lambda: d.sample("pgparent_connect_failures_total", {"reason": "auth"}) == 2, timeout=30,
               what="two auth failures")
    event = eventually(lambda: d.events("database_unavailable"), what="database_unavailable logged")[0]
    assert event["reason"] == "auth" and "password authentication failed" in event["error"]
    assert event["retry_in"] >= AuthBackoff.BASE * (1 - AuthBackoff.JITTER) >= 15
    assert runs(tmp_path) == 2  # the retry ran the command again
    assert (d.polls(), d.polls(failed=True)) == (1, 1)  # both attempts in one poll, the next one not before retry_in
    assert d.sample("pgparent_connect_failures_total", {"reason": "credential"}) == 0
    assert d.sample("pgparent_up") == 0 and d.proc.poll() is None
    assert "wrong-pw-1234" not in d.log_path.read_text()


@pytest.mark.slow
def test_a_password_file_is_read_again_when_the_daemon_reconnects(private_pg: Server, tmp_path: Path,
                                                                  daemons: Daemons) -> None:
    """A target's `password: {file: ...}`: the file is rewritten and the role's password changed, the server
    restarts, and the daemon reconnects with the file's new password."""
    role = Roles(private_pg).login("filed", "file-pw-1", member_of=["pg_monitor"])
    secret = tmp_path / "secret"
    secret.write_text("file-pw-1\n")
    target = {"name": "db", "dsn": without_password(role.dsn), "password": {"file": str(secret)}}
    d = daemons.start(RULES + "targets: " + json.dumps([target]) + "\n", None)
    up = lambda: d.sample("pgparent_up", {"target": "db"}) == 1  # noqa: E731
    eventually(up, timeout=30, what="up with the file's first password")
    rotate(private_pg, role, "file-pw-2")
    secret.write_text("file-pw-2\n")
    restart_and_wait_reconnected(private_pg, role, up)
    assert "file-pw" not in d.log_path.read_text()


def test_check_exits_2_naming_a_password_command_that_hangs_or_fails(roles: Roles, tmp_path: Path) -> None:
    """`pgparent check --dsn ... --password.command`: a command past its timeout or exiting non-zero is one clear
    line and exit 2, never what it printed; a working one connects."""
    role = roles.login("checked", "check-pw-77", member_of=["pg_monitor"])
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules: []\n")
    base = ["--config.file", str(rules), "--dsn", without_password(role.dsn)]
    started = time.monotonic()
    hung = pgparent("check", *base, "--password.command", "sh -c 'sleep 30'", "--password.timeout", "0.5s")
    assert hung.returncode == 2 and hung.stderr == "pgparent: password command sh: timed out after 0.5s\n"
    assert time.monotonic() - started < 20
    failing = "sh -c 'echo tok-9876; echo denied for tok-9876 >&2; exit 4'"
    failed = pgparent("check", *base, "--password.command", failing)
    assert failed.returncode == 2, failed.stderr
    assert failed.stderr == "pgparent: password command sh: exit status 4: denied for ****\n"
    good = pgparent("check", *base, "--password.command", "echo check-pw-77")
    assert good.returncode == 0, good.stderr
    assert "cost source proc" in good.stdout and "check-pw-77" not in good.stdout + good.stderr


def test_a_json_token_is_reused_across_connections_until_forgotten(roles: Roles, tmp_path: Path) -> None:
    """A command printing a token with its expiry runs once for several connections; forget_password() (after a
    refusal) makes the next connection run it again."""
    role = roles.login("tokened", "tok-5566", member_of=["pg_monitor"])
    token = json.dumps({"token": "tok-5566", "expires_at": int(time.time()) + 3600})
    command = password_command(tmp_path, f"echo '{token}'")
    db = Database(without_password(role.dsn), credentials=CommandSource((str(command),)))
    try:
        for _ in range(2):
            assert db.connect().role == role.name
            db.close()
        assert runs(tmp_path) == 1
        db.forget_password()
        db.connect()
        assert runs(tmp_path) == 2
    finally:
        db.close()


@pytest.mark.per_major  # libpq's words for each failure come from the server
def test_connect_failures_carry_their_reason(roles: Roles, tmp_path: Path) -> None:
    """A wrong password and an unknown role are `auth`, a closed port `unreachable`, a source that gives nothing
    `credential` (a CredentialUnavailable, before any attempt); no password appears in a message."""
    role = roles.login("reasons", "reason-pw-1", member_of=["pg_monitor"])
    secret = tmp_path / "secret"
    secret.write_text("not-the-pw-42\n")
    dsn = without_password(role.dsn)
    cases = [
        (Database(dsn, credentials=FileSource(str(secret))), "auth"),
        (Database(make_conninfo(dsn, user="no_such_role_x1"), credentials=FileSource(str(secret))), "auth"),
        (Database(make_conninfo(dsn, port=str(free_port())), credentials=FileSource(str(secret))), "unreachable"),
        (Database(dsn, credentials=FileSource(str(tmp_path / "missing"))), "credential"),
    ]
    for db, reason in cases:
        with pytest.raises(DatabaseUnavailable) as caught:
            db.connect()
        assert caught.value.reason == reason, str(caught.value)
        assert isinstance(caught.value, CredentialUnavailable) == (reason == "credential")
        assert "not-the-pw-42" not in str(caught.value)


def test_a_failing_password_command_is_an_outage_the_daemon_survives(roles: Roles, tmp_path: Path,
                                                                     daemons: Daemons) -> None:
    """A password command that exits non-zero: the daemon keeps running and retrying, counts `credential` failures
    and logs the command's program and status, never its output."""
    role = roles.login("nocred", "nocred-pw", member_of=["pg_monitor"])
    command = password_command(tmp_path, "echo partial-secret-31\necho vault sealed >&2\nexit 7")
    d = daemons.start(RULES, without_password(role.dsn), "--password.command", str(command))
    d.wait_polls(3, failed=True)
    failures = d.sample("pgparent_connect_failures_total", {"reason": "credential"})
    assert failures is not None and failures >= 3
    (event,) = d.events("database_unavailable")
    assert event["reason"] == "credential"
    assert event["error"] == f"password command {command}: exit status 7: vault sealed"
    assert d.sample("pgparent_up") == 0 and d.proc.poll() is None
    assert "partial-secret-31" not in d.log_path.read_text()


@pytest.mark.per_major  # libpq's words for each failure come from the server
def test_a_pg_hba_reject_line_is_rejected_and_a_refused_tls_demand_is_tls(private_pg: Server) -> None:
    """pg_hba.conf refusing the role is `rejected`, not `auth`; sslmode=require against a server without TLS is
    `tls`: an operator is sent to the server's config, not to the password."""
    if not isinstance(private_pg, Cluster):
        pytest.skip("needs a local cluster to edit pg_hba.conf")
    role = Roles(private_pg).login("hba", "hba-pw-1")
    hba = private_pg.data / "pg_hba.conf"
    hba.write_text(f"host all {role.name} 127.0.0.1/32 reject\n" + hba.read_text())
    with psycopg.connect(private_pg.dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_reload_conf()")
        ssl = conn.execute("SHOW ssl").fetchone()
    with pytest.raises(DatabaseUnavailable) as caught:
        Database(role.dsn).connect()
    assert caught.value.reason == "rejected", str(caught.value)
    assert ssl == ("off",), "the local clusters run without TLS (pgcluster.py): the tls half needs that"
    with pytest.raises(DatabaseUnavailable) as caught:
        Database(make_conninfo(private_pg.dsn, sslmode="require")).connect()
    assert caught.value.reason == "tls", str(caught.value)
