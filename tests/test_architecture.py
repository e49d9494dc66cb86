"""Module budgets and import directions the codebase keeps (docs/architecture.md)."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted(p for pkg in ("gateway", "policies", "config") for p in (ROOT / pkg).rglob("*.py"))


def imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_module_and_function_budgets(path: Path):
    source = path.read_text()
    assert source.count("\n") <= 500, "modules stay under 500 lines"
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            assert node.end_lineno - node.lineno < 60, f"{node.name} is over 60 lines"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_import_directions(path: Path):
    names = imports(path)
    package = path.relative_to(ROOT).parts[0]
    if package == "config":
        assert not any(n.split(".")[0] in ("gateway", "policies") for n in names)
    if package == "gateway":
        assert not any(n.split(".")[0] == "policies" for n in names), "policies are loaded by name only"
    if package == "policies":
        assert all(n == "gateway" or not n.startswith("gateway") for n in names), "only the extension API"
    assert not any(n.split(".")[0] == "litellm" for n in names), "litellm lives behind one bridge module"
