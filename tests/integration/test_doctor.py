"""`pgparent doctor` as a new user meets it: each line against a real server, through a real PgBouncer, as a role
without grants, and for a fleet config; the exit status says whether something needs fixing."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.azure import AzureServer
from tests.support.cli import pgparent
from tests.support.pgbouncer import PgBouncer
from tests.support.roles import Roles
from tests.support.servers import Server

pytestmark = pytest.mark.integration

SIGNALLING = "rules:\n  - name: r\n    match: {parent: 'Doc:*'}\n    max_sessions: 5\n    action: terminate\n"


def lines_of(stdout: str) -> list[tuple[str, str, str]]:
    """The checked lines of doctor's output as (status, topic, text), headings and the verdict left out."""
    out = []
    for line in stdout.splitlines():
        if line.startswith("  "):
            status, rest = line.split(None, 1)
            topic, text = rest.split(": ", 1)
            out.append((status, topic, text))
    return out


def by_topic(stdout: str) -> dict[str, tuple[str, str]]:
    return {topic: (status, text) for status, topic, text in lines_of(stdout)}


def config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.per_major
def test_a_monitoring_role_with_its_grants_has_nothing_to_fix(pg: Server, roles: Roles, tmp_path: Path) -> None:
    """The documented least-privilege role on a self-managed server: every check ok or a note, in a fixed order,
    exit 0."""
    role = roles.least_privilege("doctor_ok", "doctor-ok-pw")
    out = pgparent("doctor", "--dsn", role.dsn, "--config.file", config(tmp_path, SIGNALLING))
    assert out.returncode == 0, out.stdout + out.stderr
    assert [topic for _, topic, _ in lines_of(out.stdout)][:9] == [
        "connect", "server", "superuser", "pg_read_all_stats", "pg_signal_backend", "pooler", "TLS",
        "track_activity_query_size", "recovery"]
    checks = by_topic(out.stdout)
    assert checks["connect"][1].startswith("PostgreSQL ") and f"as role {role.name!r}" in checks["connect"][1]
    assert checks["server"] == ("note", "no managed service recognised (a self-managed PostgreSQL)")
    assert checks["pg_read_all_stats"][0] == checks["pg_signal_backend"][0] == "ok"
    assert checks["pooler"] == ("ok", "connected to PostgreSQL itself, not through a pooler")
    assert checks["TLS"][0] == "ok" and "loopback" in checks["TLS"][1]
    assert not [line for line in lines_of(out.stdout) if line[0] == "fix"]
    assert out.stdout.splitlines()[-1] == "doctor: pgparent can do everything this config asks"
    assert "doctor-ok-pw" not in out.stdout + out.stderr


@pytest.mark.per_major
def test_a_role_without_grants_is_told_each_grant(pg: Server, roles: Roles, tmp_path: Path) -> None:
    """A bare login role under a terminating rule: doctor prints the exact GRANT for pg_monitor and for
    pg_signal_backend, counts the sessions it cannot see, and exits 1."""
    bare = roles.login("doctor_bare", "doctor-bare-pw")
    out = pgparent("doctor", "--dsn", bare.dsn, "--config.file", config(tmp_path, SIGNALLING))
    assert out.returncode == 1, out.stdout + out.stderr
    checks = by_topic(out.stdout)
    status, text = checks["pg_read_all_stats"]
    assert status == "fix" and text.endswith(f'Run: GRANT pg_monitor TO "{bare.name}";'), text
    assert "pgparent_hidden_sessions" in text
    assert checks["pg_signal_backend"] == (
        "fix", f'the rules signal sessions, but this role may signal only its own role\'s. Run: GRANT '
               f'pg_signal_backend TO "{bare.name}";')
    assert [topic for status, topic, _ in lines_of(out.stdout) if status == "fix"] == [
        "pg_read_all_stats", "pg_signal_backend"]
    assert out.stdout.splitlines()[-1] == "doctor: 2 thing(s) to fix"


def test_without_signalling_rules_pg_signal_backend_is_only_a_note(pg: Server, roles: Roles) -> None:
    """With no rule that signals (no config), a role that may not signal others gets a note, not a fix."""
    bare = roles.login("doctor_nosig", "doctor-nosig-pw", member_of=["pg_monitor"])
    out = pgparent("doctor", "--dsn", bare.dsn)
    assert out.returncode == 0, out.stdout + out.stderr
    status, text = by_topic(out.stdout)["pg_signal_backend"]
    assert status == "note" and f'GRANT pg_signal_backend TO "{bare.name}";' in text


