"""Faults survived, as real processes against real servers: replicas and the leader lock, a network black hole, full
connection slots, a monitoring role missing privileges, a standby server, secrets kept out of every output."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from exporter.pgcluster import Cluster
from harness.daemon import DaemonProcess
from harness.waiting import eventually
from tests.support.config import config_text
from tests.support.daemon import Daemons
from tests.support.figures import record_figure
from tests.support.proxy import Proxied
from tests.support.roles import Roles
from tests.support.servers import Server, make_server
from tests.support.sessions import Clients

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
MONITOR_PW = "monitor-Secret-77"
APP_PW = "app-Secret-78"


def monitoring_roles(roles: Roles) -> dict[str, str]:
    """The documented least-privilege role (docs/least-privilege.sql), a plain application role, and two roles that
    each lack one of the monitoring privileges; a DSN for each, by purpose."""
    return {
        "monitor": roles.least_privilege("pgp_monitor", MONITOR_PW).dsn,
        "app": roles.login("pgp_app", APP_PW).dsn,
        "nostats": roles.login("pgp_nostats", MONITOR_PW, member_of=["pg_signal_backend"]).dsn,
        "nosignal": roles.login("pgp_nosignal", MONITOR_PW, member_of=["pg_monitor"]).dsn,
    }


def rules(parent: str, interval: float = 0.5, **top: Any) -> str:
    """A rules file that ends every session of the groups matching `parent` (rule `kill`), polled every `interval`,
    with `top`'s other keys."""
    return config_text({"name": "kill", "match": {"parent": parent}, "max_sessions": 0, "action": "terminate"},
                       interval=f"{interval}s", **top)


def signalled_pids(*daemons: DaemonProcess) -> list[int]:
    return [e["pid"] for d in daemons for e in d.events("session_signal") if e["result"] == "ok"]


@pytest.mark.per_major
def test_one_leader_among_three_replicas_and_takeover(pg: Server, roles: Roles, daemons: Daemons,
                                                      clients: Clients) -> None:
    """Three replicas: only the leader signals; kill -9 the leader and another takes over within two intervals; no
    session is signalled twice."""
    dsns = monitoring_roles(roles)
    interval = 1.0
    # Told to try superusers' sessions too (protect.superusers: false), which the monitoring role may not signal.
    replicas = [daemons.start(rules("HA:*", interval, protect={"superusers": False}), dsns["monitor"])
                for _ in range(3)]

    def one_leader() -> DaemonProcess | None:
        leaders = [d for d in replicas if d.sample("pgparent_leader") == 1]
        others = [d for d in replicas if d.sample("pgparent_leader") == 0]
        return leaders[0] if len(leaders) == 1 and len(others) == 2 else None

    leader = eventually(one_leader, what="exactly one leader")
    assert leader.sample("pgparent_enforcing") == 1
    followers = [d for d in replicas if d is not leader]
    # A superuser's session, which the monitoring role may not signal: its group stays violating on every
    # replica, the leader tries to end it each poll, and the others, seeing the same, never try.
    clients.start("HA:0")
    eventually(lambda: all(d.sample("pgparent_rule_violating_groups", {"rule": "kill"}) == 1 for d in replicas),
               what="every replica sees HA:0 violate the rule")
    eventually(lambda: [e for e in leader.events("session_signal") if e["result"] == "permission_denied"],
               what="the leader tried to signal HA:0")
    for d in followers:
        d.wait_polls(3)
    assert all(d.events("session_signal") == [] for d in followers)
    first = clients.start("HA:1", n=3, dsn=dsns["app"])
    eventually(lambda: all(c.outcome == "terminated" for c in first), what="leader terminated HA:1")
    assert all(d.events("session_signal") == [] for d in followers)

    leader.proc.kill()
    killed = time.monotonic()
    leader.proc.wait(5)
    survivors = [d for d in replicas if d is not leader]
    new_leader = eventually(
        lambda: next((d for d in survivors if d.sample("pgparent_leader") == 1), None), timeout=10,
        interval=0.02, what="a new leader",
    )
    takeover = time.monotonic() - killed
    record_figure("ha", takeover_seconds=round(takeover, 2), interval_seconds=interval)
    assert takeover <= 2 * interval, f"takeover took {takeover:.2f}s"
    assert sum(d.sample("pgparent_leader") == 1 for d in survivors) == 1

    second = clients.start("HA:2", n=3, dsn=dsns["app"])
    eventually(lambda: all(c.outcome == "terminated" for c in second), what="new leader terminated HA:2")
    # A session ends as its signal is sent; its audit line is written just after, so wait for the lines.
    pids = eventually(lambda: (p if len(p := signalled_pids(*replicas)) >= 6 else None),
                      what="an audit line for each of the six signals")
    assert sorted(pids) == sorted(c.pid or 0 for c in first + second)
    assert len(pids) == len(set(pids))
    assert all(e["event"] != "session_signal" for d in survivors if d is not new_leader for e in d.logs())


