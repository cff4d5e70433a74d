"""A target's monitor, without a server: what it exports before its first poll."""

from __future__ import annotations

from exporter.collector import PgparentCollector
from exporter.config import Config
from exporter.db import Database
from exporter.target import Monitor


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
