"""pgparent: per-parent-tag session metrics and a runaway-group watchdog for PostgreSQL."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("pgparent")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

APPLICATION_NAME = "pgparent"
"""The application_name of pgparent's own connections; they are excluded from everything it reports or signals."""
