"""The `pgparent` command: run, groups, locks, terminate, top, check, demo. Exit 0 ok, 1 runtime failure, 2 usage/config
error.

User errors (a bad flag, config, DSN or listen address) are one clear line each on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from exporter import __version__
from exporter.config import load_config
from exporter.core.assess import Assessment, assess
from exporter.core.settings import DEFAULT_TARGET, PROVIDERS, Config, PasswordSource, TargetConfig
from exporter.core.summary import describe, warnings
from exporter.errors import ConfigInvalid, CredentialUnavailable, DatabaseUnavailable, UsageError
from exporter.face.http import Limits
from exporter.logs import LEVELS, configure
from exporter.pg.credentials import CredentialSource, credential_source, problems
from exporter.pg.database import Database
from exporter.pg.dsn import resolve_dsn

DEFAULT_LISTEN = ":10187"
"""9100-9999 is fully allocated to other exporters; 10187 echoes postgres_exporter's 9187 without clashing."""

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse's own usage errors: one line, exit 2
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _add_connection(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dsn",
        help="libpq DSN or URI; else --dsn.file, $PGPARENT_DSN, $PGPARENT_DSN_FILE, $DATA_SOURCE_NAME, then libpq's "
        "PG* variables",
    )
    p.add_argument("--dsn.file", dest="dsn_file", metavar="FILE", help="read the DSN from this file")
    _add_password(p)
    p.add_argument("--config.file", dest="config_file", metavar="FILE", help="rules file (see rules.yaml)")


_PASSWORD_FLAGS = ("command", "file", "provider", "timeout", "region")


def _add_password(p: argparse.ArgumentParser) -> None:
    """Where the --dsn server's password comes from at each new connection (a config's targets say `password:`)."""
    source = p.add_mutually_exclusive_group()
    source.add_argument(
        "--password.command", dest="password_command", metavar="COMMAND",
        help="run this command (split as a shell would, run without one) for each new connection: its stdout is the "
        "password, or a JSON token with its expiry (az account get-access-token), reused until a minute before it",
    )
    source.add_argument("--password.file", dest="password_file", metavar="FILE",
                        help="read the password from this file's first line at each new connection")
    source.add_argument(
        "--password.provider", dest="password_provider", choices=PROVIDERS,
        help="a cloud token for each new connection: azure (Microsoft Entra ID), aws (RDS IAM), gcp (Cloud SQL IAM); "
        "each needs its extra: pip install 'pgparent[azure]'",
    )
    p.add_argument("--password.timeout", dest="password_timeout", metavar="DURATION",
                   help="how long --password.command may run (default 10s)")
    p.add_argument("--password.region", dest="password_region", metavar="REGION",
                   help="--password.provider aws: the region the token is signed for (default: AWS_REGION, else "
                   "boto3's own chain)")


def _password_spec(args: argparse.Namespace) -> PasswordSource | None:
    """The --password.* flags as a password source (None: none given); UsageError naming the flag that is wrong."""
    given = {k: v for k in _PASSWORD_FLAGS if (v := getattr(args, f"password_{k}", None)) is not None}
    if not given:
        return None
    try:
        return PasswordSource.model_validate(given)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        flag = f"--password.{error['loc'][0]}" if error["loc"] else "--password"
        raise UsageError(f"{flag}: {str(error['msg']).removeprefix('Value error, ')}") from None


def _credentials(args: argparse.Namespace, dsn: str | None) -> CredentialSource | None:
    """The password source of the --dsn server from the --password.* flags; None when they give none, and only
    checked (no source made) when `dsn` is None."""
    spec = _password_spec(args)
    if spec is None:
        return None
    found = problems(spec, dsn)
    if found:
        field, message = found[0]
        given = next(k for k in ("command", "file", "provider") if getattr(spec, k) is not None)
        raise UsageError(f"--password.{field or given}: {message}")
    return credential_source(spec, dsn) if dsn is not None else None


