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
    """PostgreSQL could not be reached or answered with an error; the message never holds a password."""


class UsageError(PgparentError):
    """A command-line argument is wrong (bad DSN, listen address, ...)."""
