"""Password sources (a command, a file), the `password:` config block and its flags, and how a failed connection
attempt is classified; no database (tests/integration/test_credentials.py connects)."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from exporter.cli.main import main
from exporter.core.settings import PasswordSource, parse_config
from exporter.errors import ConfigInvalid, CredentialUnavailable, DatabaseUnavailable
from exporter.pg.credentials import (
    EXPIRY_MARGIN,
    MAX_REUSE,
    AwsSource,
    CommandSource,
    FileSource,
    Token,
    parse_output,
    problems,
)
from exporter.pg.failures import connect_failure
from exporter.run.monitor import AuthBackoff
from tests.unit.factory import UnixClock

NOW = 1_800_000_000.0



def script(tmp_path: Path, body: str) -> tuple[str, ...]:
    """argv of a shell script that appends a line to `runs` each time it runs, then does `body`."""
    path = tmp_path / "password.sh"
    path.write_text(f"#!/bin/sh\necho run >> {tmp_path / 'runs'}\n{body}\n")
    path.chmod(0o755)
    return (str(path),)


def runs(tmp_path: Path) -> int:
    path = tmp_path / "runs"
    return len(path.read_text().splitlines()) if path.exists() else 0


# --- what a command prints ----------------------------------------------------------------------------------------


def test_az_get_access_token_output_is_a_token_with_its_epoch_expiry() -> None:
    """az account get-access-token's JSON gives accessToken, expiring at expires_on (epoch), not expiresOn (local)."""
    out = json.dumps({"accessToken": "eyJ0.abc", "expiresOn": "2027-01-15 10:00:00.000000", "expires_on": NOW,
                      "subscription": "s", "tenant": "t", "tokenType": "Bearer"}, indent=2)
    assert parse_output(out) == Token("eyJ0.abc", NOW)


@pytest.mark.parametrize(
    ("data", "expires_at"),
    [
        ({"token": "t1", "expires_at": "2027-01-15T08:00:00Z"}, datetime(2027, 1, 15, 8, tzinfo=UTC).timestamp()),
        ({"password": "t1", "expiry": str(int(NOW))}, NOW),
        ({"token": "t1", "expiry": NOW}, NOW),
        ({"token": "t1"}, None),
        ({"token": "t1", "expires_at": "next tuesday"}, None),
    ],
)
def test_json_tokens_and_their_expiry_forms(data: dict[str, object], expires_at: float | None) -> None:
    """token/password with expires_at/expiry as ISO 8601 or epoch; a missing or unreadable expiry: used once."""
    assert parse_output(json.dumps(data)) == Token("t1", expires_at)


def test_plain_text_and_a_password_that_only_looks_like_json() -> None:
    """Plain text is the password, a leading brace included when it is not a JSON object."""
    assert parse_output("s3cret") == Token("s3cret")
    assert parse_output("{not json") == Token("{not json")


def test_a_json_object_without_a_token_is_an_error() -> None:
    """A JSON object with none of the token keys is refused, naming the keys looked for."""
    with pytest.raises(ValueError, match="accessToken, token, password"):
        parse_output('{"expires_on": 1}')


# --- the command source -------------------------------------------------------------------------------------------


def test_a_plain_text_command_runs_for_every_connection(tmp_path: Path) -> None:
    """Plain text is never cached: each password() runs the command again."""
    source = CommandSource(script(tmp_path, "echo '  pw-1  '"))
    assert [source.password(), source.password()] == ["pw-1", "pw-1"]
    assert runs(tmp_path) == 2


def test_a_json_token_is_reused_until_the_margin_before_its_expiry(tmp_path: Path) -> None:
    """A token with an expiry is reused until EXPIRY_MARGIN before it; then, or after forget(), fetched again."""
    clock = UnixClock()
    expires = NOW + 600
    source = CommandSource(script(tmp_path, f'echo \'{{"accessToken": "tok", "expires_on": {expires}}}\''),
                           clock=clock)
    assert source.password() == "tok" and source.password() == "tok"
    assert runs(tmp_path) == 1
    clock.now = expires - EXPIRY_MARGIN - 1
    source.password()
    assert runs(tmp_path) == 1
    clock.now = expires - EXPIRY_MARGIN
    source.password()
    assert runs(tmp_path) == 2
    source.forget()
    source.password()
    assert runs(tmp_path) == 3


