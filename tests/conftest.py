"""The suite's fixtures, one plugin per concern under tests/support/ (see its docstring), and the modules' order."""

from __future__ import annotations

import pytest

pytest_plugins = [
    "tests.support.servers",
    "tests.support.roles",
    "tests.support.sessions",
    "tests.support.pgbouncer",
    "tests.support.daemon",
    "tests.support.proxy",
    "tests.support.terminal",
    "tests.support.azure",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Modules with slow tests first, then the other modules that need a server, then the rest, each module's tests
    in their own order. pytest-xdist hands whole modules to its workers in this order (--dist loadfile), so the
    long ones start first instead of one of them running alone at the end."""
    rank: dict[object, int] = {}
    for item in items:
        here = 0 if item.get_closest_marker("slow") else 1 if item.get_closest_marker("integration") else 2
        rank[item.path] = min(rank.get(item.path, 2), here)
    items.sort(key=lambda item: rank[item.path])  # stable: the order within each rank is kept
