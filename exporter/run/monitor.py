"""One target's loop: connect, read a snapshot, assess it (exporter/core/assess.py), enforce, publish, then sleep
until the next poll or the next deadline, on a fixed-rate schedule of its own.

The daemon runs one `Monitor` per target, each on its own thread with its own connection, backoff, watchdog,
leadership (exporter/run/leadership.py) and deadlines (exporter/run/timer.py), so a target that is slow, down or
black-holed never delays another. Every line a target's loop logs carries its name (its logger is bound once).
"""

from __future__ import annotations

import contextlib
import gc
import random
import threading
import time
from collections.abc import Iterator
from datetime import datetime

from exporter.core.assess import Assessment, assess, glance
from exporter.core.guards import cadence, guarded, inactive, memory_watch
from exporter.core.policy import Decision, RuleState
from exporter.core.settings import Config
from exporter.core.usage import NO_USAGE
from exporter.errors import DatabaseUnavailable
from exporter.face.collector import Access, PgparentCollector, Published
from exporter.logs import get_logger
from exporter.pg.database import Capabilities, Database
from exporter.run.costs import Costs
from exporter.run.enforcer import Enforcer
from exporter.run.leadership import Leadership, Shard
from exporter.run.sampler import Sampler
from exporter.run.servers import Servers
from exporter.run.timer import DeadlineTimer

log = get_logger("pgparent")


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


def access_of(caps: Capabilities) -> Access:
    """What the connection `caps` describes, as the collector exports it."""
    return Access(
        capabilities={"superuser": caps.superuser, "read_all_stats": caps.can_read_all_stats,
                      "signal_backend": caps.can_signal, "in_recovery": caps.in_recovery, "pooler": caps.pooled,
                      "tls": caps.tls},
        track_activity_query_size=caps.track_activity_query_size,
        sslmode=caps.sslmode,
        tls_version=caps.tls_version,
    )


VERIFIED = "verify-full"
"""The one sslmode that checks both the server's certificate and that it names the host connected to."""


def tls_weakness(caps: Capabilities) -> str | None:
    """What an eavesdropper or an impostor on the network between pgparent and a server on another host could do, or
    None: the connection is encrypted under verify-full, or stays on this machine."""
    if caps.loopback:
        return None
    if not caps.tls:
        return ("the connection to the server is not encrypted: the password (unless SCRAM), every query text and "
                "every session's details cross the network in clear; set sslmode=verify-full and sslrootcert")
    if caps.sslmode == VERIFIED:
        return None
    checked = ("checks the server's certificate but not that it names this host" if caps.sslmode == "verify-ca"
               else "checks no certificate")
    return (f"sslmode={caps.sslmode} encrypts but {checked}: a machine in the middle can pose as the server; set "
            "sslmode=verify-full and sslrootcert (the provider's CA)")


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


class AuthBackoff(Backoff):
    """The delay after the server refused a credential: long, so a fleet presenting a bad or expired token does not
    trip the server's login throttling (Azure's connection_throttle, fail2ban-style limits) while an operator fixes
    it: 15 to 20 s, doubling up to 3.75 to 5 min."""

    BASE = 20.0
    FACTOR = 2.0
    MAX = 300.0
    JITTER = 0.25