def test_network_black_hole_is_detected_and_survived(stalling_proxy: Proxied, tmp_path: Path) -> None:
    """A link that stops forwarding without closing: the hung poll is cut within two intervals (up 0), and the daemon
    recovers once packets flow again."""
    proxy, dsn = stalling_proxy.proxy, stalling_proxy.dsn
    interval = 1.0
    with DaemonProcess(tmp_path, rules("Nobody:*", interval), dsn) as d:
        eventually(lambda: d.sample("pgparent_up") == 1, what="up through the proxy")
        d.wait_polls(2)  # a few good polls first
        proxy.stall()
        assert proxy.held.wait(30), "no poll reached the stalled link"
        hung = time.monotonic()
        eventually(lambda: d.sample("pgparent_up") == 0, timeout=10, interval=0.05, what="stall detected")
        detection = time.monotonic() - hung
        assert detection <= 2 * interval + 0.5, f"detected {detection:.2f}s after a poll hung"
        (event,) = d.events("database_unavailable")
        assert "network stalled" in event["error"]
        status, _ = d.get("/healthz")
        assert status == 200
        d.wait_polls(1, failed=True)  # the outage goes on: a reconnect into the black hole fails too
        proxy.resume()
        resumed = time.monotonic()
        eventually(lambda: d.sample("pgparent_up") == 1, timeout=30, interval=0.05, what="recovered")
        recovery = time.monotonic() - resumed
        record_figure("black_hole", detection_seconds=round(detection, 2), recovery_seconds=round(recovery, 2),
                      interval_seconds=interval)
        proxy.stall()  # and SIGTERM still ends it promptly while a poll hangs
        assert proxy.held.wait(30), "no poll reached the stalled link"
        sent = time.monotonic()
        d.send(signal.SIGTERM)
        assert d.proc.wait(5) == 0
        record_figure("black_hole", sigterm_while_hung_seconds=round(time.monotonic() - sent, 2))


@pytest.mark.per_major
@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_server_restart_recovery_time(private_pg: Server, tmp_path: Path, mode: str) -> None:
    """Stopped (fast or immediate) and restarted under a running daemon: no crash, up 1 then 0 then 1, one event
    each way; measured seconds from the server accepting again to up 1."""
    with DaemonProcess(tmp_path, rules("Nobody:*", 1.0), private_pg.dsn) as d:
        eventually(lambda: d.sample("pgparent_up") == 1, what="up")
        private_pg.stop(mode)
        eventually(lambda: d.sample("pgparent_up") == 0, what="down")
        d.wait_polls(3, failed=True)  # an outage of a few failed reconnects, the backoff growing
        private_pg.start()
        back = time.monotonic()
        eventually(lambda: d.sample("pgparent_up") == 1, timeout=30, interval=0.05, what="recovered")
        record_figure("restart", **{f"{mode}_recovery_seconds": round(time.monotonic() - back, 2)})
        assert d.proc.poll() is None
        assert [e["event"] for e in d.logs() if e["event"].startswith("database_")] == [
            "database_available",
            "database_unavailable",
            "database_available",
        ]


