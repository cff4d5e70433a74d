"""A network black hole on demand between a client and the shared server: `harness.proxy.StallingProxy` in front of
it, as the `stalling_proxy` fixture."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from harness.proxy import StallingProxy
from tests.support.servers import Server


@dataclass(frozen=True, slots=True)
class Proxied:
    """The proxy, and the shared server's DSN through it."""

    proxy: StallingProxy
    dsn: str


@pytest.fixture
def stalling_proxy(pg: Server) -> Iterator[Proxied]:
    """A StallingProxy in front of the shared server, of this test's own, closed when it ends."""
    params = conninfo_to_dict(pg.dsn)
    proxy = StallingProxy(int(str(params["port"])))
    params["port"] = str(proxy.port)
    try:
        yield Proxied(proxy, make_conninfo("", **params))
    finally:
        proxy.close()
