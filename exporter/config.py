"""The YAML config file: schema, duration syntax, loading, and error reports as `FILE: dotted.path: message`.

The schema is a contract shared with README.md and rules.yaml. Every model forbids unknown keys and is frozen, so a
loaded `Config` can be handed to other threads and swapped whole on reload.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator, model_validator

from exporter.errors import ConfigInvalid

DEFAULT_PATTERN = r"^(?P<parent>[^:]+:[^:]+)"
MAX_COUNT = 2**31 - 1
"""Upper bound of counts (sessions, groups, signals): far above any max_connections, and exact as a float."""

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: object) -> float:
    """Seconds from `500ms`, `30s`, `10m`, `1h30m`, `2d`, or a plain non-negative number of seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 30s, 10m or 1h30m, got a boolean")
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:
            raise ValueError(
                f"duration must be a finite number of seconds >= 0, got a {len(str(value))}-digit number"
            ) from None
    elif isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            pos, seconds = 0, 0.0
            for part in _DURATION_PART.finditer(text):
                if part.start() != pos:
                    break
                seconds += float(part.group(1)) * _UNIT_SECONDS[part.group(2)]
                pos = part.end()
            if pos != len(text) or not text:
                raise ValueError(
                    f"invalid duration {value!r}: use a number of seconds or units ms, s, m, h, d (e.g. 500ms, 1h30m)"
                ) from None
    else:
        raise ValueError(f"expected a duration such as 30s, 10m or 1h30m, got {type(value).__name__}")
    if seconds != seconds or seconds < 0 or seconds == float("inf"):
        raise ValueError(f"duration must be a finite number of seconds >= 0, got {value!r}")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]
M = TypeVar("M", bound=BaseModel)
Action = Literal["terminate", "cancel", "log"]


class StrictModel(BaseModel):
    """Unknown keys are errors; loaded values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Grouping(StrictModel):
    """How a session's parent tag is read from its application_name."""

    pattern: str = DEFAULT_PATTERN
    max_groups: int = Field(500, ge=1, le=MAX_COUNT)

    @field_validator("pattern")
    @classmethod
    def _has_parent_group(cls, value: str) -> str:
        try:
            compiled = re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        if "parent" not in compiled.groupindex:
            raise ValueError("the regular expression needs a named group 'parent', e.g. ^(?P<parent>[^:]+:[^:]+)")
        return value


class Protect(StrictModel):
    """Sessions never signalled, whatever a rule says. Entries are globs; a list given replaces its default."""

    users: tuple[str, ...] = ("azuresu", "replication")
    databases: tuple[str, ...] = ("azure_maintenance", "azure_sys")
    applications: tuple[str, ...] = ("pg_dump", "pg_basebackup", "pg_restore", "pgparent")


class Limits(StrictModel):
    max_terminations_per_cycle: int = Field(100, ge=1, le=MAX_COUNT)


LOCK_KEY = int.from_bytes(b"pgparent", "big")
"""The default advisory lock key: the bytes of 'pgparent' as a bigint (8099008829985656436)."""


class LeaderElection(StrictModel):
    """Exactly one enforcer among replicas watching one server: the holder of a session-level advisory lock."""

    enabled: bool = True
    lock_key: int = Field(LOCK_KEY, ge=-(2**63), le=2**63 - 1)


class Match(StrictModel):
    """Which groups a rule applies to: globs on the parent tag and, optionally, on database and user."""

    parent: str = "*"
    database: str | None = None
    user: str | None = None


CONDITIONS = (
    "max_sessions",
    "max_active_sessions",
    "max_query_duration",
    "max_transaction_duration",
    "max_idle_in_transaction",
    "max_group_age",
)


