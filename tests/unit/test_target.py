"""A target's monitor, without a server: what it exports before its first poll."""

from __future__ import annotations

from exporter.collector import PgparentCollector
from exporter.config import Config
from exporter.db import Database
from exporter.target import Monitor, Servers


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
