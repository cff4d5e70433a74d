"""Reconnect backoff: exponential, capped, and jittered so replicas do not reconnect in lockstep."""

from __future__ import annotations

import random

from exporter.run.monitor import Backoff


def test_delays_grow_and_are_capped() -> None:
    """Without jitter each failure doubles the delay up to MAX; success resets it."""
    b = Backoff()
    b.JITTER = 0.0
    delays = [b.failed(0.0) for _ in range(7)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert not b.ready(9.9) and b.ready(10.0)
    b.succeeded()
    assert b.ready(0.0) and b.failed(0.0) == 0.5


def test_jitter_spreads_replicas_that_failed_together() -> None:
    """Two replicas that lose the server at once draw different delays, each within [(1 - JITTER) * d, d]."""
    one, two = Backoff(random.Random(1)), Backoff(random.Random(2))
    for step in (0.5, 1.0, 2.0, 4.0):
        a, b = one.failed(0.0), two.failed(0.0)
        assert a != b
        for d in (a, b):
            assert (1 - Backoff.JITTER) * step <= d <= step
