"""The config file: durations, the example rules.yaml, and every error reported at once as FILE: path: message."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import tempfile
from pathlib import Path

import pytest

from exporter.cli.main import main
from exporter.config import load_config
from exporter.core.conditions import BY_NAME, NAMES, markdown_table
from exporter.core.settings import DEFAULT_PATTERN, LOCK_KEY, Config, Protect, parse_config
from exporter.core.summary import describe
from exporter.core.units import parse_duration
from exporter.errors import ConfigInvalid

REPO = Path(__file__).resolve().parents[2]
HUGE = "9" * 400
"""An integer YAML reads exactly and float() cannot hold."""


# --- durations ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("30s", 30),
        ("10m", 600),
        ("1h30m", 5400),
        ("2d", 172800),
        ("1.5s", 1.5),
        ("1.5h", 5400),
        ("1m30s500ms", 90.5),
        ("1d2h3m4s", 93784),
        ("7", 7),
        ("2.5", 2.5),
        (" 30s ", 30),
        (3, 3),
        (0.25, 0.25),
        (0, 0),
        ("0s", 0),
        ("1w", 604800),
        ("1y2w", 31536000 + 1209600),
        ("1h500ms", 3600.5),
    ],
)
def test_durations(text: object, seconds: float) -> None:
    """Durations accept units ms, s, m, h, d, w, y, largest first, or a number of seconds."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "   ",
        "abc",
        "10x",
        "5S",
        "1h 30m",
        "1 h",
        "30s ago",
        "s10",
        ".5s",
        "-5s",
        "-1",
        -1,
        -0.5,
        "nan",
        "inf",
        "-inf",
        float("nan"),
        float("inf"),
        True,
        False,
        None,
        [1],
        {"s": 1},
        b"30s",
        "30s10m",
        "1s1s",
        "1m1h",
        "500ms1s",
        "1h1h",
    ],
)
def test_bad_durations(bad: object) -> None:
    """Garbage, spaces between parts, units out of order or repeated (as Prometheus rejects them), negatives,
    booleans, non-finite values and non-scalars are rejected."""
    with pytest.raises(ValueError, match=r"duration"):
        parse_duration(bad)


def test_bad_duration_message_shows_the_syntax() -> None:
    """A rejected duration string names the value and the accepted units."""
    with pytest.raises(ValueError) as caught:
        parse_duration("1h 30m")
    assert "'1h 30m'" in str(caught.value) and "ms, s, m, h, d" in str(caught.value)


def test_huge_integer_duration_is_a_value_error() -> None:
    """An integer too large for a float is a ValueError like any other bad duration."""
    with pytest.raises(ValueError, match=r"duration"):
        parse_duration(int(HUGE))


# --- the example file --------------------------------------------------------------------------------------------


def test_example_rules_yaml_loads() -> None:
    """The documented rules.yaml is valid and has the rules it documents."""
    config = load_config(REPO / "rules.yaml")
    assert [r.name for r in config.rules] == ["runaway-1001", "oversized", "stuck-transactions"]
    assert config.interval == 5 and config.dry_run is False
    assert config.grouping.pattern == DEFAULT_PATTERN and config.grouping.max_groups == 500
    assert config.protect == Protect()  # it spells out the defaults
    assert config.limits.max_terminations_per_cycle == 100
    runaway, oversized, stuck = config.rules
    assert runaway.match.parent == "FakeParent:1001" and runaway.conditions() == {"max_query_duration": 600}
    assert runaway.for_ == 0 and runaway.action == "terminate"
    assert oversized.match.parent == "*" and oversized.conditions() == {"max_sessions": 20}
    assert oversized.action == "terminate"
    assert stuck.match.parent == "etl:*" and stuck.conditions() == {"max_idle_in_transaction": 900}
    assert stuck.for_ == 60 and stuck.action == "log"


# --- error reports -----------------------------------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def errors_of(path: Path) -> list[str]:
    with pytest.raises(ConfigInvalid) as caught:
        load_config(path)
    return caught.value.errors


