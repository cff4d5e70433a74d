"""Pure: where a session's parent tag comes from (application_name, comment, user, database), compiled once per
config. No I/O, no clock.

A source reads one thing of a session: its `application_name`, `user` or `database` through a regex with a named
group `parent`, or the value of one key in a SQL comment of its current query (`comment`). `Sources` tries them in
order; the first that yields a parent wins.

A comment describes a query, not a session: it is read only while the session runs that query or sits in the
transaction around it (states active, fastpath function call, idle in transaction, idle in transaction (aborted)).
An idle session's last comment is stale, so an idle session is never tagged by a comment (a later source may still
tag it). The poll finds the comments and a key's raw value on the server (queries/activity_comments.sql); this
module reads the value: sqlcommenter's quoted form, URL-decoded, or marginalia's bare form, and refuses anything it
cannot read exactly (the session is then not tagged by that comment, never tagged wrongly).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import unquote_to_bytes

from exporter.core.model import ACTIVE_STATES, Session, TagSource

SourceKind = Literal["application_name", "comment", "user", "database"]
KINDS: tuple[SourceKind, ...] = ("application_name", "comment", "user", "database")
"""Every kind of source, in the order the docs list them."""

COMMENT_KEY = re.compile(r"[A-Za-z0-9_.-]{1,64}")
"""What a comment key may be: sqlcommenter's and marginalia's keys (`parent`, `route`, `controller`, `traceparent`,
...) are plain words, and a plain word needs no quoting anywhere between the config file and the server's regex."""

MAX_RAW_BYTES = 512
"""The longest raw value (as written in the comment, before decoding) that is read; a longer one tags nothing."""

MAX_TAG_CHARS = 200
"""The longest parent tag a comment may give (decoded): far above application_name's 63 bytes, and a label value
that still fits on a dashboard. A longer value tags nothing: cutting it could merge two tags into one group."""

Tagged = tuple[str, "Source"] | None
"""A session's parent tag and the source that gave it, or None when no source tags it."""

_PERCENT = re.compile(rb"(?:[^%]|%[0-9A-Fa-f]{2})*")
_ESCAPED = re.compile(rb"\\(.)", re.DOTALL)


LIVE_STATES = ACTIVE_STATES | {"idle in transaction", "idle in transaction (aborted)"}
"""States in which a session's current query, and so its comment, is live: running, or its transaction still open."""

def in_query(state: str | None) -> bool:
    """True when a session's current query (and so its comment) is live: running, or its transaction still open."""
    return state in LIVE_STATES


def comment_value(raw: bytes | None) -> str | None:
    """The tag in one raw comment value, or None when there is none or it cannot be read exactly.

    `raw` is what the poll read for a key: `='...'` (sqlcommenter: `\\'` escapes, then URL-encoded; a doubled `%%`,
    which sqlcommenter-python writes for DB-API drivers and which reaches the server doubled when the statement had
    no parameters, stands for one `%`) or `:...` (marginalia: the bare value, spaces around it dropped). The result
    must be valid UTF-8, printable, non-empty and at most MAX_TAG_CHARS long. Refused: a `%` that is not followed by
    two hex digits, bytes that do not decode, control characters, anything longer than the bounds.
    """
    if raw is None or len(raw) > MAX_RAW_BYTES:
        return None
    if raw.startswith(b"='") and raw.endswith(b"'") and len(raw) >= 3:
        inner = _ESCAPED.sub(rb"\1", raw[2:-1]).replace(b"%%", b"%")
        if not _PERCENT.fullmatch(inner):
            return None
        data = unquote_to_bytes(inner)
    elif raw.startswith(b":"):
        data = raw[1:].strip(b" \t\r\n\f\v")
    else:
        return None
    try:
        value = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not value or len(value) > MAX_TAG_CHARS or not value.isprintable():
        return None
    return value


