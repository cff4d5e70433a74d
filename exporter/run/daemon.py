"""The long-running watchdog: one poll loop per target, signal handling, config reload, and the HTTP face.

Signal handlers only set flags and wake the daemon. Each target's loop runs on its own thread (exporter/target.py),
so SIGTERM is honoured within two seconds even while a poll is stuck on the network, and one target's trouble never
delays another's polls. The main thread waits for the stop flag and carries out reloads.
"""

from __future__ import annotations

import os
import signal
import ssl
import threading
import time
from pathlib import Path
from types import FrameType

from exporter.config import load_config
from exporter.core.settings import DEFAULT_TARGET, Config, TargetConfig
from exporter.errors import ConfigInvalid, UsageError
from exporter.face.collector import Flags, PgparentCollector
from exporter.face.http import Limits, MetricsServer
from exporter.face.webconfig import WebConfig
from exporter.logs import get_logger
from exporter.pg.credentials import credential_source, problems
from exporter.pg.database import Database
from exporter.pg.dsn import read_dsn_file
from exporter.run.leadership import Shard
from exporter.run.monitor import Monitor
from exporter.run.servers import Servers

log = get_logger("pgparent")

SHUTDOWN_GRACE = 1.5
"""Seconds the main thread waits for the loops to finish their cycle after SIGTERM before exiting anyway."""


def statement_timeout(interval: float) -> float:
    """A poll that takes longer than an interval is already late: the client cuts it within one interval
    (statement_timeout at 0.8 of it, the watchdog at 0.9; within 0.45 s to 33.75 s), so a stalled network is noticed
    within two intervals with a tenth of one to spare."""
    return max(0.4, min(0.8 * interval, 30.0))


def target_dsn(target: TargetConfig, source: str = "config") -> str:
    """The DSN of a configured target, from its `dsn`, `dsn_file` or `dsn_env`; ConfigInvalid when it cannot be had."""
    where = f"{source}: targets.{target.name}"
    if target.dsn is not None:
        return target.dsn
    if target.dsn_file is not None:
        try:
            return read_dsn_file(target.dsn_file, f"{where}.dsn_file")
        except UsageError as exc:
            raise ConfigInvalid([str(exc)]) from None
    value = os.environ.get(target.dsn_env or "", "")
    if not value:
        raise ConfigInvalid([f"{where}.dsn_env: the environment variable {target.dsn_env} is not set or empty"])
    return value


def check_password(target: TargetConfig, dsn: str | None, source: str = "config") -> None:
    """ConfigInvalid when the target's `password` cannot give passwords for `dsn` (None: not read yet): a provider
    whose extra is not installed, a DSN with a password of its own."""
    if target.password is None:
        return
    where = f"{source}: targets.{target.name}.password"
    found = problems(target.password, dsn)
    if found:
        raise ConfigInvalid([f"{where}{'.' + field if field else ''}: {message}" for field, message in found])


def target_database(target: TargetConfig, dsn: str, timeout: float = 10.0, source: str = "config") -> Database:
    """The connection of a configured target, reading (and signalling) the sessions its `sessions` says, with the
    password of each connection from its `password` source if it has one (ConfigInvalid when that cannot work)."""
    check_password(target, dsn, source)
    credentials = credential_source(target.password, dsn) if target.password is not None else None
    return Database(dsn, statement_timeout=timeout, database_only=target.sessions == "database",
                    credentials=credentials)


