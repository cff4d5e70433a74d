"""Pure: the config's schema, duration syntax, and error reports as `FILE: dotted.path: message`. No I/O: the file
is read by exporter/config.py.

The schema is a contract shared with README.md and rules.yaml. Every model forbids unknown keys and is frozen, so a
loaded `Config` can be handed to other threads and swapped whole on reload.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterable
from functools import cached_property
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from exporter.core.conditions import BY_NAME, CONDITIONS, NAMES
from exporter.core.model import Reading, SignalAction
from exporter.core.tags import COMMENT_KEY, KINDS, SourceKind, Sources
from exporter.core.units import Threshold, parse_duration, parse_size, parse_threshold
from exporter.errors import ConfigInvalid

DEFAULT_PATTERN = r"^(?P<parent>[^:]+:[^:]+)"
MAX_COUNT = 2**31 - 1
"""Upper bound of counts (sessions, groups, signals): far above any max_connections, and exact as a float."""

Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]
HostThreshold = Annotated[Threshold, BeforeValidator(parse_threshold)]
M = TypeVar("M", bound=BaseModel)
RuleAction = Literal[SignalAction, "log"]
"""A rule signals its group's sessions, or only logs that it fires."""


class StrictModel(BaseModel):
    """Unknown keys are errors; loaded values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _parent_regex(value: str) -> str:
    try:
        compiled = re.compile(value)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression: {exc}") from None
    if "parent" not in compiled.groupindex:
        raise ValueError("the regular expression needs a named group 'parent', e.g. ^(?P<parent>[^:]+:[^:]+)")
    return value


MAX_SOURCES = 8
"""Sources per config at most: each comment key is one more expression per row of every poll."""


class SourceSpec(StrictModel):
    """One entry of `grouping.sources`: exactly one of its keys."""

    application_name: str | None = None
    comment: str | None = None
    user: str | None = None
    database: str | None = None

    @field_validator("application_name", "user", "database")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        return None if value is None else _parent_regex(value)

    @field_validator("comment")
    @classmethod
    def _key(cls, value: str | None) -> str | None:
        if value is not None and not COMMENT_KEY.fullmatch(value):
            raise ValueError(
                f"a comment key is 1 to 64 letters, digits, '_', '.' or '-' (as sqlcommenter and marginalia write "
                f"them), got {value!r}"
            )
        return value

    @model_validator(mode="before")
    @classmethod
    def _a_mapping(cls, data: object) -> object:
        if not isinstance(data, dict):
            raise ValueError(
                f"a source is a mapping with one key (application_name: REGEX, comment: KEY, user: REGEX or "
                f"database: REGEX), got {type(data).__name__}"
            )
        return data

    @model_validator(mode="after")
    def _exactly_one(self) -> SourceSpec:
        given = [k for k in KINDS if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                "a source is exactly one of application_name: REGEX, comment: KEY, user: REGEX, database: REGEX"
                + (f" (got {', '.join(given)})" if given else "")
            )
        return self

    def spec(self) -> tuple[SourceKind, str]:
        """(kind, argument) of this entry."""
        kind = next(k for k in KINDS if getattr(self, k) is not None)
        return kind, str(getattr(self, kind))


class Grouping(StrictModel):
    """Where a session's parent tag comes from (`sources`, first match wins), and the cardinality cap."""

    sources: tuple[SourceSpec, ...] = ()
    """Empty means one application_name source with `pattern`."""
    pattern: str = DEFAULT_PATTERN
    """Shorthand for `sources: [{application_name: PATTERN}]`."""
    max_groups: int = Field(500, ge=1, le=MAX_COUNT)

    @field_validator("pattern")
    @classmethod
    def _has_parent_group(cls, value: str) -> str:
        return _parent_regex(value)

    @field_validator("sources")
    @classmethod
    def _bounded(cls, value: tuple[SourceSpec, ...]) -> tuple[SourceSpec, ...]:
        if len(value) > MAX_SOURCES:
            raise ValueError(f"at most {MAX_SOURCES} sources, got {len(value)}")
        return value

    @model_validator(mode="after")
    def _sources_or_pattern(self) -> Grouping:
        if "sources" in self.model_fields_set and not self.sources:
            raise ValueError("sources needs at least one entry (leave it out for the default application_name pattern)")
        if self.sources and "pattern" in self.model_fields_set:
            raise ValueError(
                "give sources or pattern, not both: pattern is the shorthand for sources: [{application_name: PATTERN}]"
            )
        return self

    def specs(self) -> tuple[tuple[SourceKind, str], ...]:
        """The sources as (kind, argument) pairs, the pattern shorthand expanded."""
        if self.sources:
            return tuple(s.spec() for s in self.sources)
        return (("application_name", self.pattern),)

    @cached_property
    def compiled(self) -> Sources:
        """The sources compiled once per loaded config (a reload builds a new one)."""
        return Sources.of(self.specs())