def test_a_failing_command_names_its_program_status_and_first_stderr_line_never_its_output(tmp_path: Path) -> None:
    """Non-zero exit: argv[0], the exit status and stderr's first line, with what it printed on stdout masked."""
    argv = script(tmp_path, "echo leaked-pw-123\necho 'login failed for leaked-pw-123' >&2\necho more >&2\nexit 3")
    with pytest.raises(CredentialUnavailable) as caught:
        CommandSource(argv).password()
    assert str(caught.value) == f"password command {argv[0]}: exit status 3: login failed for ****"
    assert isinstance(caught.value, DatabaseUnavailable) and caught.value.reason == "credential"


def test_a_command_that_hangs_is_killed_with_its_children_at_the_timeout(tmp_path: Path) -> None:
    """A command past its timeout is killed (its whole process group, so a shell's child holds no pipe open)."""
    started = time.monotonic()
    argv = script(tmp_path, "sleep 30 &\nsleep 30")
    with pytest.raises(CredentialUnavailable) as caught:
        CommandSource(argv, timeout=0.3).password()
    assert str(caught.value) == f"password command {argv[0]}: timed out after 0.3s"
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("true", "printed nothing on stdout"),
        ("echo '{\"expires_on\": 1}'", "printed a JSON object with none of accessToken, token, password"),
        ("kill -9 $$", "killed by signal 9"),
    ],
)
def test_empty_or_unusable_output_and_a_killed_command(tmp_path: Path, body: str, message: str) -> None:
    """No output, a JSON object without a token, a command killed by a signal: each a clear error."""
    argv = script(tmp_path, body)
    with pytest.raises(CredentialUnavailable) as caught:
        CommandSource(argv).password()
    assert str(caught.value) == f"password command {argv[0]}: {message}"


def test_a_command_that_cannot_be_run(tmp_path: Path) -> None:
    """A program that does not exist: the error says so."""
    with pytest.raises(CredentialUnavailable) as caught:
        CommandSource((str(tmp_path / "nope"),)).password()
    assert str(caught.value) == f"password command {tmp_path / 'nope'}: cannot run it: No such file or directory"


# --- the file source ----------------------------------------------------------------------------------------------


def test_a_password_file_is_read_again_for_each_connection(tmp_path: Path) -> None:
    """The file's first line, stripped, read again at each password(): a rotated secret is picked up."""
    path = tmp_path / "pw"
    path.write_text("  first \nsecond line\n")
    source = FileSource(str(path))
    assert source.password() == "first"
    path.write_text("rotated\n")
    assert source.password() == "rotated"


def test_a_missing_or_empty_password_file(tmp_path: Path) -> None:
    """A missing or empty file: a clear error naming it."""
    path = tmp_path / "pw"
    with pytest.raises(CredentialUnavailable, match=f"^password file {path}: cannot read it: No such file"):
        FileSource(str(path)).password()
    path.write_text("\n \n")
    with pytest.raises(CredentialUnavailable, match=f"^password file {path}: the file is empty$"):
        FileSource(str(path)).password()


# --- the config block and the flags -------------------------------------------------------------------------------


def _target(password: object) -> dict[str, object]:
    return {"targets": [{"name": "db1", "dsn": "host=db1 user=u", "password": password}]}


def test_a_command_string_is_split_as_a_shell_would_and_runs_without_one() -> None:
    """`command` as a string is split with shell quoting rules into an argv; a list is taken as it is."""
    config = parse_config(_target({"command": "az account get-access-token --query 'a b'"}), "f.yaml")
    spec = config.targets[0].password
    assert spec is not None and spec.command == ("az", "account", "get-access-token", "--query", "a b")
    assert spec.command_timeout == 10.0
    spec = PasswordSource.model_validate({"command": ["cat", "/run/pw"], "timeout": "2s"})
    assert spec.command == ("cat", "/run/pw") and spec.command_timeout == 2.0