class Daemon:
    """Runs a `Monitor` per target, swaps configs on reload, and serves /metrics."""

    def __init__(
        self,
        config: Config,
        db: Database | None = None,
        *,
        config_path: str | Path | None = None,
        force_dry_run: bool = False,
        shard: bool = False,
        listen: tuple[str, int] | None = None,
        web: WebConfig | None = None,
        tls: ssl.SSLContext | None = None,
        limits: Limits | None = None,
    ) -> None:
        """`db` is the server of --dsn / the environment, watched as target `default` when the config lists no
        targets (and ignored when it does)."""
        self.config = config
        self.default_db = db
        self.config_path = config_path
        self.force_dry_run = force_dry_run
        self.force_shard = shard
        self.collector = PgparentCollector()
        self.counters = self.collector.counters
        self.registry = self.collector.registry
        self.stop_event = threading.Event()
        self._reload_requested = threading.Event()
        self._reload_ok = True
        self._reload_time = time.time()
        self.monitors: dict[str, Monitor] = {}
        self._specs: dict[str, TargetConfig | None] = {}
        self._started = False
        self.shard = Shard() if self._sharding(config) else None
        self.servers = Servers()
        self._apply(config, self._resolve(config, str(config_path or "config")))
        self.http = (
            MetricsServer(
                listen, self.collector.render, self.healthy, web=web, tls=tls, limits=limits, registry=self.registry
            )
            if listen is not None
            else None
        )
        self._publish_flags()

    def _sharding(self, config: Config) -> bool:
        return self.force_shard or config.leader_election.shard

    def _resolve(self, config: Config, source: str) -> dict[str, tuple[TargetConfig | None, str | None]]:
        """Each target's config and DSN (None: the default target's own Database); every problem at once."""
        if not config.targets:
            return {DEFAULT_TARGET: (None, None)}
        out: dict[str, tuple[TargetConfig | None, str | None]] = {}
        errors: list[str] = []
        for t in config.targets:
            try:
                dsn = target_dsn(t, source)
                check_password(t, dsn, source)
                out[t.name] = (t, dsn)
            except ConfigInvalid as exc:
                errors += exc.errors
        if errors:
            raise ConfigInvalid(errors)
        return out

    def _apply(self, config: Config, resolved: dict[str, tuple[TargetConfig | None, str | None]]) -> None:
        """Make the running monitors match `config`: an unchanged target keeps its monitor (connection, `for:`
        timers, leadership) and gets the new rules; a changed one is replaced; a removed one stops."""
        for name in [n for n in self.monitors if n not in resolved]:
            self._retire(name, "removed from the config")
        shard = self.shard
        if shard is not None:
            with shard.lock:
                shard.targets, shard.window = len(resolved), 2 * config.interval
                shard.reads = {n: read for n, read in shard.reads.items() if n in resolved}
        for name, (spec, dsn) in resolved.items():
            current = self.monitors.get(name)
            if current is not None and self._specs.get(name) == spec and current.db.dsn == (dsn or current.db.dsn):
                current.config = config
                current.force_dry_run = self.force_dry_run
                continue
            if current is not None:
                self._retire(name, "its settings changed")
            if spec is None:
                db = self.default_db or Database("", statement_timeout=statement_timeout(config.interval))
            else:
                db = target_database(spec, dsn or "", statement_timeout(config.interval))  # checked by _resolve
            monitor = Monitor(
                name,
                db,
                config,
                self.collector,
                force_dry_run=self.force_dry_run,
                dry_run=spec.dry_run if spec else False,
                labels=spec.labels if spec else {},
                shard=shard,
                servers=self.servers,
            )
            self.monitors[name], self._specs[name] = monitor, spec
            if self._started:
                monitor.start()
                log.info("target_added", target=name, dsn=db.masked)

    def _retire(self, name: str, why: str) -> None:
        monitor = self.monitors.pop(name)
        self._specs.pop(name, None)
        monitor.request_stop()
        self.servers.release(monitor)  # a target that takes its place, or its sessions, may claim them now
        if self._started:
            log.info("target_removed", target=name, reason=why)

        def finish() -> None:  # off the reload path: a monitor stuck on a black-holed network must not hold it up
            if monitor.join(SHUTDOWN_GRACE):
                monitor.close()
            if name not in self.monitors:  # replaced under the same name: the new monitor publishes there
                self.collector.forget(name)

        threading.Thread(target=finish, name=f"retire-{name}", daemon=True).start()

    # Signal handlers only set flags: the main loop (run) does the work.
    def request_stop(self, *_: object) -> None:
        self.stop_event.set()

    def request_reload(self, *_: object) -> None:
        self._reload_requested.set()

    def install_signal_handlers(self) -> None:
        def stop(signum: int, _frame: FrameType | None) -> None:
            self.request_stop()

        def hup(signum: int, _frame: FrameType | None) -> None:
            self.request_reload()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGHUP, hup)

    def healthy(self) -> bool:
        """Every target's loop ticked recently (a database may be down: that is `pgparent_up`, not liveness)."""
        return all(m.healthy() for m in list(self.monitors.values()))

    def run(self) -> int:
        """Serve /metrics and poll until SIGTERM/SIGINT; reload on SIGHUP. Call from the main thread."""
        self.install_signal_handlers()
        self.start()
        while not self.stop_event.is_set():
            if self._reload_requested.is_set():
                self._reload_requested.clear()
                self.reload()
            self.stop_event.wait(0.1)
        self.stop()
        return 0

    def start(self) -> None:
        """Start serving and polling on background threads (for embedding, e.g. the demo)."""
        if self.http is not None:
            self.http.start()
            log.info("listening", port=self.http.port, tls=self.http.tls, basic_auth=self.http.basic_auth)
        log.info(
            "started",
            targets={name: m.db.masked for name, m in self.monitors.items()},
            interval=self.config.interval,
            rules=[r.name for r in self.config.rules],
            dry_run=self.force_dry_run or self.config.dry_run,
            shard=self.shard is not None,
        )
        self._started = True
        for monitor in self.monitors.values():
            monitor.start()

    def cycle(self) -> None:
        """One poll of every target, one after another (tests and the benchmark; the daemon runs them in loops)."""
        for monitor in list(self.monitors.values()):
            monitor.cycle()

    def close(self) -> None:
        """Close every target's connection (after `cycle()` without `start()`)."""
        for monitor in self.monitors.values():
            monitor.close()

    def stop(self) -> None:
        """Stop polling and serving; returns within SHUTDOWN_GRACE even if a poll hangs on the network."""
        self.request_stop()
        monitors = list(self.monitors.values())
        for monitor in monitors:
            monitor.request_stop()
        deadline = time.monotonic() + SHUTDOWN_GRACE
        stuck = [m.name for m in monitors if not m.join(max(0.0, deadline - time.monotonic()))]
        if stuck:
            log.warning("shutdown_forced", reason="a poll was still running after the grace period", targets=stuck)
        if self.http is not None:
            self.http.stop()
        for monitor in monitors:
            if monitor.name not in stuck:
                monitor.close()
        log.info("stopped")

    def reload(self) -> bool:
        """Build, validate, swap: an invalid file (or a target whose DSN cannot be read) is logged and the running
        config stays."""
        if self.config_path is None:
            return False
        try:
            new = load_config(self.config_path)
            resolved = self._resolve(new, str(self.config_path))
            if self._sharding(new) != (self.shard is not None):
                raise ConfigInvalid(
                    [f"{self.config_path}: leader_election.shard: changing it needs a restart, not a reload"]
                )
        except ConfigInvalid as exc:
            self._reload_ok = False
            log.error(
                "config_reload_failed",
                file=str(self.config_path),
                errors=exc.errors,
                kept_rules=[r.name for r in self.config.rules],
            )
            self._publish_flags()
            return False
        self.config = new
        self._apply(new, resolved)
        self._reload_ok = True
        self._reload_time = time.time()
        log.info(
            "config_reloaded",
            file=str(self.config_path),
            rules=[r.name for r in new.rules],
            targets=sorted(self.monitors),
            interval=new.interval,
        )
        self._publish_flags()
        for monitor in self.monitors.values():
            monitor.wake.set()
        return True

    def _publish_flags(self) -> None:
        self.collector.set_flags(
            Flags(interval=self.config.interval, reload_ok=self._reload_ok, reload_time=self._reload_time)
        )