def test_two_bad_fields_in_two_rules_give_two_lines(tmp_path: Path) -> None:
    """A bad duration in one rule and a bad action in another are both reported, one exact line each."""
    path = write(
        tmp_path,
        """
rules:
  - name: a
    max_query_duration: 10 minutes
    action: terminate
  - name: b
    max_sessions: 1
    action: explode
""",
    )
    assert errors_of(path) == [
        f"{path}: rules.0.max_query_duration: invalid duration '10 minutes': use a number of seconds or units "
        "ms, s, m, h, d, w, y, largest first, each at most once (e.g. 500ms, 1h30m)",
        f"{path}: rules.1.action: Input should be 'terminate', 'cancel' or 'log'",
    ]


def test_every_error_at_once_with_dotted_paths(tmp_path: Path) -> None:
    """Several problems in several places are all reported, each as FILE: dotted.path: message."""
    path = write(
        tmp_path,
        """
interval: fast
grouping: {pattern: '^(?P<tag>.*)', colour: red}
rules:
  - name: a
    max_query_duration: 10 minutes
    action: terminate
  - name: b
    max_sessions: 3
    action: explode
  - name: c
    action: log
""",
    )
    errors = errors_of(path)
    paths = [e.split(": ")[1] for e in errors]
    assert all(e.startswith(f"{path}: ") for e in errors)
    assert paths == [
        "interval",
        "grouping.pattern",
        "grouping.colour",
        "rules.0.max_query_duration",
        "rules.1.action",
        "rules.2",
    ]
    assert "named group 'parent'" in errors[1]
    assert "at least one condition" in errors[5]


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("bogus: 1\n", "bogus"),
        ("grouping: {bogus: 1}\n", "grouping.bogus"),
        ("protect: {bogus: [x]}\n", "protect.bogus"),
        ("limits: {bogus: 1}\n", "limits.bogus"),
        ("leader_election: {bogus: 1}\n", "leader_election.bogus"),
        ("rules: [{name: a, max_sessions: 1, bogus: 1}]\n", "rules.0.bogus"),
        ("rules: [{name: a, max_sessions: 1, match: {parent: x, host: y}}]\n", "rules.0.match.host"),
    ],
)
def test_unknown_keys_rejected_at_every_level(tmp_path: Path, text: str, where: str) -> None:
    """An unknown key is an error wherever it appears, named by its full dotted path."""
    path = write(tmp_path, text)
    assert errors_of(path) == [f"{path}: {where}: Extra inputs are not permitted"]


def test_key_that_is_not_a_word_is_quoted_on_one_line(tmp_path: Path) -> None:
    """A typo'd key holding spaces or a newline is JSON-quoted, so the error stays one parseable line."""
    path = write(tmp_path, '"bad key\\nx": 1\n')  # a double-quoted YAML key: a real newline
    (error,) = errors_of(path)
    assert error == f'{path}: "bad key\\nx": Extra inputs are not permitted'
    assert "\n" not in error


def test_for_is_the_yaml_name_of_the_delay(tmp_path: Path) -> None:
    """`for:` sets a rule's delay, its errors are reported under `for`, and it defaults to 0."""
    config = load_config(
        write(tmp_path, "rules: [{name: a, max_sessions: 1, for: 1m30s}, {name: b, max_sessions: 1}]\n")
    )
    assert [r.for_ for r in config.rules] == [90, 0]
    path = write(tmp_path, "rules: [{name: a, max_sessions: 1, for: soon}]\n")
    (error,) = errors_of(path)
    assert error.startswith(f"{path}: rules.0.for: invalid duration 'soon'")


def test_python_field_name_for_underscore_is_an_unknown_key(tmp_path: Path) -> None:
    """`for_` is not a key of the file format (README: `rules[].for`), so it is rejected like any unknown key."""
    path = write(tmp_path, "rules: [{name: a, max_sessions: 1, for_: 5}]\n")
    assert errors_of(path) == [f"{path}: rules.0.for_: Extra inputs are not permitted"]


