"""The package's layout (docs/architecture.md): common/ is the ground and imports nothing above it, extract/ and train/
never import each other, no module-level import cycle, the project's own modules imported inside functions only by
the command-line modules, and no module of common/, extract/ or train/ over 400 lines.

The graph is read from the installed package's source with `ast`, not by importing it: every `import` and
`from ... import` (relative ones resolved), and `importlib.import_module("...")` / `__import__("...")` with a
constant name, at module level (class bodies and `if` blocks included) or inside a function. `from a.b import c`
is an edge to a.b.c where that is a module of the package, else to a.b.
"""
from __future__ import annotations

import ast
import importlib
from dataclasses import dataclass
from pathlib import Path

import pytest

# The import name of each code folder (pyproject's package-dir).
PACKAGES = ("twinturbo", "twinturbo.common", "twinturbo.extract", "twinturbo.train")
# Modules that may import the project's own modules inside functions: they parse options and import the rest lazily
# for start-up time (a command's --help must not wait for torch's import of everything).
COMMAND_LINE_MODULES = ("twinturbo.commands", "twinturbo.api", "twinturbo.extract.cli", "twinturbo.train.cli")
MAX_LINES = 400
SIZED = ("twinturbo.common", "twinturbo.extract", "twinturbo.train")


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int
    in_function: bool

    def __str__(self) -> str:
        where = "inside a function" if self.in_function else "at module level"
        return f"{self.source} imports {self.target} ({where}, line {self.line})"


def package_modules() -> dict[str, Path]:
    """{module name: file} of every module of the installed package, walking each code folder's packages."""
    modules = {}
    for package in PACKAGES:
        root = Path(importlib.import_module(package).__path__[0])
        for path in sorted(root.rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            # Only folders that are packages (an __init__.py in each); another code folder is walked on its own.
            if any(not (root.joinpath(*parts[:i]) / "__init__.py").is_file() for i in range(1, len(parts))):
                continue
            name = ".".join((package, *parts))
            modules[name.removesuffix(".__init__")] = path
    return modules


def _in_package(name: str, modules) -> str | None:
    """The module of the package that `name` imports (itself, or its longest prefix that is a module), else None."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _dynamic_import(node: ast.Call) -> str | None:
    """The constant module name of `importlib.import_module("x")` or `__import__("x")`, else None."""
    func = node.func
    named = (isinstance(func, ast.Attribute) and func.attr == "import_module") or \
        (isinstance(func, ast.Name) and func.id in ("import_module", "__import__"))
    if named and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
        return node.args[0].value
    return None


def imports_of(name: str, path: Path, modules) -> list[tuple[str, int, bool]]:
    """(imported name, line, inside a function) of every import of one module, relative ones resolved."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((alias.name, child.lineno, in_function) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[:len(package.split(".")) - child.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                for alias in child.names:
                    full = f"{base}.{alias.name}"
                    found.append((full if full in modules else base, child.lineno, in_function))
            elif isinstance(child, ast.Call) and (target := _dynamic_import(child)) is not None:
                found.append((target, child.lineno, in_function))
            visit(child, inner)

    visit(ast.parse(path.read_text(), str(path)), False)
    return found


@pytest.fixture(scope="module")
def graph() -> tuple[dict[str, Path], list[Edge]]:
    modules = package_modules()
    edges = []
    for name, path in modules.items():
        for target, line, in_function in imports_of(name, path, modules):
            module = _in_package(target, modules)
            if module is not None and module != name:
                edges.append(Edge(name, module, line, in_function))
    return modules, edges


def layer(module: str) -> str:
    """common, extract, train, or top (the package's own top-level modules, twinturbo_pkg/)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ("common", "extract", "train") else "top"


def test_the_walk_finds_every_folder_and_reads_each_kind_of_import(graph):
    modules, edges = graph
    assert {"twinturbo", "twinturbo.api", "twinturbo.common.errors", "twinturbo.extract.cli",
            "twinturbo.train.terms", "twinturbo.train.terms.critic"} <= set(modules)
    pairs = {(e.source, e.target, e.in_function) for e in edges}
    assert ("twinturbo.common.command", "twinturbo.common.errors", False) in pairs  # from .errors import ...
    assert ("twinturbo.api", "twinturbo.extract.extract", True) in pairs  # inside a function
    assert ("twinturbo", "twinturbo.api", False) in pairs  # from twinturbo.api import ... in twinturbo/__init__


def test_common_imports_nothing_above_it(graph):
    _, edges = graph
    upward = [str(e) for e in edges if layer(e.source) == "common" and layer(e.target) != "common"]
    assert not upward, "common/ is the ground (docs/architecture.md):\n" + "\n".join(upward)


def test_extract_and_train_never_import_each_other_nor_the_package_top(graph):
    _, edges = graph
    crossing = [str(e) for e in edges if {layer(e.source), layer(e.target)} == {"extract", "train"}
                or (layer(e.source) in ("extract", "train") and layer(e.target) == "top")]
    assert not crossing, "the store is the only contract between the stages:\n" + "\n".join(crossing)


def test_no_import_cycle_at_module_level(graph):
    modules, edges = graph
    after: dict[str, list[str]] = {name: [] for name in modules}
    for edge in edges:
        if not edge.in_function:
            after[edge.source].append(edge.target)
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def cycle_from(name: str) -> list[str] | None:
        state[name] = 1
        path.append(name)
        for target in after[name]:
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (found := cycle_from(target)):
                return found
        state[name] = 2
        path.pop()
        return None

    for name in sorted(modules):
        if name not in state and (cycle := cycle_from(name)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def test_only_the_command_line_modules_import_the_projects_modules_inside_functions(graph):
    _, edges = graph
    hidden = [str(e) for e in edges if e.in_function and e.source not in COMMAND_LINE_MODULES
              and layer(e.source) in ("common", "extract", "train")]
    assert not hidden, "an import inside a function hides a dependency (a cycle dodged?):\n" + "\n".join(hidden)


def test_no_module_of_common_extract_or_train_is_over_400_lines(graph):
    modules, _ = graph
    long = {name: n for name, path in modules.items() if name.startswith(SIZED)
            and (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"over {MAX_LINES} lines (split by responsibility, docs/architecture.md): " + ", ".join(
        f"{modules[name]} ({n})" for name, n in sorted(long.items()))