def test_through_pgbouncer_doctor_names_the_pooler(pgbouncer: PgBouncer) -> None:
    """Through a real PgBouncer in transaction mode, doctor says the DSN reaches a pooler and to connect to
    PostgreSQL itself, and exits 1."""
    out = pgparent("doctor", "--dsn", pgbouncer.dsn_for("postgres"))
    assert out.returncode == 1, out.stdout + out.stderr
    status, text = by_topic(out.stdout)["pooler"]
    assert status == "fix" and "through a connection pooler" in text and "point it at PostgreSQL itself" in text


def test_comment_sources_want_room_for_trailing_comments(pg: Server, tmp_path: Path) -> None:
    """A config that reads tags from SQL comments, on a server keeping 1024 bytes of each query: doctor says a
    trailing comment of a longer query is cut off, and the setting to change."""
    grouping = "grouping:\n  sources:\n    - {comment: job}\n"
    out = pgparent("doctor", "--dsn", pg.dsn, "--config.file", config(tmp_path, grouping))
    assert out.returncode == 1, out.stdout + out.stderr
    status, text = by_topic(out.stdout)["track_activity_query_size"]
    assert status == "fix" and "ALTER SYSTEM SET track_activity_query_size = 4096" in text


def test_a_fleet_with_two_whole_server_targets_on_one_server(pg: Server, tmp_path: Path) -> None:
    """Two targets reaching one server, both reading every database: doctor examines each, then names the pitfall
    the daemon would meet only once both connect; a label one target lacks is said to be exported empty."""
    fleet = (f"targets:\n  - {{name: one, dsn: '{pg.dsn}', labels: {{region: eu}}}}\n"
             f"  - {{name: two, dsn: '{pg.dsn_for('template1')}'}}\n")
    out = pgparent("doctor", "--config.file", config(tmp_path, fleet))
    assert out.returncode == 1, out.stdout + out.stderr
    headings = [line for line in out.stdout.splitlines() if not line.startswith("  ")]
    assert [h.split(" (")[0] for h in headings[:-1]] == ["target one", "target two", "fleet"]
    fleet_lines = [(s, t) for s, topic, t in lines_of(out.stdout) if topic == "fleet"]
    assert fleet_lines[0][0] == "fix" and "targets one, two reach one server" in fleet_lines[0][1]
    assert fleet_lines[1] == ("note", "label 'region' is exported empty for the target without it: two")
    check = pgparent("check", "--config.file", config(tmp_path, fleet))
    assert check.returncode == 0, check.stderr
    assert "label 'region' is exported empty for the target without it: two" in check.stdout
    assert "targets: one, two reach 127.0.0.1:" in check.stdout


def test_a_server_that_cannot_be_reached_is_a_fix(tmp_path: Path) -> None:
    """Nothing listening: doctor prints the connection failure as the one line to fix and exits 1."""
    from exporter.pgcluster import free_port

    out = pgparent("doctor", "--dsn", f"host=127.0.0.1 port={free_port()} user=x password=secret-pw connect_timeout=2")
    assert out.returncode == 1, out.stdout + out.stderr
    (line,) = lines_of(out.stdout)
    assert line[:2] == ("fix", "connect") and "secret-pw" not in out.stdout


AZURE_LINES = [
    ("ok", "connect"), ("ok", "password"), ("note", "server"), ("ok", "superuser"), ("ok", "pg_read_all_stats"),
    ("ok", "pg_signal_backend"), ("ok", "pooler"), ("ok", "TLS"), ("ok", "track_activity_query_size"),
    ("note", "recovery"), ("ok", "cost source proc"), ("ok", "cost source proc_io"),
    (None, "cost source backend_stats"),
    ("ok", "protect"), ("note", "azure admin role"), ("note", "azure Entra ID"), ("note", "azure port"),
    ("note", "azure TLS"),
]
"""doctor's lines against the emulated Azure server, in order (backend_stats: ok on PostgreSQL 18, else a note)."""


