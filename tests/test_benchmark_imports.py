"""Every denoisefeat import in ``benchmarks/`` resolves, so a refactor cannot break a benchmark unseen.

The benchmarks are not run by the suite (they measure, and take minutes), and many import inside
the function that needs the import, so a moved module only fails when that part runs.  This reads
each script's imports without running it and checks them against the package.
"""

import ast
import importlib
from pathlib import Path

import pytest

BENCHMARKS = sorted((Path(__file__).parents[1] / "benchmarks").glob("*.py"))


def _imports(path: Path):
    """``(line, module, name or None)`` of every denoisefeat import in a script, nested ones included."""
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "denoisefeat":
            for alias in node.names:
                yield node.lineno, node.module, alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "denoisefeat":
                    yield node.lineno, alias.name, None


@pytest.mark.parametrize("path", BENCHMARKS, ids=lambda p: p.name)
def test_every_denoisefeat_import_of_a_benchmark_resolves(path):
    for line, module, name in _imports(path):
        try:
            imported = importlib.import_module(module)
        except ImportError as err:
            pytest.fail(f"{path.name}:{line}: import {module}: {err}")
        if name is not None and not hasattr(imported, name):
            try:
                importlib.import_module(f"{module}.{name}")
            except ImportError:
                pytest.fail(f"{path.name}:{line}: {module} has no {name!r}")


def test_the_check_sees_nested_imports():
    """The import that broke ``features_throughput.py`` sat inside a function."""
    found = list(_imports(Path(__file__).parents[1] / "benchmarks" / "features_throughput.py"))
    assert ("denoisefeat.step_features", "features") in [(module, name) for _, module, name in found]
