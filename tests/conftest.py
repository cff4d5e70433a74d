"""The suite's fixtures, one plugin per concern under tests/support/ (see its docstring)."""

pytest_plugins = [
    "tests.support.servers",
    "tests.support.roles",
    "tests.support.sessions",
    "tests.support.pgbouncer",
    "tests.support.daemon",
    "tests.support.proxy",
]
