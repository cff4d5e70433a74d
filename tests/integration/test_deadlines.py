"""Precise enforcement against a real server: at a long interval a limit is acted on when it is crossed, not at the
next poll, and only if the session is still exactly in the state that crosses it.

At a 60 s interval the daemon's first poll is the only one a test sees, and it must find the sessions younger than
their limits. So the daemon connects through a stalled proxy (`held_daemon`): it starts, its first connection waits
in the black hole while the test starts its sessions, and the poll comes the moment the proxy lets it through,
however long the process took to start on a busy machine.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from psycopg.conninfo import make_conninfo

from harness.daemon import DaemonProcess
from harness.waiting import eventually
from tests.support.config import config_text
from tests.support.proxy import Proxied
from tests.support.sessions import Clients

# per_major: a deadline's guard is the signal statement
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.per_major]

INTERVAL = "60s"
"""Far longer than any test: a signal within it can only have come from a deadline."""


def _rules(condition: str, limit: str) -> str:
    """One rule, `precise`, terminating the Deadline:* groups' sessions past `limit` of `condition`."""
    return config_text({"name": "precise", "match": {"parent": "Deadline:*"}, condition: limit, "action": "terminate"},
                       interval=INTERVAL)


def _wakeups(d: DaemonProcess) -> float:
    return d.sample("pgparent_deadline_wakeups_total") or 0


def held_daemon(tmp_path: Path, rules: str, way: Proxied) -> DaemonProcess:
    """`pgparent run` on `rules`, serving, its first connection held back by the stalled proxy `way`: it polls first
    when the test calls `way.proxy.resume()`. Its DSN waits for that as long as it takes (connect_timeout)."""
    way.proxy.stall()
    d = DaemonProcess(tmp_path, rules, make_conninfo(way.dsn, connect_timeout=120))
    try:
        assert way.proxy.held.wait(60), "the daemon never tried to connect"
    except BaseException:
        d.stop()
        raise
    return d


def test_a_query_over_its_limit_ends_at_the_deadline(
    clients: Clients, stalling_proxy: Proxied, tmp_path: Path
) -> None:
    """At a 60 s interval, a 3 s query limit ends the query about 3 s after it started, and the audit says deadline."""
    with held_daemon(tmp_path, _rules("max_query_duration", "3s"), stalling_proxy) as d:
        [c] = clients.start("Deadline:1", "SELECT pg_sleep(120)")
        started = time.monotonic()
        stalling_proxy.proxy.resume()
        eventually(lambda: c.done, timeout=30, what="the query ended")
        took = time.monotonic() - started
        assert c.outcome == "terminated" and took < 15  # generous: the benchmark reports the figure
        # The session ends as its signal is sent; the audit line, then the counter on /metrics, come just after.
        [event] = eventually(lambda: d.events("session_signal"), what="the signal's audit line")
        assert event["trigger"] == "deadline" and event["result"] == "ok" and event["pid"] == c.pid
        eventually(lambda: d.sample("pgparent_signalled_sessions_total", {"rule": "precise", "trigger": "deadline"})
                   == 1, what="the signal counted on /metrics")
        assert _wakeups(d) >= 1 and d.polls() <= 2


def test_a_query_that_completes_just_before_is_left_alone(
    clients: Clients, stalling_proxy: Proxied, tmp_path: Path
) -> None:
    """A query that ends 50 ms before its deadline, and a transaction that commits just before its own, are not
    signalled: the guard finds them no longer in the state that crosses the limit."""
    rules = (
        f"interval: {INTERVAL}\nrules:\n"
        "  - {name: q, match: {parent: 'Deadline:1'}, max_query_duration: 6s, action: terminate}\n"
        "  - {name: t, match: {parent: 'Deadline:2'}, max_transaction_duration: 6s, action: terminate}\n"
    )
    with held_daemon(tmp_path, rules, stalling_proxy) as d:
        [q] = clients.start("Deadline:1", "SELECT pg_sleep(5.95)")
        [t] = clients.start("Deadline:2", "BEGIN; SELECT pg_sleep(5.95); COMMIT", hold=True)
        stalling_proxy.proxy.resume()
        eventually(lambda: _wakeups(d) >= 2, timeout=30, what="both deadlines reached")
        assert q.outcome == "completed" and t.executed.is_set()
        assert all(e["result"] == "gone" for e in d.events("session_signal"))
        assert d.sample("pgparent_signalled_sessions_total") is None
    t.release.set()
    eventually(lambda: t.done, what="the transaction's session is still usable")
    assert t.outcome == "completed"


def test_a_session_that_changes_its_tag_is_left_alone(
    clients: Clients, stalling_proxy: Proxied, tmp_path: Path
) -> None:
    """A session that moves to another tag before its deadline (same query still running) is not signalled."""
    body = "PERFORM pg_sleep(4); PERFORM set_config('application_name', 'Moved:1', false); PERFORM pg_sleep(60);"
    with held_daemon(tmp_path, _rules("max_query_duration", "6s"), stalling_proxy) as d:
        [c] = clients.start("Deadline:1", f"DO $$ BEGIN {body} END $$")
        stalling_proxy.proxy.resume()
        eventually(lambda: _wakeups(d) >= 1, timeout=30, what="the deadline reached")
        assert not c.done
        assert [e["result"] for e in d.events("session_signal")] in ([], ["gone"])


def test_for_still_delays_and_dry_run_signals_nothing(
    clients: Clients, stalling_proxy: Proxied, tmp_path: Path
) -> None:
    """`for:` puts the deadline at limit + for (the query lives past the limit and ends near limit + for); a dry-run
    rule audits trigger deadline and signals nothing."""
    rules = (
        f"interval: {INTERVAL}\nrules:\n"
        "  - {name: delayed, match: {parent: 'Deadline:1'}, max_query_duration: 2s, for: 3s, action: terminate}\n"
        "  - {name: dry, match: {parent: 'Deadline:2'}, max_query_duration: 2s, action: terminate, dry_run: true}\n"
    )
    with held_daemon(tmp_path, rules, stalling_proxy) as d:
        started = time.monotonic()  # before the query starts, so the deadline is at least 5 s after it
        [delayed] = clients.start("Deadline:1", "SELECT pg_sleep(120)")
        [spared] = clients.start("Deadline:2", "SELECT pg_sleep(120)")
        stalling_proxy.proxy.resume()
        eventually(lambda: delayed.done, timeout=30, what="the delayed query ended")
        assert time.monotonic() - started >= 5 and delayed.outcome == "terminated"
        dry = [e for e in d.events("session_signal") if e["rule"] == "dry"]
        assert dry and dry[0]["trigger"] == "deadline" and dry[0]["result"] == "dry_run"
        assert not spared.done