@pytest.mark.parametrize(
    ("password", "error"),
    [
        ({"command": "x", "file": "y"}, "targets.0.password: a password source is exactly one of command, file, "
                                        "provider (got command, file)"),
        ({}, "targets.0.password: a password source is exactly one of command, file, provider"),
        ({"file": "y", "timeout": "5s"}, "targets.0.password: timeout applies to command only"),
        ({"command": "x", "timeout": "0s"}, "targets.0.password: timeout must be longer than 0s"),
        ({"provider": "azure", "region": "eu"}, "targets.0.password: region applies to provider: aws only"),
        ({"provider": "aws", "client_id": "x"}, "targets.0.password: client_id applies to provider: azure only"),
        ({"provider": "oracle"}, "targets.0.password.provider: Input should be 'azure', 'aws' or 'gcp'"),
        ({"command": ""}, "targets.0.password.command: the command is empty"),
        ({"command": "a 'b"}, "targets.0.password.command: cannot split the command into arguments"),
        ({"command": "x", "timeout": "soon"}, "targets.0.password.timeout: invalid duration"),
        ({"file": "y", "extra": 1}, "targets.0.password.extra: Extra inputs are not permitted"),
    ],
)
def test_password_block_errors_name_the_field(password: dict[str, object], error: str) -> None:
    """Each mistake in a target's password block is reported at its dotted path."""
    with pytest.raises(ConfigInvalid) as caught:
        parse_config(_target(password), "f.yaml")
    assert any(line.startswith(f"f.yaml: {error}") for line in caught.value.errors), caught.value.errors


def test_a_dsn_with_its_own_password_and_an_aws_dsn_without_host_or_user_are_problems() -> None:
    """Beside a source the DSN may carry no password; aws needs the DSN's one host and its user."""
    spec = PasswordSource(file="/run/pw")
    assert problems(spec, "host=h user=u") == []
    assert [f for f, _ in problems(spec, "host=h user=u password=old")] == [""]
    aws = PasswordSource(provider="aws", region="eu-west-1")
    assert problems(aws, "host=db.example.internal user=iam") == []
    messages = [m for _, m in problems(aws, "host=/var/run/postgresql")]
    assert any("one host" in m for m in messages) and any("user=NAME" in m for m in messages)
    assert problems(aws, None) == []


