"""The config file: read it, parse its YAML (safe loader, duplicate keys refused) and validate it against the schema
(exporter/core/settings.py), every problem reported at once as `FILE: dotted.path: message`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from exporter.core.settings import Config, one_line, parse_config
from exporter.errors import ConfigInvalid


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
        raise ConfigInvalid([f"{source}: (yaml): {one_line(str(problem))}{where}"]) from None
    return data