@pytest.mark.parametrize(
    ("text", "where", "says"),
    [
        ("limits: {max_terminations_per_cycle: 0}\n", "limits.max_terminations_per_cycle", "greater than or equal"),
        ("grouping: {max_groups: 0}\n", "grouping.max_groups", "greater than or equal to 1"),
        ("rules: [{name: a, max_sessions: 1}, {name: a, max_sessions: 2}]\n", "rules", "'a' is used twice"),
        ("rules: [{name: a, max_sessions: -1}]\n", "rules.0.max_sessions", "greater than or equal to 0"),
        ("rules: [{name: a, max_query_duration: yes}]\n", "rules.0.max_query_duration", "boolean"),
        ("rules: [{name: '', max_sessions: 1}]\n", "rules.0.name", "at least 1 character"),
        ("rules: [{max_sessions: 1}]\n", "rules.0.name", "Field required"),
        ("rules: [{name: a}]\n", "rules.0", "at least one condition"),
        ("grouping: {pattern: '^(?P<tag>[^:]+)'}\n", "grouping.pattern", "named group 'parent'"),
        ("grouping: {pattern: '(?P<parent>'}\n", "grouping.pattern", "not a valid regular expression"),
        ("interval: 10ms\n", "interval", "at least 100ms"),
        ("protect: {users: azuresu}\n", "protect.users", "valid tuple"),
        ("protect: {superusers: maybe}\n", "protect.superusers", "'auto', 'true' or 'false'"),
        ("- a\n- b\n", "(root)", "must be a mapping of settings, got list"),
        ("just words\n", "(root)", "must be a mapping of settings, got str"),
        ("42\n", "(root)", "must be a mapping of settings, got int"),
        ("interval: 1s\ninterval: 2s\n", "(yaml)", "duplicate key 'interval' at line 2, column 1"),
        (
            "rules:\n  - name: a\n    max_sessions: 1\n    action: log\n    action: terminate\n",
            "(yaml)",
            "duplicate key 'action' at line 5, column 5",
        ),
        ("interval: 5s\nrules:\n  - name: a\n    max_sessions: [1\n", "(yaml)", "at line 5, column 1"),
        ("interval: 5s\n  bad: 1\n", "(yaml)", "mapping values are not allowed here at line 2, column 6"),
        ("!!python/object/apply:os.system ['true']\n", "(yaml)", "could not determine a constructor"),
        ("targets: [{name: a}]\n", "targets.0", "exactly one of dsn, dsn_file, dsn_env (got 0)"),
        ("targets: [{name: a, dsn: x, dsn_env: Y}]\n", "targets.0", "exactly one of dsn, dsn_file, dsn_env (got 2)"),
        ("targets: [{name: a, dsn: x}, {name: a, dsn: y}]\n", "targets", "'a' is used twice"),
        ("targets: [{name: '-a', dsn: x}]\n", "targets.0.name", "should match pattern"),
        ("targets: [{name: a, dsn: x, labels: {target: b}}]\n", "targets.0.labels", "reserved"),
        ("targets: [{name: a, dsn: x, sessions: cluster}]\n", "targets.0.sessions", "'server' or 'database'"),
    ],
)
def test_specific_errors(tmp_path: Path, text: str, where: str, says: str) -> None:
    """Bad values, duplicates, bad regexes, non-mapping roots and YAML errors each name their place and reason."""
    path = write(tmp_path, text)
    (error,) = errors_of(path)
    assert error.startswith(f"{path}: {where}: ") and says in error, error


@pytest.mark.parametrize("text", ["", "# only a comment\n", "~\n", "---\n"])
def test_empty_file_means_defaults(tmp_path: Path, text: str) -> None:
    """An empty (or comment-only, or null) file is the defaults: 5 s interval, default pattern, no rules."""
    config = load_config(write(tmp_path, text))
    assert config == Config()
    assert config.interval == 5 and config.rules == () and config.grouping.pattern == DEFAULT_PATTERN


def test_missing_file(tmp_path: Path) -> None:
    """A missing file is one clear error, not a traceback."""
    missing = tmp_path / "nope.yaml"
    assert errors_of(missing) == [f"{missing}: (file): cannot read: No such file or directory"]


def test_directory_is_unreadable(tmp_path: Path) -> None:
    """A path that is a directory is reported as unreadable."""
    assert errors_of(tmp_path) == [f"{tmp_path}: (file): cannot read: Is a directory"]


