"""The package layering of docs/architecture.md, checked on the source: imports point one way only."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("i3ad", "studies", "tracking")
ALLOWED = {"i3ad": set(), "tracking": {"i3ad"}, "studies": {"i3ad", "tracking"}}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at import time?) for every import in a file, relative imports resolved.

    Imports inside functions are not at import time; those under `if TYPE_CHECKING:` are left out.
    """
    tree = ast.parse(path.read_text())
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = []

    def scan(node: ast.AST, at_import: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                found.extend((alias.name, at_import) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = package[: len(package) - child.level + 1] if child.level else []
                name = ".".join([*base, child.module] if child.module else base)
                found.append((name, at_import))
                found.extend((f"{name}.{alias.name}", at_import) for alias in child.names)
            scan(child, at_import and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    scan(tree, True)
    return found


def sources(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_point_one_way(package):
    for path in sources(package):
        for name, _ in imports(path):
            other = name.split(".")[0]
            if other in PACKAGES and other != package:
                assert other in ALLOWED[package], f"{path.relative_to(REPO)} imports {name}"


# The one deliberate function-level import: `i3ad --help` / `--version` must not load torch, so the CLI's top level
# imports the subcommands only once one is named. It still counts as an edge of the import graph below.
LAZY_IMPORTS = {("i3ad.cli", "i3ad.commands")}


def test_no_import_cycle_inside_i3ad():
    modules = {module_name(p): p for p in sources("i3ad")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        # Only module-level imports form a cycle at import time; a function-level import of an i3ad module
        # would hide one, so those are not allowed either.
        targets = set()
        for imported, at_top in imports(path):
            if imported in modules and imported != name:
                assert at_top or (name, imported) in LAZY_IMPORTS, (
                    f"{path.relative_to(REPO)} imports {imported} inside a function"
                )
                targets.add(imported)
        graph[name] = targets
    # A package imports its own submodules through __init__; the cycle that matters is between modules.
    visiting: list[str] = []
    done: set[str] = set()

    def visit(node: str) -> None:
        if node in done:
            return
        assert node not in visiting, f"import cycle: {' -> '.join([*visiting[visiting.index(node) :], node])}"
        visiting.append(node)
        for target in graph[node]:
            if not (target == node.rsplit(".", 1)[0] and modules[target].name == "__init__.py"):
                visit(target)
        visiting.pop()
        done.add(node)

    for node in graph:
        visit(node)


def test_no_sys_path_edits():
    for package in (*PACKAGES, "benchmarks"):
        for path in sources(package):
            assert "sys.path.insert" not in path.read_text() and "sys.path[0]" not in path.read_text(), path
