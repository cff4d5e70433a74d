"""`pgparent run` as a real process: its config file, JSON logs and stdout in files, /metrics on a free loopback port.

The process is started as an operator would start it (`python -m exporter run --config.file ...`), from this checkout,
and read only from the outside: its HTTP face, its log lines and its exit code. Tests and the benchmark both drive
the daemon through this class, so they see it the same way.
"""

from __future__ import annotations

import json
import os
import signal
import ssl
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from exporter.pgcluster import free_port
from harness import metrics
from harness.metrics import Labels
from harness.waiting import eventually

REPO = Path(__file__).resolve().parent.parent
HTTP_TIMEOUT = 30.0
"""Seconds a request waits for the daemon to answer: generous, since the machines are shared; a hang still fails."""
START_TIMEOUT = 20.0
"""Seconds the daemon has to serve /metrics after it is started."""
BIND_ATTEMPTS = 3
"""Starts on a fresh port when the daemon could not listen on the one chosen: another process on this machine may
bind a free port between the moment it is chosen and the daemon's bind, and that says nothing of the daemon."""


class DaemonProcess:
    """`pgparent run` with `config` (the file's text) on server `dsn` (None: no --dsn, e.g. a config of targets),
    `args` after the others; started at once, and waited for until it serves /metrics (for `start_timeout` seconds;
    None: not waited for, see `wait_serving`). `env` is added to this process's environment; `tls` and `auth` are what
    requests to it use; `wrap` is a command that runs it (`unshare --pid --fork ...`: in a PID namespace of its own).
    Also a context manager that stops it on the way out.

    Files, in `workdir` and named by the port so that several daemons can share it: `config` (rewrite it and send
    SIGHUP to reload), `log_path` (stderr: the JSON log lines), `out_path` (stdout).
    """

    def __init__(self, workdir: Path, config: str, dsn: str | None, *args: str, env: dict[str, str] | None = None,
                 tls: ssl.SSLContext | None = None, auth: tuple[str, str] | None = None, log_level: str = "info",
                 start_timeout: float | None = START_TIMEOUT, wrap: Sequence[str] = ()) -> None:
        self.tls, self.auth = tls, auth
        self._group = bool(wrap)
        for attempt in range(1, BIND_ATTEMPTS + 1):
            self._spawn(workdir, config, dsn, args, env, log_level, wrap)
            if start_timeout is None:
                return
            try:
                self.wait_serving(start_timeout)
                return
            except RuntimeError:
                self.stop()
                if attempt == BIND_ATTEMPTS or "cannot listen on" not in self.log_path.read_text():
                    raise
            except BaseException:
                self.stop()
                raise

    def _spawn(self, workdir: Path, config: str, dsn: str | None, args: Sequence[str], env: dict[str, str] | None,
               log_level: str, wrap: Sequence[str]) -> None:
        self.port = free_port()
        self.config = workdir / f"rules-{self.port}.yaml"
        self.config.write_text(config)
        self.log_path = workdir / f"daemon-{self.port}.log"
        self.out_path = workdir / f"daemon-{self.port}.out"
        cmd = [*wrap, sys.executable, "-m", "exporter", "run", "--config.file", str(self.config),
               *(("--dsn", dsn) if dsn is not None else ()),
               "--web.listen-address", f"127.0.0.1:{self.port}", "--log.format", "json", "--log.level", log_level,
               *args]
        self._offset = 0
        with self.log_path.open("wb") as log, self.out_path.open("wb") as out:
            # A wrapped daemon gets a process group of its own, so that signals reach it through its wrapper
            # (`unshare --fork` ignores SIGTERM and SIGINT while it waits for its child).
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=log, cwd=REPO, env={**os.environ, **(env or {})},
                                         start_new_session=self._group)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def wait_serving(self, timeout: float = START_TIMEOUT) -> Self:
        """Until /metrics answers 200; RuntimeError with the log if the process exits first."""

        def serving() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {self.proc.returncode}: {self.log_path.read_text()}")
            try:
                return self.get("/metrics")[0] == 200
            except OSError:
                return False

        eventually(serving, timeout=timeout, what="daemon serving /metrics")
        return self

    # HTTP

    def url(self, path: str) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}{path}"

    def get(self, path: str) -> tuple[int, str]:
        """GET `path`: the status and the body, error statuses included."""
        return metrics.get(self.url(path), timeout=HTTP_TIMEOUT, tls=self.tls, auth=self.auth)

    def metrics(self) -> str:
        """The exposition now (AssertionError on a status other than 200)."""
        status, body = self.get("/metrics")
        assert status == 200, body
        return body

    def scrape(self, timeout: float = HTTP_TIMEOUT) -> tuple[float, str]:
        """One scrape of /metrics: the seconds it took and the exposition (OSError on a status other than 200)."""
        return metrics.scrape(self.url("/metrics"), timeout=timeout, tls=self.tls, auth=self.auth)

    def sample(self, name: str, labels: Labels | None = None) -> float | None:
        """The value of one sample on /metrics now, or None when it is absent."""
        return metrics.sample(self.metrics(), name, labels)

    def samples(self, name: str, labels: Labels | None = None) -> list[tuple[dict[str, str], float]]:
        """Every sample of `name` on /metrics now whose labels include `labels`."""
        return metrics.samples(self.metrics(), name, labels)

    def polls(self, *, failed: bool = False, target: str | None = None) -> int:
        """pgparent_polls_total (with `failed`, pgparent_poll_errors_total) as /metrics shows it now: of `target`, or
        the fewest of any target (so "n more" means every target polled)."""
        name = "pgparent_poll_errors_total" if failed else "pgparent_polls_total"
        counts = [v for _, v in self.samples(name, {"target": target} if target else None)]
        return int(min(counts, default=0))

    def wait_polls(self, n: int, *, failed: bool = False, timeout: float = 60.0, target: str | None = None) -> int:
        """Wait until the daemon has completed `n` more poll cycles than when called (with `failed`: `n` more failed
        ones), of `target` or of every target, and return the new count; fail after `timeout` seconds, generous
        since the machines are shared.

        The first of them may be a poll already under way at the call: "nothing happened during N whole polls after
        X" is `wait_polls(N + 1)` after X.
        """
        goal = self.polls(failed=failed, target=target) + n

        def reached() -> int | None:
            count = self.polls(failed=failed, target=target)
            return count if count >= goal else None

        what = f"{n} more {'failed ' if failed else ''}poll(s), to {goal}"
        return eventually(reached, timeout=timeout, interval=0.1, what=what)

    # Logs

    def logs(self) -> list[dict[str, Any]]:
        """Every log line so far, parsed; a line that is not JSON becomes {"event": "non_json_line", "line": ...}."""
        return [_event(line) for line in self.log_path.read_text(errors="replace").splitlines()]

    def events(self, name: str) -> list[dict[str, Any]]:
        """The log events called `name` so far, in order."""
        return [e for e in self.logs() if e.get("event") == name]

    def new_logs(self) -> list[dict[str, Any]]:
        """The log lines completed since the previous call (the first call: since the start), parsed as by `logs`:
        a cheap way to follow a long-running daemon's log."""
        events, self._offset = read_log(self.log_path, self._offset)
        return events

    # Signals

    def send(self, signum: int) -> None:
        """Send `signum` to the daemon (and, when wrapped, to its wrapper's whole process group)."""
        if self._group and self.proc.poll() is None:
            os.killpg(self.proc.pid, signum)
        else:
            self.proc.send_signal(signum)

    def stop(self, timeout: float = 10) -> int:
        """SIGTERM, then SIGKILL if it has not exited within `timeout` seconds; the exit code (negative: the signal
        that ended it). Safe to call again, or after the process has exited."""
        if self.proc.poll() is None:
            self.send(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def read_log(path: Path, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
    """The JSON log lines of file `path` from byte `offset` up to its last complete line, parsed as by
    `DaemonProcess.logs`, and the offset to read on from (a line still being written is left for the next read)."""
    with path.open("rb") as f:
        f.seek(offset)
        data = f.read()
    end = data.rfind(b"\n") + 1
    return [_event(line) for line in data[:end].decode(errors="replace").splitlines()], offset + end


def _event(line: str) -> dict[str, Any]:
    try:
        event = json.loads(line)
    except json.JSONDecodeError:
        return {"event": "non_json_line", "line": line}
    return event if isinstance(event, dict) else {"event": "non_json_line", "line": line}
