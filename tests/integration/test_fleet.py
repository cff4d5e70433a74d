"""Fleets against real servers: several targets in one process, each isolated from the others' trouble; replicas in
shard mode dividing the targets; reload adding and removing targets while another is being enforced."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from harness.daemon import DaemonProcess
from harness.waiting import eventually
from tests.support.config import config_text
from tests.support.daemon import Daemons
from tests.support.roles import Roles
from tests.support.servers import Server
from tests.support.sessions import Clients

# per_major: leader locks, per-database reads and refusals are the server's
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.per_major]


INTERVAL = "500ms"


def _target(name: str, dsn: str, sessions: str | None = None, **labels: str) -> dict[str, Any]:
    """One entry of a config's `targets`."""
    return {"name": name, "dsn": dsn, **({"labels": labels} if labels else {}),
            **({"sessions": sessions} if sessions else {})}


def _terminate(name: str, parent: str, *, target: str | None = None, max_sessions: int = 1) -> dict[str, Any]:
    """A rule terminating the sessions of groups matching `parent` (on `target` only, if given) beyond
    `max_sessions`."""
    match = {"parent": parent, **({"target": target} if target else {})}
    return {"name": name, "match": match, "max_sessions": max_sessions, "action": "terminate"}


@pytest.fixture
def databases(roles: Roles) -> list[str]:
    """Four databases of this test's own on the shared server: four targets with `sessions: database`."""
    return [roles.database(f"fleet{i}") for i in range(4)]


def _leaders(d: DaemonProcess) -> set[str]:
    return {labels["target"] for labels, v in d.samples("pgparent_leader") if v == 1}


def test_two_servers_two_targets_isolated(pg: Server, private_pg: Server, clients: Clients, tmp_path: Path) -> None:
    """Series carry their target and labels; a rule narrowed by match.target signals on its target only; stopping
    one server leaves the other's polls and enforcement going (up 0 for one, 1 and advancing for the other)."""
    targets = [_target("east", pg.dsn, region="eu"), _target("west", private_pg.dsn, region="us")]
    config = config_text(_terminate("west-only", "Fleet:*", target="west"), interval=INTERVAL, targets=targets)
    east = clients.start("Fleet:1", n=2)
    west = clients.start("Fleet:1", n=2, dsn=private_pg.dsn)
    with DaemonProcess(tmp_path, config, pg.dsn) as d:
        eventually(lambda: all(c.done for c in west), timeout=30, what="west's group terminated")
        d.wait_polls(3)
        assert not any(c.done for c in east)
        signals = d.events("session_signal")
        assert {e["target"] for e in signals} == {"west"} and {e["pid"] for e in signals} == {c.pid for c in west}
        assert d.sample("pgparent_group_sessions", {"target": "east", "region": "eu", "parent": "Fleet:1",
                                                    "state": "active"}) == 2
        assert d.sample("pgparent_signalled_sessions_total", {"target": "west", "region": "us"}) == 2
        assert d.sample("pgparent_signalled_sessions_total", {"target": "east"}) is None

        private_pg.stop("immediate")
        eventually(lambda: d.sample("pgparent_up", {"target": "west"}) == 0, what="west down")
        before = d.sample("pgparent_last_poll_timestamp_seconds", {"target": "east"}) or 0
        d.wait_polls(3, target="east")
        assert d.sample("pgparent_up", {"target": "east"}) == 1
        assert (d.sample("pgparent_last_poll_timestamp_seconds", {"target": "east"}) or 0) > before
        late = clients.start("Fleet:2", n=2)
        d.config.write_text(config_text(_terminate("west-only", "Fleet:2", target="*"), interval=INTERVAL,
                                        targets=targets))
        d.send(signal.SIGHUP)
        eventually(lambda: all(c.done for c in late), timeout=30, what="east enforced while west is down")
        assert not any(c.done for c in east)


def _shard_config(pg: Server, databases: list[str]) -> str:
    return config_text(interval=INTERVAL, leader_election={"shard": True},
                       targets=[_target(f"t{i}", pg.dsn_for(db), "database") for i, db in enumerate(databases)])


def test_two_replicas_in_shard_mode_divide_four_targets(
    pg: Server, databases: list[str], clients: Clients, daemons: Daemons
) -> None:
    """Every target has exactly one leader and each replica leads some; group series come only from the leader;
    after one replica is killed the survivor leads all four within 2 intervals and exports their groups."""
    config = _shard_config(pg, databases)
    for db in databases:
        clients.start("Shard:1", dsn=pg.dsn_for(db))
    a, b = daemons.start(config, pg.dsn), daemons.start(config, pg.dsn)

    def divided() -> bool:
        la, lb = _leaders(a), _leaders(b)
        return la.isdisjoint(lb) and la | lb == {"t0", "t1", "t2", "t3"} and bool(la) and bool(lb)

    eventually(divided, timeout=30, what="four targets divided between two replicas")
    a.wait_polls(3)
    assert divided()
    for d in (a, b):
        groups = {labels["target"] for labels, _ in d.samples("pgparent_group_sessions", {"parent": "Shard:1"})}
        assert groups == _leaders(d)
    a.proc.send_signal(signal.SIGKILL)
    a.proc.wait(10)
    eventually(lambda: _leaders(b) == {"t0", "t1", "t2", "t3"}, timeout=15, interval=0.1,
               what="the survivor leads all four within a few intervals")
    b.wait_polls(2)
    groups = {labels["target"] for labels, _ in b.samples("pgparent_group_sessions", {"parent": "Shard:1"})}
    assert groups == {"t0", "t1", "t2", "t3"}


