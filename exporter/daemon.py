"""The long-running watchdog: a fixed-rate poll loop, signal handling, config reload, and reconnect backoff.

Signal handlers only set flags and wake the loop. The loop runs on its own thread so that SIGTERM is honoured within
two seconds even while a poll is stuck on the network; the main thread waits for the stop flag.
"""

from __future__ import annotations

import contextlib
import gc
import random
import signal
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import FrameType

from exporter.collector import PgparentCollector, Published
from exporter.config import Config, load_config
from exporter.db import Capabilities, Database
from exporter.enforcer import enforce
from exporter.errors import ConfigInvalid, DatabaseUnavailable
from exporter.grouping import group
from exporter.http import Limits, MetricsServer
from exporter.logs import get_logger
from exporter.model import Grouped
from exporter.policy import RuleState, evaluate
from exporter.webconfig import WebConfig

log = get_logger("pgparent")

SHUTDOWN_GRACE = 1.5
"""Seconds the main thread waits for the loop to finish its cycle after SIGTERM before exiting anyway."""


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector for a burst of allocation that creates no cycles.

    Grouping a large snapshot allocates a few objects per session; every gen-0 threshold crossed would make the
    collector walk the young objects again, a third of the cost at 100k sessions. Reference counting still frees
    everything, and the collector runs as usual between polls.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


class Backoff:
    """Exponential reconnect delay with jitter; constants on the class so tests can shrink them.

    Each delay is drawn from [(1 - JITTER) * d, d] for the exponential step d, so replicas that lost the same server
    at the same moment spread their reconnects instead of arriving in lockstep.
    """

    BASE = 0.5
    FACTOR = 2.0
    MAX = 10.0
    JITTER = 0.5

    def __init__(self, rng: random.Random | None = None) -> None:
        self.failures = 0
        self.not_before = 0.0
        self._rng = rng if rng is not None else random.Random()  # noqa: S311 - spreading retries, not a secret

    def failed(self, now: float) -> float:
        step = min(self.BASE * self.FACTOR**self.failures, self.MAX)
        delay = step * (1.0 - self.JITTER * self._rng.random())
        self.failures += 1
        self.not_before = now + delay
        return delay

    def succeeded(self) -> None:
        self.failures = 0
        self.not_before = 0.0

    def ready(self, now: float) -> bool:
        return now >= self.not_before