@pytest.mark.per_major
def test_full_connection_slots_report_down_and_recover(tmp_path: Path) -> None:
    """With max_connections reached, the daemon reports up 0 with a clear event, and recovers when a slot frees."""
    server = make_server(settings={"max_connections": "8", "superuser_reserved_connections": "3"})
    try:
        if not isinstance(server, Cluster):
            pytest.skip("needs a local cluster to set max_connections")
        dsns = monitoring_roles(Roles(server))  # dropped with the server
        held = []
        while True:
            try:
                held.append(psycopg.connect(dsns["app"], autocommit=True))
            except psycopg.OperationalError:
                break
        assert len(held) == 5
        with DaemonProcess(tmp_path, rules("Nobody:*", 0.5), dsns["monitor"]) as d:
            eventually(lambda: d.events("database_unavailable"), what="unavailable event")
            assert d.sample("pgparent_up") == 0
            error = d.events("database_unavailable")[0]["error"]
            assert "slots" in error or "too many clients" in error, error
            held.pop().close()
            freed = time.monotonic()
            eventually(lambda: d.sample("pgparent_up") == 1, timeout=30, what="recovered")
            record_figure("max_connections", recovery_seconds=round(time.monotonic() - freed, 2))
        for conn in held:
            conn.close()
    finally:
        server.destroy()


@pytest.mark.per_major
def test_no_rule_fires_on_sessions_a_role_without_read_all_stats_cannot_see(
    pg: Server, roles: Roles, tmp_path: Path, clients: Clients
) -> None:
    """Without pg_read_all_stats other roles' sessions lack backend_start: pgparent says so (metric and one event),
    counts them in their group as state unknown, and no rule fires on them, not even one on the group's size."""
    dsns = monitoring_roles(roles)
    hidden = clients.start("Hide:1", n=2, dsn=dsns["app"])
    with DaemonProcess(tmp_path, rules("Hide:*"), dsns["nostats"]) as d:
        eventually(lambda: (d.sample("pgparent_hidden_sessions") or 0) >= 2, what="hidden sessions counted")
        eventually(lambda: d.sample("pgparent_group_sessions", {"parent": "Hide:1", "state": "unknown"}) == 2,
                   what="the group seen")
        d.wait_polls(3)  # two whole polls with the group in view: the rule never fired, nothing was signalled
        assert d.sample("pgparent_rule_violating_groups", {"rule": "kill"}) == 0
        assert len(d.events("limited_visibility")) == 1
        assert d.events("session_signal") == [] and d.events("rule_firing") == []
    assert not any(c.done for c in hidden)


@pytest.mark.per_major
def test_hidden_sessions_never_make_a_time_limit_fire(
    pg: Server, roles: Roles, tmp_path: Path, clients: Clients
) -> None:
    """Without pg_read_all_stats, another role's sessions under a terminating rule of time limits their real ages
    exceed (their query, transaction and connection moments hidden) never make it fire nor pend, are never
    signalled, and are counted as hidden: an unknown moment is no duration, not one of zero."""
    dsns = monitoring_roles(roles)
    hidden = clients.start("HideAge:1", n=2, dsn=dsns["app"], statement="BEGIN; SELECT pg_sleep(120)")
    limits = {"max_query_duration": "1ms", "max_transaction_duration": "1ms", "max_group_age": "1ms"}
    text = config_text({"name": "slow", "match": {"parent": "HideAge:*"}, "action": "terminate", **limits},
                       interval="0.5s")
    with DaemonProcess(tmp_path, text, dsns["nostats"]) as d:
        eventually(lambda: d.sample("pgparent_hidden_sessions") == 2, what="hidden sessions counted")
        eventually(lambda: d.sample("pgparent_group_sessions", {"parent": "HideAge:1", "state": "unknown"}) == 2,
                   what="the group seen")
        d.wait_polls(4)  # three whole polls with the group in view
        assert d.sample("pgparent_rule_violating_groups", {"rule": "slow"}) == 0
        assert d.sample("pgparent_rule_pending_groups", {"rule": "slow"}) == 0
        assert d.events("session_signal") == [] and d.events("rule_firing") == []
        assert not d.sample("pgparent_deadline_wakeups_total")  # no deadline either (absent until one)
    assert not any(c.done for c in hidden)