def _default_database(args: argparse.Namespace, statement_timeout: float) -> Database:
    """The server of --dsn / the environment, with its --password.* source."""
    dsn = resolve_dsn(args.dsn, args.dsn_file)
    return Database(dsn, statement_timeout=statement_timeout, credentials=_credentials(args, dsn))


def _add_target(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", metavar="NAME", help="which of the config's targets (with a config that lists targets)")


def _no_password_flags(args: argparse.Namespace, config: Config) -> None:
    """The --password.* flags are the --dsn server's: a config that lists targets says each one's itself."""
    if config.targets and _password_spec(args) is not None:
        raise UsageError("--password.*: for the --dsn server; the config's targets each say theirs (password:)")


def _database(args: argparse.Namespace, config: Config, statement_timeout: float = 10.0) -> Database:
    """The server a command talks to: --target NAME of the config's targets, else --dsn / the environment."""
    from exporter.run.daemon import target_database, target_dsn

    if not config.targets:
        if args.target is not None:
            raise UsageError(f"--target {args.target}: the config lists no targets; use --dsn")
        return _default_database(args, statement_timeout)
    _no_password_flags(args, config)
    names = [t.name for t in config.targets]
    if args.target is None:
        raise UsageError(f"the config lists targets: name one with --target ({', '.join(names)})")
    spec = next((t for t in config.targets if t.name == args.target), None)
    if spec is None:
        raise UsageError(f"--target {args.target}: no such target in the config ({', '.join(names)})")
    return target_database(spec, target_dsn(spec, args.config_file), statement_timeout, args.config_file)


def _add_logging(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--log.format",
        dest="log_format",
        choices=["json", "console", "auto"],
        default="auto",
        help="log format (default: console on a terminal, else JSON)",
    )
    p.add_argument("--log.level", dest="log_level", choices=LEVELS, default="info")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pgparent", description="Per-parent-tag session metrics and a runaway-group watchdog for PostgreSQL."
    )
    parser.add_argument("--version", action="version", version=f"pgparent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run the daemon: poll, export /metrics, enforce rules")
    _add_connection(run)
    run.add_argument(
        "--web.listen-address",
        dest="listen",
        default=DEFAULT_LISTEN,
        metavar="HOST:PORT",
        help=f"where to serve /metrics (default {DEFAULT_LISTEN})",
    )
    run.add_argument(
        "--web.config.file",
        dest="web_config_file",
        metavar="FILE",
        help="TLS and basic auth for /metrics, in the Prometheus exporter-toolkit format",
    )
    default_limits = Limits()
    for flag, default, text in (
        ("max-connections", default_limits.max_connections,
         "open HTTP connections at most; at the cap, the one waiting longest for a request is closed"),
        ("workers", default_limits.workers,
         "threads that render /metrics and check passwords (one check at a time); at least 2"),
    ):
        run.add_argument(
            f"--web.{flag}",
            dest=f"web_{flag.replace('-', '_')}",
            type=int,
            default=default,
            metavar="N",
            help=f"{text} (default {default})",
        )
    run.add_argument("--dry-run", action="store_true", help="evaluate and audit, signal nothing")
    run.add_argument(
        "--shard",
        action="store_true",
        help="replicas with the same config divide the targets: each target is polled and enforced by one of them "
        "(leader_election.shard)",
    )
    _add_logging(run)

    groups = sub.add_parser("groups", help="show the current groups once")
    _add_connection(groups)
    _add_target(groups)
    groups.add_argument("--output", choices=["table", "json"], default="table")
    groups.add_argument(
        "--sample",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="poll twice this many seconds apart and show each group's LOAD (average active sessions) and CPU "
        "(cores) over that time (default 0: MEM only, where pgparent sees the server's processes)",
    )

    locks = sub.add_parser("locks", help="show the blocking forest now: root blockers and who waits on them")
    _add_connection(locks)
    _add_target(locks)
    locks.add_argument("--output", choices=["table", "json"], default="table")

    term = sub.add_parser("terminate", help="signal every client session of one group")
    term.add_argument("parent", metavar="PARENT", help="the parent tag, e.g. FakeParent:1001")
    _add_connection(term)
    _add_target(term)
    term.add_argument("--cancel", action="store_true", help="cancel active queries instead of terminating sessions")
    term.add_argument("--dry-run", action="store_true", help="list what would be signalled, signal nothing")
    _add_logging(term)

    top = sub.add_parser("top", help="the live grouped view: one row per group, refreshed; keys to sort, filter, open, "
                         "cancel or terminate a group")
    _add_connection(top)
    _add_target(top)
    top.add_argument("--interval", default="2s", metavar="DURATION",
                     help="time between refreshes, one poll each (default 2s; e.g. 1s, 500ms, 5)")
    top.add_argument("--read-only", action="store_true", help="no cancel or terminate keys")
    top.add_argument("--log.file", dest="log_file", metavar="FILE", default=None,
                     help="where the audit of signals sent from the view and its own events go, as JSON lines "
                     "(default $XDG_STATE_HOME/pgparent/top.log, else ~/.local/state/pgparent/top.log)")
    top.add_argument("--log.level", dest="log_level", choices=LEVELS, default="info")

    check = sub.add_parser("check", help="validate a config file (and, with --dsn or --target, what a server gives it)")
    check.add_argument("--config.file", dest="config_file", metavar="FILE", default="rules.yaml")
    check.add_argument("--dsn", help="also connect to this server: which figures the guard rules have there")
    check.add_argument("--dsn.file", dest="dsn_file", metavar="FILE", help="read that DSN from this file")
    _add_password(check)
    _add_target(check)

    doctor = sub.add_parser("doctor", help="connect as the daemon would and say what pgparent can see and do on the "
                            "server, with the fix for each gap; exit 1 when something needs fixing")
    _add_connection(doctor)
    _add_target(doctor)

    demo = sub.add_parser("demo", help="the seed scenario on a throwaway PostgreSQL")
    demo.add_argument(
        "--hold",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="keep the demo's server and /metrics up this long at the end",
    )
    return parser


