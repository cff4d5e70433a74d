"""The package's layers hold: the pure core reads no clock and imports nothing that does I/O, and no module imports
another that imports it back (import-linter checks the layers themselves; scripts/test runs `lint-imports`)."""

from __future__ import annotations

import ast
from pathlib import Path

import grimp

CORE = Path(__file__).resolve().parents[2] / "exporter" / "core"
CLOCKS = {("datetime", "now"), ("datetime", "utcnow"), ("datetime", "today"), ("date", "today")}
"""Calls that read the clock: the core takes the server's clock as input instead."""


def test_the_core_reads_no_clock() -> None:
    """No module of exporter/core calls datetime.now(), utcnow(), today(), or opens a file."""
    found = []
    for path in sorted(CORE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                if (func.value.id, func.attr) in CLOCKS:
                    found.append(f"{path.name}:{node.lineno}: {func.value.id}.{func.attr}()")
            elif isinstance(func, ast.Name) and func.id == "open":
                found.append(f"{path.name}:{node.lineno}: open()")
    assert found == []


def test_no_import_circle() -> None:
    """No module of exporter imports, directly or through others, a module that imports it back."""
    graph = grimp.build_graph("exporter", cache_dir=None)
    circles = sorted(
        (a, b)
        for a in graph.modules
        for b in graph.find_modules_directly_imported_by(a)
        if graph.chain_exists(importer=b, imported=a)
    )
    assert circles == []


STAGES = {"evaluate", "schedule", "build", "group", "account"}
"""The pipeline's stages, as exporter/core/assess.py calls them."""
STAGE_MODULES = {"exporter.core.policy", "exporter.core.deadlines", "exporter.core.locks", "exporter.core.grouping",
                 "exporter.core.cost"}


def test_one_place_runs_the_pipeline() -> None:
    """Outside exporter/core/assess.py, nothing in the package, the benchmark or the integration tests calls the
    pipeline's stages itself: each calls `assess` (the unit tests of one stage may call that stage)."""
    root = CORE.parents[1]
    found = []
    for folder in ("exporter", "bench", "harness", "scripts", "tests/integration"):
        for path in sorted((root / folder).rglob("*.py")):
            if path == CORE / "assess.py":
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and node.module in STAGE_MODULES:
                    where = f"{path.relative_to(root)}:{node.lineno}"
                    found += [f"{where}: {a.name}" for a in node.names if a.name in STAGES]
    assert found == []
