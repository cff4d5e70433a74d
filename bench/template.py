"""The template of docs/BENCHMARKS.md (bench/BENCHMARKS.md.tmpl) as named blocks, and the few ways its placeholders
show a figure (seconds or "never", how far a goal was missed, a spread)."""

from __future__ import annotations

from pathlib import Path
from string import Template
from typing import Any

from bench.goals import Outcome

TEMPLATE = Path(__file__).with_name("BENCHMARKS.md.tmpl")
ABSENT = "\x00"
"""What a section that was not measured fills its placeholder with: a line holding only it is dropped."""


class Blocks:
    """The template's blocks by name: from a line `@@ name` to the next such line, the blank lines before it left
    out; what comes before the first block is the template's own description."""

    def __init__(self, path: Path = TEMPLATE) -> None:
        self.blocks: dict[str, Template] = {}
        name: str | None = None
        lines: list[str] = []
        for line in [*path.read_text().splitlines(), "@@"]:
            if line.startswith("@@"):
                while lines and not lines[-1]:
                    lines.pop()
                if name is not None:
                    self.blocks[name] = Template("\n".join(lines))
                name, lines = line[2:].strip(), []
            else:
                lines.append(line)

    def __call__(self, name: str, **values: Any) -> str:
        """The block filled with `values` (every placeholder must have one)."""
        return self.blocks[name].substitute({k: str(v) for k, v in values.items()})


def g(value: float) -> str:
    """A number as the docs write intervals and windows: 1 for 1.0, 0.5 for 0.5."""
    return f"{value:g}"


def joined(values: list[Any], unit: str = "") -> str:
    """A spread or a series of ratios: `17 / 17 / 16`."""
    return " / ".join(f"{v}{unit}" for v in values)


def seconds(b: Blocks, value: float | None) -> str:
    return b("never") if value is None else b("seconds", value=g(value))


def amount(b: Blocks, over: float, unit: str) -> str:
    """How far past a bound: in points or MB to a tenth; seconds in ms under one, else to a tenth of a second."""
    if unit == "s":
        return b("ms", value=round(over * 1000)) if over < 1 else b("seconds", value=f"{over:.1f}")
    return b("points" if unit == "points" else "mb", value=round(over, 1))


def verdict(b: Blocks, outcome: Outcome) -> str:
    """The goal met, or how it was missed: by how much where the goal has a unit and a figure, else just missed."""
    if outcome.met:
        return b("met")
    if not outcome.goal.unit:
        return b("not_met")
    if outcome.over is None:
        return b("missed")
    return b("missed_by", by=amount(b, outcome.over, outcome.goal.unit))