def test_reload_adds_and_removes_targets_while_another_is_enforced(
    pg: Server, databases: list[str], clients: Clients, tmp_path: Path
) -> None:
    """A target added by SIGHUP is polled; a removed one's series go; the unchanged one keeps its connection and
    goes on enforcing (its leadership never lapses)."""
    keep, add, drop = (pg.dsn_for(db) for db in databases[:3])
    rule = _terminate("cap", "Reload:*")
    before = config_text(rule, interval=INTERVAL, targets=[_target("keep", keep, "database"),
                                                           _target("drop", drop, "database")])
    after = config_text(rule, interval=INTERVAL, targets=[_target("keep", keep, "database"),
                                                          _target("add", add, "database")])
    with DaemonProcess(tmp_path, before, pg.dsn) as d:
        eventually(lambda: _leaders(d) == {"keep", "drop"}, what="both targets led")
        d.config.write_text(after)
        d.send(signal.SIGHUP)
        burst = clients.start("Reload:1", n=2, dsn=keep)
        eventually(lambda: d.events("config_reloaded"), what="reloaded")
        eventually(lambda: _leaders(d) == {"keep", "add"}, what="add polled, drop gone")
        eventually(lambda: all(c.done for c in burst), timeout=30, what="keep enforced across the reload")
        assert d.sample("pgparent_up", {"target": "drop"}) is None
        assert [e for e in d.events("leadership_acquired") if e["target"] == "keep"][1:] == []
        assert not d.events("leadership_lost")
        added = clients.start("Reload:2", n=2, dsn=add)
        eventually(lambda: all(c.done for c in added), timeout=30, what="the added target enforced")


def test_targets_of_one_server_read_and_signal_only_their_database(
    pg: Server, databases: list[str], clients: Clients, tmp_path: Path
) -> None:
    """Two targets on databases of one server with `sessions: database`: each counts only its database's sessions,
    and a rule narrowed to one target never signals a session of the other database, whatever its tag."""
    a, b = (pg.dsn_for(db) for db in databases[:2])
    config = config_text(_terminate("a-only", "Same:*", target="a"), interval=INTERVAL,
                         targets=[_target("a", a, "database"), _target("b", b, "database")])
    in_a = clients.start("Same:1", n=2, dsn=a)
    in_b = clients.start("Same:1", n=2, dsn=b)
    with DaemonProcess(tmp_path, config, pg.dsn) as d:
        eventually(lambda: all(c.done for c in in_a), timeout=30, what="a's group terminated")
        d.wait_polls(3, target="b")
        assert not any(c.done for c in in_b)
        signalled = {e["pid"] for e in d.events("session_signal")}
        assert signalled == {c.pid for c in in_a}
        assert d.sample("pgparent_group_sessions", {"target": "b", "parent": "Same:1", "state": "active"}) == 2
        assert d.sample("pgparent_group_sessions", {"target": "a", "parent": "Same:1", "state": "active"}) is None


def test_two_targets_reading_the_same_sessions_are_refused(
    pg: Server, databases: list[str], tmp_path: Path
) -> None:
    """A target reading its whole server and another target on that server would count and enforce on the same
    sessions twice: the second to connect is not polled (up 0, an error naming the first), the first goes on; once a
    reload gives both `sessions: database`, both are polled."""
    a, b = (pg.dsn_for(db) for db in databases[:2])
    config = config_text(interval=INTERVAL, targets=[_target("whole", a), _target("part", b, "database")])
    with DaemonProcess(tmp_path, config, pg.dsn) as d:
        refused = eventually(
            lambda: next((e for e in d.events("database_unavailable") if "already reads" in e["error"]), None),
            what="one of the two refused",
        )
        kept = "part" if refused["target"] == "whole" else "whole"
        assert f"target {kept!r} already reads" in refused["error"]
        d.wait_polls(3, target=kept)
        assert d.sample("pgparent_up", {"target": kept}) == 1
        assert d.sample("pgparent_up", {"target": refused["target"]}) == 0
        d.config.write_text(config_text(interval=INTERVAL, targets=[_target("whole", a, "database"),
                                                                    _target("part", b, "database")]))
        d.send(signal.SIGHUP)
        eventually(lambda: d.sample("pgparent_up", {"target": "whole"}) == 1
                   and d.sample("pgparent_up", {"target": "part"}) == 1, timeout=30, what="both polled")