class Audit(StrictModel):
    """What audit events may carry."""

    query_text: Literal["excerpt", "none"] = "excerpt"
    """`none`: the poll reads no query text at all, and audit events carry none (for sites where query text may hold
    secrets). Comment tags are still read, on the server."""


def _tristate(value: object) -> object:
    """YAML reads an unquoted `true`, `false` (and `yes`, `no`, `on`, `off`) as a boolean: taken as "true"/"false"."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value


Tristate = Annotated[Literal["auto", "true", "false"], BeforeValidator(_tristate)]


class Protect(StrictModel):
    """Sessions never signalled, whatever a rule says. Entries are globs; a list given replaces its default.

    The defaults name the roles and databases the managed services keep for themselves (their sources:
    docs/managed/README.md): Azure Database for PostgreSQL flexible server ("Flexible Server: roles", azure_pg_admin),
    Amazon RDS ("Master user account privileges", rdsadmin), Cloud SQL ("About PostgreSQL users", cloudsqladmin) and
    AlloyDB ("predefined roles", alloydbadmin).
    """

    users: tuple[str, ...] = (
        "azuresu", "azure_superuser", "azure_pg_admin", "replication",  # Azure
        "rdsadmin", "rdstopmgr",  # Amazon RDS
        "cloudsqladmin", "cloudsqlimportexport", "alloydbadmin", "alloydbagent",  # Cloud SQL, AlloyDB
    )
    databases: tuple[str, ...] = ("azure_maintenance", "azure_sys", "rdsadmin", "cloudsqladmin", "alloydbadmin")
    applications: tuple[str, ...] = ("pg_dump", "pg_basebackup", "pg_restore", "pgparent")
    superusers: Tristate = "auto"
    """Sessions of superuser roles, and sessions with no role (usename NULL): `auto` protects them where pgparent's
    own role is not a superuser (a signal to a superuser's session would fail there with 42501: on a managed server
    they are the provider's own), `true` always, `false` never (role-less ones then neither)."""


class Limits(StrictModel):
    max_terminations_per_cycle: int = Field(100, ge=1, le=MAX_COUNT)


LOCK_KEY = int.from_bytes(b"pgparent", "big")
"""The default advisory lock key: the bytes of 'pgparent' as a bigint (8099008829985656436)."""


class LeaderElection(StrictModel):
    """Exactly one enforcer among replicas watching one server: the holder of a session-level advisory lock."""

    enabled: bool = True
    lock_key: int = Field(LOCK_KEY, ge=-(2**63), le=2**63 - 1)
    shard: bool = False
    """Replicas with the same config divide the targets: each target is polled and enforced by its lock's holder
    only (`--shard` sets it too)."""


def _switch(value: object) -> object:
    """YAML reads an unquoted `off` (and `on`, `no`, `yes`) as a boolean: false is `off`, true is `auto`."""
    if isinstance(value, bool):
        return "auto" if value else "off"
    return value


Switch = Annotated[Literal["auto", "off"], BeforeValidator(_switch)]


class CostSettings(StrictModel):
    """What each group costs the server (exporter/core/cost.py): where the figures beyond load come from, and how
    long the series of a group no poll sees any more are kept."""

    proc: Switch = "auto"
    """auto: CPU, memory and I/O from /proc where pgparent sees the server's processes (the same host, or a pod
    sharing the process namespace); off: never read /proc."""
    backend_stats: Switch = "auto"
    """auto: WAL (and, without /proc/<pid>/io, bytes read and written) from PostgreSQL 18's per-backend counters;
    off: never read them."""
    retain: Duration = 900.0
    """A group's counter series no poll has mapped a group to for this long are dropped."""


class Match(StrictModel):
    """Which groups a rule applies to: globs on the parent tag and, optionally, on database and user."""

    parent: str = "*"
    database: str | None = None
    user: str | None = None
    target: str = "*"
    """A glob on the target's name: the rule applies to the servers it matches."""


class Escalate(StrictModel):
    """A cancel rule's next step: if its condition still holds for the same session `after` the cancel, end it."""

    after: Duration = 30.0
    action: Literal["terminate"] = "terminate"


DEFAULT_WINDOW = 60.0
"""The window of max_group_cpu and max_group_load when a rule gives none."""


class _RuleBase(StrictModel):
    """A group limit. It fires when any condition it sets is exceeded, for `for` seconds at every poll.

    The condition fields are added from `conditions.CONDITIONS` (see `Rule` below); read them with `conditions()`.
    """

    name: str = Field(min_length=1, max_length=100)
    match: Match = Match()
    for_: Duration = Field(0.0, alias="for")
    action: RuleAction = "log"
    scope: Literal["root_blockers", "group", "excess"] = "root_blockers"
    """When a rule fires on lock conditions only: signal the group's root blockers, or the whole group; `excess`: a
    `max_sessions` budget ends only the sessions beyond it (docs/budgets.md)."""
    trim_active: bool = False
    """With `scope: excess`: once no idle session is left to end, the budget may end running ones too."""
    dry_run: bool = False
    window: Duration = DEFAULT_WINDOW
    """What max_group_cpu and max_group_load average over."""
    host_memory_available_below: HostThreshold | None = None
    """The rule acts only while the server's memory available (the host's, or its cgroup's headroom) is below this
    size or share of its memory."""
    escalate: Escalate | None = None

    @model_validator(mode="after")
    def _needs_a_condition(self) -> _RuleBase:
        conditions = self.conditions()
        if not conditions:
            raise ValueError(f"a rule needs at least one condition: {', '.join(NAMES)}")
        trimming = [n for n in conditions if BY_NAME[n].trims(self.scope)]
        if self.scope == "excess":
            if "max_sessions" not in conditions:
                raise ValueError("scope: excess trims a group to its max_sessions budget: set max_sessions")
            lock = [n for n in conditions if BY_NAME[n].blocking]
            if lock:
                raise ValueError(
                    f"scope: excess cannot be combined with lock conditions ({', '.join(lock)}): on them the rule "
                    "would end its whole group; give them a rule of their own"
                )
        elif self.trim_active:
            raise ValueError("trim_active applies to a max_sessions budget with scope: excess")
        if trimming and self.action == "cancel":
            raise ValueError(
                f"{', '.join(trimming)} end idle connections, which a cancel cannot do: use action terminate (or log)"
            )
        if self.escalate is not None and self.action != "cancel":
            raise ValueError(f"escalate follows a cancel: rule {self.name!r} needs action: cancel (it has "
                             f"{self.action})")
        if self.window <= 0:
            raise ValueError("window must be longer than 0s")
        return self

    def conditions(self) -> dict[str, float]:
        """The conditions this rule sets, by name, in declaration order."""
        return {name: float(value) for name in NAMES if (value := getattr(self, name)) is not None}


_KIND_FIELDS: dict[str, Any] = {
    "duration": (Duration | None, None),
    "count": (int | None, Field(None, ge=0, le=MAX_COUNT)),
    "size": (Size | None, None),
    "rate": (float | None, Field(None, ge=0, le=MAX_COUNT)),
}
_CONDITION_FIELDS: dict[str, Any] = {c.name: _KIND_FIELDS[c.kind] for c in CONDITIONS}
Rule: type[_RuleBase] = create_model("Rule", __base__=_RuleBase, __module__=__name__, **_CONDITION_FIELDS)


DEFAULT_TARGET = "default"
"""The name of the one server given by --dsn or the environment when the config lists no targets."""

_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_RESERVED_LABELS = frozenset({"target", "parent", "state", "rule", "action", "reason", "job", "instance"})


PROVIDERS = ("azure", "aws", "gcp")
"""The cloud token providers of `password.provider`, each the optional extra of the same name."""
Provider = Literal["azure", "aws", "gcp"]
DEFAULT_COMMAND_TIMEOUT = 10.0


def _argv(value: object) -> object:
    """A command as an argv list; a string is split as a POSIX shell would split it (it is never run by a shell)."""
    if isinstance(value, str):
        try:
            value = shlex.split(value)
        except ValueError as exc:
            raise ValueError(f"cannot split the command into arguments: {exc}") from None
    if isinstance(value, list | tuple) and not value:
        raise ValueError("the command is empty: give the program and its arguments")
    return value


Argv = Annotated[tuple[str, ...], BeforeValidator(_argv)]


class PasswordSource(StrictModel):
    """Where a target's password comes from, fetched again for every new connection (exporter/pg/credentials.py):
    exactly one of `command`, `file`, `provider`, and the options of that one."""

    command: Argv | None = None
    """Run without a shell for each new connection; its stdout is the password, or a JSON object with a token and
    its expiry (az account get-access-token), reused until shortly before it expires."""
    file: str | None = None
    """Read again for each new connection: its first line is the password."""
    provider: Provider | None = None
    """A cloud token provider (the optional extra of the same name: pip install 'pgparent[azure]')."""
    timeout: Duration | None = None
    """How long `command` may run (default 10s)."""
    region: str | None = Field(None, min_length=1)
    """aws: the region the token is signed for (default: AWS_REGION, else boto3's own chain: AWS_DEFAULT_REGION, the
    profile in ~/.aws/config)."""
    client_id: str | None = Field(None, min_length=1)
    """azure: the client id of a user-assigned managed identity (default: AZURE_CLIENT_ID, else the system-assigned
    identity or whatever else DefaultAzureCredential finds)."""
    scope: str | None = Field(None, min_length=1)
    """azure: the token's scope (default https://ossrdbms-aad.database.windows.net/.default; sovereign clouds have
    their own)."""

    @model_validator(mode="after")
    def _exactly_one(self) -> PasswordSource:
        given = [k for k in ("command", "file", "provider") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("a password source is exactly one of command, file, provider"
                             + (f" (got {', '.join(given)})" if given else ""))
        if self.timeout is not None:
            if self.command is None:
                raise ValueError("timeout applies to command only")
            if self.timeout <= 0:
                raise ValueError("timeout must be longer than 0s")
        for option, provider in (("region", "aws"), ("client_id", "azure"), ("scope", "azure")):
            if getattr(self, option) is not None and self.provider != provider:
                raise ValueError(f"{option} applies to provider: {provider} only")
        return self

    @property
    def command_timeout(self) -> float:
        return DEFAULT_COMMAND_TIMEOUT if self.timeout is None else self.timeout

    def describe(self) -> str:
        """What a log line or `pgparent check` may say of the source (never a secret: a command's arguments may hold
        one, so only its program is named)."""
        if self.command is not None:
            return f"password command {self.command[0]}"
        if self.file is not None:
            return f"password file {self.file}"
        return f"password provider {self.provider}"


class TargetConfig(StrictModel):
    """One monitored server of a fleet: a unique name (the `target` label), where its DSN comes from, constant
    labels for its series, and an optional dry run of its own."""

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$")
    dsn: str | None = None
    dsn_file: str | None = None
    dsn_env: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    labels: dict[str, str] = Field(default_factory=dict)
    dry_run: bool = False
    sessions: Literal["server", "database"] = "server"
    """Whose sessions the target reads and signals: every database of its server, or only its DSN's database (for a
    fleet with a target per database of one server)."""
    password: PasswordSource | None = None
    """Where the password of each new connection comes from, when it expires (cloud tokens) or rotates; the DSN then
    carries none."""

    @model_validator(mode="after")
    def _one_dsn_source(self) -> TargetConfig:
        given = [k for k in ("dsn", "dsn_file", "dsn_env") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"target {self.name!r} needs exactly one of dsn, dsn_file, dsn_env (got {len(given)})")
        return self

    @field_validator("labels")
    @classmethod
    def _label_names(cls, labels: dict[str, str]) -> dict[str, str]:
        for name in labels:
            if not _LABEL_NAME.fullmatch(name) or name.startswith("__"):
                raise ValueError(f"label {name!r} is not a Prometheus label name")
            if name in _RESERVED_LABELS:
                raise ValueError(f"label {name!r} is reserved: pgparent's series already carry it")
        return labels


class Config(StrictModel):
    interval: Duration = 5.0
    dry_run: bool = False
    deadlines: bool = True
    """Act on a time limit at the moment it is crossed (exporter/deadlines.py); false: only at polls."""
    sample_interval: Duration = 0.1
    """How often the sessions under a memory condition are sampled between polls (exporter/run/sampler.py)."""
    grouping: Grouping = Grouping()
    protect: Protect = Protect()
    limits: Limits = Limits()
    leader_election: LeaderElection = LeaderElection()
    targets: tuple[TargetConfig, ...] = ()
    """Servers to watch; none means the one server of --dsn / the environment, named `default`."""
    audit: Audit = Audit()
    cost: CostSettings = CostSettings()
    rules: tuple[Rule, ...] = ()

    @cached_property
    def poll(self) -> Reading:
        """What the poll reads for this config (exporter/pg/database.py: `Database.snapshot`)."""
        return Reading(self.grouping.compiled.comment_keys, self.audit.query_text == "excerpt")

    @field_validator("targets")
    @classmethod
    def _unique_targets(cls, targets: tuple[TargetConfig, ...]) -> tuple[TargetConfig, ...]:
        if (twice := _repeated(t.name for t in targets)) is not None:
            raise ValueError(f"target name {twice!r} is used twice; names label series and must be unique")
        return targets

    @field_validator("interval")
    @classmethod
    def _positive_interval(cls, value: float) -> float:
        if value < 0.1:
            raise ValueError("interval must be at least 100ms")
        return value

    @field_validator("sample_interval")
    @classmethod
    def _sample_interval(cls, value: float) -> float:
        if value < 0.01:
            raise ValueError("sample_interval must be at least 10ms")
        return value

    @field_validator("cost")
    @classmethod
    def _retain_spans_polls(cls, cost: CostSettings, info: ValidationInfo) -> CostSettings:
        interval = info.data.get("interval")
        if interval is not None and cost.retain < 2 * interval:
            raise ValueError(
                f"retain ({cost.retain:g}s) must be at least two intervals ({2 * interval:g}s): a group absent for "
                "one poll would lose its series"
            )
        return cost

    @field_validator("rules")
    @classmethod
    def _unique_names(cls, rules: tuple[Rule, ...]) -> tuple[Rule, ...]:
        if (twice := _repeated(r.name for r in rules)) is not None:
            raise ValueError(f"rule name {twice!r} is used twice; names label metrics and must be unique")
        return rules


def _repeated(names: Iterable[str]) -> str | None:
    """The first name given twice, if any."""
    seen: set[str] = set()
    for name in names:
        if name in seen:
            return name
        seen.add(name)
    return None


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _dotted(loc: tuple[int | str, ...]) -> str:
    """`rules.0.match.parent`; a key that is not a plain word (a user's typo may hold anything) is JSON-quoted, so
    every error stays one parseable line."""
    parts = [str(p) if _PLAIN_KEY.fullmatch(str(p)) else json.dumps(str(p)) for p in loc]
    return ".".join(parts) or "(root)"


def one_line(text: str) -> str:
    return " ".join(text.split())


def _message(error: Any) -> str:
    msg = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    return one_line(msg)


def parse_model(model: type[M], data: object, source: str) -> M:
    """Validate already-parsed YAML against `model`; raise ConfigInvalid listing every problem."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigInvalid([f"{source}: (root): must be a mapping of settings, got {type(data).__name__}"])
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigInvalid(
            [f"{source}: {_dotted(err['loc'])}: {_message(err)}" for err in exc.errors(include_url=False)]
        ) from None


def parse_config(data: object, source: str) -> Config:
    """Validate already-parsed YAML as a pgparent config; raise ConfigInvalid listing every problem."""
    return parse_model(Config, data, source)