def test_check_refuses_a_provider_whose_extra_is_not_installed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """`pgparent check` exits 2 naming the target's provider field and the pip install that fixes it."""
    monkeypatch.setitem(sys.modules, "azure.identity", None)  # as if azure-identity were not installed
    path = tmp_path / "fleet.yaml"
    path.write_text("targets:\n  - name: orders\n    dsn: host=x.postgres.database.azure.com user=u\n"
                    "    password: {provider: azure}\n")
    assert main(["check", "--config.file", str(path)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"{path}: targets.orders.password.provider: azure needs azure-identity: pip install 'pgparent[azure]'"
    ]


def test_check_refuses_an_inline_dsn_that_also_carries_a_password(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """A target with a password source and a DSN password: a config error, exit 2."""
    path = tmp_path / "fleet.yaml"
    path.write_text("targets:\n  - name: orders\n    dsn: host=x user=u password=old\n    password: {file: /pw}\n")
    assert main(["check", "--config.file", str(path)]) == 2
    assert capsys.readouterr().err.startswith(f"{path}: targets.orders.password: the DSN also carries a password")


@pytest.mark.parametrize(
    ("flags", "error"),
    [
        (["--password.command", "x", "--password.file", "y"], "not allowed with argument"),
        (["--password.file", "y", "--password.timeout", "1s"], "pgparent: --password: timeout applies to command"),
        (["--password.command", "x", "--password.timeout", "soon"], "pgparent: --password.timeout: invalid duration"),
        (["--password.provider", "aws", "--dsn", "host=/tmp user=u"], "pgparent: --password.provider: aws signs"),
        (["--password.file", "y", "--dsn", "host=h password=pw-x"], "pgparent: --password.file: the DSN also"),
    ],
)
def test_password_flags_are_checked_before_connecting(flags: list[str], error: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """Two sources, an option of another source, a bad duration, a DSN they cannot serve: exit 2 naming the flag."""
    path = tmp_path / "rules.yaml"
    path.write_text("rules: []\n")
    with pytest.raises(SystemExit) if "allowed" in error else contextlib.nullcontext():
        assert main(["check", "--config.file", str(path), *flags]) == 2
    err = capsys.readouterr().err
    assert error in err and "pw-x" not in err


# --- why a connection attempt failed ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ('connection to server at "127.0.0.1", port 5432 failed: FATAL:  password authentication failed for user "u"',
         "auth"),
        ('connection to server at "db", port 5432 failed: FATAL:  PAM authentication failed for user "iam"', "auth"),
        ('connection to server at "db", port 5432 failed: FATAL:  role "nobody" does not exist', "auth"),
        ("FATAL:  The access token has expired. Acquire a new token and try again.", "auth"),
        ('FATAL:  Azure AD access token not valid for role "x"', "auth"),
        ("connection to server at \"db\", port 5432 failed: fe_sendauth: no password supplied", "auth"),
        ('FATAL:  no pg_hba.conf entry for host "10.0.0.1", user "u", database "d", SSL encryption', "rejected"),
        ('FATAL:  pg_hba.conf rejects connection for host "10.0.0.1", user "u", database "d", no encryption',
         "rejected"),
        ("connection to server at \"db\", port 5432 failed: SSL error: certificate verify failed", "tls"),
        ("connection to server at \"db\", port 5432 failed: server does not support SSL, but SSL was required", "tls"),
        ('connection to server at "127.0.0.1", port 1 failed: Connection refused\n\tIs the server running',
         "unreachable"),
        ("connection to server at \"10.1.1.1\", port 5432 failed: timeout expired", "unreachable"),
        ('could not translate host name "nowhere.invalid" to address: Name or service not known', "unreachable"),
        ('connection to server at "db", port 5432 failed: FATAL:  the database system is starting up', "unreachable"),
        ("SSL SYSCALL error: EOF detected", "unreachable"),
        ('FATAL:  database "nope" does not exist', "other"),
        # Names say nothing of why: a role or host that looks like a reason is not one.
        ('FATAL:  no pg_hba.conf entry for host "10.0.0.1", user "entra-reader", database "d", SSL encryption',
         "rejected"),
        ('connection to server at "pg-aad.example.com" (10.0.0.5), port 5432 failed: Connection refused',
         "unreachable"),
        ('connection to server at "tls-gw.internal" (10.0.0.6), port 5432 failed: Connection refused', "unreachable"),
        # A server going away under TLS is an outage.
        ('connection to server at "db", port 5432 failed: SSL connection has been closed unexpectedly', "unreachable"),
        ("SSL error: unexpected eof while reading", "unreachable"),
        ('connection to server at "db", port 5432 failed: FATAL:  the database system is not accepting connections',
         "unreachable"),
        ("FATAL:  sorry, too many clients already", "other"),
    ],
)
def test_connect_failures_are_told_apart_by_libpq_message(message: str, reason: str) -> None:
    """Each libpq connect message maps to one reason: credential problems, pg_hba, TLS, outages, the rest."""
    assert connect_failure(message) == reason


def test_auth_backoff_is_long_jittered_and_capped() -> None:
    """After refused credentials the delay starts at 15-20 s and doubles to at most 5 min."""
    b = AuthBackoff()
    delays = [b.failed(0.0) for _ in range(8)]
    assert 15.0 <= delays[0] <= 20.0 and (1 - AuthBackoff.JITTER) * AuthBackoff.BASE == 15.0
    assert all(d <= 300.0 for d in delays) and delays[-1] >= 225.0