class Rule(StrictModel):
    """A group limit. It fires when any condition it sets is exceeded, for `for` seconds at every poll."""

    name: str = Field(min_length=1, max_length=100)
    match: Match = Match()
    max_sessions: int | None = Field(None, ge=0, le=MAX_COUNT)
    max_active_sessions: int | None = Field(None, ge=0, le=MAX_COUNT)
    max_query_duration: Duration | None = None
    max_transaction_duration: Duration | None = None
    max_idle_in_transaction: Duration | None = None
    max_group_age: Duration | None = None
    for_: Duration = Field(0.0, alias="for")
    action: Action = "log"
    dry_run: bool = False

    @model_validator(mode="after")
    def _needs_a_condition(self) -> Rule:
        if all(getattr(self, name) is None for name in CONDITIONS):
            raise ValueError(f"a rule needs at least one condition: {', '.join(CONDITIONS)}")
        return self

    def conditions(self) -> dict[str, float]:
        """The conditions this rule sets, by name."""
        return {name: float(value) for name in CONDITIONS if (value := getattr(self, name)) is not None}


class Config(StrictModel):
    interval: Duration = 5.0
    dry_run: bool = False
    grouping: Grouping = Grouping()
    protect: Protect = Protect()
    limits: Limits = Limits()
    leader_election: LeaderElection = LeaderElection()
    rules: tuple[Rule, ...] = ()

    @field_validator("interval")
    @classmethod
    def _positive_interval(cls, value: float) -> float:
        if value < 0.1:
            raise ValueError("interval must be at least 100ms")
        return value

    @field_validator("rules")
    @classmethod
    def _unique_names(cls, rules: tuple[Rule, ...]) -> tuple[Rule, ...]:
        seen: set[str] = set()
        for rule in rules:
            if rule.name in seen:
                raise ValueError(f"rule name {rule.name!r} is used twice; names label metrics and must be unique")
            seen.add(rule.name)
        return rules


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that rejects a key given twice in one mapping instead of silently keeping the last."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark, "found unhashable key", key_node.start_mark
            ) from None
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _dotted(loc: tuple[int | str, ...]) -> str:
    """`rules.0.match.parent`; a key that is not a plain word (a user's typo may hold anything) is JSON-quoted, so
    every error stays one parseable line."""
    parts = [str(p) if _PLAIN_KEY.fullmatch(str(p)) else json.dumps(str(p)) for p in loc]
    return ".".join(parts) or "(root)"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _message(error: Any) -> str:
    msg = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    return _one_line(msg)


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


def load_config(path: str | Path) -> Config:
    """Read, parse and validate a config file; raise ConfigInvalid with every problem found."""
    return parse_config(load_yaml(path), str(path))


def load_yaml(path: str | Path) -> object:
    """Read and parse a YAML file (safe loader, duplicate keys rejected); raise ConfigInvalid on failure."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigInvalid([f"{source}: (file): cannot read: {reason}"]) from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or getattr(exc, "reason", None) or str(exc)
        raise ConfigInvalid([f"{source}: (yaml): {_one_line(str(problem))}{where}"]) from None
    return data


def describe(config: Config) -> list[str]:
    """A human summary of a valid config, one line per item, for `pgparent check`."""
    lines = [
        f"interval {config.interval:g}s, dry_run {str(config.dry_run).lower()}, "
        f"max_groups {config.grouping.max_groups}, "
        f"max_terminations_per_cycle {config.limits.max_terminations_per_cycle}",
        f"grouping pattern {config.grouping.pattern}",
        f"{len(config.rules)} rule(s):",
    ]
    for rule in config.rules:
        match = ", ".join(f"{k}={v}" for k, v in rule.match.model_dump().items() if v is not None)
        conds = ", ".join(f"{k} > {v:g}" for k, v in rule.conditions().items())
        extra = f" for {rule.for_:g}s" if rule.for_ else ""
        dry = " (dry run)" if rule.dry_run or config.dry_run else ""
        lines.append(f"  - {rule.name}: {match}: {conds}{extra} -> {rule.action}{dry}")
    return lines