def _config(path: str | None) -> Config:
    return load_config(path) if path else Config()


def _assessed(args: argparse.Namespace, config: Config) -> Assessment:
    """One poll of the server the command names, through the pipeline the daemon runs."""
    db = _database(args, config)
    try:
        snapshot = db.snapshot(config.poll)
    finally:
        db.close()
    return assess(snapshot, config, target=args.target or DEFAULT_TARGET)


def _costed(args: argparse.Namespace, config: Config, seconds: float) -> tuple[Assessment, float | None]:
    """One poll of the server the command names, its cost accounted (every group by name), or, with `seconds`, two
    polls that far apart and the server's time between them."""
    import time

    from exporter.core.settings import MAX_COUNT
    from exporter.run.costs import Costs

    db = _database(args, config)
    costs = Costs()
    target = args.target or DEFAULT_TARGET
    try:
        polls: list[Assessment] = []
        for n in range(2 if seconds > 0 else 1):
            if n:
                time.sleep(seconds)
            snapshot, _, samples = costs.read(db, db.connect(), config)
            assessed = assess(snapshot, config, target=target, samples=samples, cost_state=costs.state,
                              max_groups=MAX_COUNT)
            costs.took(assessed)
            polls.append(assessed)
    finally:
        costs.close()
        db.close()
    if len(polls) == 1:
        return polls[0], None
    return polls[1], (polls[1].snapshot.now - polls[0].snapshot.now).total_seconds()


def cmd_groups(args: argparse.Namespace) -> int:
    if args.sample < 0:
        raise UsageError(f"--sample {args.sample:g}: a number of seconds >= 0")
    config = _config(args.config_file)
    assessed, seconds = _costed(args, config, args.sample)
    from exporter.cli.render import Costs, groups_json, groups_table  # only `pgparent groups` renders tables

    assert assessed.cost is not None
    costs = Costs(assessed.cost, seconds)
    if args.output == "json":
        print(groups_json(assessed.grouped, costs))
        return EXIT_OK
    for line in groups_table(assessed.grouped, costs):
        print(line)
    return EXIT_OK