@dataclass(frozen=True, slots=True, eq=False)
class Source:
    """One place a parent tag may come from; compiled once per config, so compared (and hashed) by identity."""

    kind: SourceKind
    argument: str
    """The regex (application_name, user, database) or the comment key."""
    regex: re.Pattern[str] | None = None
    slot: int = 0
    """For a comment source: the index of its key in `Sources.comment_keys` (and in `Session.comments`)."""
    origin: TagSource = field(init=False)
    """What a group remembers of this source: its label, and whether its tag describes the current query."""

    def __post_init__(self) -> None:
        comment = self.kind == "comment"
        label = f"comment:{self.argument}" if comment else self.kind
        object.__setattr__(self, "origin", TagSource(label, query_scoped=comment))

    @property
    def label(self) -> str:
        """How `pgparent groups` and the audit name it: `application_name`, `user`, `database`, `comment:KEY`."""
        return self.origin.label

    @property
    def query_scoped(self) -> bool:
        """The tag describes the session's current query, not the session: signals must re-check query_start."""
        return self.origin.query_scoped

    def read(self, session: Session) -> str | bytes | None:
        """What this source looks at in `session`: its application_name, user or database; for a comment, the raw
        value of its key while the session's query is live (None otherwise)."""
        if self.kind == "comment":
            comments = session.comments
            return comments[self.slot] if in_query(session.state) and self.slot < len(comments) else None
        if self.kind == "application_name":
            return session.application_name
        return session.usename if self.kind == "user" else session.datname

    def parse(self, value: str | bytes | None) -> str | None:
        """The parent tag in what `read` gave, or None."""
        if value is None:
            return None
        if self.regex is None:
            return comment_value(value) if isinstance(value, bytes) else None
        return _search(self.regex, value) if isinstance(value, str) else None

    def parent(self, session: Session) -> str | None:
        """The parent tag this source reads from `session`, or None."""
        return self.parse(self.read(session))


def _search(regex: re.Pattern[str], value: str | None) -> str | None:
    if value is None:
        return None
    found = regex.search(value)
    return (found.group("parent") or None) if found is not None else None


@dataclass(frozen=True, slots=True)
class Sources:
    """The configured sources, in order, compiled once; `comment_keys` are the keys the poll must read."""

    sources: tuple[Source, ...]
    comment_keys: tuple[str, ...] = ()

    @classmethod
    def of(cls, specs: Iterable[tuple[SourceKind, str]]) -> Sources:
        """Compile (kind, argument) pairs; a comment key given twice is read once."""
        keys: list[str] = []
        out: list[Source] = []
        for kind, argument in specs:
            if kind == "comment":
                if argument not in keys:
                    keys.append(argument)
                out.append(Source(kind, argument, slot=keys.index(argument)))
            else:
                out.append(Source(kind, argument, re.compile(argument)))
        if not out:
            raise ValueError("at least one source is needed")
        return cls(tuple(out), tuple(keys))

    @classmethod
    def application_name(cls, pattern: str | re.Pattern[str]) -> Sources:
        """The classic single source: a regex on application_name."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        return cls((Source("application_name", regex.pattern, regex),))

    @property
    def only_application_name(self) -> re.Pattern[str] | None:
        """The regex when the one source is application_name (grouping's fast path), else None."""
        if len(self.sources) == 1 and self.sources[0].kind == "application_name":
            return self.sources[0].regex
        return None

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(s.label for s in self.sources)

    def tag(self, session: Session) -> Tagged:
        """The first source's parent tag for `session`, and that source; None when none tags it."""
        for source in self.sources:
            parent = source.parent(session)
            if parent is not None:
                return parent, source
        return None

    def tagger(self) -> Callable[[Session], Tagged]:
        """`tag` with per-poll memory: sessions of one job share names, users and comments, so each distinct value
        is parsed once per poll."""
        Step = tuple[Source, Callable[[Session], str | bytes | None], Callable[[str | bytes | None], str | None],
                     dict[str | bytes | None, str | None]]
        steps: list[Step] = [(source, source.read, source.parse, {}) for source in self.sources]

        def tag(session: Session) -> Tagged:
            for source, read, parse, memo in steps:
                value = read(session)
                parent = memo[value] if value in memo else memo.setdefault(value, parse(value))
                if parent is not None:
                    return parent, source
            return None

        return tag

    def comment_missed(self, session: Session) -> bool:
        """True when comment sources are configured, the session's query is live, PostgreSQL cut its text at
        track_activity_query_size (so a comment at its end is gone), and no comment source found a value."""
        if not self.comment_keys or not session.query_cut or not in_query(session.state):
            return False
        return all(comment_value(raw) is None for raw in session.comments)
