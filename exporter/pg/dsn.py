"""Where a DSN comes from (flags, files, the environment), and how it is shown: masked in logs, and scrubbed from any
driver message that might echo its password."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from exporter.errors import UsageError


def read_dsn_file(path: str, origin: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise UsageError(f"{origin} {path}: cannot read: {reason}") from None
    if not text:
        raise UsageError(f"{origin} {path}: the file is empty")
    return text


def resolve_dsn(cli_dsn: str | None, cli_dsn_file: str | None = None) -> str:
    """The DSN, from the first of: --dsn, --dsn.file, $PGPARENT_DSN, $PGPARENT_DSN_FILE, $DATA_SOURCE_NAME; else ""
    (libpq then reads PGHOST, PGUSER, PGPASSWORD, PGPASSFILE, ...). A file keeps the secret out of `ps` and the
    environment."""
    if cli_dsn:
        return cli_dsn
    if cli_dsn_file:
        return read_dsn_file(cli_dsn_file, "--dsn.file")
    if env := os.environ.get("PGPARENT_DSN"):
        return env
    if env_file := os.environ.get("PGPARENT_DSN_FILE"):
        return read_dsn_file(env_file, "PGPARENT_DSN_FILE")
    return os.environ.get("DATA_SOURCE_NAME", "")


def parse_dsn(dsn: str) -> dict[str, Any]:
    try:
        return conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        # libpq's message quotes the text it choked on, which may hold the password: say nothing of it.
        raise UsageError("invalid DSN: expected 'key=value ...' pairs or a postgresql:// URI") from None


def mask_dsn(dsn: str) -> str:
    """The DSN with any password replaced by ****, for logs and errors; '(libpq defaults)' when empty."""
    if not dsn:
        return "(libpq defaults)"
    try:
        params = parse_dsn(dsn)
    except UsageError:
        return "(unparseable DSN)"
    if "password" in params:
        params["password"] = "****"  # noqa: S105 - a mask, not a secret
    return make_conninfo(**params)


def scrub(message: str, dsn: str, *secrets: str) -> str:
    """Remove the DSN's password, PGPASSWORD and `secrets` (the tokens a password source gave out, what a password
    command printed) from a message, should libpq or a command ever echo one."""
    masked = [*secrets, os.environ.get("PGPASSWORD", "")]
    with contextlib.suppress(psycopg.ProgrammingError):  # an unparseable DSN never reaches a connection attempt
        masked.append(str(conninfo_to_dict(dsn).get("password", "")))
    for secret in sorted(masked, key=len, reverse=True):  # longest first: a token may contain a shorter secret
        if len(secret) >= 3:
            message = message.replace(secret, "****")
    return message.strip()