def _errors_as(user: str, path: Path) -> list[str]:
    """errors_of(path) in a forked child running as `user` (root reads any file whatever its mode)."""
    account = pwd.getpwnam(user)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to uid, load, report, and leave without running pytest's teardown
        code = 1
        try:
            os.close(read_fd)
            os.setgid(account.pw_gid)
            os.setuid(account.pw_uid)
            os.write(write_fd, json.dumps(errors_of(path)).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        out = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the child failed before reporting"
    result: list[str] = json.loads(out)
    return result


def test_file_without_read_permission() -> None:
    """A file the process may not read is reported as unreadable."""
    folder = Path(tempfile.mkdtemp(prefix="pgparent-perm-"))  # world-searchable, unlike pytest's tmp_path
    try:
        folder.chmod(0o755)
        path = write(folder, "interval: 5s\n")
        path.chmod(0)
        errors = _errors_as("nobody", path) if os.geteuid() == 0 else errors_of(path)
        assert errors == [f"{path}: (file): cannot read: Permission denied"]
    finally:
        shutil.rmtree(folder)


def test_non_utf8_file_is_unreadable(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 are one (file) error."""
    path = tmp_path / "rules.yaml"
    path.write_bytes(b"interval: \xff\xfe5s\n")
    (error,) = errors_of(path)
    assert error.startswith(f"{path}: (file): cannot read: ") and "utf-8" in error


def test_unhashable_yaml_key_is_reported(tmp_path: Path) -> None:
    """A complex (list) mapping key is a (yaml) error, as PyYAML's own safe loader reports it, not a TypeError."""
    path = write(tmp_path, "? [a, b]\n: 1\n")
    (error,) = errors_of(path)
    assert error.startswith(f"{path}: (yaml): ")


def test_huge_integer_interval_is_reported(tmp_path: Path) -> None:
    """`interval: <400 digits>` is a validation error of `interval`, not an OverflowError."""
    path = write(tmp_path, f"interval: {HUGE}\n")
    (error,) = errors_of(path)
    assert error.startswith(f"{path}: interval: ")


def test_huge_max_sessions_is_reported_or_usable(tmp_path: Path) -> None:
    """A max_sessions too large for a float is rejected at load, or else the loaded rule can be described."""
    path = write(tmp_path, f"rules: [{{name: a, max_sessions: {HUGE}}}]\n")
    try:
        config = load_config(path)
    except ConfigInvalid as exc:
        assert exc.errors[0].startswith(f"{path}: rules.0.max_sessions: ")
    else:
        assert "a: parent=*" in "\n".join(describe(config))


def test_parse_config_labels_errors_with_its_source() -> None:
    """parse_config reports under the source name it is given, and rejects a non-mapping root."""
    with pytest.raises(ConfigInvalid) as caught:
        parse_config({"interval": "x", "dry_run": "maybe"}, "inline")
    assert [e.split(": ")[:2] for e in caught.value.errors] == [["inline", "interval"], ["inline", "dry_run"]]
    with pytest.raises(ConfigInvalid) as caught:
        parse_config([1, 2], "inline")
    assert caught.value.errors == ["inline: (root): must be a mapping of settings, got list"]


def test_loaded_config_is_frozen(tmp_path: Path) -> None:
    """A loaded config cannot be changed in place (it is shared across threads and swapped whole)."""
    config = load_config(REPO / "rules.yaml")
    with pytest.raises(ValueError, match="frozen"):
        config.interval = 1.0  # type: ignore[misc]


# --- pgparent check ----------------------------------------------------------------------------------------------


def test_check_command_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`pgparent check` exits 0 with a summary for a valid file and 2 with every error for an invalid one."""
    assert main(["check", "--config.file", str(REPO / "rules.yaml")]) == 0
    out = capsys.readouterr().out
    assert "3 rule(s)" in out and "runaway-1001" in out
    bad = write(tmp_path, "interval: x\nrules: [{name: a}]\n")
    assert main(["check", "--config.file", str(bad)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith(f"{bad}: ") for line in err)


def test_check_summarises_the_example(capsys: pytest.CaptureFixture[str]) -> None:
    """`pgparent check` on rules.yaml prints ok and one line per setting and per rule, on stdout only."""
    path = str(REPO / "rules.yaml")
    assert main(["check", "--config.file", path]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        f"{path}: ok",
        "interval 5s, dry_run false, max_groups 500, max_terminations_per_cycle 100",
        f"grouping sources, first match wins: application_name {DEFAULT_PATTERN}",
        "audit query_text excerpt",
        "cost: proc auto, backend_stats auto, series of absent groups kept 900s",
        f"leader election: session advisory lock {LOCK_KEY}; pgparent's DSN must reach PostgreSQL directly, not "
        "through a transaction pooler such as PgBouncer (the lock would stay on a pooled server connection: a "
        "replica that detects one does not enforce)",
        "3 rule(s):",
        "  - runaway-1001: parent=FakeParent:1001: max_query_duration > 600 -> terminate",
        "  - oversized: parent=*: max_sessions > 20 -> terminate",
        "  - stuck-transactions: parent=etl:*: max_idle_in_transaction > 900 for 60s -> log",
        "cadence: polls every 5s (no enforcing time limit is shorter than two intervals)",
    ]
    assert err == ""


def test_check_names_each_bad_cost_setting(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A `cost:` section with a bad source mode, an unknown key or a retention shorter than two intervals exits 2,
    one line per field named; YAML's unquoted off and on are `off` and `auto`."""
    path = write(tmp_path, "interval: 10s\ncost: {proc: maybe, backend_stats: off, retain: 5s, extra: 1}\n")
    assert main(["check", "--config.file", str(path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert [line.split(": ")[1] for line in err] == ["cost.proc", "cost.extra"]
    assert "'auto' or 'off'" in err[0]
    path = write(tmp_path, "interval: 10s\ncost: {retain: 15s}\n")
    assert main(["check", "--config.file", str(path)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line == f"{path}: cost: retain (15s) must be at least two intervals (20s): a group absent for one poll " \
        "would lose its series"
    unquoted = load_config(write(tmp_path, "cost: {proc: off, backend_stats: on, retain: 1h}\n")).cost
    assert (unquoted.proc, unquoted.backend_stats, unquoted.retain) == ("off", "auto", 3600)  # YAML's booleans


def test_check_marks_dry_run_rules(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The summary marks a rule that only audits, and lists match.database/user."""
    path = write(tmp_path, "rules: [{name: a, match: {parent: 'x:*', user: bob}, max_sessions: 1, dry_run: true}]\n")
    assert main(["check", "--config.file", str(path)]) == 0
    assert "  - a: parent=x:*, user=bob: max_sessions > 1 -> log (dry run)" in capsys.readouterr().out


def test_check_reports_every_error_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An invalid file exits 2 with exactly its error lines on stderr, nothing on stdout, and no traceback."""
    path = write(
        tmp_path,
        "interval: fast\nbogus: 1\nrules:\n  - {name: a, max_query_duration: 10 minutes}\n"
        "  - {name: b, max_sessions: 1, action: explode}\n",
    )
    expected = errors_of(path)
    assert main(["check", "--config.file", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == expected
    assert [line.split(": ")[1] for line in expected] == [
        "interval",
        "rules.0.max_query_duration",
        "rules.1.action",
        "bogus",
    ]
    assert "Traceback" not in err


@pytest.mark.parametrize("text", [None, "rules: [\n", "- a\n"])
def test_check_unreadable_or_broken_file_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str | None
) -> None:
    """A missing file, a YAML syntax error and a non-mapping root each exit 2 with one line on stderr."""
    path = tmp_path / "rules.yaml"
    if text is not None:
        path.write_text(text)
    assert main(["check", "--config.file", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and err.startswith(f"{path}: (")
    assert "Traceback" not in err


# --- conditions, declared once --------------------------------------------------------------------------------------


def test_readme_conditions_table_is_generated_from_the_declaration() -> None:
    """The README's table of rule conditions is exactly what exporter/conditions.py declares."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    between = readme.split("<!-- conditions:begin -->\n", 1)[1].split("\n<!-- conditions:end -->", 1)[0]
    assert between == markdown_table()


@pytest.mark.parametrize("name", NAMES)
def test_every_declared_condition_is_a_rule_key(name: str) -> None:
    """Each declared condition is accepted as a rule key, typed by its kind, and reported by conditions()."""
    value = "90s" if BY_NAME[name].kind == "duration" else 7
    rule = parse_config({"rules": [{"name": "r", name: value}]}, "f").rules[0]
    assert rule.conditions() == {name: 90.0 if BY_NAME[name].kind == "duration" else 7.0}
    with pytest.raises(ConfigInvalid, match=rf"f: rules\.0\.{name}: "):
        parse_config({"rules": [{"name": "r", name: "soon" if BY_NAME[name].kind == "duration" else -1}]}, "f")


def test_check_lock_conditions_good_and_bad(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The lock rule keys: good values pass (a cancel on them draws a warning, exit 0); bad values, a bad scope and a
    bad duration are FILE: path: message lines, exit 2."""
    good = tmp_path / "good.yaml"
    good.write_text(
        "rules:\n"
        "  - {name: blockers, max_blocking_sessions: 5, max_blocking_duration: 1m30s, action: terminate}\n"
        "  - {name: soft, max_blocking_duration: 10s, action: cancel, scope: group}\n"
    )
    assert main(["check", "--config.file", str(good)]) == 0
    out = capsys.readouterr().out
    assert "max_blocking_sessions > 5, max_blocking_duration > 90 -> terminate (root blockers on lock conditions)" \
        in out
    assert f"warning: {good}: rules.1.action: rule 'soft' cancels on max_blocking_duration" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "rules:\n"
        "  - {name: a, max_blocking_sessions: -1}\n"
        "  - {name: b, max_blocking_duration: 10s1m}\n"
        "  - {name: c, max_blocking_sessions: 1, scope: everyone}\n"
    )
    assert main(["check", "--config.file", str(bad)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"{bad}: rules.0.max_blocking_sessions: Input should be greater than or equal to 0"
    assert err[1].startswith(f"{bad}: rules.1.max_blocking_duration: invalid duration '10s1m'")
    assert err[2] == f"{bad}: rules.2.scope: Input should be 'root_blockers', 'group' or 'excess'"
    assert len(err) == 3


def test_check_budget_keys_good_and_bad(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The budget keys: good values pass and are described (exit 0); a bad count, a bad duration, scope: excess
    without max_sessions or beside a lock condition, trim_active without it, and a cancel on a trim are FILE: path:
    message lines, all at once, exit 2."""
    good = tmp_path / "good.yaml"
    good.write_text(
        "rules:\n"
        "  - {name: pool, match: {parent: 'A:*'}, max_sessions: 20, scope: excess, action: terminate}\n"
        "  - {name: idle, max_idle_sessions: 5, max_idle_duration: 10m, action: terminate}\n"
        "  - {name: hard, max_sessions: 40, scope: excess, trim_active: true, action: terminate}\n"
    )
    assert main(["check", "--config.file", str(good)]) == 0
    out = capsys.readouterr().out
    assert "pool: parent=A:*: max_sessions > 20 -> terminate (trims on max_sessions: idle first, then idle in " \
        "transaction, never running ones)" in out
    assert "idle: parent=*: max_idle_sessions > 5, max_idle_duration > 600 -> terminate (trims on " \
        "max_idle_sessions, max_idle_duration" in out
    assert "then running ones)" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "rules:\n"
        "  - {name: a, max_idle_sessions: -1}\n"
        "  - {name: b, max_idle_duration: 10s1m}\n"
        "  - {name: c, max_idle_sessions: 3, scope: excess}\n"
        "  - {name: d, max_sessions: 3, max_blocking_sessions: 1, scope: excess}\n"
        "  - {name: e, max_sessions: 3, trim_active: true}\n"
        "  - {name: f, max_idle_duration: 1m, action: cancel}\n"
        "  - {name: g, max_sessions: 3, scope: excess, trim_active: maybe}\n"
    )
    assert main(["check", "--config.file", str(bad)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"{bad}: rules.0.max_idle_sessions: Input should be greater than or equal to 0",
        f"{bad}: rules.1.max_idle_duration: invalid duration '10s1m': use a number of seconds or units ms, s, m, h, "
        "d, w, y, largest first, each at most once (e.g. 500ms, 1h30m)",
        f"{bad}: rules.2: scope: excess trims a group to its max_sessions budget: set max_sessions",
        f"{bad}: rules.3: scope: excess cannot be combined with lock conditions (max_blocking_sessions): on them the "
        "rule would end its whole group; give them a rule of their own",
        f"{bad}: rules.4: trim_active applies to a max_sessions budget with scope: excess",
        f"{bad}: rules.5: max_idle_duration end idle connections, which a cancel cannot do: use action terminate "
        "(or log)",
        f"{bad}: rules.6.trim_active: Input should be a valid boolean, unable to interpret input",
    ]


@pytest.mark.parametrize(("text", "mode"), [("{}", "auto"), ("{superusers: true}", "true"),
                                             ("{superusers: no}", "false"), ("{superusers: 'false'}", "false")])
def test_protect_superusers_reads_yaml_booleans_as_true_and_false(tmp_path: Path, text: str, mode: str) -> None:
    """`protect.superusers` is auto by default; an unquoted YAML boolean is taken as true or false."""
    assert load_config(write(tmp_path, f"protect: {text}\n")).protect.superusers == mode
