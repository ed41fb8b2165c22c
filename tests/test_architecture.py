"""The import graph of the project runs one way (README, Layout), checked on the source with ``ast``.

Every import between the project's own files counts, at the top of a file or inside a function
(lazy imports), under ``TYPE_CHECKING`` too. The layers, bottom to top:

0. the base, ``samhq_jax.errors``: the exception types every layer raises and the guard reads; it
   imports nothing of the project;
1. the core library: everything in ``samhq_jax`` and ``convert`` not named below (configs, model
   parts, weight formats and conversion tables, pre- and post-processing, predictor, generator);
2. the command kit, ``samhq_jax.cmdkit``: imports nothing of the project outside itself and the base
   (no model code), and the core does not import it;
3. the features: ``eval`` (evaluation, ``eval.parity``, ``eval.bench``), ``train``, the commands of
   ``samhq_jax.commands`` and ``convert``'s command line;
4. the dispatcher ``samhq_jax.cli``, which nothing imports.

A file imports only from its own layer or below (the kit and the core being side by side), the
graph has no cycle between files, and no file takes a private name (``_name``) from another.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("samhq_jax", "convert", "eval", "train")
DISPATCHER = "samhq_jax.cli"
BASE = ("samhq_jax.errors",)
KIT = ("samhq_jax.cmdkit",)
FEATURES = ("eval", "train", "samhq_jax.commands", "convert.cli", "convert.__main__", "convert.deploy")
BOTTOM, CORE, COMMAND_KIT, FEATURE, TOP = "base", "core", "command kit", "feature", "dispatcher"
# What each layer may import (its own layer included).
ALLOWED = {
    BOTTOM: set(),
    CORE: {BOTTOM, CORE},
    COMMAND_KIT: {BOTTOM, COMMAND_KIT},
    FEATURE: {BOTTOM, CORE, COMMAND_KIT, FEATURE},
    TOP: {BOTTOM, CORE, COMMAND_KIT, FEATURE},
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_files() -> dict[str, Path]:
    """Every ``.py`` file of the four packages, by dotted module name."""
    return {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


FILES = project_files()


def owner(name: str) -> str | None:
    """The project module that ``name`` (a module, or a module's attribute) lives in; None outside."""
    while name and name not in FILES:
        name = name.rpartition(".")[0]
    return name or None


def within(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def layer(module: str) -> str:
    if module == DISPATCHER:
        return TOP
    if within(module, BASE):
        return BOTTOM
    if within(module, KIT):
        return COMMAND_KIT
    if within(module, FEATURES):
        return FEATURE
    return CORE


def imports(module: str) -> list[tuple[str, str | None, int]]:
    """``(target module, imported name or None, line)`` for each project import of ``module``."""
    path = FILES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, None, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.append((submodule, None, node.lineno) if submodule in FILES else (base, alias.name, node.lineno))
    return [(target, name, line) for name_, name, line in found if (target := owner(name_)) and target != module]


GRAPH = {module: imports(module) for module in FILES}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``edges`` as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for start in sorted(edges):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_layers_are_known() -> None:
    """The test sees the project: every package, the dispatcher, the kit and some features exist."""
    assert DISPATCHER in FILES and any(within(m, KIT) for m in FILES)
    assert {layer(m) for m in FILES} == {BOTTOM, CORE, COMMAND_KIT, FEATURE, TOP}
    assert all(any(within(m, (p,)) for m in FILES) for p in PACKAGES)


def test_no_import_cycle_between_files() -> None:
    edges = {module: {target for target, _, _ in found} for module, found in GRAPH.items()}
    cycle = find_cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_private_name_from_another_module() -> None:
    bad = [
        f"{FILES[module].relative_to(ROOT)}:{line} takes {target}.{name}"
        for module, found in GRAPH.items()
        for target, name, line in found
        if name is not None and name.startswith("_") and not name.startswith("__")
    ]
    assert not bad, "private names imported across modules:\n" + "\n".join(bad)


def test_no_private_attribute_of_an_imported_module() -> None:
    """``module._name`` on a project module bound by an import is private reaching too."""
    bad = []
    for path in FILES.values():
        tree = ast.parse(path.read_text(), str(path))
        bound = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                bound |= {a.asname for a in node.names if a.asname and owner(a.name) == a.name}
            elif isinstance(node, ast.ImportFrom) and node.module:
                bound |= {a.asname or a.name for a in node.names if f"{node.module}.{a.name}" in FILES}
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in bound
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value.id}.{node.attr}")
    assert not bad, "private attributes of other modules:\n" + "\n".join(bad)


@pytest.mark.parametrize("kind", [BOTTOM, CORE, COMMAND_KIT, FEATURE, TOP])
def test_each_layer_imports_only_downwards(kind: str) -> None:
    """The base imports nothing of the project; the core imports no command kit, feature or dispatcher;
    the kit imports nothing of the project outside itself and the base (no model code); features import
    no dispatcher; nothing imports the dispatcher."""
    bad = sorted(
        {
            f"{FILES[module].relative_to(ROOT)}:{line} ({kind}) imports {target} ({layer(target)})"
            for module, found in GRAPH.items()
            if layer(module) == kind
            for target, _, line in found
            if layer(target) not in ALLOWED[kind]
        }
    )
    assert not bad, "imports against the layers:\n" + "\n".join(bad)


def test_nothing_imports_the_dispatcher() -> None:
    importers = sorted({module for module, found in GRAPH.items() for target, _, _ in found if target == DISPATCHER})
    assert not importers, f"{DISPATCHER} is imported by {importers}"


def test_what_the_kit_restates_of_the_core_agrees() -> None:
    """The kit imports no model code, so it states the point labels a user may give itself: they must
    be the predictor's."""
    from samhq_jax.cmdkit.prompts import PROMPT_LABELS
    from samhq_jax.predictor import VALID_LABELS

    assert sorted(PROMPT_LABELS) == sorted(VALID_LABELS)


def test_the_checks_catch_what_they_should() -> None:
    """The helpers above on made-up inputs: a cycle is found, the layers are told apart."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert layer("samhq_jax.cmdkit.args") == COMMAND_KIT and layer("samhq_jax.predictor") == CORE
    assert layer("samhq_jax.errors") == BOTTOM
    assert layer("convert.cli") == FEATURE and layer("convert.core") == CORE and layer("eval.parity.cli") == FEATURE
    assert owner("samhq_jax.predictor.SamHQPredictor") == "samhq_jax.predictor" and owner("numpy") is None
