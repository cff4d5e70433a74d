"""Load: 1000 client sessions in 250 groups; the daemon keeps polling and answering while 50 scrapers hammer /metrics.

Correctness under load is asserted here; how fast it goes is recorded as figures (and measured in bench/), since CI
machines are shared and a timing bound would only measure the neighbours. The load lasts as many polls, not seconds.
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
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql

from exporter.pgcluster import Cluster
from harness.daemon import HTTP_TIMEOUT, DaemonProcess
from harness.waiting import eventually
from tests.support.figures import record_figure
from tests.support.servers import make_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]

GROUPS, PER_GROUP, UNTAGGED = 250, 4, 50
SCRAPERS, POLLS = 50, 30
INTERVAL = 1.0
STARVED = 5
"""The loop starves if, under load, polls come more than this many intervals apart on average."""


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


def scrape_until(stop: threading.Event, port: int, latencies: list[float], errors: list[str]) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HTTP_TIMEOUT)
    while not stop.is_set():
        started = time.perf_counter()
        try:
            conn.request("GET", "/metrics")
            resp = conn.getresponse()
            body = resp.read()
            if resp.status != 200 or b'pgparent_up{target="default"} 1.0' not in body:
                errors.append(f"status {resp.status}")
        except (OSError, http.client.HTTPException) as exc:
            errors.append(repr(exc))
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=HTTP_TIMEOUT)
            continue
        latencies.append(time.perf_counter() - started)
    conn.close()


def poll_state(d: DaemonProcess) -> tuple[float, float, float]:
    """(polls completed, last poll's timestamp, its duration), from one scrape."""
    wanted = ("pgparent_polls_total", "pgparent_last_poll_timestamp_seconds", "pgparent_poll_duration_seconds")
    values = {s.name: float(s.value) for f in text_string_to_metric_families(d.metrics()) for s in f.samples
              if s.name in wanted}
    polls, timestamp, duration = (values.get(name, 0.0) for name in wanted)
    return polls, timestamp, duration


def test_keeps_polling_under_1000_sessions_and_50_scrapers(loaded: Cluster, tmp_path: Path) -> None:
    """All 1000 sessions are grouped, 30 polls go on while 50 concurrent scrapers hammer /metrics, with zero errors."""
    with DaemonProcess(tmp_path, f"interval: {INTERVAL}s\n", loaded.dsn) as d:
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
        stop = threading.Event()
        workers = [threading.Thread(target=scrape_until, args=(stop, d.port, latencies, errors))
                   for _ in range(SCRAPERS)]
        started = time.monotonic()
        for w in workers:
            w.start()
        first = poll_state(d)[0]

        def done() -> bool:
            """Records each poll seen (its timestamp and duration, for the figures) until POLLS more were made."""
            count, timestamp, duration = poll_state(d)
            polls.append((timestamp, duration))
            return count >= first + POLLS

        try:
            # Under load, polls go on: POLLS of them within STARVED times as many intervals, else the loop starved.
            eventually(done, timeout=POLLS * INTERVAL * STARVED, interval=0.25, what=f"{POLLS} polls under load")
        finally:
            stop.set()
            for w in workers:
                w.join()
        window = time.monotonic() - started
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
        window_seconds=round(window, 1),
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
