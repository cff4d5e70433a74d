"""Property-based fuzzing of the config file: every invalid file is exit 2 with FILE: path: message lines, never a
traceback; a reload with such a file keeps the running rules."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from exporter.cli.main import main
from exporter.config import load_config
from exporter.errors import ConfigInvalid
from exporter.pg.database import Database
from exporter.run.daemon import Daemon

REPO = Path(__file__).resolve().parents[2]
EXAMPLE: dict[str, Any] = yaml.safe_load((REPO / "rules.yaml").read_text())
KEYS = ["interval", "dry_run", "grouping", "pattern", "max_groups", "protect", "users", "limits", "rules", "name",
        "match", "parent", "max_sessions", "max_query_duration", "for", "action", "lock_key", "bogus"]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70), st.floats(allow_nan=True),
    st.text(max_size=20), st.sampled_from(["10m", "1h30m", "-1s", "500ms", "terminate", "log", "(?P<parent>x",
                                           "^(?P<parent>.*)", "*", "nan", "1e400"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), inner,
                                                               max_size=4),
    max_leaves=12,
)


@st.composite
def mutated_example(draw: st.DrawFn) -> Any:
    """The example rules.yaml with a few keys dropped, retyped or added, at any depth."""
    doc: Any = yaml.safe_load(yaml.safe_dump(EXAMPLE))
    for _ in range(draw(st.integers(1, 4))):
        node = doc
        path = draw(st.lists(st.integers(0, 5), max_size=3))
        for step in path:
            if isinstance(node, dict) and node:
                key = sorted(node, key=str)[step % len(node)]
                if isinstance(node[key], dict | list):
                    node = node[key]
            elif isinstance(node, list) and node and isinstance(node[step % len(node)], dict | list):
                node = node[step % len(node)]
        op = draw(st.sampled_from(["drop", "set", "add"]))
        if isinstance(node, dict) and node:
            key = draw(st.sampled_from(sorted(node, key=str)))
            if op == "drop":
                del node[key]
            elif op == "set":
                node[key] = draw(values)
            else:
                node[draw(st.sampled_from(KEYS))] = draw(values)
        elif isinstance(node, list):
            node.append(draw(values))
    return doc


SEGMENT = r'(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*")'
LINE = re.compile(rf"^(?P<file>.+?): (?P<path>\(yaml\)|\(file\)|\(root\)|{SEGMENT}(?:\.{SEGMENT})*): \S.*$")


def check(path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["check", "--config.file", str(path)])
    out, err = capsys.readouterr()
    assert code in (0, 2), (code, err)
    if code == 2:
        lines = err.splitlines()
        assert lines, "exit 2 with no error message"
        for line in lines:
            match = LINE.match(line)
            assert match and match.group("file") == str(path), line
        assert "Traceback" not in err
    else:
        assert "rule(s)" in out


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(doc=st.one_of(mutated_example(), values))
def test_fuzzed_documents_are_accepted_or_reported(doc: Any, capsys: pytest.CaptureFixture[str]) -> None:
    """Any YAML document, or a mutation of the example, is either valid or exit 2 with FILE: path: message lines."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rules.yaml"
        path.write_text(yaml.safe_dump(doc, allow_unicode=True))
        check(path, capsys)


@FUZZ
@given(data=st.binary(max_size=200))
def test_fuzzed_bytes_are_accepted_or_reported(data: bytes, capsys: pytest.CaptureFixture[str]) -> None:
    """Arbitrary bytes (broken YAML, non-UTF-8) never produce a traceback."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rules.yaml"
        path.write_bytes(data)
        check(path, capsys)


@settings(max_examples=60, deadline=None)
@given(doc=mutated_example())
def test_reload_with_an_invalid_file_keeps_the_old_rules(doc: Any) -> None:
    """On reload, an invalid file leaves the running config in place and the reload gauge at 0; a valid one swaps."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rules.yaml"
        path.write_text((REPO / "rules.yaml").read_text())
        original = load_config(path)
        daemon = Daemon(original, Database("host=127.0.0.1 port=1"), config_path=path)
        path.write_text(yaml.safe_dump(doc, allow_unicode=True))
        try:
            new = load_config(path)
        except ConfigInvalid:  # whether the mutation is valid is what we ask the loader; anything else is a bug
            new = None
        ok = daemon.reload()
        assert ok == (new is not None)
        if new is None:
            assert daemon.config is original
            assert daemon.registry.get_sample_value("pgparent_config_last_reload_successful") == 0
        else:
            assert daemon.config == new
            assert daemon.registry.get_sample_value("pgparent_config_last_reload_successful") == 1
