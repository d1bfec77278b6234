"""Cogs are glue: none imports another cog or the bot's client at run time (helpers start with `_`)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

COGS = sorted(p for p in Path("cogs").glob("*.py") if not p.name.startswith("_"))


def _runtime_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text("utf-8"))
    guarded = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
               and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
    names: list[str] = []
    for node in ast.walk(tree):
        if id(node) in guarded:
            continue
        if isinstance(node, ast.ImportFrom) and node.module:
            names += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names]
    return names


@pytest.mark.parametrize("path", COGS, ids=lambda p: p.stem)
def test_cog_imports_no_other_cog_nor_the_client(path: Path) -> None:
    """A cog reaches services through what setup() injects, never through another cog or bot.client."""
    other_cogs = {f"cogs.{p.stem}" for p in COGS} - {f"cogs.{path.stem}"}
    bad = [name for name in _runtime_imports(path) if name == "bot.client" or name in other_cogs]
    assert bad == []
