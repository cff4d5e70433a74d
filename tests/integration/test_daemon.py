"""The daemon as a real process: outages, restarts, reloads, shutdown, and a hostile-name exposition."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from harness.daemon import DaemonProcess
from harness.waiting import eventually
from tests.support.figures import record_figure
from tests.support.servers import Server
from tests.support.sessions import Clients
from tests.support.tools import require_tool

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RULES = """
interval: 0.5s
rules:
  - name: {name}
    match: {{parent: "Kill:*"}}
    max_sessions: 0
    action: terminate
"""


@pytest.mark.per_major
def test_starts_with_database_down_then_reports_up(private_pg: Server, tmp_path: Path) -> None:
    """With PostgreSQL down at start the daemon serves up 0 and polls errors; once it starts, up goes 1."""
    private_pg.stop()
    with DaemonProcess(tmp_path, RULES.format(name="r1"), private_pg.dsn) as d:
        assert d.sample("pgparent_up") == 0
        d.wait_polls(2, failed=True)  # an outage of more than one poll, counted, and logged once below
        assert d.sample("pgparent_group_sessions") is None
        assert d.get("/healthz")[0] == 200
        private_pg.start()
        started = time.monotonic()
        eventually(lambda: d.sample("pgparent_up") == 1, timeout=30, interval=0.05, what="up after server start")
        record_figure("down_at_start", up_after_server_start_seconds=round(time.monotonic() - started, 2))
        # Logged once per outage, not once per poll: one line before the first `database_available`, however many
        # polls failed. (What follows is another outage: on a loaded machine the new server's first answers can miss
        # the 0.5 s interval's deadline, and that is logged as it should be.)
        events = [e["event"] for e in d.logs() if e.get("event") in ("database_unavailable", "database_available")]
        assert events[:2] == ["database_unavailable", "database_available"], events
        assert d.proc.poll() is None


def test_sighup_good_reload_swaps_rules(pg: Server, tmp_path: Path, clients: Clients) -> None:
    """A valid file on SIGHUP replaces the rules: the new rule's series appear, the old ones go."""
    with DaemonProcess(tmp_path, RULES.format(name="old"), pg.dsn) as d:
        eventually(lambda: d.sample("pgparent_rule_violating_groups", {"rule": "old"}) is not None, what="old rule")
        d.config.write_text(RULES.format(name="new"))
        d.send(signal.SIGHUP)
        eventually(lambda: d.sample("pgparent_rule_violating_groups", {"rule": "new"}) is not None, what="new")
        assert d.sample("pgparent_rule_violating_groups", {"rule": "old"}) is None
        assert d.sample("pgparent_config_last_reload_successful") == 1
        (victim,) = clients.start("Kill:1")
        eventually(lambda: victim.outcome == "terminated", what="new rule enforces")
        # The session ends as its signal is sent; the counter reaches /metrics with the poll's publish, just after.
        eventually(lambda: d.sample("pgparent_signalled_sessions_total", {"rule": "new", "action": "terminate"}) == 1,
                   what="the signal counted on /metrics")


def test_sighup_bad_reload_keeps_old_rules(pg: Server, tmp_path: Path, clients: Clients) -> None:
    """An invalid file on SIGHUP is rejected and logged, the reload gauge goes 0, and the old rules keep enforcing."""
    with DaemonProcess(tmp_path, RULES.format(name="old"), pg.dsn) as d:
        eventually(lambda: d.sample("pgparent_up") == 1, what="up")
        d.config.write_text("interval: 1s\nrules:\n  - name: broken\n    max_sessions: -1\n    bogus: 1\n")
        d.send(signal.SIGHUP)
        eventually(lambda: d.sample("pgparent_config_last_reload_successful") == 0, what="reload failed")
        (failure,) = d.events("config_reload_failed")
        assert any("rules.0.max_sessions" in err for err in failure["errors"])
        assert any("rules.0.bogus" in err for err in failure["errors"])
        assert d.sample("pgparent_rule_violating_groups", {"rule": "old"}) is not None
        (victim,) = clients.start("Kill:2")
        eventually(lambda: victim.outcome == "terminated", what="old rule still enforces")
        assert d.proc.poll() is None


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_stops_cleanly_within_two_seconds(pg: Server, tmp_path: Path, signum: int) -> None:
    """SIGTERM and SIGINT end the daemon with exit 0 in under two seconds."""
    with DaemonProcess(tmp_path, RULES.format(name="r"), pg.dsn) as d:
        eventually(lambda: d.sample("pgparent_up") == 1, what="up")
        sent = time.monotonic()
        d.send(signum)
        code = d.proc.wait(5)
        elapsed = time.monotonic() - sent
        assert code == 0
        record_figure("shutdown", **{f"{signal.Signals(signum).name}_seconds": round(elapsed, 2)})
        assert elapsed < 2.0, f"took {elapsed:.2f}s"
        assert d.events("stopped")


def test_landing_page_and_healthz(pg: Server, tmp_path: Path) -> None:
    """/ links /metrics, /healthz answers ok, unknown paths are 404."""
    with DaemonProcess(tmp_path, RULES.format(name="r"), pg.dsn) as d:
        status, body = d.get("/")
        assert status == 200 and 'href="metrics"' in body
        assert d.get("/healthz") == (200, "ok\n")
        assert d.get("/nope")[0] == 404


HOSTILE = [
    'Fake"Parent:1',
    "back\\slash:2",
    "new\nline:3",
    "tab\tchar:4",
    "ünïcødé:5",
    "emoji🙂:6",
    "{brace}=x,y:7",
]


@pytest.mark.per_major
@pytest.mark.deliverables
def test_exposition_with_hostile_names_passes_promtool(pg: Server, tmp_path: Path, clients: Clients) -> None:
    """Application names with quotes, backslashes, newlines, tabs and non-ASCII still give a valid exposition."""
    promtool = require_tool("promtool")
    for name in HOSTILE:
        clients.start(name)
    with DaemonProcess(tmp_path, "interval: 0.5s\n", pg.dsn) as d:
        eventually(lambda: (d.sample("pgparent_groups") or 0) >= len(HOSTILE), what="all hostile groups seen")
        text = d.metrics()
    result = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30)
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    assert 'parent="Fake\\"Parent:1"' in text
    assert 'parent="back\\\\slash:2"' in text
