"""Shard mode on the fleet: replicas of `pgparent run --shard` started together on one config, how they settle, and
how soon every target is led again once the replica leading most is killed; who leads what is read three ways (the
replicas' logs, their /metrics, the servers' pg_locks). `measure` returns the scenario's figures (results.json's
`fleet.shard`)."""

from __future__ import annotations

import json
import math
import os
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.fleet import Fleet, failure_reasons
from bench.harness import Daemon, OthersCpu, parse_series, port_owners
from exporter.core.settings import LOCK_KEY
from exporter.run.leadership import member_key

LEADERSHIP_ENDS = ("leadership_released", "leadership_lost", "database_unavailable", "database_available")
"""Log events after which a replica no longer holds a target's leader lock: a failed poll closes the connection,
and a new connection holds nothing yet. (A poll that fails before the first success after an outage is not logged,
so until the next reconnect the log can still show a leadership that ended.)"""

Assignment = dict[str, list[int]]
"""Per target, the replicas (by index) that lead it."""


class Replica(Daemon):
    """A shard-mode daemon whose log is followed for the targets it leads."""

    def __init__(self, tmp: Path, config_text: str) -> None:
        super().__init__(tmp, config_text, "--shard")
        self.leading: set[str] = set()
        self.changes: list[tuple[float, str, str]] = []
        """Leadership events read so far from the log: (Unix time, event, target)."""
        self.release_shares: dict[int, int] = {}
        """How many `leadership_released` events gave each share (the share follows the replicas it counted)."""
        self._offset = 0

    def follow(self) -> set[str]:
        """The targets this replica leads by its own log (leadership_acquired, until one of LEADERSHIP_ENDS), read
        on from where the last call stopped: cheap, and exact to the log's timestamps, where /metrics re-renders
        every target's series on each read."""
        with self.log_path.open("rb") as f:
            f.seek(self._offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        self._offset += end
        for line in data[:end].splitlines():
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            name, target = event.get("event"), event.get("target")
            if target and (name == "leadership_acquired" or name in LEADERSHIP_ENDS):
                self.changes.append((datetime.fromisoformat(event["timestamp"]).timestamp(), name, target))
                if name == "leadership_acquired":
                    self.leading.add(target)
                else:
                    self.leading.discard(target)
                if name == "leadership_released" and isinstance(event.get("share"), int):
                    self.release_shares[event["share"]] = self.release_shares.get(event["share"], 0) + 1
        return self.leading

    def count(self, event: str) -> int:
        return sum(1 for _, name, _ in self.changes if name == event)


def _by_metrics(replicas: list[Replica], *, together: bool = True) -> tuple[Assignment, float]:
    """Per target, the replicas whose /metrics say pgparent_leader 1, all read at once (or, not `together`, one
    after another: once leadership holds still, without rendering every replica's series at the same moment); and
    the seconds the slowest read took."""
    bodies: list[tuple[float, str]] = [(0.0, "")] * len(replicas)

    def read(i: int) -> None:
        bodies[i] = replicas[i].text()

    if not together:
        for i in range(len(replicas)):
            read(i)
    threads = [threading.Thread(target=read, args=(i,)) for i in range(len(replicas)) if together]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out: Assignment = {}
    for i, (_, body) in enumerate(bodies):
        for target, value in parse_series(body, "pgparent_leader").items():
            out.setdefault(target, [])
            if value == 1:
                out[target].append(i)
    return out, max(took for took, _ in bodies)


def _by_logs(replicas: list[Replica]) -> Assignment:
    out: Assignment = {}
    for i, d in enumerate(replicas):
        for target in d.follow():
            out.setdefault(target, []).append(i)
    return out


def _whole(assignment: Assignment, names: list[str]) -> bool:
    return all(len(assignment.get(n, [])) == 1 for n in names)


def _spread(assignment: Assignment, replicas: int) -> list[int]:
    return sorted((sum(1 for v in assignment.values() if v == [i]) for i in range(replicas)), reverse=True)


def _settle(replicas: list[Replica], names: list[str], since: float, hold: float, timeout: float) -> float | None:
    """Seconds from `since` (Unix time) to the last leadership change in the replicas' logs, once every target has
    had exactly one leader for `hold` seconds; None if that did not come within `timeout`."""
    last: Assignment | None = None
    quiet_since = time.monotonic()
    while time.time() - since < timeout:
        now = _by_logs(replicas)
        if now != last:
            last, quiet_since = now, time.monotonic()
        if _whole(now, names) and time.monotonic() - quiet_since >= hold:
            changes = [when for d in replicas for when, _, _ in d.changes]
            return max(0.0, max(changes, default=since) - since)
        time.sleep(0.1)
    return None


def _server_locks(fleet: Fleet) -> dict[str, tuple[int, int]]:
    """Per target database, the server's truth: how many sessions hold pgparent's exclusive leader lock there, and
    how many hold the shared member lock (one per live replica)."""
    leader, member = LOCK_KEY, member_key(LOCK_KEY)
    out = dict.fromkeys(fleet.names, (0, 0))
    for cluster in fleet.clusters:
        rows = fleet.admin(cluster).execute(
            "SELECT d.datname, count(*) FILTER (WHERE l.mode = 'ExclusiveLock' AND l.objid::bigint = %(leader)s),"
            " count(*) FILTER (WHERE l.mode = 'ShareLock' AND l.objid::bigint = %(member)s)"
            "  FROM pg_locks l JOIN pg_database d ON d.oid = l.database"
            " WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 AND l.classid::bigint = %(high)s"
            " GROUP BY 1",
            {"leader": leader & 0xFFFFFFFF, "member": member & 0xFFFFFFFF, "high": (leader >> 32) & 0xFFFFFFFF},
        ).fetchall()
        out.update({name: (int(n), int(m)) for name, n, m in rows if name in out})
    return out


class LockCount(threading.Thread):
    """The server's count of leader locks each replica holds, sampled every 100 ms (the holders' pids from pg_locks,
    each mapped once to its client_port in pg_stat_activity and so to the replica owning that socket); keeps the
    most each held at once. pg_locks alone is cheap; pg_stat_activity lists every backend, so it is read only for
    pids not seen before."""

    QUERY = ("SELECT l.pid FROM pg_catalog.pg_locks l WHERE l.locktype = 'advisory' AND l.granted "
             "AND l.mode = 'ExclusiveLock' AND l.objsubid = 1 AND l.classid::bigint = %s AND l.objid::bigint = %s")
    PORTS = "SELECT pid, client_port FROM pg_catalog.pg_stat_activity WHERE pid = ANY(%s)"

    def __init__(self, fleet: Fleet, replicas: list[Replica]) -> None:
        super().__init__(daemon=True, name="lock-count")
        self.pids = [d.pid for d in replicas]
        self.most = [0] * len(replicas)
        self._done = threading.Event()
        self._conns = fleet.watch_connections()

    def run(self) -> None:
        key = [(LOCK_KEY >> 32) & 0xFFFFFFFF, LOCK_KEY & 0xFFFFFFFF]
        owner: list[dict[int, int | None]] = [{} for _ in self._conns]  # per server: backend pid -> replica index
        while not self._done.wait(0.1):
            held = [0] * len(self.pids)
            for conn, known in zip(self._conns, owner, strict=True):
                pids = [pid for (pid,) in conn.execute(self.QUERY, key).fetchall()]
                new = [pid for pid in pids if pid not in known]
                if new:
                    ports = port_owners(self.pids)
                    for pid, port in conn.execute(self.PORTS, [new]).fetchall():
                        known[pid] = ports.get(port)
                for pid in pids:
                    if (i := known.get(pid)) is not None:
                        held[i] += 1
            self.most = [max(m, h) for m, h in zip(self.most, held, strict=True)]

    def stop(self) -> list[int]:
        self._done.set()
        self.join(5)
        for conn in self._conns:
            conn.close()
        return self.most


def _led_again_after(fleet: Fleet, survivors: list[Replica], killed: float, timeout: float,
                     poll_metrics: bool) -> tuple[float | None, float | None, float | None]:
    """Seconds from the kill until every target has exactly one leader among the survivors: by their logs, by the
    servers' locks (one leader lock per target database, the dead replica's member locks gone), both checked every
    100 ms, and, with `poll_metrics`, by their /metrics read in a loop meanwhile on a thread of its own."""
    names = fleet.names
    by_metrics: list[float] = []

    def watch_metrics() -> None:
        while time.time() - killed < timeout:
            if _whole(_by_metrics(survivors)[0], names):
                by_metrics.append(time.time() - killed)
                return
            time.sleep(0.1)

    metrics_thread = threading.Thread(target=watch_metrics, daemon=True)
    if poll_metrics:
        metrics_thread.start()
    by_logs: float | None = None
    by_locks: float | None = None
    while time.time() - killed < timeout and (by_logs is None or by_locks is None):
        if by_locks is None and all(locks == (1, len(survivors)) for locks in _server_locks(fleet).values()):
            by_locks = time.time() - killed
        if by_logs is None and _whole(_by_logs(survivors), names):
            by_logs = max(when for d in survivors for when, _, _ in d.changes) - killed
        time.sleep(0.1)
    if poll_metrics:
        metrics_thread.join(timeout)
    return (by_metrics[0] if by_metrics else None), by_logs, by_locks


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def measure(fleet: Fleet, tmp: Path, replicas: int, *, hold: float, steady: float, timeout: float,
            poll_metrics: bool) -> dict[str, Any]:
    """`replicas` processes of `pgparent run --shard` on the same config, started together.

    Settling: the last leadership change (by the replicas' logs) before `hold` seconds of exactly one leader per
    target; then `steady` seconds more, counting changes (there should be none); then the server's advisory locks,
    and the spread from each replica's pgparent_leader{target}, read one replica after another (three renders at
    once on a small machine starved the replicas' polls past their deadline). Then SIGKILL of the replica leading
    most, and how long until every target has exactly one leader among the survivors (`_led_again_after`; the
    /metrics loop reads every 100 ms at most: a read re-renders every target's series, which takes seconds when each
    target sees thousands of sessions).
    """
    names = fleet.names
    config = fleet.config()
    started, elsewhere = time.time(), OthersCpu(fleet.clusters)
    daemons = [Replica(tmp, config) for _ in range(replicas)]
    try:
        for d in daemons:
            d.serving()
        settled = _settle(daemons, names, started, hold, timeout)
        before = sum(len(d.changes) for d in daemons)
        time.sleep(steady)
        _by_logs(daemons)
        steady_changes = sum(len(d.changes) for d in daemons) - before
        server = _server_locks(fleet)
        reported, read_s = _by_metrics(daemons, together=False)
        released = sum(d.count("leadership_released") for d in daemons)
        spread = [sum(1 for v in reported.values() if v == [i]) for i in range(replicas)]
        victim = max(range(replicas), key=lambda i: spread[i])
        survivors = [d for i, d in enumerate(daemons) if i != victim]
        for d in survivors:
            d.follow()
        acquired = sum(d.count("leadership_acquired") for d in survivors)
        shares_before = [dict(d.release_shares) for d in survivors]
        locks = LockCount(fleet, survivors)
        locks.start()
        killed = time.time()
        daemons[victim].kill()
        by_metrics, by_logs, by_locks = _led_again_after(fleet, survivors, killed, timeout, poll_metrics)
        settled_after = _settle(survivors, names, killed, hold, timeout)
        acquired_after = sum(d.count("leadership_acquired") for d in survivors) - acquired
        most_locks = locks.stop()
        released_after: dict[str, int] = {}
        for d, before_kill in zip(survivors, shares_before, strict=True):
            for share, n in d.release_shares.items():
                if n > before_kill.get(share, 0):
                    released_after[str(share)] = released_after.get(str(share), 0) + n - before_kill.get(share, 0)
        reported_after, _ = _by_metrics(survivors)
        server_after = _server_locks(fleet)
        others_pct, load = elsewhere.pct_of_core(), os.getloadavg()[0]
        reasons: dict[str, int] = {}
        for d in daemons:
            for what, n in failure_reasons(d, started, time.time()).items():
                reasons[what] = reasons.get(what, 0) + n
        settled_at = started + (settled if settled is not None else timeout)
        while_settling = sum(n for d in daemons for n in failure_reasons(d, started, settled_at).values())
    finally:
        for d in daemons:
            d.stop()
    return {
        "replicas": replicas,
        "others_cpu_pct_of_core": others_pct,
        "load_average": round(load, 2),
        "fair_share": math.ceil(len(names) / replicas),
        "settled_s": _rounded(settled),
        "spread": sorted(spread, reverse=True),
        "targets_with_two_leaders": sum(1 for v in reported.values() if len(v) > 1),
        "targets_without_leader": sum(1 for n in names if not reported.get(n)),
        "changes_while_settled": steady_changes,
        "hold_s": hold,
        "steady_s": steady,
        "leadership_released_while_settling": released,
        "metrics_read_s": round(read_s, 2),
        "server_lock_holders_ok": all(locks == (1, replicas) for locks in server.values()),
        "led_again_after_kill_s": _rounded(by_metrics),
        "led_again_by_logs_s": _rounded(by_logs),
        "locks_held_again_after_kill_s": _rounded(by_locks),
        "settled_after_kill_s": _rounded(settled_after),
        "acquired_after_kill": acquired_after,
        "released_after_kill_by_share": dict(sorted(released_after.items(), key=lambda kv: int(kv[0]))),
        "most_locks_after_kill": max(most_locks),
        "fair_share_after_kill": math.ceil(len(names) / (replicas - 1)),
        "spread_after_kill": _spread(reported_after, len(survivors)),
        "server_lock_holders_ok_after_kill": all(locks == (1, replicas - 1) for locks in server_after.values()),
        "failure_reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
        "failures_while_settling": while_settling,
    }
