"""Why a connection attempt failed, told from libpq's message: psycopg gives no SQLSTATE for a failed connect.

The reasons are the values of the `reason` label of pgparent_connect_failures_total and of the `reason` field of the
`database_unavailable` event:

- `auth`: the server refused the credential (wrong or expired password or token, unknown role);
- `rejected`: pg_hba.conf has no entry for this host, user, database and encryption, or one that rejects it;
- `tls`: the TLS handshake or certificate check failed;
- `unreachable`: no server answered (refused, timed out, unknown host) or it is not accepting connections yet;
- `credential`: the password source itself gave nothing (exporter/pg/credentials.py), so no attempt was made;
- `other`: anything else (too many connections, no such database, ...).
"""

from __future__ import annotations

import re
from typing import Literal

ConnectFailure = Literal["auth", "rejected", "tls", "unreachable", "credential", "other"]
REASONS: tuple[ConnectFailure, ...] = ("auth", "rejected", "tls", "unreachable", "credential", "other")

# In order: a message may hold several attempts' lines (libpq tries each host address, and with sslmode=prefer, TLS
# then plain text), and the first reason found wins. `auth` comes first because it is the one an operator can act on
# at once, and a pg_hba.conf line may well reject the plain-text attempt that followed a TLS attempt refused for its
# password. `rejected` comes before `tls`, since pg_hba.conf messages name the encryption ("SSL encryption").
_PATTERNS: tuple[tuple[ConnectFailure, re.Pattern[str]], ...] = (
    ("auth", re.compile(
        r"password authentication failed|PAM authentication failed|authentication failed for user"
        r"|role \".*\" does not exist|password is required|no password supplied|password expired"
        # Microsoft Entra ID (formerly Azure AD) token logins on Azure Database for PostgreSQL.
        r"|\bEntra\b|Azure AD|\bAAD\b|access token|token (?:is )?(?:invalid|expired|not valid)"
        # Cloud SQL IAM logins.
        r"|IAM (?:user )?authentication failed",
        re.IGNORECASE,
    )),
    ("rejected", re.compile(r"no pg_hba\.conf entry|pg_hba\.conf rejects", re.IGNORECASE)),
    # A server that goes away under TLS says so in TLS's words: an outage, not a TLS problem.
    ("unreachable", re.compile(
        r"SSL connection has been closed unexpectedly|unexpected eof while reading|SSL SYSCALL"
        r"|server closed the connection unexpectedly",
        re.IGNORECASE,
    )),
    ("tls", re.compile(r"\bSSL\b(?! SYSCALL)|\bTLS\b|certificate|\bGSSAPI\b", re.IGNORECASE)),
    ("unreachable", re.compile(
        r"Connection refused|timeout expired|timed out|could not translate host name|Name or service not known"
        r"|No route to host|Network is unreachable|No such file or directory|could not connect to server"
        r"|server closed the connection unexpectedly|SSL SYSCALL|Connection reset"
        # The server answers but accepts no connection yet: an outage like a refused port, not a reason of its own.
        r"|the database system is (?:starting up|shutting down|in recovery mode|not (?:yet )?accepting connections)",
        re.IGNORECASE,
    )),
)


_QUOTED = re.compile(r'"[^"]*"')


def connect_failure(message: str) -> ConnectFailure:
    """The reason of a failed connection attempt, from libpq's message (`other` when no pattern matches). The names
    libpq quotes (hosts, roles, databases) are left out first: a host `tls-gw` or a role `entra-reader` says nothing
    of why."""
    text = _QUOTED.sub('""', message)
    for reason, pattern in _PATTERNS:
        if pattern.search(text):
            return reason
    return "other"