class Monitor:
    """One target's poll loop: read, assess, enforce, publish; never raises for a database problem."""

    def __init__(
        self,
        name: str,
        db: Database,
        config: Config,
        collector: PgparentCollector,
        *,
        force_dry_run: bool = False,
        dry_run: bool = False,
        labels: dict[str, str] | None = None,
        shard: Shard | None = None,
        servers: Servers | None = None,
    ) -> None:
        self.name = name
        self.db = db
        self.config = config
        self.collector = collector
        self.counters = collector.counters
        self.log = log.bind(target=name)
        # The target's poll counters exist from the start, at 0: rate() and increase() (the Poll errors panel,
        # PgparentPollsFailing) then count its first failure instead of seeing a series born at 1.
        self.counters.polls.labels(name)
        self.counters.poll_errors.labels(name)
        if db.credentials is not None:  # a credential that may expire: its failures count from 0 too
            for reason in ("auth", "credential"):
                self.counters.connect_failures.labels(name, reason)
        self.force_dry_run = force_dry_run
        self.dry_run = dry_run
        self.labels = dict(labels or {})
        self.enforcer = Enforcer(db, self.counters, name)
        self.leadership = Leadership(name, db, shard, self.log)
        self.servers = servers
        self._claimed: int | None = None
        """The connection generation whose sessions are claimed in `servers`."""
        self.stop_event = threading.Event()
        self.wake = threading.Event()
        self.leadership.on_share_grew(self.wake.set)
        self.last_tick = time.monotonic()
        self.rule_state = RuleState()
        self.costs = Costs(self.log)
        self.deadlines = DeadlineTimer()
        self.sampler = Sampler(self.counters, name, self.log)
        self.usage = NO_USAGE
        self._inactive: dict[str, str] | None = None
        self._glance_at: float | None = None
        """When to next read the sessions that began something since the last poll (None: no time limit needs it)."""
        self._polled: datetime | None = None
        """The last poll's server clock: what a glance reads since."""
        self._backoff = Backoff()
        self._auth_backoff = AuthBackoff()
        self._down_reason: str | None = None
        """Why the last attempt failed while the target is down: a credential problem after another is logged."""
        self._last_success = 0.0
        self._was_up: bool | None = None
        self._thread: threading.Thread | None = None
        self._publish(up=False, duration=0.0)

    def start(self) -> None:
        self._thread = threading.Thread(target=self.loop, name=f"poll-{self.name}", daemon=True)
        self._thread.start()

    def request_stop(self) -> None:
        self.stop_event.set()
        self.wake.set()

    def join(self, timeout: float) -> bool:
        """Wait for the loop to end; False if it is still stuck (in a poll the network holds)."""
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def close(self) -> None:
        self.sampler.close()
        self.costs.close()
        self.leadership.close()
        if self.servers is not None:
            self.servers.release(self)
        self.db.close()

    def healthy(self) -> bool:
        """The loop ticked recently (the database may be down: that is `pgparent_up`, not liveness)."""
        return time.monotonic() - self.last_tick < 3 * self.config.interval + 30

    def loop(self) -> None:
        """Fixed rate: next_run += interval, sleep until then (interruptible), warn when a cycle overruns; between
        polls, wake for each deadline, each memory sample, each glance a time limit shorter than the interval needs
        (`guards.cadence`) and, when the shard's share grew, for a follower's try of the lock."""
        next_run = time.monotonic()
        while not self.stop_event.is_set():
            self.cycle()
            self.last_tick = time.monotonic()
            interval = self.config.interval
            next_run += interval
            now = time.monotonic()
            if now > next_run:
                if self._was_up:  # while the database is down, slow reconnects are expected, not news
                    self.log.warning("poll_overrun", behind_seconds=round(now - next_run, 3), interval=interval)
                next_run = now
            while not self.stop_event.is_set():
                now = time.monotonic()
                due_at = self.deadlines.next_at
                if due_at is not None and due_at <= now:
                    self._act_on_due(now)
                    continue
                sample_at = self.sampler.next_at
                if sample_at is not None and sample_at <= now:
                    self._sample(now)
                    continue
                glance_at = self._glance_at
                if glance_at is not None and glance_at <= now:
                    self._glance(now)
                    continue
                if self.leadership.share_grew.is_set():
                    self.leadership.share_grew.clear()
                    if not self.leadership.leading:  # a follower: its target may be free now
                        self.cycle()
                        continue
                wake_at = min(t for t in (next_run, due_at, sample_at, glance_at) if t is not None)
                remaining = wake_at - now
                if remaining <= 0:
                    break
                self.wake.wait(remaining)
                self.wake.clear()

    def cycle(self) -> None:
        """One poll: read, assess, enforce, publish. Never raises for a database problem."""
        started = time.monotonic()
        if not self.db.connected and not (self._backoff.ready(started) and self._auth_backoff.ready(started)):
            return
        config = self.config  # one config for the whole cycle, whatever a reload swaps meanwhile
        try:
            caps = self._connect()
            if self._claimed != self.db.generation:
                self._claim(caps)
            if self._was_up is not True:
                self._log_connected(caps)
                self._was_up = True  # so a failure from here on is logged: every database_available has its end
            leader = self.leadership.keep(caps, config)
            if self.leadership.shard is not None and not leader:
                # Another replica polls and enforces this target; this one only keeps trying the lock.
                self.sampler.disarm()
                self._succeeded(started, config, leader=False, access=access_of(caps))
                return
            off = self.leadership.enforcement_off(caps, leader)
            # read_at: the server's now() of the snapshot, on this process's clock (about)
            snapshot, read_at, samples = self.costs.read(self.db, caps, config)
            with gc_paused():
                assessed = assess(snapshot, config, self.rule_state, self.name,
                                  dry_run=self.force_dry_run or self.dry_run, deadlines=off is None,
                                  samples=samples, cost_state=self.costs.state, usage=self.usage)
            self._report(assessed)
            decision = assessed.decision
            if off is None and decision.acts:
                self.enforcer.enforce(decision, snapshot.now)
                self.sampler.signalled(self.enforcer.landed)
            self.deadlines.set(assessed.deadlines, snapshot.now, read_at)
            self._arm(assessed, off is None, config)
            active = self._rules_active(config)
            every = cadence(config)
            self._polled = snapshot.now
            self._glance_at = read_at + every if off is None and every < config.interval else None
        except DatabaseUnavailable as exc:
            self.deadlines.clear()
            self.sampler.disarm()
            self._glance_at = None
            self._connect_failed(exc)
            # A refused login (a credential, or pg_hba.conf) counts against the server's login throttling: back off
            # long. A password source that gives nothing never reached the server: the outage's backoff.
            backoff = self._auth_backoff if exc.reason in ("auth", "rejected") else self._backoff
            delay = backoff.failed(time.monotonic())
            # Once per outage; again when the credential becomes the problem (refused, or none to be had), which
            # is no outage but an operator's to fix.
            if self._was_up is not False or (exc.reason in _CREDENTIAL_REASONS and exc.reason != self._down_reason):
                self.log.error("database_unavailable", error=str(exc), retry_in=round(delay, 2),
                               **_reason(exc))
            self._was_up = False
            self._down_reason = exc.reason
            self.leadership.connection_failed()
            self._failed(started, config)
            return
        except Exception:  # the loop's edge: log with traceback, count, keep running
            self.log.exception("poll_crashed")
            self._failed(started, config)
            return
        self._succeeded(started, config, leader=leader, grouped=assessed.grouped, violating=decision.violating,
                        pending=decision.pending, enforcing=off is None, cost=assessed.cost, active=active,
                        protected=decision.protected, access=access_of(caps))

    def _connect(self) -> Capabilities:
        """Connect (if not connected). After the server refused a credential, try once more at once with one fetched
        afresh (a cached token that expired on the way, a password rotated since it was read), and only then back
        off: once per run of refusals, so a bad credential costs the server two attempts, then one per AuthBackoff
        step."""
        try:
            return self.db.connect()
        except DatabaseUnavailable as exc:
            if exc.reason != "auth" or self.db.credentials is None or self._auth_backoff.failures:
                raise  # without a source the same password would be refused again
            self._connect_failed(exc)
        self.db.forget_password()
        return self.db.connect()

    def _failed_between_polls(self, exc: DatabaseUnavailable, during: str) -> None:
        """A glance, a memory sample or a deadline's signal lost the connection: counted and logged; the next poll
        reconnects (with the backoff)."""
        self._connect_failed(exc)
        self.log.error("database_unavailable", error=str(exc), during=during, **_reason(exc))

    def _connect_failed(self, exc: DatabaseUnavailable) -> None:
        """Count a failed connection attempt by its reason (a failed statement on an open connection has none)."""
        if exc.reason is not None:
            self.counters.connect_failures.labels(self.name, exc.reason).inc()

    def _arm(self, assessed: Assessment, enforcing: bool, config: Config) -> None:
        """Watch the sessions under a memory condition until the next poll, where this target enforces."""
        watch = memory_watch(assessed.decision, assessed.snapshot) if enforcing else None
        if watch:
            self.sampler.arm(watch, self.costs.postmaster, self.costs.host_memory, config.sample_interval,
                             time.monotonic())
        else:
            self.sampler.disarm()

    def _rules_active(self, config: Config) -> dict[str, int]:
        """Per rule, 1 if this target has every figure it reads; logs the rules that have not, when that changes."""
        missing = inactive(config, self.costs.sources)
        if missing != self._inactive:
            for rule, condition, action in guarded(config):
                # At 0 from the first poll: increase() (PgparentGuardActed) then counts a rule's first action.
                self.counters.guard_actions.labels(self.name, rule, condition, action)
            for rule, reason in missing.items():
                self.log.warning("rule_inactive", rule=rule, reason=reason,
                                 detail="its guard conditions (memory, CPU, host memory) have no figures here and "
                                 "never fire; its other conditions act")
            self._inactive = missing
        return {r.name: int(r.name not in missing) for r in config.rules}

    def _glance(self, now: float) -> None:
        """Read the sessions that began a query, a transaction or a connection since the last poll, and schedule the
        deadlines of the time limits they may cross before the next poll."""
        config = self.config
        self._glance_at = now + cadence(config)
        if self._polled is None:
            return
        try:
            snapshot = self.db.snapshot(config.poll, recent=self._polled)
            read_at = time.monotonic()
        except DatabaseUnavailable as exc:
            self._failed_between_polls(exc, "glance")
            self._glance_at = None
            return
        self.counters.glances.labels(self.name).inc()
        found = glance(snapshot, config, self.name, dry_run=self.force_dry_run or self.dry_run)
        self.deadlines.glanced(found, snapshot.now, read_at)

    def _sample(self, now: float) -> None:
        """Sample the memory of the sessions under a memory condition, and act on what crossed a limit."""
        try:
            landed = self.sampler.sample(now, self.deadlines.server_now(), self.db, self.enforcer, self.config)
        except DatabaseUnavailable as exc:
            self._failed_between_polls(exc, "memory sample")
            self.sampler.disarm()
            return
        if landed:
            self.rule_state = self.rule_state.with_cancelled(landed, self.deadlines.server_now())
            self.collector.refresh()

    def _report(self, assessed: Assessment) -> None:
        """Take the assessment's rule state, and log what began or stopped firing."""
        decision = assessed.decision
        self.rule_state = decision.state
        self.usage = assessed.usage
        self.costs.took(assessed)
        for f in decision.started:
            self.log.warning("rule_firing", rule=f.rule, parent=f.parent, action=f.action, reasons=list(f.reasons),
                             dry_run=f.dry_run)
        for rule, parent in decision.resolved:
            self.log.info("rule_resolved", rule=rule, parent=parent)
        missed = assessed.grouped.comment_missed
        if missed:
            self.log.debug("comment_tags_missed", sessions=missed,
                           reason="their query text was cut at track_activity_query_size before a comment at its end; "
                           "put the comment first, or raise track_activity_query_size")

    def _act_on_due(self, now: float) -> None:
        """Act on every deadline due by `now`: signal the crossing session under its strict guard and, once it is
        confirmed, the group's other sessions under theirs; a lock deadline polls early instead."""
        config = self.config
        for deadline in self.deadlines.take_due(now):
            self.counters.deadline_wakeups.labels(self.name).inc()
            if deadline.poll:
                self.cycle()
                return
            assert deadline.crossing is not None
            self.deadlines.drop(deadline.rule, deadline.parent)  # one firing per (rule, group)
            try:
                server_now = self.deadlines.server_now()
                first = self.enforcer.enforce(Decision.only((deadline.crossing,)), server_now)
                if (first.get("ok") or first.get("dry_run")) and deadline.others:
                    crossing = deadline.crossing
                    self.log.warning("rule_firing", rule=deadline.rule, parent=deadline.parent, action=crossing.action,
                                     reasons=list(crossing.reasons), dry_run=crossing.dry_run, trigger="deadline")
                    cap = max(config.limits.max_terminations_per_cycle - (1 if first.get("ok") else 0), 1)
                    landed = list(self.enforcer.landed)
                    self.enforcer.enforce(Decision.only(deadline.others, cap), server_now)
                    self.enforcer.landed += landed
                self.rule_state = self.rule_state.with_cancelled(self.enforcer.landed, server_now)
            except DatabaseUnavailable as exc:
                self._failed_between_polls(exc, "deadline")
                self.deadlines.clear()
            self.collector.refresh()  # the counters moved: the next scrape renders them

    def _claim(self, caps: Capabilities) -> None:
        """Claim this connection's sessions in `servers`; refuse the connection when another target reads them."""
        if self.servers is None or self.stop_event.is_set():
            return
        database = caps.database if self.db.database_only else None
        other = self.servers.claim(self, self.name, caps.server, database)
        if other is not None:
            self.db.close()
            what = f"database {database}" if database else "every database"
            raise DatabaseUnavailable(
                f"not polled: target {other!r} already reads sessions of this server ({caps.server}) that this "
                f"target would read ({what}); two targets on one server need `sessions: database` and a database "
                "each"
            )
        self._claimed = self.db.generation

    def _succeeded(self, started: float, config: Config, *, leader: bool, **published: object) -> None:
        self.counters.polls.labels(self.name).inc()  # before the publish, so its exposition counts this poll
        self._backoff.succeeded()
        self._auth_backoff.succeeded()
        self._down_reason = None
        self._was_up = True
        self._last_success = time.time()
        self._publish(up=True, duration=time.monotonic() - started, config=config, leader=leader, **published)

    def _failed(self, started: float, config: Config) -> None:
        self.counters.poll_errors.labels(self.name).inc()
        self.counters.polls.labels(self.name).inc()
        self._publish(up=False, duration=time.monotonic() - started, config=config)

    def _log_connected(self, caps: Capabilities) -> None:
        self.log.info("database_available", server_version=caps.server_version_num, role=caps.role,
                      superuser=caps.superuser, can_read_all_stats=caps.can_read_all_stats, can_signal=caps.can_signal,
                      in_recovery=caps.in_recovery, pooled=caps.pooled,
                      track_activity_query_size=caps.track_activity_query_size, tls=caps.tls,
                      tls_version=caps.tls_version, sslmode=caps.sslmode)
        if (insecure := tls_weakness(caps)) is not None:
            self.log.warning("connection_insecure", host=caps.host, sslmode=caps.sslmode, tls=caps.tls,
                             reason=insecure)
        if not caps.can_read_all_stats:
            self.log.warning(
                "limited_visibility",
                role=caps.role,
                reason="the role lacks pg_read_all_stats (grant pg_monitor): other roles' sessions show no state or "
                "backend_start, are counted in pgparent_hidden_sessions and are never signalled",
            )
        if caps.pooled:
            self.log.warning(
                "connection_pooler",
                reason="the DSN reaches PostgreSQL through a connection pooler (the connection announced a pid its "
                "statements do not run in): the leader lock is a session advisory lock, which a transaction pooler "
                "leaves on whichever server connection ran it, so this replica will not enforce; connect pgparent "
                "to PostgreSQL directly (clients may keep using the pooler)",
            )
        if not caps.can_signal:
            self.log.warning(
                "limited_signalling",
                role=caps.role,
                reason="the role lacks pg_signal_backend: it can signal only its own role's sessions",
            )

    def _publish(self, *, up: bool, duration: float, config: Config | None = None, **fields: object) -> None:
        config = config or self.config
        names = [r.name for r in config.rules]
        published: dict[str, object] = {
            "violating": dict.fromkeys(names, 0),
            "pending": dict.fromkeys(names, 0),
            **fields,
        }
        self.collector.publish(
            Published(
                up=up,
                last_success=self._last_success,
                poll_duration=duration,
                max_groups=config.grouping.max_groups,
                dry_run=self.force_dry_run or config.dry_run or self.dry_run,
                labels=self.labels,
                **published,  # type: ignore[arg-type]
            ),
            self.name,
        )


_CREDENTIAL_REASONS = ("auth", "credential")


def _reason(exc: DatabaseUnavailable) -> dict[str, str]:
    """The `reason` field of a database_unavailable event: why a connection attempt failed (none for a statement)."""
    return {"reason": exc.reason} if exc.reason is not None else {}
