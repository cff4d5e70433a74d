"""Query comments are client-controlled: fuzz the server-side comment reader through real sessions.

Two properties, each example run in real sessions whose query text the poll reads from pg_stat_activity:
- hostile text (nested and unterminated comments, quotes, backslashes, `%` sequences, bytes that are not UTF-8 from
  a SQL_ASCII database, texts longer than track_activity_query_size): the poll succeeds, and what it reads for each
  key is exactly what the specification below says (a reference reader in Python, written from the comments of
  exporter/queries/activity_comments.sql), bounded in length;
- any value, encoded as sqlcommenter or marginalia write it, among other keys, at the start or the end of a query,
  is read back as itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from urllib.parse import quote

import psycopg
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from psycopg import sql
from psycopg.conninfo import make_conninfo

from exporter.core.assess import assess
from exporter.core.settings import Config, parse_config
from exporter.core.tags import MAX_RAW_BYTES, comment_value
from exporter.pg.database import COMMENT_BYTES, Database
from harness.waiting import eventually
from tests.support.roles import unique_name
from tests.support.servers import Server
from tests.unit.factory import printable

# per_major: the comments are read by SQL on the server
pytestmark = [pytest.mark.integration, pytest.mark.per_major]

KEYS = ("parent", "job.id")
POOL = 4
CONFIG: Config = parse_config({"grouping": {"sources": [{"comment": k} for k in KEYS]}}, "fuzz")

# --- the reference reader: the specification of activity_comments.sql, in Python ------------------------------

_WS = r"[ \t\n\r\f\v]"  # [[:space:]] in the C locale
_QVAL = r"'(?:[^',\\]|\\[0-7]{3}|\\\\(?:[^,\\]|\\\\|\\[0-7]{3}))*'"
_PAIR = rf"{_WS}*[^=:,' \t\n\r\f\v\\]+(?:={_QVAL}|:[^,]*){_WS}*"
_LIST = re.compile(rf"{_PAIR}(?:,{_PAIR})*")
_HEAD = re.compile(rf"{_WS}*/\*([^*]*(?:\*+[^*/][^*]*)*)\*+/")
_TAIL = re.compile(r"/\*([^*]*(?:\*+[^*/][^*]*)*)\*+/[ \t\n\r\f\v;]*\Z")


def _escape(data: bytes) -> str:
    """encode(data, 'escape'): bytes >= 0x80 (and NUL) as \\ooo, a backslash doubled."""
    return "".join(f"\\{b:03o}" if b >= 0x80 or b == 0 else "\\\\" if b == 0x5C else chr(b) for b in data)


def _unescape(text: str) -> bytes:
    return re.sub(rb"\\(\\|[0-7]{3})", lambda m: b"\\" if m[1] == b"\\" else bytes([int(m[1], 8)]),
                  text.encode("latin-1"))


def reference(stored: bytes, cut_bytes: int) -> tuple[bytes | None, ...]:
    """What the poll must read for each of KEYS from a live session whose pg_stat_activity.query is `stored`."""
    if b"*/" not in stored:
        return ()
    cut = len(stored) >= cut_bytes
    bodies = []
    head = _HEAD.match(_escape(stored[:COMMENT_BYTES]))
    bodies.append(head.group(1) if head else None)
    tail = None if cut else _TAIL.search(_escape(stored[-COMMENT_BYTES:]))
    bodies.append(tail.group(1) if tail else None)
    valid = [b if b is not None and "/*" not in b and _LIST.fullmatch(b) else None for b in bodies]
    if all(b is None for b in valid):
        return ()
    out: list[bytes | None] = []
    for key in KEYS:
        pattern = re.compile(rf"(?:^|,){_WS}*{re.escape(key)}(={_QVAL}|:[^,]*)")
        found = None
        for body in valid:
            if body is not None and (m := pattern.search(body)):
                found = m.group(1)
                break
        out.append(_unescape(found[: 4 * (MAX_RAW_BYTES + 1)]) if found is not None else None)
    return tuple(out)


# --- fixtures ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ascii_pool(pg: Server) -> Iterator[list[psycopg.Connection[tuple[object, ...]]]]:
    """Sessions of a SQL_ASCII database, where any bytes but NUL are a valid query text."""
    database = unique_name("fuzz_ascii")
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {} ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
                     .format(sql.Identifier(database)))
    dsn = make_conninfo(pg.dsn_for(database), client_encoding="SQL_ASCII")
    conns = [psycopg.connect(dsn, autocommit=True) for _ in range(POOL)]
    try:
        yield conns
    finally:
        for c in conns:
            c.close()
        with psycopg.connect(pg.dsn, autocommit=True) as conn:
            eventually(lambda: conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", [database])
                       .fetchone() == (0,), what="the fuzz sessions gone")
            conn.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(database)))


@pytest.fixture(scope="module")
def poller(pg: Server) -> Iterator[Database]:
    db = Database(pg.dsn)
    try:
        db.connect()
        yield db
    finally:
        db.close()


def _run(conns: list[psycopg.Connection[tuple[object, ...]]], texts: list[bytes]) -> list[int]:
    """Leave each text as the current query of a session idle in a transaction (aborted if it failed)."""
    pids = []
    for conn, text in zip(conns, texts, strict=False):
        pg = conn.pgconn
        for statement in (b"ROLLBACK", b"BEGIN", text):
            pg.send_query(statement)
            while pg.get_result() is not None:
                pass
        pids.append(pg.backend_pid)
    return pids


# --- hostile text ------------------------------------------------------------------------------------------------

TOKENS = ["/*", "*/", "*", "/", "'", "\\", "\\'", "%", "%%", "%3A", "%C3", "%zz", ",", "=", ":", " ", "\n", "\t",
          ";", "parent", "job.id", "job", "x", "9", "é", "ü"]
RAW = [b"\xff", b"\xc3", b"\xa9", b"\xe2\x82", b"\x80"]
hostile_part = st.one_of(
    st.sampled_from(TOKENS).map(str.encode),
    st.sampled_from(RAW),
    st.text(alphabet="ab:=,' ", max_size=4).map(str.encode),
    st.integers(1, 700).map(lambda n: b"y" * n),  # a filler that pushes comments out of the windows, or cuts text
)
noise = st.lists(hostile_part, max_size=12).map(b"".join)
clean_value = st.text(alphabet="abXY09:-_.~ é%3A\\", min_size=1, max_size=8).map(str.encode)
hostile_value = st.lists(
    st.one_of(st.sampled_from(TOKENS).map(str.encode), st.sampled_from(RAW),
              st.text(alphabet="ab09:-", max_size=4).map(str.encode)),
    max_size=6,
).map(b"".join)
key = st.sampled_from([b"parent", b"job.id", b"other", b" parent"])
hostile_key = st.sampled_from([b"jobxid", b"parent ", b"p\\arent", b"par'ent", b"", b"\xc3\xa9"])
good_pair = st.one_of(
    st.builds(lambda k, v: k + b"='" + v + b"'", key, clean_value),  # sqlcommenter-like
    st.builds(lambda k, v: k + b":" + v, key, clean_value),  # marginalia-like
)
hostile_pair = st.one_of(
    good_pair,
    good_pair,
    good_pair,
    st.builds(lambda k, v: k + b"='" + v + b"'", key | hostile_key, hostile_value),
    st.builds(lambda k, v: k + b":" + v, key | hostile_key, hostile_value),
    hostile_value,
)
hostile_comment = st.builds(
    lambda pairs, close: b"/*" + b",".join(pairs) + close,
    st.lists(hostile_pair, min_size=1, max_size=5),
    st.sampled_from([b"*/", b"*/", b"*/;", b" */ \n", b"**/", b"", b"*/ /*"]),
)
hostile_text = st.one_of(
    st.builds(
        lambda lead, head, middle, tail, junk: lead + head + b" SELECT 1 " + middle + tail + junk,
        st.sampled_from([b"", b" ", b"\n\t"]),
        hostile_comment | st.just(b""),
        noise,
        hostile_comment | st.just(b""),
        st.sampled_from([b"", b"", b"", b" ", b";", b"x", b"'"]),
    ),
    st.lists(hostile_part, max_size=24).map(lambda parts: b"SELECT 1 " + b"".join(parts)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(texts=st.lists(hostile_text, min_size=1, max_size=POOL))
def test_hostile_comments_read_exactly_as_specified(
    ascii_pool: list[psycopg.Connection[tuple[object, ...]]], poller: Database, texts: list[bytes]
) -> None:
    """Whatever the text, the poll succeeds and reads, for each key, exactly what the specification says."""
    pids = _run(ascii_pool, texts)
    snapshot = poller.snapshot(CONFIG.poll)
    assert poller.capabilities is not None
    cut_bytes = poller.capabilities.track_activity_query_size - 4
    by_pid = {s.pid: s for s in snapshot.sessions}
    with psycopg.connect(poller.dsn, autocommit=True) as conn:
        rows = conn.execute("SELECT pid, textsend(query) FROM pg_stat_activity WHERE pid = ANY(%s)", [pids])
        stored: dict[int, bytes] = {int(pid): bytes(text) for pid, text in rows.fetchall()}
    for pid in pids:
        session = by_pid[pid]
        assert session.state is not None and session.state.startswith("idle in transaction")
        expected = reference(stored[pid], cut_bytes)
        assert (session.comments if any(session.comments) else ()) == (expected if any(expected) else ()), stored[pid]
        assert all(len(raw) <= 4 * (MAX_RAW_BYTES + 1) for raw in session.comments if raw is not None)
    assess(snapshot, CONFIG)  # and the pipeline takes whatever was read


# --- round trip --------------------------------------------------------------------------------------------------

values = st.text(printable, min_size=1, max_size=40)
others = st.lists(st.tuples(st.sampled_from(["controller", "route", "traceparent", "db_driver"]),
                            st.text(printable, min_size=1, max_size=12)), max_size=3)


def _sqlcommenter(key: str, value: str) -> str:
    return f"{key}='" + quote(value, safe="").replace("'", "\\'") + "'"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=values, before=others, after=others, marginalia=st.booleans(), first=st.booleans(),
       filler=st.integers(0, 300))
def test_encoded_values_read_back_as_themselves(
    pg: Server, poller: Database, value: str, before: list[tuple[str, str]], after: list[tuple[str, str]],
    marginalia: bool, first: bool, filler: int,
) -> None:
    """A value as sqlcommenter (URL-encoded, quoted) or marginalia (bare, where it has no comma and no edge space)
    writes it, among other pairs, in a comment at the start or the end of the query, is read back exactly."""
    bare = marginalia and not set(value) & set(",*/") and value == value.strip()
    pairs = [_sqlcommenter(k, v) for k, v in before]
    pairs.append(f"parent:{value}" if bare else _sqlcommenter("parent", value))
    pairs += [_sqlcommenter(k, v) for k, v in after]
    comment = "/*" + ",".join(pairs) + "*/"
    body = f"SELECT 1, '{'z' * filler}'"
    text = f"{comment} {body}" if first else f"{body} {comment}"
    assume(len(text.encode()) < 1000)  # within track_activity_query_size (the default, 1024 bytes) and the windows
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute("BEGIN")
        conn.execute(text.encode())
        pid = conn.info.backend_pid
        session = next(s for s in poller.snapshot(CONFIG.poll).sessions if s.pid == pid)
        conn.execute("ROLLBACK")
    assert comment_value(session.comments[0] if session.comments else None) == value, text
