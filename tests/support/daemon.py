"""pgparent processes of a test: the `daemons` fixture starts `harness.daemon.DaemonProcess`es in the test's own
directory and stops whatever is still running when the test ends, however it ended."""

from __future__ import annotations

import ssl
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from harness.daemon import START_TIMEOUT, DaemonProcess


class Daemons:
    """Starts pgparent processes in `workdir`; `stop_all` stops them."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[DaemonProcess] = []

    def start(self, config: str, dsn: str | None, *args: str, env: dict[str, str] | None = None,
              tls: ssl.SSLContext | None = None, auth: tuple[str, str] | None = None,
              start_timeout: float | None = START_TIMEOUT, wrap: Sequence[str] = ()) -> DaemonProcess:
        """`pgparent run` with `config` (the file's text) on `dsn`, as `DaemonProcess` takes them; serving."""
        d = DaemonProcess(self.workdir, config, dsn, *args, env=env, tls=tls, auth=auth, start_timeout=start_timeout,
                          wrap=wrap)
        self.started.append(d)
        return d

    def stop_all(self) -> None:
        for d in self.started:
            d.stop()


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Daemons]:
    """pgparent processes of this test's own, stopped when it ends."""
    started = Daemons(tmp_path)
    try:
        yield started
    finally:
        started.stop_all()
