"""The one way tests build a pgparent config: a document of rules and top-level keys, as a `Config`
(`make_config`) or as the text of a rules file for a daemon process (`config_text`), validated as pgparent validates
a file either way.

A rule is a mapping as a rules file holds it; `top` are the file's other top-level keys (interval, grouping, targets,
protect, limits, audit, dry_run, ...). A config written out as a literal YAML text, as an operator writes one, needs
neither.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from exporter.core.settings import Config, parse_config


def _document(rules: tuple[Mapping[str, Any], ...], top: dict[str, Any]) -> dict[str, Any]:
    return {**top, "rules": [dict(r) for r in rules]} if rules else dict(top)


def make_config(*rules: Mapping[str, Any], **top: Any) -> Config:
    """The Config of a file holding `top`'s keys and, when there are any, `rules`."""
    return parse_config(_document(rules, top), "test")


def config_text(*rules: Mapping[str, Any], **top: Any) -> str:
    """The text of that file (JSON, which is YAML), checked first: a mistake fails here, not as a daemon that exits."""
    doc = _document(rules, top)
    parse_config(doc, "test")
    return json.dumps(doc, indent=2) + "\n"
