"""Who enforces a target: its leader lock, and in shard mode the replicas' member locks and this replica's share.

Exactly one replica enforces on a server: the holder of a session-level advisory lock on it, which the server drops
with the connection however that ends. In shard mode (`leader_election.shard`) every replica also holds a shared
"member" lock on each target it reaches, so the member lock's holders count the live replicas, and a replica leads at
most its fair share, ceil(targets / replicas), of the targets (`Shard`).

What a target's connection holds is one state (`Hold`), tied to the connection that took it: a new connection holds
nothing until it takes its locks again.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from exporter.core.settings import Config
from exporter.errors import DatabaseUnavailable
from exporter.pg.database import Capabilities, Database


def member_key(lock_key: int) -> int:
    """The shared advisory lock every sharding replica holds on each target: the leader key with its last bit flipped
    (so replicas with different leader keys count apart)."""
    return lock_key ^ 1


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


@dataclass(frozen=True, slots=True)
class Hold:
    """What one connection of a target holds: its shard member lock, and the leader lock under which key."""

    generation: int
    """The connection (`Database.generation`) that holds them: the server drops both with it."""
    member: bool = False
    leader_key: int | None = None


class Leadership:
    """One target's leader lock (and shard membership) on its connection, and whether it may enforce now."""

    def __init__(self, target: str, db: Database, shard: Shard | None, log: Any) -> None:
        self.target = target
        self.db = db
        self.shard = shard
        self.log = log
        self.hold: Hold | None = None
        self.share_grew = threading.Event()
        """Set when the shard's share grew: a follower tries its target's lock before its next poll."""
        self._wake: Callable[[], None] = lambda: None
        self._off_reason: str | None = None
        if shard is not None:
            with shard.lock:
                shard.on_grow[target] = self._grew

    def on_share_grew(self, wake: Callable[[], None]) -> None:
        """Call `wake` (the target's loop) when the share grows."""
        self._wake = wake

    def _grew(self) -> None:
        self.share_grew.set()
        self._wake()

    @property
    def leading(self) -> bool:
        """Whether this replica took the target's leader lock (on its current connection, or one just lost)."""
        return self.hold is not None and self.hold.leader_key is not None

    def _current(self) -> Hold:
        """What the current connection holds (nothing, if it is not the one that took the locks)."""
        if self.hold is not None and self.hold.generation == self.db.generation:
            return self.hold
        return Hold(self.db.generation)

    def keep(self, caps: Capabilities, config: Config) -> bool:
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
        hold = self._current()
        held = hold.leader_key == election.lock_key
        if not held and self.leading:
            self.log.warning("leadership_lost", reason="the connection that held the leader lock ended")
            self.lost()
            hold = self._current()
        leaders = 0  # sessions holding the leader lock, read when sharding
        if shard is not None:
            if not hold.member:
                self.db.try_lock(member_key(election.lock_key), shared=True)
                hold = self.hold = replace(hold, member=True)
            replicas, leaders = self.db.lock_holders(member_key(election.lock_key), election.lock_key)
            shard.seen(self.target, replicas, time.monotonic())
        if held and shard is not None and shard.give_up(self.target):
            self.release()
            self.log.info("leadership_released", reason="more replicas share the targets now", share=shard.share())
            return False
        # A target another replica leads is not worth a place in the share, even for the moment of a try.
        if not held and leaders == 0 and (shard is None or shard.reserve(self.target)):
            taken = False
            try:
                taken = self.db.try_lock(election.lock_key)
            finally:  # the lock not had, or the connection lost trying: the place in the share goes back
                if shard is not None and not taken:
                    shard.unreserve(self.target)
            if taken:
                self.hold = replace(hold, leader_key=election.lock_key)
                self.log.info("leadership_acquired", lock_key=election.lock_key)
                held = True
        return held

    def connection_failed(self) -> None:
        """The connection failed: the server drops the leader lock (and the member lock) with it."""
        if self.leading:
            self.log.warning(
                "leadership_lost", reason="the connection failed: the server drops the leader lock with it"
            )
        self.lost()

    def lost(self) -> None:
        """The leader lock is gone (with its connection, or let go): this replica no longer leads, nor counts in its
        share."""
        if self.hold is not None:
            self.hold = replace(self.hold, leader_key=None)
        if self.shard is not None:
            self.shard.unreserve(self.target)

    def release(self) -> None:
        """Let the leader lock go (a smaller share, a removed target, a shutdown), if the connection still holds it."""
        hold = self.hold
        if hold is not None and hold.leader_key is not None and hold.generation == self.db.generation:
            with contextlib.suppress(DatabaseUnavailable):
                self.db.unlock(hold.leader_key)
        self.lost()

    def close(self) -> None:
        """The target is retired: release the lock and leave the shard's wake-ups."""
        if self.shard is not None:
            with self.shard.lock:
                if self.shard.on_grow.get(self.target) == self._grew:  # not a successor's of the same name
                    del self.shard.on_grow[self.target]
        self.release()

    def enforcement_off(self, caps: Capabilities, leader: bool) -> str | None:
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
                self.log.info("enforcement_on")
            else:
                self.log.warning("enforcement_off", reason=reason)
            self._off_reason = reason
        return reason