class Daemon:
    """Polls, groups, evaluates and enforces at a fixed rate; publishes each poll to the collector."""

    def __init__(
        self,
        config: Config,
        db: Database,
        *,
        config_path: str | Path | None = None,
        force_dry_run: bool = False,
        listen: tuple[str, int] | None = None,
        web: WebConfig | None = None,
        tls: ssl.SSLContext | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.config = config
        self.db = db
        self.config_path = config_path
        self.force_dry_run = force_dry_run
        self.collector = PgparentCollector()
        self.counters = self.collector.counters
        self.registry = self.collector.registry
        self.stop_event = threading.Event()
        self._wake = threading.Event()
        self._reload_requested = False
        self._rule_state = RuleState()
        self._backoff = Backoff()
        self._last_tick = time.monotonic()
        self._reload_ok = True
        self._reload_time = time.time()
        self._last_success = 0.0
        self._was_up: bool | None = None
        self._lock_generation: int | None = None
        self._lock_key: int | None = None
        self._off_reason: str | None = None
        self._loop_thread: threading.Thread | None = None
        self.http = (
            MetricsServer(
                listen, self.collector.render, self.healthy, web=web, tls=tls, limits=limits, registry=self.registry
            )
            if listen is not None
            else None
        )
        self._publish(up=False, duration=0.0)

    # -- signals: flags only -------------------------------------------------------------------------------------
    def request_stop(self, *_: object) -> None:
        self.stop_event.set()
        self._wake.set()

    def request_reload(self, *_: object) -> None:
        self._reload_requested = True
        self._wake.set()

    def install_signal_handlers(self) -> None:
        def stop(signum: int, _frame: FrameType | None) -> None:
            self.request_stop()

        def hup(signum: int, _frame: FrameType | None) -> None:
            self.request_reload()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, hup)

    # -- health ----------------------------------------------------------------------------------------------------
    def healthy(self) -> bool:
        """The loop ticked recently (the database may be down: that is `pgparent_up`, not liveness)."""
        return time.monotonic() - self._last_tick < 3 * self.config.interval + 30

    # -- the loop --------------------------------------------------------------------------------------------------
    def run(self) -> int:
        """Serve /metrics and poll until SIGTERM/SIGINT. Call from the main thread."""
        self.install_signal_handlers()
        self.start()
        while not self.stop_event.is_set():
            self.stop_event.wait(1.0)
        self.stop()
        return 0

    def start(self) -> None:
        """Start serving and polling on background threads (for embedding, e.g. the demo)."""
        if self.http is not None:
            self.http.start()
            log.info("listening", port=self.http.port, tls=self.http.tls, basic_auth=self.http.basic_auth)
        log.info(
            "started",
            dsn=self.db.masked,
            interval=self.config.interval,
            rules=[r.name for r in self.config.rules],
            dry_run=self.force_dry_run or self.config.dry_run,
        )
        self._loop_thread = threading.Thread(target=self.loop, name="poll-loop", daemon=True)
        self._loop_thread.start()

    def stop(self) -> None:
        """Stop polling and serving; returns within SHUTDOWN_GRACE even if a poll hangs on the network."""
        self.request_stop()
        loop = self._loop_thread
        if loop is not None:
            loop.join(SHUTDOWN_GRACE)
        stuck = loop is not None and loop.is_alive()
        if stuck:
            log.warning("shutdown_forced", reason="a poll was still running after the grace period")
        if self.http is not None:
            self.http.stop()
        if not stuck:
            self.db.close()
        log.info("stopped")

    def loop(self) -> None:
        next_run = time.monotonic()
        while not self.stop_event.is_set():
            if self._reload_requested:
                self._reload_requested = False
                self.reload()
            self.cycle()
            self._last_tick = time.monotonic()
            next_run += self.config.interval
            now = time.monotonic()
            if now > next_run:
                if self._was_up:  # while the database is down, slow reconnects are expected, not news
                    log.warning("poll_overrun", behind_seconds=round(now - next_run, 3), interval=self.config.interval)
                next_run = now
            while not self.stop_event.is_set() and not self._reload_requested:
                remaining = next_run - time.monotonic()
                if remaining <= 0:
                    break
                self._wake.wait(remaining)
                self._wake.clear()

    def reload(self) -> bool:
        """Build, validate, swap: an invalid file is logged and the running rules stay."""
        if self.config_path is None:
            return False
        try:
            new = load_config(self.config_path)
        except ConfigInvalid as exc:
            self._reload_ok = False
            log.error(
                "config_reload_failed",
                file=str(self.config_path),
                errors=exc.errors,
                kept_rules=[r.name for r in self.config.rules],
            )
            self._publish_flags()
            return False
        self.config = new
        self._reload_ok = True
        self._reload_time = time.time()
        log.info(
            "config_reloaded", file=str(self.config_path), rules=[r.name for r in new.rules], interval=new.interval
        )
        self._publish_flags()
        return True

    def cycle(self) -> None:
        """One poll: read, group, evaluate, enforce, publish. Never raises for a database problem."""
        started = time.monotonic()
        if not self.db.connected and not self._backoff.ready(started):
            return
        try:
            caps = self.db.connect()
            if self._was_up is not True:
                self._log_connected(caps)
            leader = self._hold_leadership(caps)
            snapshot = self.db.snapshot()
            with gc_paused():
                grouped = group(snapshot, self.config.grouping.pattern)
                decision = evaluate(grouped, self.config, self._rule_state, self.force_dry_run)
            self._rule_state = decision.state
            for f in decision.started:
                log.warning(
                    "rule_firing",
                    rule=f.rule,
                    parent=f.parent,
                    action=f.action,
                    reasons=list(f.reasons),
                    dry_run=f.dry_run,
                )
            for rule, parent in decision.resolved:
                log.info("rule_resolved", rule=rule, parent=parent)
            reason = self._enforcement_off_reason(caps, leader)
            if reason is None and (decision.targets or decision.deferred or decision.unreleased):
                enforce(decision, self.db, self.counters, snapshot.now)
        except DatabaseUnavailable as exc:
            delay = self._backoff.failed(time.monotonic())
            if self._was_up is not False:
                log.error("database_unavailable", error=str(exc), retry_in=round(delay, 2))
            self._was_up = False
            self._failed(started)
            return
        except Exception:  # the loop's edge: log with traceback, count, keep running
            log.exception("poll_crashed")
            self._failed(started)
            return
        self.counters.polls.inc()  # before the publish, so the exposition rendered from it counts this poll
        self._backoff.succeeded()
        self._was_up = True
        self._last_success = time.time()
        self._publish(
            up=True,
            duration=time.monotonic() - started,
            grouped=grouped,
            violating=decision.violating,
            pending=decision.pending,
            enforcing=reason is None,
            leader=leader,
        )

    def _failed(self, started: float) -> None:
        self.counters.poll_errors.inc()
        self.counters.polls.inc()
        self._publish(up=False, duration=time.monotonic() - started)

    def _log_connected(self, caps: Capabilities) -> None:
        log.info(
            "database_available",
            server_version=caps.server_version_num,
            role=caps.role,
            can_read_all_stats=caps.can_read_all_stats,
            can_signal=caps.can_signal,
            in_recovery=caps.in_recovery,
        )
        if not caps.can_read_all_stats:
            log.warning(
                "limited_visibility",
                role=caps.role,
                reason="the role lacks pg_read_all_stats (grant pg_monitor): other roles' sessions show no state or "
                "backend_start, are counted in pgparent_hidden_sessions and are never signalled",
            )
        if not caps.can_signal:
            log.warning(
                "limited_signalling",
                role=caps.role,
                reason="the role lacks pg_signal_backend: it can signal only its own role's sessions",
            )

    def _hold_leadership(self, caps: Capabilities) -> bool:
        """Keep (or try to take) the leader lock on the current connection; False on a standby server."""
        election = self.config.leader_election
        if not election.enabled:
            return True
        if caps.in_recovery:
            return False
        held = self._lock_generation == self.db.generation and self._lock_key == election.lock_key
        if not held and self._lock_generation is not None:
            log.warning("leadership_lost", reason="the connection that held the leader lock ended")
            self._lock_generation = None
        if not held and self.db.try_lock(election.lock_key):
            self._lock_generation, self._lock_key = self.db.generation, election.lock_key
            log.info("leadership_acquired", lock_key=election.lock_key)
            held = True
        return held

    def _enforcement_off_reason(self, caps: Capabilities, leader: bool) -> str | None:
        """Why this instance may not signal now (logged once per change), or None when it may."""
        if caps.in_recovery:
            reason: str | None = "the server is in recovery (a standby): nothing is signalled there"
        elif not leader:
            reason = "another replica holds the leader lock and enforces; this one only exports metrics"
        else:
            reason = None
        if reason != self._off_reason:
            if reason is None:
                log.info("enforcement_on")
            else:
                log.warning("enforcement_off", reason=reason)
            self._off_reason = reason
        return reason

    def _publish(
        self,
        *,
        up: bool,
        duration: float,
        grouped: Grouped | None = None,
        violating: dict[str, int] | None = None,
        pending: dict[str, int] | None = None,
        enforcing: bool = False,
        leader: bool = False,
    ) -> None:
        names = [r.name for r in self.config.rules]
        self.collector.publish(
            Published(
                up=up,
                last_success=self._last_success,
                poll_duration=duration,
                interval=self.config.interval,
                grouped=grouped,
                violating=violating if violating is not None else dict.fromkeys(names, 0),
                pending=pending if pending is not None else dict.fromkeys(names, 0),
                max_groups=self.config.grouping.max_groups,
                dry_run=self.force_dry_run or self.config.dry_run,
                reload_ok=self._reload_ok,
                reload_time=self._reload_time,
                enforcing=enforcing,
                leader=leader,
            )
        )

    def _publish_flags(self) -> None:
        self.collector.publish(
            replace(
                self.collector.latest,
                reload_ok=self._reload_ok,
                reload_time=self._reload_time,
                dry_run=self.force_dry_run or self.config.dry_run,
                interval=self.config.interval,
                max_groups=self.config.grouping.max_groups,
            )
        )