def test_doctor_on_the_emulated_azure_server(azure: AzureServer, tmp_path: Path) -> None:
    """As Azure's server admin under verify-full, with the password from a file: every line as an Azure user
    should see it (Azure recognised by its reserved names, not a superuser, TLS checked, Azure's ways named), exit 0;
    a config whose protect list dropped azuresu is told to add it back."""
    password = tmp_path / "admin-password"
    password.write_text(azure.admin_password + "\n")
    dsn = azure.dsn_for("postgres", azure.admin, "").replace(" password= ", " ")
    out = pgparent("doctor", "--dsn", dsn, "--password.file", str(password),
                   "--config.file", config(tmp_path, SIGNALLING))
    assert out.returncode == 0, out.stdout + out.stderr
    got = lines_of(out.stdout)
    assert [(s if want is not None else None, t) for (s, t, _), (want, _) in zip(got, AZURE_LINES, strict=True)] \
        == AZURE_LINES, out.stdout
    checks = by_topic(out.stdout)
    assert checks["connect"][1].startswith("PostgreSQL ") and "as role 'azureadmin' to database 'postgres'" in \
        checks["connect"][1]
    assert checks["password"][1].startswith("from the password file")
    assert checks["server"][1] == ("Azure Database for PostgreSQL flexible server (recognised by role azuresu, role "
                                   "azure_pg_admin, database azure_maintenance)")
    assert checks["superuser"][1].startswith("role 'azureadmin' is not a superuser")
    assert checks["TLS"][1].startswith("TLSv1.") and "sslmode=verify-full" in checks["TLS"][1]
    assert "6432" in checks["azure port"][1] and "pgparent[azure]" in checks["azure Entra ID"][1]
    assert azure.admin_password not in out.stdout + out.stderr

    replaced = SIGNALLING + "protect:\n  users: [replication]\n"
    out = pgparent("doctor", "--dsn", dsn, "--password.file", str(password), "--config.file",
                   config(tmp_path, replaced))
    assert out.returncode == 1, out.stdout + out.stderr
    assert by_topic(out.stdout)["protect"] == (
        "fix", "protect.users no longer names azuresu, azure_pg_admin, azure_superuser (a list in the config "
               "replaces the default): add them back")


def test_without_tls_the_emulated_azure_server_refuses_and_doctor_says_why(azure: AzureServer) -> None:
    """sslmode=disable against the TLS-only server: pg_hba.conf refuses it, and doctor's one line names the refusal
    and where to look."""
    dsn = azure.admin_dsn.replace("sslmode=verify-full", "sslmode=disable")
    out = pgparent("doctor", "--dsn", dsn)
    assert out.returncode == 1, out.stdout + out.stderr
    ((status, topic, text),) = lines_of(out.stdout)
    assert (status, topic) == ("fix", "connect") and "pg_hba.conf has no line for this address" in text, text


def test_a_failing_password_command_is_a_usage_error(azure: AzureServer) -> None:
    """A password command that fails: doctor, like check, prints the error naming the command and exits 2."""
    dsn = azure.dsn_for("postgres", azure.admin, "").replace(" password= ", " ")
    out = pgparent("doctor", "--dsn", dsn, "--password.command", "false")
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr == "pgparent: password command false: exit status 1\n" and out.stdout == ""


def test_a_fleet_target_whose_dsn_or_password_cannot_be_had_is_said_and_the_rest_examined(
        pg: Server, tmp_path: Path) -> None:
    """In a fleet, a target whose dsn_env is unset and one whose password command fails each get their line; the
    other targets are still examined; the exit status is 2, a setup error."""
    fleet = (f"targets:\n  - {{name: good, dsn: '{pg.dsn}', sessions: database}}\n"
             "  - {name: noenv, dsn_env: PGPARENT_DOCTOR_UNSET, sessions: database}\n"
             f"  - {{name: nopw, dsn: '{pg.dsn_for('template1', password='').replace(' password= ', ' ')}', "
             "sessions: database, password: {command: [/bin/false]}}\n")
    out = pgparent("doctor", "--config.file", config(tmp_path, fleet))
    assert out.returncode == 2, out.stdout + out.stderr
    sections = out.stdout.split("\ntarget ")
    assert by_topic(sections[0])["connect"][0] == "ok", out.stdout
    assert "fix  config: " in sections[1] and "PGPARENT_DOCTOR_UNSET" in sections[1]
    assert "fix  password: password command /bin/false: exit status 1" in sections[2]
