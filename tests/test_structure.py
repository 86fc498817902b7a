"""The package's structure: no import cycle, no private name across modules, every module in a layer,
and numpydoc sections on every public function.

The import graph is built from the source (every ``import`` statement, those inside functions
included), so that a lazy import cannot hide a cycle.  The layers themselves are checked by
import-linter (``lint-imports``, run by ``.ci/run``) from ``[tool.importlinter]`` in pyproject.toml.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import sys
from pathlib import Path

import pytest

import denoisefeat

ROOT = Path(denoisefeat.__file__).resolve().parent


def _modules() -> dict[str, Path]:
    modules = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


MODULES = _modules()


def _package_of(module: str) -> str:
    return module if MODULES[module].name == "__init__.py" else module.rsplit(".", 1)[0]


def _owner(name: str) -> str | None:
    """The denoisefeat module that ``name`` (a dotted path) lies in, or None outside the package."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str):
    """``(imported module, imported name or None, node)`` for every import statement of ``module``."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None, node
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package_of(module).split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                yield source, alias.name, node


def _graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    for module in MODULES:
        for source, name, _ in _imports(module):
            target = _owner(f"{source}.{name}" if name else source)
            if target is not None and target != module:
                edges[module].add(target)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(edges)))

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_inside_denoisefeat():
    assert _cycles(_graph()) == []


def test_the_cycle_finder_can_fail():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(edges) == [["a", "b", "c"]]


def _private_uses(module: str) -> list[str]:
    """Names starting with ``_`` that ``module`` takes from another denoisefeat module.

    ``from x import _y`` and ``x._y`` (with ``x`` an imported denoisefeat module) count; a private
    submodule of the importer's own package (``from denoisefeat.probes import _scores`` in
    ``denoisefeat.probes.linear``) is that package's own business and does not.
    """
    found, aliases = [], {}
    own_package = _package_of(module)
    for source, name, node in _imports(module):
        if name is None:
            continue
        full = f"{source}.{name}"
        if full in MODULES:  # a module imported by name
            for alias in node.names:
                if alias.name == name:
                    aliases[alias.asname or alias.name] = full
            if name.startswith("_") and _package_of(full) != own_package:
                found.append(f"{module}: from {source} import {name}")
        elif name.startswith("_") and not name.startswith("__") and _owner(source) not in (None, module):
            found.append(f"{module}: from {source} import {name}")
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            found.append(f"{module}: {aliases[node.value.id]}.{node.attr}")
    return found


def test_no_module_imports_a_private_name_from_another():
    assert [use for module in MODULES for use in _private_uses(module)] == []


def test_every_module_sits_in_a_layer_of_the_import_contract():
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        import tomli as tomllib
    config = tomllib.loads((ROOT.parent / "pyproject.toml").read_text(encoding="utf-8"))
    (contract,) = config["tool"]["importlinter"]["contracts"]
    layered = {name.strip() for layer in contract["layers"] for name in layer.split("|")}
    top_level = {".".join(m.split(".")[:2]) for m in MODULES if m.count(".") >= 1}
    assert top_level - {"denoisefeat._version"} == layered


def _public_functions():
    for info in pkgutil.walk_packages(denoisefeat.__path__, "denoisefeat."):
        if info.name.endswith("__main__"):  # runs the CLI when imported
            continue
        module = importlib.import_module(info.name)
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name, None)
            if inspect.isfunction(obj) and obj.__module__ == info.name:
                yield f"{info.name}.{name}"


#: numpydoc's checks that the Parameters and Returns (or Yields) sections are there and complete.
SECTION_CHECKS = {"GL08", "PR01", "PR02", "RT01", "YD01"}


@pytest.mark.parametrize("name", sorted(_public_functions()))
def test_public_function_has_numpydoc_sections(name):
    from numpydoc.validate import validate

    errors = [f"{code} {message}" for code, message in validate(name)["errors"] if code in SECTION_CHECKS]
    assert errors == [], name


def test_readme_architecture_draws_the_contract_layers():
    """The README's picture of the layers (one row per layer, highest first) is the contract's."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        import tomli as tomllib
    config = tomllib.loads((ROOT.parent / "pyproject.toml").read_text(encoding="utf-8"))
    (contract,) = config["tool"]["importlinter"]["contracts"]
    layers = [sorted(name.strip().removeprefix("denoisefeat.") for name in layer.split("|"))
              for layer in contract["layers"]]
    readme = (ROOT.parent / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Architecture", 1)[1].split("\n## ", 1)[0]
    picture = section.split("```", 2)[1]
    rows = [line.split("  ", 1)[0] for line in picture.splitlines()[1:] if line.strip()]
    drawn = [sorted(name.strip() for name in row.split("│")) for row in rows if row]
    assert drawn == layers


# ---------------------------------------------------------------------------------------------
# The store owns every group layout
# ---------------------------------------------------------------------------------------------
#: Modules that still index a store's zarr group themselves.  The attribution tables' layout
#: (``attribution/<table>``, written and read by analyses.table, listed by the viewer and the report)
#: moves into the store with the attribution work; nothing else may be added here.
STORE_INTERNALS_ALLOWED = {
    "denoisefeat.analyses.table": "write_attribution / read_attribution: the attribution/ layout",
    "denoisefeat.viewer.app": "lists the attribution tables through analyses.table",
    "denoisefeat.viz.report": "the attribution tables and the store's creation time",
}


def _store_internals(source: str) -> list[str]:
    """Uses of a store's zarr internals in ``source``: ``X.group`` (other than a call, ``match.group(1)``),
    ``require_group``, ``open_group`` and the ``zarr.json`` metadata file (outside docstrings)."""
    tree = ast.parse(source)
    calls = {id(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                  and node.body and isinstance(node.body[0], ast.Expr)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "group" and id(node) not in calls:
            found.append(f"line {node.lineno}: .group")
        elif isinstance(node, ast.Attribute) and node.attr in ("require_group", "open_group"):
            found.append(f"line {node.lineno}: .{node.attr}")
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str) and "zarr.json" in node.value
              and id(node) not in docstrings):
            found.append(f"line {node.lineno}: {node.value[:40]!r}")
    return found


def test_only_the_store_reads_zarr_internals():
    """Group paths and zarr internals live in ``denoisefeat.store``: every other module goes through
    ``RunStore`` / ``Run`` (``array``, ``acts_path``, ``features_path``, ``is_run_store`` …)."""
    found = {module: uses for module in MODULES if module != "denoisefeat.store"
             and module not in STORE_INTERNALS_ALLOWED
             for uses in [_store_internals(MODULES[module].read_text(encoding="utf-8"))] if uses}
    assert found == {}
    assert set(STORE_INTERNALS_ALLOWED) <= set(MODULES)  # no stale entry


def test_the_store_internals_check_can_fail():
    bad = ('def f(run, path):\n    """Reads run.store.group and zarr.json (a docstring may say so)."""\n'
           '    run.store.group["acts"]\n    run.store.group.require_group("x")\n'
           '    return (path / "zarr.json").is_file() or "x" in run.store.group\n')
    assert len(_store_internals(bad)) == 5
    assert _store_internals("import re\nre.match('a', 'a').group(0)\n") == []


# ---------------------------------------------------------------------------------------------
# Function length
# ---------------------------------------------------------------------------------------------
MAX_FUNCTION_LINES = 80


def _code_lines(node, lines: list[str]) -> int:
    """Lines of code of a function's body: without its docstring, blank lines and comment lines."""
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]
    numbers = {n for stmt in body for n in range(stmt.lineno, stmt.end_lineno + 1)}
    return sum(1 for n in numbers if lines[n - 1].strip() and not lines[n - 1].strip().startswith("#"))


def _long_functions(source: str, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    lines = source.splitlines()
    return [f"{node.name} ({count} lines, line {node.lineno})" for node in ast.walk(ast.parse(source))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            for count in [_code_lines(node, lines)] if count > limit]


def test_no_function_is_longer_than_80_lines_of_code():
    found = {module: long for module in MODULES
             for long in [_long_functions(MODULES[module].read_text(encoding="utf-8"))] if long}
    assert found == {}


def test_the_function_length_check_can_fail():
    body = "".join(f"    x{i} = {i}  # a line\n\n" for i in range(81))
    source = f'def f():\n    """Doc\n\n    string."""\n    # a comment\n{body}'
    assert _long_functions(source) == ["f (81 lines, line 1)"]
    assert _long_functions(source, limit=81) == []
