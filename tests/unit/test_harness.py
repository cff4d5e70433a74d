"""The harness the tests and the benchmark share reads what it is given exactly: expositions, /proc, log files."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from harness import metrics, proc
from harness.daemon import read_log

EXPOSITION = """\
# HELP pgparent_up Whether the last poll succeeded.
# TYPE pgparent_up gauge
pgparent_up{target="a"} 1.0
pgparent_up{target="b,\\"c\\""} 0.0
pgparent_up_extra{target="a"} 7.0
# TYPE pgparent_polls_total counter
pgparent_polls_total{target="a"} 12.0
pgparent_polls_total{target="b,\\"c\\""} 3.0
# TYPE pgparent_groups gauge
pgparent_groups 4.0
"""


def test_samples_are_found_by_name_and_labels() -> None:
    """A sample is found by its exact name and any subset of its labels; an absent one is None."""
    assert metrics.sample(EXPOSITION, "pgparent_up", {"target": "a"}) == 1.0
    assert metrics.sample(EXPOSITION, "pgparent_up", {"target": 'b,"c"'}) == 0.0
    assert metrics.sample(EXPOSITION, "pgparent_groups") == 4.0
    assert metrics.sample(EXPOSITION, "pgparent_up", {"target": "z"}) is None
    assert [v for _, v in metrics.samples(EXPOSITION, "pgparent_polls_total")] == [12.0, 3.0]


def test_series_reads_one_metric_by_one_label() -> None:
    """series() keys one metric's samples by a label, escapes undone, and never takes a longer name for it."""
    assert metrics.series(EXPOSITION, "pgparent_up") == {"a": 1.0, 'b,"c"': 0.0}
    assert metrics.series(EXPOSITION, "pgparent_polls_total") == {"a": 12.0, 'b,"c"': 3.0}
    assert metrics.series(EXPOSITION, "pgparent_groups") == {}  # no target label


def test_a_malformed_exposition_is_an_error() -> None:
    """The parser refuses what Prometheus would refuse, instead of reading half of it."""
    with pytest.raises(ValueError):
        metrics.samples('pgparent_up{target="a} 1\n', "pgparent_up")


def test_proc_reads_this_process() -> None:
    """CPU seconds, threads, resident memory and sockets of a live process, from /proc."""
    pid = os.getpid()
    assert proc.cpu_seconds(pid) > 0 and proc.thread_count(pid) >= 1
    assert 0 < proc.rss_mb(pid) <= proc.peak_rss_mb(pid)
    before = proc.socket_count(pid)
    with socket.socket():
        assert proc.socket_count(pid) == before + 1


def test_read_log_leaves_a_line_being_written_for_the_next_read(tmp_path: Path) -> None:
    """Lines are read up to the last complete one; the next read starts where the last stopped."""
    log = tmp_path / "daemon.log"
    log.write_text(json.dumps({"event": "started"}) + "\nnot json\n" + '{"event": "lead')
    events, offset = read_log(log)
    assert events == [{"event": "started"}, {"event": "non_json_line", "line": "not json"}]
    with log.open("a") as f:
        f.write('ership_acquired"}\n')
    assert read_log(log, offset) == ([{"event": "leadership_acquired"}], log.stat().st_size)
