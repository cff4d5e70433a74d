"""`pgparent doctor`: connect as the daemon would and say, one line each, what pgparent can see and do on a server,
and the exact fix for each gap (the GRANT, the setting, the port, the sslmode).

A line is `ok` (pgparent can do what the config asks there), `fix` (it cannot: the line says how to make it), or
`note` (worth knowing, nothing to do). The exit status is 0 when no line says `fix`, 1 otherwise. Managed services are
recognised by what the server says about itself (the roles, databases and settings each reserves) and their own ways
named (docs/managed/). With a config that lists targets and no `--target`, every target is examined, then the fleet.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Literal

from exporter.core.cost import REASONS
from exporter.core.guards import inactive
from exporter.core.rules import Protection
from exporter.core.settings import Config, TargetConfig
from exporter.errors import CredentialUnavailable, DatabaseUnavailable
from exporter.pg.database import Capabilities, Database, ServerFacts
from exporter.pg.dsn import parse_dsn
from exporter.run.costs import find
from exporter.run.monitor import tls_weakness

Status = Literal["ok", "fix", "note"]

COMMENT_QUERY_BYTES = 4096
"""The track_activity_query_size a comment source wants: sqlcommenter and marginalia append their comment at the end
of the query, which PostgreSQL cuts at this size (default 1024 bytes)."""


@dataclass(frozen=True, slots=True)
class Line:
    status: Status
    topic: str
    text: str

    def __str__(self) -> str:
        return f"{self.status:<4} {self.topic}: {self.text}"


@dataclass(frozen=True, slots=True)
class Provider:
    """A managed PostgreSQL service: how to recognise it and its own ways."""

    key: str
    name: str
    roles: tuple[str, ...]
    """Roles that name the service where any one exists: its own and the group roles it gives customers."""
    reserved: tuple[str, ...]
    """Its own roles, which the default protect.users names (the customer's group roles are not among them)."""
    databases: tuple[str, ...]
    prefix: str
    """Its settings' prefix (azure.extensions, rds.force_ssl, cloudsql.iam_authentication, alloydb.*)."""
    advice: tuple[tuple[str, str], ...]
    """(topic, text) notes on its ways."""


PROVIDERS = (
    Provider(
        "azure", "Azure Database for PostgreSQL flexible server",
        ("azuresu", "azure_pg_admin", "azure_superuser"), ("azuresu", "azure_pg_admin", "azure_superuser"),
        ("azure_maintenance", "azure_sys"), "azure.",
        (("admin role", "the server admin is a member of azure_pg_admin, not a superuser: create pgparent's role as it "
                        "and grant it pg_monitor and pg_signal_backend (docs/managed/azure.md)"),
         ("Entra ID", "to log in with a Microsoft Entra token instead of a password: password: {provider: azure} "
                      "(pip install 'pgparent[azure]'), the Entra principal's name as the DSN's user"),
         ("port", "5432 is PostgreSQL; 6432 is the built-in PgBouncer (transaction mode), which pgparent must not "
                  "go through"),
         ("TLS", "Azure rotates its intermediate certificates: verify against the system roots "
                 "(sslmode=verify-full sslrootcert=system), never pin one"))),
    Provider(
        "rds", "Amazon RDS or Aurora PostgreSQL", ("rdsadmin", "rds_superuser", "rdstopmgr"), ("rdsadmin", "rdstopmgr"),
        ("rdsadmin",), "rds.",
        (("admin role", "the master user is a member of rds_superuser, not a superuser: create pgparent's role as it "
                        "and grant it pg_monitor and pg_signal_backend (docs/managed/rds.md)"),
         ("IAM", "to log in with an IAM token: GRANT rds_iam TO the role, and password: {provider: aws} "
                 "(pip install 'pgparent[aws]')"),
         ("RDS Proxy", "point pgparent at the instance (or cluster) endpoint, not at an RDS Proxy endpoint"))),
    Provider(
        "cloudsql", "Google Cloud SQL for PostgreSQL",
        ("cloudsqladmin", "cloudsqlsuperuser", "cloudsqlimportexport"), ("cloudsqladmin", "cloudsqlimportexport"),
        ("cloudsqladmin",), "cloudsql.",
        (("admin role", "users are members of cloudsqlsuperuser, not superusers: grant pgparent's role pg_monitor "
                        "and pg_signal_backend (docs/managed/cloudsql.md)"),
         ("IAM", "to log in as an IAM principal: password: {provider: gcp} (pip install 'pgparent[gcp]'), the "
                 "service account's email without .gserviceaccount.com as the DSN's user"))),
    Provider(
        "alloydb", "Google AlloyDB for PostgreSQL", ("alloydbadmin", "alloydbsuperuser", "alloydbagent"),
        ("alloydbadmin", "alloydbagent"), ("alloydbadmin",), "alloydb.",
        (("admin role", "users are members of alloydbsuperuser, not superusers: grant pgparent's role pg_monitor "
                        "and pg_signal_backend (docs/managed/cloudsql.md)"),
         ("IAM", "to log in as an IAM principal: password: {provider: gcp} (pip install 'pgparent[gcp]')"))),
)


CONNECT_FIXES = {
    "auth": "The server refused the credential: check the DSN's user and the password (an expired token? with a "
            "password: source, the one it gives now)",
    "rejected": "pg_hba.conf has no line for this address, user, database and encryption: add one, e.g. `hostssl "
                "all pgparent <pgparent's address>/32 scram-sha-256` (on a managed service: its firewall rules)",
    "tls": "The TLS handshake or the certificate check failed: sslrootcert must name the CA that signed the server's "
           "certificate (or `system`, libpq 16+), and the DSN's host a name the certificate holds",
    "unreachable": "No server answered there: check the host, the port (PostgreSQL's, not a pooler's such as 6432) "
                   "and the firewall between",
}
"""The fix for each reason a connection attempt fails (exporter/pg/failures.py)."""


def recognise(facts: ServerFacts) -> Provider | None:
    """The managed service the server belongs to, from the roles, databases and settings it reserves."""
    for p in PROVIDERS:
        if (set(p.roles) & set(facts.roles) or set(p.databases) & set(facts.databases)
                or any(s.startswith(p.prefix) for s in facts.settings)):
            return p
    return None


def _signals(config: Config, target: TargetConfig | None) -> bool:
    """Whether some rule of the config signals sessions on this target (not a dry run, not only logging)."""
    if config.dry_run or (target is not None and target.dry_run):
        return False
    return any(r.action != "log" and not r.dry_run for r in config.rules)


def _quoted(role: str) -> str:
    return '"' + role.replace('"', '""') + '"'


def examine(db: Database, config: Config, target: TargetConfig | None) -> tuple[list[Line], Capabilities | None]:
    """Connect as the daemon would and examine what pgparent can see and do there; the lines and the capabilities
    (None when it could not connect)."""
    started = time.monotonic()
    try:
        caps = db.connect()
        names = sorted({n for p in PROVIDERS for n in p.roles})
        facts = db.server_facts(names, sorted({d for p in PROVIDERS for d in p.databases}))
    except CredentialUnavailable:
        raise  # the password source is broken: a usage error (exit 2), like the config's
    except DatabaseUnavailable as exc:
        fix = CONNECT_FIXES.get(exc.reason or "")
        return [Line("fix", "connect", f"{exc}" + (f". {fix}" if fix else ""))], None
    took = (time.monotonic() - started) * 1000
    lines = [Line("ok", "connect", f"PostgreSQL {caps.server_version or caps.server_version_num} as role "
                                   f"{caps.role!r} to database {caps.database!r} in {took:.0f} ms")]
    if db.credentials is not None:
        lines.append(Line("ok", "password", f"from the {db.credentials.what}, asked afresh for each new connection "
                                            "(a token is reused until shortly before it expires)"))
    provider = recognise(facts)
    lines.append(Line("note", "server", f"{provider.name} (recognised by {_evidence(provider, facts)})"
                      if provider else "no managed service recognised (a self-managed PostgreSQL)"))
    lines += _privileges(caps, facts, config, target)
    lines += _connection(caps, provider, config)
    lines += _figures(caps, config)
    if provider is not None:
        lines += _protected(provider, config)
        lines += [Line("note", f"{provider.key} {topic}", text) for topic, text in provider.advice]
    return lines, caps


def _evidence(provider: Provider, facts: ServerFacts) -> str:
    found = [f"role {r}" for r in provider.roles if r in facts.roles]
    found += [f"database {d}" for d in provider.databases if d in facts.databases]
    found += [f"setting {s}" for s in facts.settings if s.startswith(provider.prefix)][:2]
    return ", ".join(found)


def _privileges(caps: Capabilities, facts: ServerFacts, config: Config, target: TargetConfig | None) -> list[Line]:
    role = _quoted(caps.role)
    lines: list[Line] = []
    protected = Protection.of(config.protect, caps.superuser).superusers
    mode = f"protect.superusers: {config.protect.superusers}"
    if caps.superuser:
        lines.append(Line("note", "superuser", f"role {caps.role!r} is a superuser: it sees and may signal every "
                                               "session; a role with pg_monitor and pg_signal_backend is enough"
                                               + (f" ({mode}: superusers' sessions stay protected)" if protected
                                                  else "")))
    elif protected:
        lines.append(Line("ok", "superuser", f"role {caps.role!r} is not a superuser, and superusers' sessions (a "
                                             f"managed service's own among them) are never signalled ({mode})"))
    else:
        lines.append(Line("fix", "superuser", f"role {caps.role!r} is not a superuser, and {mode} lets rules choose "
                                              "superusers' sessions, which it may not signal (42501): a signal to "
                                              "one is refused and counted as permission_denied. Use auto"))
    if caps.can_read_all_stats:
        lines.append(Line("ok", "pg_read_all_stats", "every session's state, timestamps and query are visible"))
    else:
        hidden = f" ({facts.hidden} now)" if facts.hidden else ""
        lines.append(Line("fix", "pg_read_all_stats",
                          f"other roles' sessions{hidden} show no state, timestamps or query: they are counted in "
                          "pgparent_hidden_sessions, and no rule fires on them or signals them. Run: GRANT pg_monitor "
                          f"TO {role};"))
    if caps.can_signal:
        lines.append(Line("ok", "pg_signal_backend", "may cancel and terminate other roles' sessions"))
    elif _signals(config, target):
        lines.append(Line("fix", "pg_signal_backend", "the rules signal sessions, but this role may signal only its "
                                                      f"own role's. Run: GRANT pg_signal_backend TO {role};"))
    else:
        lines.append(Line("note", "pg_signal_backend", "missing, and no rule signals here (GRANT pg_signal_backend "
                                                       f"TO {role}; before adding one that does)"))
    return lines


def _connection(caps: Capabilities, provider: Provider | None, config: Config) -> list[Line]:
    lines: list[Line] = []
    if caps.pooled:
        port = " (on Azure: port 5432, not the built-in PgBouncer's 6432)" if provider and provider.key == "azure" \
            else ""
        lines.append(Line("fix", "pooler", "the DSN reaches PostgreSQL through a connection pooler (the connection "
                                           "announced a pid its statements do not run in): point it at PostgreSQL "
                                           f"itself{port}; clients may keep using the pooler"))
    else:
        lines.append(Line("ok", "pooler", "connected to PostgreSQL itself, not through a pooler"))
    weakness = tls_weakness(caps)
    if weakness is not None:
        lines.append(Line("fix", "TLS", f"{weakness} (sslrootcert=system trusts the system's roots, libpq 16+)"))
    else:
        local = ", to a loopback or socket address" if caps.loopback else ""
        lines.append(Line("ok", "TLS", f"{caps.tls_version if caps.tls else 'off'}, sslmode={caps.sslmode}{local}"))
    if config.grouping.compiled.comment_keys and caps.track_activity_query_size < COMMENT_QUERY_BYTES:
        lines.append(Line("fix", "track_activity_query_size",
                          f"{caps.track_activity_query_size} bytes: a comment at the end of a longer query is cut "
                          f"off and its session untagged. Set it to {COMMENT_QUERY_BYTES} (ALTER SYSTEM SET "
                          f"track_activity_query_size = {COMMENT_QUERY_BYTES}; and a restart; on a managed service, "
                          "its server parameters)"))
    else:
        lines.append(Line("ok", "track_activity_query_size", f"{caps.track_activity_query_size} bytes"))
    lines.append(Line("note", "recovery", "a standby: pgparent monitors it and signals nothing there (the rules act "
                      "on the primary)" if caps.in_recovery else "a primary"))
    return lines


def _figures(caps: Capabilities, config: Config) -> list[Line]:
    """The cost sources (OS figures need the server's processes on this host) and the rules they leave inactive."""
    found = find(caps, config.cost)
    lines = []
    for source in ("proc", "proc_io", "backend_stats"):
        reason = found.sources.unavailable.get(source)
        lines.append(Line("ok", f"cost source {source}", "available") if reason is None
                     else Line("note", f"cost source {source}", f"unavailable ({reason}): {REASONS[reason]}"))
    for rule, reason in inactive(config, found.sources).items():
        lines.append(Line("fix", f"rule {rule}", f"its guard conditions read figures this server does not give "
                                                 f"({reason}: {REASONS[reason]}): they never fire here"))
    return lines


def _protected(provider: Provider, config: Config) -> list[Line]:
    """A config that replaced the protect lists may have dropped the service's reserved names."""
    users = [u for u in provider.reserved if not any(fnmatchcase(u, p) for p in config.protect.users)]
    if not users:
        return [Line("ok", "protect", f"protect.users names {', '.join(provider.reserved)}")]
    return [Line("fix", "protect", f"protect.users no longer names {', '.join(users)} (a list in the config "
                                   "replaces the default): add them back")]


def fleet(config: Config, servers: dict[str, Capabilities | None]) -> list[Line]:
    """The pitfalls of a fleet config: two targets reading one server's sessions, and differing label names."""
    lines: list[Line] = []
    by_server: dict[str, list[TargetConfig]] = {}
    for t in config.targets:
        caps = servers.get(t.name)
        if caps is not None:
            by_server.setdefault(caps.server, []).append(t)
    for server, targets in by_server.items():
        whole = [t.name for t in targets if t.sessions == "server"]
        if len(targets) > 1 and whole:
            lines.append(Line("fix", "fleet", f"targets {', '.join(t.name for t in targets)} reach one server "
                                              f"({server}), and {', '.join(whole)} read every database's sessions: "
                                              "give each `sessions: database` and a database of its own, or keep one"))
    lines += [Line("note", "fleet", text) for text in label_notes(config.targets)]
    return lines


def label_notes(targets: Sequence[TargetConfig]) -> list[str]:
    """Label names some targets have and others lack: exported empty for those (Prometheus reads an empty label as
    an absent one, so a query by the label still selects the right series)."""
    names = {n for t in targets for n in t.labels}
    out = []
    for name in sorted(names):
        lacking = [t.name for t in targets if name not in t.labels]
        if lacking:
            plural = "s" if len(lacking) > 1 else ""
            out.append(f"label {name!r} is exported empty for the target{plural} without it: {', '.join(lacking)}")
    return out


def same_address(targets: Iterable[tuple[TargetConfig, str]]) -> list[str]:
    """Targets whose DSNs name one host and port with a target reading every database there, found without
    connecting (for `pgparent check`); `doctor` tells by the server's own identity."""
    by_address: dict[tuple[str, str], list[TargetConfig]] = {}
    for t, dsn in targets:
        params = parse_dsn(dsn)
        host = str(params.get("hostaddr") or params.get("host") or "")
        if host:
            by_address.setdefault((host, str(params.get("port") or "5432")), []).append(t)
    out = []
    for (host, port), group in by_address.items():
        whole = [t.name for t in group if t.sessions == "server"]
        if len(group) > 1 and whole:
            out.append(f"targets: {', '.join(t.name for t in group)} reach {host}:{port}, and "
                       f"{', '.join(whole)} read every database's sessions: if that is one server, only the first to "
                       "connect is polled; give each `sessions: database` and a database of its own")
    return out


def report(sections: Iterable[tuple[str, list[Line]]]) -> tuple[list[str], int]:
    """The printed lines (a heading per section) and the exit status: 1 when some line says fix."""
    out: list[str] = []
    fixes = 0
    for heading, lines in sections:
        out.append(heading)
        out += [f"  {line}" for line in lines]
        fixes += sum(line.status == "fix" for line in lines)
    out.append("doctor: pgparent can do everything this config asks" if not fixes
               else f"doctor: {fixes} thing(s) to fix")
    return out, 1 if fixes else 0
