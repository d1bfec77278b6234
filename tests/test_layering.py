"""The layers: cogs are glue (none imports another cog or the bot's client at run time; helpers start with `_`); the
trainer and the bot share only dataset_rules, common and the launcher; the tests and the benches share support/."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

COGS = sorted(p for p in Path("cogs").glob("*.py") if not p.name.startswith("_"))


def _import_nodes(path: Path) -> list[ast.Import | ast.ImportFrom]:
    """The import statements that run (in functions too; not those under `if TYPE_CHECKING`)."""
    tree = ast.parse(path.read_text("utf-8"))
    guarded = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
               and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
    return [node for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom) and id(node) not in guarded]


def _runtime_imports(path: Path) -> list[str]:
    names: list[str] = []
    for node in _import_nodes(path):
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


PRODUCT = ("bot", "cogs", "storage", "dataset_rules", "common", "trainer")


def _files(*folders: str) -> list[Path]:
    return sorted(path for folder in folders for path in Path(folder).rglob("*.py"))


def _modules(path: Path) -> list[str]:
    """Every module a file imports when it runs, in functions too: `from trainer import launch` is trainer.launch,
    `from trainer.api import ApiError` is trainer.api."""
    names: list[str] = []
    for node in _import_nodes(path):
        if isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                folder = Path(*candidate.split("."))
                is_module = folder.with_suffix(".py").exists() or (folder / "__init__.py").exists()
                names.append(candidate if is_module else node.module)
        elif isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
    return names


def _top(name: str) -> str:
    return name.split(".", 1)[0]


def test_trainer_imports_nothing_of_the_bot_nor_of_the_tests() -> None:
    """The trainer is its own program: it shares only dataset_rules and common with the bot, and knows nothing of the
    tests."""
    bad = {(str(path), name) for path in _files("trainer") for name in _modules(path)
           if _top(name) in {"bot", "cogs", "storage", "support", "tests", "bench"}}
    assert bad == set()


def test_the_bot_imports_of_the_trainer_its_launcher_alone() -> None:
    """bot/, cogs/ and storage/ reach the trainer over HTTP; of trainer/ they import only launch.py, how it starts."""
    bad = {(str(path), name) for path in _files("bot", "cogs", "storage") for name in _modules(path)
           if _top(name) == "trainer" and name != "trainer.launch"}
    assert bad == set()


def test_the_launcher_needs_only_the_standard_library() -> None:
    """trainer/launch.py imports nothing of the trainer and none of its libraries, so the bot can import it."""
    bad = [name for name in _modules(Path("trainer/launch.py"))
           if _top(name) not in sys.stdlib_module_names and name != "__future__"]
    assert bad == []


def test_dataset_rules_import_no_other_package_of_ours() -> None:
    """The rules both programs use sit below both: they import neither, nor the tests."""
    bad = {(str(path), name) for path in _files("dataset_rules") for name in _modules(path)
           if _top(name) in {"bot", "cogs", "storage", "trainer", "support", "tests", "bench"}}
    assert bad == set()


def test_common_imports_the_standard_library_alone() -> None:
    """What both programs share and neither owns (common/) sits below them all: the standard library only."""
    bad = [(str(path), name) for path in _files("common") for name in _modules(path)
           if _top(name) not in sys.stdlib_module_names and name != "__future__" and _top(name) != "common"]
    assert bad == []


def test_product_code_imports_no_test_support() -> None:
    """No product module imports the tests, their shared support or the benches."""
    bad = {(str(path), name) for path in _files(*PRODUCT) for name in _modules(path)
           if _top(name) in {"support", "tests", "bench"}}
    assert bad == set()


def test_benches_and_support_never_import_the_tests() -> None:
    """What benches and tests share lives in support/; neither it nor a bench imports tests/."""
    bad = {(str(path), name) for path in _files("bench", "support") for name in _modules(path) if _top(name) == "tests"}
    assert bad == set()


@pytest.mark.parametrize("package", ["trainer", "dataset_rules"])
def test_package_modules_import_each_other_in_no_cycle(package: str) -> None:
    """No cycle among a package's modules, counting imports inside functions (they must not hide one)."""
    graph: dict[str, set[str]] = {}
    for path in _files(package):
        module = ".".join(path.with_suffix("").parts).removesuffix(".__init__")
        graph[module] = {name for name in _modules(path) if _top(name) == package and name != module}
    done: set[str] = set()

    def visit(module: str, trail: tuple[str, ...]) -> None:
        assert module not in trail, " -> ".join((*trail[trail.index(module):], module))
        if module in done:
            return
        for imported in sorted(graph.get(module, ())):
            visit(imported, (*trail, module))
        done.add(module)

    for module in sorted(graph):
        visit(module, ())


def test_services_word_nothing() -> None:
    """Services return outcomes, never sentences: no module of bot/services imports the catalog (bot.i18n); the
    edge (bot/discord_edge/, cogs/) words what they return."""
    bad = {(str(path), name) for path in _files("bot/services") for name in _modules(path)
           if name == "bot.i18n" or name.startswith("bot.i18n.")}
    assert bad == set()