@pytest.mark.per_major
def test_role_without_signal_backend_counts_failures_and_keeps_going(
    pg: Server, roles: Roles, tmp_path: Path, clients: Clients
) -> None:
    """Without pg_signal_backend each refused signal is counted by reason, and the daemon keeps polling."""
    dsns = monitoring_roles(roles)
    victims = clients.start("NoSig:1", n=2, dsn=dsns["app"])
    with DaemonProcess(tmp_path, rules("NoSig:*"), dsns["nosignal"]) as d:
        eventually(
            lambda: (d.sample("pgparent_signal_failures_total", {"rule": "kill", "reason": "permission_denied"})
                     or 0) >= 4,
            what="failures counted over two polls",
        )
        assert d.events("limited_signalling")
        assert d.sample("pgparent_up") == 1 and d.proc.poll() is None
    assert not any(c.done for c in victims)


@pytest.mark.per_major
def test_standby_is_monitored_but_never_enforced(private_pg: Server, tmp_path: Path) -> None:
    """On a hot standby the metrics work, pgparent_enforcing is 0 with a logged reason, and nothing is signalled."""
    if not isinstance(private_pg, Cluster):
        pytest.skip("needs a local cluster to build a standby with pg_basebackup")
    standby = Cluster.standby_of(private_pg)
    try:
        standby.start()
        clients = Clients(standby.dsn)
        try:
            sessions = clients.start("Replica:1", n=2)
            with DaemonProcess(tmp_path, rules("Replica:*"), standby.dsn) as d:
                eventually(lambda: d.sample("pgparent_group_sessions", {"parent": "Replica:1", "state": "active"}) == 2,
                           what="standby sessions on /metrics")
                eventually(lambda: d.sample("pgparent_rule_violating_groups", {"rule": "kill"}) == 1, what="fires")
                d.wait_polls(3)  # two whole polls more, with the rule firing
                assert d.sample("pgparent_enforcing") == 0 and d.sample("pgparent_leader") == 0
                (off,) = d.events("enforcement_off")
                assert "recovery" in off["reason"]
                assert d.events("session_signal") == []
            assert not any(c.done for c in sessions)
        finally:
            clients.cleanup()
    finally:
        standby.destroy()


@pytest.mark.per_major
def test_secrets_never_appear_in_logs_errors_or_metrics(pg: Server, roles: Roles, tmp_path: Path) -> None:
    """With the DSN from --dsn.file, PGPARENT_DSN_FILE or PGPASSFILE, no password reaches logs, output or /metrics,
    including when authentication fails."""
    dsns = monitoring_roles(roles)
    good = dsns["monitor"]
    user = conninfo_to_dict(good)["user"]
    dsn_file = tmp_path / "dsn"
    dsn_file.write_text(good + "\n")
    passfile = tmp_path / "pgpass"
    passfile.write_text(f"127.0.0.1:*:*:{user}:{MONITOR_PW}\n")
    passfile.chmod(0o600)
    no_password = good.replace(f"password={MONITOR_PW}", "")
    runs = [
        (("--dsn.file", str(dsn_file)), {}),
        ((), {"PGPARENT_DSN_FILE": str(dsn_file)}),
        (("--dsn", no_password), {"PGPASSFILE": str(passfile)}),
    ]
    for n, (args, env) in enumerate(runs):
        (tmp_path / f"run{n}").mkdir()
        d = DaemonProcess(tmp_path / f"run{n}", rules("Nobody:*"), "", *args, env=env)
        try:
            eventually(lambda d=d: d.sample("pgparent_up") == 1, what=f"up via {args or env}")  # type: ignore[misc]
            exposition = d.metrics()
        finally:
            d.stop()
        assert MONITOR_PW not in exposition
        assert MONITOR_PW not in d.log_path.read_text() + d.out_path.read_text()
    wrong = pg.dsn_for("postgres", user=str(user), password="Wrong-Secret-99")
    (tmp_path / "wrong").mkdir()
    with DaemonProcess(tmp_path / "wrong", rules("Nobody:*"), wrong) as d:
        eventually(lambda: d.events("database_unavailable"), what="auth failure logged")
        assert "Wrong-Secret-99" not in d.log_path.read_text() + d.metrics()
        assert "password=****" in d.log_path.read_text()
