"""Load: 1000 client sessions in 250 groups; the daemon keeps polling and answering while 50 scrapers hammer /metrics.

Correctness under load is asserted here; how fast it goes is recorded as figures (and measured in bench/), since CI
machines are shared and a timing bound would only measure the neighbours.
"""

from __future__ import annotations

import http.client
import statistics
import threading
import time
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from exporter.pgcluster import Cluster
from tests.support import HTTP_TIMEOUT, daemon, eventually, make_server, record_figure

pytestmark = [pytest.mark.integration, pytest.mark.slow]

GROUPS, PER_GROUP, UNTAGGED = 250, 4, 50
SCRAPERS, SECONDS = 50, 30.0


@pytest.fixture(scope="module")
def loaded() -> Iterator[Cluster]:
    """A private server with 1000 tagged sessions (a quarter of them running a query) and 50 untagged ones."""
    server = make_server(settings={"max_connections": "1200", "shared_buffers": "128MB"})
    if not isinstance(server, Cluster):
        server.destroy()
        pytest.skip("needs a local cluster to raise max_connections")
    conns: list[psycopg.Connection[tuple[object, ...]]] = []
    try:
        for n in range(GROUPS * PER_GROUP + UNTAGGED):
            app = f"Load:{n // PER_GROUP}:w{n % PER_GROUP}" if n < GROUPS * PER_GROUP else f"untagged-{n}"
            conn = psycopg.connect(server.dsn, autocommit=True)
            conn.execute(sql.SQL("SET application_name = {}").format(sql.Literal(app)))
            if n % 4 == 0:
                conn.pgconn.send_query(b"SELECT pg_sleep(600)")  # left running: an active session, no thread needed
            conns.append(conn)
        yield server
    finally:
        server.destroy()  # ends every session at once (immediate stop)
        for conn in conns:
            conn.pgconn.finish()


def scrape_for(port: int, seconds: float, latencies: list[float], errors: list[str]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HTTP_TIMEOUT)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.perf_counter()
        try:
            conn.request("GET", "/metrics")
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200 or b"pgparent_up 1.0" not in body:
                errors.append(f"status {resp.status}")
        except (OSError, http.client.HTTPException) as exc:
            errors.append(repr(exc))
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HTTP_TIMEOUT)
            continue
        latencies.append(time.perf_counter() - started)
    conn.close()


def test_keeps_polling_under_1000_sessions_and_50_scrapers(loaded: Cluster, tmp_path: Path) -> None:
    """All 1000 sessions are grouped, polls go on, and 50 concurrent scrapers see zero errors."""
    with daemon(tmp_path, "interval: 1s\n", loaded.dsn) as d:
        eventually(lambda: d.sample("pgparent_groups") == GROUPS, timeout=30, what="250 groups")
        text = d.metrics()
        total = sum(
            float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("pgparent_group_sessions{")
        )
        assert total == GROUPS * PER_GROUP
        untagged = sum(d.sample("pgparent_untagged_sessions", {"state": s}) or 0 for s in ("idle", "active"))
        assert untagged == UNTAGGED

        latencies: list[float] = []
        errors: list[str] = []
        polls: list[tuple[float, float]] = []
        workers = [threading.Thread(target=scrape_for, args=(d.port, SECONDS, latencies, errors))
                   for _ in range(SCRAPERS)]
        for w in workers:
            w.start()
        watch_until = time.monotonic() + SECONDS
        while time.monotonic() < watch_until:
            polls.append((d.sample("pgparent_last_poll_timestamp_seconds") or 0.0,
                          d.sample("pgparent_poll_duration_seconds") or 0.0))
            time.sleep(0.25)
        for w in workers:
            w.join()
        overruns = d.events("poll_overrun")
    assert errors == []
    distinct = sorted({ts for ts, _ in polls if ts})
    gaps = [b - a for a, b in pairwise(distinct)]
    durations = sorted({dur for _, dur in polls})
    latencies.sort()
    record_figure(
        "load",
        sessions=GROUPS * PER_GROUP,
        groups=GROUPS,
        polls_in_window=len(distinct),
        window_seconds=SECONDS,
        max_gap_between_polls_s=round(max(gaps), 3),
        poll_duration_p50_s=round(statistics.median(durations), 4),
        poll_duration_max_s=round(durations[-1], 4),
        scrape_requests=len(latencies),
        scrape_errors=len(errors),
        scrape_p50_ms=round(latencies[len(latencies) // 2] * 1000, 2),
        scrape_p99_ms=round(latencies[int(len(latencies) * 0.99)] * 1000, 2),
        scrape_max_ms=round(latencies[-1] * 1000, 2),
        poll_overruns=len(overruns),
    )
    # Polls go on while the scrapers run (each poll is a new timestamp); the interval itself is a figure above.
    assert len(distinct) >= SECONDS / 5, f"only {len(distinct)} polls in {SECONDS}s: the loop starved"
