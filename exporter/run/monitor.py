"""One monitored server: connect, poll, group, evaluate, enforce, publish, on a fixed-rate schedule of its own.

The daemon runs one `Monitor` per target, each on its own thread with its own connection, backoff, watchdog, leader
lock and `for:` timers, so a target that is slow, down or black-holed never delays another. Tests and the benchmark
call the same `cycle()`.
"""

from __future__ import annotations

import contextlib
import gc
import math
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from exporter.core.deadlines import Deadline, schedule
from exporter.core.grouping import group
from exporter.core.policy import Decision, RuleState, evaluate
from exporter.core.settings import Config
from exporter.errors import DatabaseUnavailable
from exporter.face.collector import PgparentCollector, Published
from exporter.logs import get_logger
from exporter.pg.database import Capabilities, Database
from exporter.run.enforcer import enforce

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


@dataclass
class Shard:
    """What the replicas of one process know together when they divide a fleet (`leader_election.shard`).

    Every replica holds a shared "member" advisory lock on each target it reaches, so the holders of that lock count
    the live replicas. A replica takes a free target's leader lock only while it leads fewer than its fair share,
    ceil(targets / replicas), and gives up the excess when more replicas arrive.
    """

    targets: int = 1
    window: float = 10.0
    """Seconds a target's count of replicas stays in the vote (two intervals)."""
    reads: dict[str, tuple[int, float]] = field(default_factory=dict)
    """Each target's latest count of member-lock holders, with the monotonic moment it was read."""
    leading: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    on_grow: dict[str, Callable[[], None]] = field(default_factory=dict)
    """Called when the share grows (a replica died): the targets this replica follows try their locks at once
    rather than at their next poll."""

    def seen(self, target: str, replicas: int, at: float) -> None:
        with self.lock:
            before = self._share()
            self.reads[target] = (max(replicas, 1), at)
            grew = self._share() > before
            callbacks = list(self.on_grow.values()) if grew else []
        for callback in callbacks:
            callback()

    def _replicas(self, now: float) -> int:
        """Live replicas: the (upper) median of the targets' latest counts read within the window. One target whose
        other replica is reconnecting does not move it; a replica that died is out of it once more than half the
        targets have been read since its connections closed (within an interval)."""
        counts = sorted(n for n, at in self.reads.values() if now - at <= self.window)
        return counts[len(counts) // 2] if counts else 1

    def share(self) -> int:
        with self.lock:
            return self._share()

    def _share(self) -> int:
        return max(1, math.ceil(self.targets / self._replicas(time.monotonic())))

    def reserve(self, target: str) -> bool:
        """Claim a place in the share for `target` before trying its lock, atomically, so that targets polling at
        the same moment cannot all pass the check and overshoot the share; `unreserve` if the lock is not had."""
        with self.lock:
            if target not in self.leading and len(self.leading) >= self._share():
                return False
            self.leading.add(target)
            return True

    def unreserve(self, target: str) -> None:
        """`target` no longer counts in this replica's share: its lock was not had, or its leadership ended."""
        with self.lock:
            self.leading.discard(target)

    def give_up(self, target: str) -> bool:
        """Whether `target` should be released to bring this replica back to its share, deciding for one target at a
        time (so several over-share targets do not all let go at once)."""
        with self.lock:
            if target in self.leading and len(self.leading) > self._share():
                self.leading.discard(target)
                return True
            return False


class Servers:
    """Which sessions each target of one process reads, so that no two read the same: a target that reads its whole
    server and another target on that server, or two targets on one database, would count every session twice and
    both enforce on it. Targets claim at each connection; the first keeps the sessions, the other is refused."""

    def __init__(self) -> None:
        self._claims: dict[int, tuple[str, str, str | None]] = {}
        self._lock = threading.Lock()

    def claim(self, owner: object, target: str, server: str, database: str | None) -> str | None:
        """Record that `owner` (target `target`) reads `server`'s sessions (of `database`, or all when None); or
        return the name of a target that already reads some of them, and record nothing."""
        with self._lock:
            for key, (other, srv, db) in self._claims.items():
                if key != id(owner) and srv == server and (db is None or database is None or db == database):
                    return other
            self._claims[id(owner)] = (target, server, database)
            return None

    def release(self, owner: object) -> None:
        with self._lock:
            self._claims.pop(id(owner), None)


class Monitor:
    """One server's poll loop: read, group, evaluate, enforce, publish; never raises for a database problem."""

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
        # The target's poll counters exist from the start, at 0: rate() and increase() (the Poll errors panel,
        # PgparentPollsFailing) then count its first failure instead of seeing a series born at 1.
        self.counters.polls.labels(name)
        self.counters.poll_errors.labels(name)
        self.force_dry_run = force_dry_run
        self.dry_run = dry_run
        self.labels = dict(labels or {})
        self.shard = shard
        self._retry_lock = False
        """Set when the shard's share grew: a follower tries its target's lock before its next poll."""
        if shard is not None:
            with shard.lock:
                shard.on_grow[name] = self._share_grew
        self.servers = servers
        self._claimed: int | None = None
        """The connection generation whose sessions are claimed in `servers`."""
        self.stop_event = threading.Event()
        self.wake = threading.Event()
        self.last_tick = time.monotonic()
        self.rule_state = RuleState()
        self._backoff = Backoff()
        self._last_success = 0.0
        self._was_up: bool | None = None
        self._lock_generation: int | None = None
        self._lock_key: int | None = None
        self._member_generation: int | None = None
        self._off_reason: str | None = None
        self._thread: threading.Thread | None = None
        self._deadlines: list[tuple[float, Deadline]] = []
        """Due moments (this process's monotonic clock) from the last poll, earliest first."""
        self._clock: tuple[datetime, float] = (datetime.now(UTC), time.monotonic())
        """The last poll's server now() and this process's monotonic clock when it was read."""
        self._publish(up=False, duration=0.0)

    # -- schedule ----------------------------------------------------------------------------------------------
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

    def _share_grew(self) -> None:
        self._retry_lock = True
        self.wake.set()

    def close(self) -> None:
        if self.shard is not None:
            with self.shard.lock:
                if self.shard.on_grow.get(self.name) == self._share_grew:  # not a successor's of the same name
                    del self.shard.on_grow[self.name]
        self._release_leadership()
        if self.servers is not None:
            self.servers.release(self)
        self.db.close()

    def healthy(self) -> bool:
        """The loop ticked recently (the database may be down: that is `pgparent_up`, not liveness)."""
        return time.monotonic() - self.last_tick < 3 * self.config.interval + 30

    def loop(self) -> None:
        """Fixed rate: next_run += interval, sleep until then (interruptible), warn when a cycle overruns."""
        next_run = time.monotonic()
        while not self.stop_event.is_set():
            self.cycle()
            self.last_tick = time.monotonic()
            interval = self.config.interval
            next_run += interval
            now = time.monotonic()
            if now > next_run:
                if self._was_up:  # while the database is down, slow reconnects are expected, not news
                    log.warning("poll_overrun", target=self.name, behind_seconds=round(now - next_run, 3),
                                interval=interval)
                next_run = now
            while not self.stop_event.is_set():
                now = time.monotonic()
                if self._deadlines and self._deadlines[0][0] <= now:
                    self._act_on_due(now)
                    continue
                if self._retry_lock:
                    self._retry_lock = False
                    if self._lock_generation is None:  # a follower: its target may be free now
                        self.cycle()
                        continue
                wake_at = min(next_run, self._deadlines[0][0]) if self._deadlines else next_run
                remaining = wake_at - now
                if remaining <= 0:
                    break
                self.wake.wait(remaining)
                self.wake.clear()

    # -- one cycle ---------------------------------------------------------------------------------------------
    def cycle(self) -> None:
        """One poll: read, group, evaluate, enforce, publish. Never raises for a database problem."""
        started = time.monotonic()
        if not self.db.connected and not self._backoff.ready(started):
            return
        config = self.config  # one config for the whole cycle, whatever a reload swaps meanwhile
        try:
            caps = self.db.connect()
            if self._claimed != self.db.generation:
                self._claim(caps)
            if self._was_up is not True:
                self._log_connected(caps)
                self._was_up = True  # so a failure from here on is logged: every database_available has its end
            leader = self._hold_leadership(caps, config)
            if self.shard is not None and not leader:
                # Another replica polls and enforces this target; this one only keeps trying the lock.
                self._succeeded(started, config, leader=False)
                return
            snapshot = self.db.snapshot(config)
            read_at = time.monotonic()  # the server's now() of the snapshot, on this process's clock (about)
            with gc_paused():
                grouped = group(snapshot, config.grouping.compiled)
                decision = evaluate(grouped, config, self.rule_state, self.force_dry_run or self.dry_run,
                                    target=self.name)
            self.rule_state = decision.state
            for f in decision.started:
                log.warning("rule_firing", target=self.name, rule=f.rule, parent=f.parent, action=f.action,
                            reasons=list(f.reasons), dry_run=f.dry_run)
            for rule, parent in decision.resolved:
                log.info("rule_resolved", target=self.name, rule=rule, parent=parent)
            if grouped.comment_missed:
                log.debug("comment_tags_missed", target=self.name, sessions=grouped.comment_missed,
                          reason="their query text was cut at track_activity_query_size before a comment at its end; "
                          "put the comment first, or raise track_activity_query_size")
            reason = self._enforcement_off_reason(caps, leader)
            if reason is None and (decision.targets or decision.deferred or decision.unreleased):
                enforce(decision, self.db, self.counters, snapshot.now, server=self.name)
            self._clock = (snapshot.now, read_at)
            self._deadlines = (
                self._clocked(schedule(grouped, config, decision.state, self.force_dry_run or self.dry_run,
                                       target=self.name), snapshot.now, read_at)
                if reason is None and config.deadlines
                else []
            )
        except DatabaseUnavailable as exc:
            self._deadlines = []
            delay = self._backoff.failed(time.monotonic())
            if self._was_up is not False:
                log.error("database_unavailable", target=self.name, error=str(exc), retry_in=round(delay, 2))
            self._was_up = False
            if self._lock_generation is not None:
                log.warning("leadership_lost", target=self.name, reason="the connection failed: the server drops "
                            "the leader lock with it")
            self._lost_leadership()
            self._failed(started, config)
            return
        except Exception:  # the loop's edge: log with traceback, count, keep running
            log.exception("poll_crashed", target=self.name)
            self._failed(started, config)
            return
        self._succeeded(started, config, leader=leader, grouped=grouped, violating=decision.violating,
                        pending=decision.pending, enforcing=reason is None)

    # -- deadlines ---------------------------------------------------------------------------------------------
    @staticmethod
    def _clocked(deadlines: list[Deadline], server_now: datetime, read_at: float) -> list[tuple[float, Deadline]]:
        """Server-clock deadlines on this process's monotonic clock (the offset read at the poll)."""
        return [(read_at + (d.at - server_now).total_seconds(), d) for d in deadlines]

    def _act_on_due(self, now: float) -> None:
        """Act on every deadline due by `now`: signal the crossing session under its strict guard and, once it is
        confirmed, the group's other sessions under theirs; a lock deadline polls early instead."""
        due = [d for at, d in self._deadlines if at <= now]
        self._deadlines = [(at, d) for at, d in self._deadlines if at > now]
        config = self.config
        for deadline in due:
            self.counters.deadline_wakeups.labels(self.name).inc()
            if deadline.poll:
                self.cycle()
                return
            assert deadline.crossing is not None
            # One firing per (rule, group): the group's later deadlines wait for the next poll's view.
            self._deadlines = [
                (at, d) for at, d in self._deadlines if (d.rule, d.parent) != (deadline.rule, deadline.parent)
            ]
            try:
                server_now = self._clock[0] + timedelta(seconds=time.monotonic() - self._clock[1])
                first = enforce(Decision.only((deadline.crossing,)), self.db, self.counters, server_now,
                                server=self.name)
                if (first.get("ok") or first.get("dry_run")) and deadline.others:
                    log.warning("rule_firing", target=self.name, rule=deadline.rule, parent=deadline.parent,
                                action=deadline.crossing.action, reasons=list(deadline.crossing.reasons),
                                dry_run=deadline.crossing.dry_run, trigger="deadline")
                    cap = max(config.limits.max_terminations_per_cycle - (1 if first.get("ok") else 0), 1)
                    enforce(Decision.only(deadline.others, cap), self.db, self.counters, server_now,
                            server=self.name)
            except DatabaseUnavailable as exc:
                log.error("database_unavailable", target=self.name, error=str(exc), during="deadline")
                self._deadlines = []
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
        self._was_up = True
        self._last_success = time.time()
        self._publish(up=True, duration=time.monotonic() - started, config=config, leader=leader, **published)

    def _failed(self, started: float, config: Config) -> None:
        self.counters.poll_errors.labels(self.name).inc()
        self.counters.polls.labels(self.name).inc()
        self._publish(up=False, duration=time.monotonic() - started, config=config)

    def _log_connected(self, caps: Capabilities) -> None:
        log.info("database_available", target=self.name, server_version=caps.server_version_num, role=caps.role,
                 can_read_all_stats=caps.can_read_all_stats, can_signal=caps.can_signal,
                 in_recovery=caps.in_recovery)
        if not caps.can_read_all_stats:
            log.warning(
                "limited_visibility",
                target=self.name,
                role=caps.role,
                reason="the role lacks pg_read_all_stats (grant pg_monitor): other roles' sessions show no state or "
                "backend_start, are counted in pgparent_hidden_sessions and are never signalled",
            )
        if caps.pooled:
            log.warning(
                "connection_pooler",
                target=self.name,
                reason="the DSN reaches PostgreSQL through a connection pooler (the connection announced a pid its "
                "statements do not run in): the leader lock is a session advisory lock, which a transaction pooler "
                "leaves on whichever server connection ran it, so this replica will not enforce; connect pgparent "
                "to PostgreSQL directly (clients may keep using the pooler)",
            )
        if not caps.can_signal:
            log.warning(
                "limited_signalling",
                target=self.name,
                role=caps.role,
                reason="the role lacks pg_signal_backend: it can signal only its own role's sessions",
            )

    # -- leadership --------------------------------------------------------------------------------------------
    def _hold_leadership(self, caps: Capabilities, config: Config) -> bool:
        """Keep (or try to take) the target's leader lock on the current connection; False on a standby server.

        Sharding: also hold the shared member lock (so replicas can be counted), take a free leader lock only within
        the fair share, and give the lock up when this replica leads more than its share.
        """
        election = config.leader_election
        if not election.enabled:
            return True
        if caps.in_recovery or caps.pooled:
            return False
        shard = self.shard
        leaders = 0  # sessions holding the leader lock, read when sharding
        if shard is not None:
            if self._member_generation != self.db.generation:
                self.db.try_lock(member_key(election.lock_key), shared=True)
                self._member_generation = self.db.generation
            replicas, leaders = self.db.lock_holders(member_key(election.lock_key), election.lock_key)
            shard.seen(self.name, replicas, time.monotonic())
        held = self._lock_generation == self.db.generation and self._lock_key == election.lock_key
        if not held and self._lock_generation is not None:
            log.warning("leadership_lost", target=self.name, reason="the connection that held the leader lock ended")
            self._lost_leadership()
        if held and shard is not None and shard.give_up(self.name):
            self._release_leadership()
            log.info("leadership_released", target=self.name, reason="more replicas share the targets now",
                     share=shard.share())
            return False
        # A target another replica leads is not worth a place in the share, even for the moment of a try.
        if not held and leaders == 0 and (shard is None or shard.reserve(self.name)):
            taken = False
            try:
                taken = self.db.try_lock(election.lock_key)
            finally:  # the lock not had, or the connection lost trying: the place in the share goes back
                if shard is not None and not taken:
                    shard.unreserve(self.name)
            if taken:
                self._lock_generation, self._lock_key = self.db.generation, election.lock_key
                log.info("leadership_acquired", target=self.name, lock_key=election.lock_key)
                held = True
        return held

    def _lost_leadership(self) -> None:
        self._lock_generation = None
        if self.shard is not None:
            self.shard.unreserve(self.name)

    def _release_leadership(self) -> None:
        if self._lock_generation is not None and self._lock_generation == self.db.generation and self._lock_key:
            with contextlib.suppress(DatabaseUnavailable):
                self.db.unlock(self._lock_key)
        self._lost_leadership()

    def _enforcement_off_reason(self, caps: Capabilities, leader: bool) -> str | None:
        """Why this instance may not signal now (logged once per change), or None when it may."""
        if caps.in_recovery:
            reason: str | None = "the server is in recovery (a standby): nothing is signalled there"
        elif caps.pooled and not leader:
            reason = "the DSN reaches PostgreSQL through a connection pooler: no leader lock can be held there"
        elif not leader:
            reason = "another replica holds the leader lock and enforces; this one only exports metrics"
        else:
            reason = None
        if reason != self._off_reason:
            if reason is None:
                log.info("enforcement_on", target=self.name)
            else:
                log.warning("enforcement_off", target=self.name, reason=reason)
            self._off_reason = reason
        return reason

    # -- publishing --------------------------------------------------------------------------------------------
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


def member_key(lock_key: int) -> int:
    """The shared advisory lock every sharding replica holds on each target: the leader key with its last bit flipped
    (so replicas with different leader keys count apart)."""
    return lock_key ^ 1