def cmd_locks(args: argparse.Namespace) -> int:
    from exporter.cli.render import locks_json, locks_table

    config = _config(args.config_file)
    assessed = _assessed(args, config)
    if args.output == "json":
        print(locks_json(assessed.grouped, assessed.snapshot))
        return EXIT_OK
    for line in locks_table(assessed.grouped, assessed.snapshot):
        print(line)
    return EXIT_OK


def cmd_terminate(args: argparse.Namespace) -> int:
    from exporter.cli.terminate import signal_group
    from exporter.core.model import SignalAction

    config = _config(args.config_file)
    action: SignalAction = "cancel" if args.cancel else "terminate"
    db = _database(args, config)
    try:
        result = signal_group(
            db, config, args.parent, action, dry_run=args.dry_run, target=args.target or DEFAULT_TARGET
        )
    finally:
        db.close()
    return EXIT_FAILURE if result.failed else EXIT_OK


def top_log_file(given: str | None) -> Path:
    """Where `pgparent top` writes its audit: the screen is the view's, so its log lines go to a file."""
    if given:
        return Path(given)
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "pgparent" / "top.log"


def cmd_top(args: argparse.Namespace) -> int:
    from exporter.core.units import parse_duration
    from exporter.run.daemon import statement_timeout

    try:
        interval = parse_duration(args.interval)
    except ValueError as exc:
        raise UsageError(f"--interval {args.interval}: {exc}") from None
    if not 0.1 <= interval <= 3600:
        raise UsageError(f"--interval {args.interval}: between 100ms and 1h")
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UsageError("top needs a terminal (for one-shot output: pgparent groups, pgparent locks)")
    config = _config(args.config_file)
    db = _database(args, config, statement_timeout(interval))
    log_file = top_log_file(args.log_file)
    try:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        stream = log_file.open("a", buffering=1, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"--log.file {log_file}: {exc.strerror}") from None
    from exporter.cli.top import run_top
    from exporter.run.live import Live

    with stream:
        configure("json", args.log_level, stream)
        return run_top(Live(db, config, args.target or DEFAULT_TARGET), interval, read_only=args.read_only)


def cmd_check(args: argparse.Namespace) -> int:
    import os

    from exporter.cli.doctor import label_notes, same_address
    from exporter.core import guards
    from exporter.host.procfs import host_memory
    from exporter.run.daemon import check_password

    config = load_config(args.config_file)
    resolved = _resolved(config, args.config_file)
    dsns = {spec.name: dsn for spec, dsn in resolved}
    errors: list[str] = []
    for target in config.targets:  # without connecting: a provider's extra, a DSN with a password of its own
        try:
            check_password(target, dsns.get(target.name), args.config_file)
        except ConfigInvalid as exc:
            errors += exc.errors
    if errors:
        raise ConfigInvalid(errors)
    _credentials(args, None)
    print(f"{args.config_file}: ok")
    for line in describe(config) + guards.describe(config):
        print(line)
    cgroups = _check_server(args, config) if args.dsn or args.dsn_file or args.target else ()
    for line in label_notes(config.targets):
        print(line)
    fleet = same_address(resolved)
    for line in warnings(config) + fleet + guards.warnings(config, host_memory(cgroups), os.cpu_count()):
        print(f"warning: {args.config_file}: {line}")
    return EXIT_OK


def _resolved(config: Config, source: str) -> list[tuple[TargetConfig, str]]:
    """The targets whose DSN can be had now, with it (one that cannot is the daemon's to report at start)."""
    from exporter.run.daemon import target_dsn

    out = []
    for spec in config.targets:
        try:
            out.append((spec, target_dsn(spec, source)))
        except ConfigInvalid:
            continue
    return out


