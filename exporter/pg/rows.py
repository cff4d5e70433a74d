"""The poll's rows as `Session` records, built as psycopg loads them: the query excerpt decoded, the comment values
unescaped, and values many rows share kept once per poll."""

from __future__ import annotations

import codecs
import re
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from exporter.core.model import BackendStats, Session

QUERY_BYTES = 256
"""How much of each query text a poll reads: enough for an audit line, bounded whatever clients send."""

_ESCAPE = re.compile(rb"\\(\\|[0-7]{3})")


class SessionRows:
    """The poll's row factory: each row becomes a Session as psycopg loads it (the columns are Session's fields in
    order, then the server's now() and its count of connections), with the query excerpt decoded and the comment
    values unescaped.

    Values that many rows repeat (backend type, database, user, address, state, wait type, query text) are kept
    once per poll: thousands of sessions then hold a few strings instead of one each.
    """

    def __init__(self, backend_stats: bool = False) -> None:
        self.now: datetime | None = None
        """The server's now() at the statement, from the rows read."""
        self.connections: int | None = None
        """The client backends counting against max_connections at the statement, from the rows read."""
        self.backend_stats: dict[int, BackendStats] | None = {} if backend_stats else None
        """With `backend_stats`, the rows' last column (PostgreSQL 18's counters of the backend) by pid, where the
        poll read them."""
        self._seen: dict[object, object] = {}
        self._texts: dict[bytes | None, str | None] = {None: None}

    def factory(self, cursor: Any) -> Callable[[Sequence[Any]], Session]:
        return self.row if self.backend_stats is None else self.row_with_stats

    def row_with_stats(self, values: Sequence[Any]) -> Session:
        """A row with PostgreSQL 18's counters in its last column (NULL for most rows: not read)."""
        *fields, stats = values
        if stats is not None and self.backend_stats is not None:
            wal, read, written = stats
            self.backend_stats[fields[0]] = (wal, read, written)
        return self.row(fields)

    def row(self, values: Sequence[Any]) -> Session:
        pid, leader, btype, db, user, app, addr, state, wait, started, xact, qstart, changed, query, query_id, \
            comments, cut, listening, superuser, self.now, self.connections = values
        once = self._seen.setdefault
        texts = self._texts
        return Session.build((
            pid, leader, once(btype, btype), once(db, db), once(user, user), app, once(addr, addr), once(state, state),
            once(wait, wait), started, xact, qstart, changed,
            texts[query] if query in texts else texts.setdefault(query, _text(query)),
            query_id, tuple(map(_unescape, comments)) if comments is not None else (), cut, listening, superuser,
        ))


def _text(data: bytes | None) -> str | None:
    """Query text bytes as str: what is not UTF-8 becomes U+FFFD (a session of a database in another encoding may
    leave such bytes), and a character cut at the end by the byte bound is dropped."""
    if data is None:
        return None
    try:
        return data.decode()  # nearly always: valid and whole, decoded alike either way
    except UnicodeDecodeError:
        return codecs.getincrementaldecoder("utf-8")("replace").decode(data, final=len(data) < QUERY_BYTES)


def _unescape(value: str | None) -> bytes | None:
    """A value the poll sent in encode(..., 'escape') form (\\ooo for bytes >= 0x80, \\\\ for a backslash) back
    as the bytes the session wrote."""
    if value is None:
        return None
    return _ESCAPE.sub(
        lambda m: b"\\" if m.group(1) == b"\\" else bytes([int(m.group(1), 8)]), value.encode("latin-1")
    )
