"""The config file: durations, the example rules.yaml, and every error reported at once as FILE: path: message."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.cli import main
from exporter.config import Config, load_config, parse_duration
from exporter.errors import ConfigInvalid

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("30s", 30), ("10m", 600), ("1h30m", 5400), ("2d", 172800), ("1.5s", 1.5), ("7", 7), (3, 3),
     (0.25, 0.25), ("0s", 0)],
)
def test_durations(text: object, seconds: float) -> None:
    """Durations accept units ms, s, m, h, d in sequence, or a number of seconds."""
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "abc", "10x", "1h 30m", "-5s", "-1", True, None, [1], "s10", "nan", "inf"])
def test_bad_durations(bad: object) -> None:
    """Garbage, negatives, booleans and non-finite values are rejected."""
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_example_rules_yaml_loads() -> None:
    """The documented rules.yaml is valid and has the rules it documents."""
    config = load_config(REPO / "rules.yaml")
    assert [r.name for r in config.rules] == ["runaway-1001", "oversized", "stuck-transactions"]
    assert config.interval == 5 and config.rules[0].max_query_duration == 600
    assert config.rules[2].for_ == 60 and config.rules[2].action == "log"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    return path


def errors_of(path: Path) -> list[str]:
    with pytest.raises(ConfigInvalid) as caught:
        load_config(path)
    return caught.value.errors


def test_every_error_at_once_with_dotted_paths(tmp_path: Path) -> None:
    """Several problems in several places are all reported, each as FILE: dotted.path: message."""
    path = write(tmp_path, """
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
""")
    errors = errors_of(path)
    paths = [e.split(": ")[1] for e in errors]
    assert all(e.startswith(f"{path}: ") for e in errors)
    assert paths == ["interval", "grouping.pattern", "grouping.colour", "rules.0.max_query_duration",
                     "rules.1.action", "rules.2"]
    assert "named group 'parent'" in errors[1]
    assert "at least one condition" in errors[5]


@pytest.mark.parametrize(
    ("text", "where", "says"),
    [
        ("bogus: 1\n", "bogus", "Extra inputs"),
        ("limits: {max_terminations_per_cycle: 0}\n", "limits.max_terminations_per_cycle", "greater than or equal"),
        ("rules: [{name: a, max_sessions: 1}, {name: a, max_sessions: 2}]\n", "rules", "used twice"),
        ("rules: [{name: a, max_sessions: 1, match: {parent: x, host: y}}]\n", "rules.0.match.host", "Extra"),
        ("grouping: {pattern: '(?P<parent>'}\n", "grouping.pattern", "not a valid regular expression"),
        ("interval: 10ms\n", "interval", "at least 100ms"),
        ("- a\n- b\n", "(root)", "must be a mapping"),
        ("interval: 1s\ninterval: 2s\n", "(yaml)", "duplicate key 'interval'"),
        ("rules: [\n", "(yaml)", "line"),
    ],
)
def test_specific_errors(tmp_path: Path, text: str, where: str, says: str) -> None:
    """Unknown keys, bad values, duplicates and YAML errors each name their place and reason."""
    (error,) = errors_of(write(tmp_path, text))
    assert error.split(": ")[1] == where and says in error


def test_empty_file_means_defaults(tmp_path: Path) -> None:
    """An empty file is the defaults: 5 s interval, no rules."""
    assert load_config(write(tmp_path, "")) == Config()


def test_missing_file(tmp_path: Path) -> None:
    """A missing file is one clear error, not a traceback."""
    assert errors_of(tmp_path / "nope.yaml") == [f"{tmp_path / 'nope.yaml'}: (file): cannot read: No such file or "
                                                  "directory"]


def test_check_command_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`pgparent check` exits 0 with a summary for a valid file and 2 with every error for an invalid one."""
    assert main(["check", "--config.file", str(REPO / "rules.yaml")]) == 0
    out = capsys.readouterr().out
    assert "3 rule(s)" in out and "runaway-1001" in out
    bad = write(tmp_path, "interval: x\nrules: [{name: a}]\n")
    assert main(["check", "--config.file", str(bad)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith(f"{bad}: ") for line in err)
