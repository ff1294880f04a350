"""The layout shows the architecture: the core's modules import each other without cycles (type-only imports
aside), including imports inside functions, so that no import is deferred to dodge a cycle."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

CORE = Path(__file__).resolve().parent.parent / "llama_batches"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(CORE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in CORE.rglob("*.py")}


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _type_checking_only(node):
            continue  # a type-only import runs nowhere
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        else:
            yield from _imports(node)


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        package = module if MODULES[module].name == "__init__.py" else module.rsplit(".", 1)[0]
        base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
        target = ".".join([*base, *([node.module] if node.module else [])])
        names = [f"{target}.{alias.name}" for alias in node.names] + [target]
    for imported in names:
        name = imported
        while name and name not in MODULES and "." in name:
            name = name.rsplit(".", 1)[0]
        if name in MODULES and name != module:
            yield name


def _graph() -> dict[str, set[str]]:
    return {module: set(_targets_of(module)) for module in MODULES}


def _targets_of(module: str) -> Iterator[str]:
    for node in _imports(ast.parse(MODULES[module].read_text())):
        yield from _targets(module, node)


def _cycle_from(start: str, graph: dict[str, set[str]]) -> list[str] | None:
    """A path start -> ... -> start, if there is one (depth-first)."""
    stack: list[tuple[str, list[str]]] = [(start, [start])]
    seen: set[str] = set()
    while stack:
        node, path = stack.pop()
        for nxt in graph[node]:
            if nxt == start:
                return [*path, start]
            if nxt not in seen:
                seen.add(nxt)
                stack.append((nxt, [*path, nxt]))
    return None


def test_the_core_has_no_import_cycles() -> None:
    graph = _graph()
    cycles = {tuple(c) for module in sorted(graph) if (c := _cycle_from(module, graph)) is not None}
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in sorted(cycles))


def test_the_graph_sees_imports_inside_functions_and_skips_type_only_ones() -> None:
    """The check would pass vacuously if it missed deferred imports: it sees the Postgres backend, imported inside
    a function (asyncpg is an extra), and not the leases module's type-only import of its database."""
    assert "llama_batches.storage.postgres" in set(_targets_of("llama_batches.storage.backends"))
    assert "llama_batches.storage.postgres" not in set(_targets_of("llama_batches.storage.postgres_leases"))