def _check_server(args: argparse.Namespace, config: Config) -> tuple[Any, ...]:
    """What the server of --dsn (or --target) gives the rules: its cost sources, and the rules inactive there; the
    memory cgroups of its postmaster, where pgparent sees it."""
    from exporter.core.cost import REASONS
    from exporter.core.guards import inactive
    from exporter.run.costs import find

    db = _database(args, config)
    try:
        caps = db.connect()
        found = find(caps, config.cost)
    finally:
        db.close()
    for source in ("proc", "proc_io", "backend_stats"):
        reason = found.sources.unavailable.get(source)
        print(f"cost source {source}: " + ("available" if reason is None else f"unavailable, {reason}: "
                                           f"{REASONS[reason]}"))
    missing = inactive(config, found.sources)
    for rule, reason in missing.items():
        print(f"rule {rule}: inactive on this server ({reason}): its guard conditions have no figures here and "
              "never fire")
    if config.rules and not missing:
        print("every rule has the figures it reads on this server")
    return found.cgroups


def cmd_doctor(args: argparse.Namespace) -> int:
    from exporter.cli.doctor import Line, examine, fleet, report
    from exporter.run.daemon import target_database, target_dsn

    config = load_config(args.config_file) if args.config_file else Config()
    if not config.targets or args.target is not None:  # one server: a broken password source is exit 2
        spec = next((t for t in config.targets if t.name == args.target), None)
        db = _database(args, config)
        try:
            lines, _ = examine(db, config, spec)
        finally:
            db.close()
        out, status = report([(f"target {args.target or DEFAULT_TARGET} ({db.masked})", lines)])
        print("\n".join(out))
        return status
    # The whole fleet, then its pitfalls; a target whose DSN or password cannot be had is said and the rest examined.
    sections, servers, unusable = [], {}, False
    for spec in config.targets:
        try:
            db = target_database(spec, target_dsn(spec, args.config_file), source=args.config_file)
        except ConfigInvalid as exc:
            sections.append((f"target {spec.name}", [Line("fix", "config", e) for e in exc.errors]))
            unusable = True
            continue
        try:
            lines, servers[spec.name] = examine(db, config, spec)
        except CredentialUnavailable as exc:
            lines, unusable = [Line("fix", "password", str(exc))], True
        finally:
            db.close()
        sections.append((f"target {spec.name} ({db.masked})", lines))
    sections.append(("fleet", fleet(config, servers)))
    out, status = report(sections)
    print("\n".join(out))
    return EXIT_USAGE if unusable else status


def cmd_run(args: argparse.Namespace) -> int:
    from exporter.face.http import parse_listen_address
    from exporter.face.webconfig import load_web_config
    from exporter.run.daemon import Daemon, statement_timeout

    configure(args.log_format, args.log_level)
    config = _config(args.config_file)
    listen = parse_listen_address(args.listen)
    limits = Limits(workers=args.web_workers, max_connections=args.web_max_connections)
    web, tls = load_web_config(args.web_config_file) if args.web_config_file else (None, None)
    _no_password_flags(args, config)
    db = None if config.targets else _default_database(args, statement_timeout(config.interval))
    daemon = Daemon(
        config,
        db,
        config_path=args.config_file,
        force_dry_run=args.dry_run,
        shard=args.shard,
        listen=listen,
        web=web,
        tls=tls,
        limits=limits,
    )
    return daemon.run()


def cmd_demo(args: argparse.Namespace) -> int:
    from exporter.cli.demo import run_demo

    return run_demo(hold=args.hold)


COMMANDS = {
    "run": cmd_run,
    "groups": cmd_groups,
    "locks": cmd_locks,
    "terminate": cmd_terminate,
    "top": cmd_top,
    "check": cmd_check,
    "demo": cmd_demo,
    "doctor": cmd_doctor,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("groups", "locks", "check", "doctor"):
        configure("console" if sys.stderr.isatty() else "json", "warning")
    elif args.command == "terminate":
        configure(args.log_format, args.log_level)
    try:
        return COMMANDS[args.command](args)
    except ConfigInvalid as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        return EXIT_USAGE
    except UsageError as exc:
        print(f"pgparent: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except CredentialUnavailable as exc:  # the password source's setup is wrong (before DatabaseUnavailable: a kind)
        print(f"pgparent: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except DatabaseUnavailable as exc:
        print(f"pgparent: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
