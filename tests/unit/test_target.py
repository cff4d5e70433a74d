"""A target's monitor without a server: what it exports before its first poll; the claims on servers' sessions and
the shard's share, pure."""

from __future__ import annotations

import time
from dataclasses import replace

from exporter.core.settings import Config
from exporter.face.collector import PgparentCollector
from exporter.pg.database import Capabilities, Database
from exporter.run.leadership import Shard
from exporter.run.monitor import Monitor, tls_weakness
from exporter.run.servers import Servers


def test_poll_counters_start_at_zero_for_each_target() -> None:
    """Before any poll, each target already exports pgparent_polls_total and pgparent_poll_errors_total at 0 (so a
    first failed poll is an increase that rate() and the alerts see), and pgparent_up 0."""
    collector = PgparentCollector()
    for name in ("orders-eu", "orders-us"):
        Monitor(name, Database("host=/nonexistent"), Config(), collector)
    registry = collector.registry
    for name in ("orders-eu", "orders-us"):
        assert registry.get_sample_value("pgparent_polls_total", {"target": name}) == 0
        assert registry.get_sample_value("pgparent_poll_errors_total", {"target": name}) == 0
        assert registry.get_sample_value("pgparent_up", {"target": name}) == 0


def test_no_two_targets_claim_the_same_sessions() -> None:
    """A whole server overlaps every database of it; databases of one server, or two servers, do not overlap; a
    claim released (a retired target) frees the sessions; a target may renew its own claim (a reconnect)."""
    servers = Servers()
    whole, a, b, other, late = (object() for _ in range(5))
    assert servers.claim(a, "a", "S1", "db_a") is None
    assert servers.claim(b, "b", "S1", "db_b") is None
    assert servers.claim(whole, "whole", "S1", None) == "a"
    assert servers.claim(other, "other", "S2", None) is None
    assert servers.claim(late, "late", "S1", "db_b") == "b"
    assert servers.claim(a, "a", "S1", "db_a") is None
    servers.release(b)
    assert servers.claim(late, "late", "S1", "db_b") is None


def test_shard_counts_replicas_by_the_median_of_recent_reads() -> None:
    """One target's odd read (its other replica reconnecting) does not change the share; a replica gone from more
    than half the targets' reads is out of the count; a read older than the window no longer votes."""
    now = time.monotonic()
    shard = Shard(targets=12, window=2.0)
    for i in range(12):
        shard.seen(f"t{i}", 3, now)
    assert shard.share() == 4
    shard.seen("t0", 1, now)
    assert shard.share() == 4
    for i in range(6):
        shard.seen(f"t{i}", 2, now)
    assert shard.share() == 4  # half the targets: not yet
    shard.seen("t6", 2, now)
    assert shard.share() == 6
    for i in range(12):
        shard.seen(f"t{i}", 3, now - 5)
    assert shard.share() == 12  # nothing recent: this replica counts only itself


def test_shard_reserves_within_the_share_and_gives_up_one_at_a_time() -> None:
    now = time.monotonic()
    shard = Shard(targets=4, window=2.0)
    for i in range(4):
        shard.seen(f"t{i}", 2, now)
    assert [shard.reserve(f"t{i}") for i in range(4)] == [True, True, False, False]
    shard.unreserve("t1")
    assert shard.reserve("t2")
    shard.leading |= {"t0", "t2", "t3"}
    assert [shard.give_up(t) for t in ("t0", "t2", "t3")] == [True, False, False]


def test_shard_wakes_its_followers_when_the_share_grows() -> None:
    """A replica gone (the share grows): every registered follower is called to try its lock now; a replica joining
    (the share shrinks) calls nobody."""
    now = time.monotonic()
    shard = Shard(targets=4, window=2.0)
    calls: list[str] = []
    shard.on_grow = {"t0": lambda: calls.append("t0"), "t1": lambda: calls.append("t1")}
    for i in range(4):
        shard.seen(f"t{i}", 2, now)  # 2 replicas: share 4 -> 2, shrinking
    assert calls == []
    for i in range(3):
        shard.seen(f"t{i}", 1, now)  # the other replica gone from most reads: share back to 4
    assert sorted(calls) == ["t0", "t1"]


def test_a_connection_off_this_host_is_warned_of_unless_encrypted_under_verify_full() -> None:
    """`connection_insecure` names what is wrong with a connection to another host: no TLS, or an sslmode that does
    not check the certificate names the host; a loopback or Unix socket connection, or verify-full, is fine."""
    base = Capabilities(server_version_num=160000, role="r", has_leader_pid=True, has_query_id=True,
                        can_read_all_stats=True, can_signal=True, in_recovery=False, host="db.example.com")
    assert "not encrypted" in (tls_weakness(base) or "")
    assert "checks no certificate" in (tls_weakness(replace(base, tls=True, sslmode="require")) or "")
    assert "not that it names this host" in (tls_weakness(replace(base, tls=True, sslmode="verify-ca")) or "")
    assert tls_weakness(replace(base, tls=True, sslmode="verify-full")) is None
    for local in ("127.0.0.1", "::1", "localhost", "/var/run/postgresql"):
        assert tls_weakness(replace(base, host=local)) is None
    assert tls_weakness(replace(base, host="10.0.0.5")) is not None