def test_the_documented_targets_are_a_valid_config() -> None:
    """docs/credentials.md's config example validates, every source in it as documented."""
    import yaml

    text = (Path(__file__).resolve().parents[2] / "docs" / "credentials.md").read_text()
    block = text.split("```yaml\n", 1)[1].split("```", 1)[0]
    config = parse_config(yaml.safe_load(block), "docs/credentials.md")
    sources = {t.name: t.password for t in config.targets}
    assert {n: s.describe() for n, s in sources.items() if s is not None} == {
        "orders-eu": "password provider azure", "orders-us": "password provider aws",
        "orders-asia": "password provider gcp", "reports": "password command az",
        "billing": "password file /var/run/secrets/pgparent/billing-password",
    }
    reports = sources["reports"]
    assert reports is not None and reports.command_timeout == 20.0


@pytest.mark.parametrize("expiry", ["nan", "inf", 1e400, "9999999-01-01", True])
def test_an_expiry_that_is_no_finite_moment_caches_nothing(expiry: object) -> None:
    """NaN, infinity, an impossible date or a boolean is no expiry: the token is used for one connection."""
    assert parse_output(json.dumps({"token": "t1", "expiry": expiry})) == Token("t1")


def test_the_daemon_refuses_to_start_or_reload_into_a_provider_whose_extra_is_missing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without gcp's google-auth the daemon does not start on such a config, and a reload into one keeps the old."""
    from exporter.config import load_config
    from exporter.run.daemon import Daemon

    monkeypatch.setitem(sys.modules, "google.auth", None)  # as if google-auth were not installed
    path = tmp_path / "fleet.yaml"
    fleet = "targets:\n  - name: sql\n    dsn: host=10.0.0.5 user=pgparent@p.iam\n    password: {provider: gcp}\n"
    path.write_text(fleet)
    with pytest.raises(ConfigInvalid) as caught:
        Daemon(load_config(path), config_path=path)
    assert caught.value.errors == [
        f"{path}: targets.sql.password.provider: gcp needs google-auth: pip install 'pgparent[gcp]'"]
    path.write_text("rules: []\n")
    daemon = Daemon(load_config(path), config_path=path)  # the one server of --dsn: nothing to import
    path.write_text(fleet)
    assert daemon.reload() is False and list(daemon.monitors) == ["default"]


def test_a_millisecond_expiry_is_read_as_one_and_no_token_is_kept_past_a_day(tmp_path: Path) -> None:
    """An epoch expiry in milliseconds is taken as such; an integer too large for a float is no expiry; and however
    far an expiry is, a token is fetched again after MAX_REUSE."""
    assert parse_output(json.dumps({"token": "t", "expires_on": int(NOW * 1000)})) == Token("t", NOW)
    assert parse_output('{"token": "t", "expires_on": ' + "9" * 400 + "}") == Token("t")
    clock = UnixClock()
    source = CommandSource(script(tmp_path, f'echo \'{{"token": "t", "expires_on": {NOW + 10 * MAX_REUSE}}}\''),
                           clock=clock)
    source.password()
    clock.now = NOW + MAX_REUSE - EXPIRY_MARGIN - 1
    source.password()
    assert runs(tmp_path) == 1
    clock.now = NOW + MAX_REUSE - EXPIRY_MARGIN
    source.password()
    assert runs(tmp_path) == 2


def test_whatever_a_source_raises_is_a_credential_outage(tmp_path: Path) -> None:
    """An error a source did not foresee (a vendor library's, a parser's) is CredentialUnavailable naming the source
    and the error's type, never a crash of the poll; and a token printed over several lines of JSON is masked in
    the command's stderr."""

    class Surprising(AwsSource):
        def _make_client(self) -> object:
            raise KeyError("no such profile")

    with pytest.raises(CredentialUnavailable) as caught:
        Surprising("db", 5432, "u", region="eu-west-1").password()
    assert str(caught.value) == "password provider aws: KeyError: 'no such profile'"
    argv = script(tmp_path, 'printf \'{\\n  "accessToken": "tok-abc-123"\\n}\\n\'\necho "bad tok-abc-123" >&2\nexit 1')
    with pytest.raises(CredentialUnavailable) as caught:
        CommandSource(argv).password()
    assert "tok-abc-123" not in str(caught.value) and str(caught.value).endswith("exit status 1: bad ****")
