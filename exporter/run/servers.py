"""Which sessions each target of one process reads, so that no two targets read (and enforce on) the same sessions."""

from __future__ import annotations

import threading


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
