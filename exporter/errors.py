"""The project's own exceptions: what callers catch instead of driver or parser errors."""

from __future__ import annotations


class PgparentError(Exception):
    """Base of every error pgparent raises on purpose."""


class ConfigInvalid(PgparentError):
    """A config file failed to load or validate; `errors` holds every problem as `FILE: dotted.path: message`."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


class DatabaseUnavailable(PgparentError):
    """PostgreSQL could not be reached or answered with an error; the message never holds a password.

    `reason` says why a connection attempt failed (exporter/pg/failures.py: auth, rejected, tls, unreachable,
    credential, other); None when the failure was not a connection attempt's.
    """

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason


class CredentialUnavailable(DatabaseUnavailable):
    """The password source of a connection (a command, a file, a cloud token provider) gave no password: an outage
    to the daemon, which keeps trying; a usage error to the one-shot commands."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "credential")


class UsageError(PgparentError):
    """A command-line argument is wrong (bad DSN, listen address, ...)."""
