"""The package keeps the shape docs/architecture.md draws: every module named there, no import
circle between modules, and modules, functions and classes within their limits."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "ddpbench"
MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
LIMITS = {"module": 460, "function": 60, "class": 120}  # lines; "about 450" for a module


def tree(module: str) -> ast.Module:
    return ast.parse((PACKAGE / f"{module}.py").read_text(), filename=f"{module}.py")


def type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Inside `if TYPE_CHECKING:`: read by type checkers, never imported at run time."""
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def runtime_imports(module: str) -> set[str]:
    """The package modules ``module`` imports when it runs (at the top or inside a function)."""
    root = tree(module)
    parents = {child: node for node in ast.walk(root) for child in ast.iter_child_nodes(node)}
    found = set()
    for node in ast.walk(root):
        if type_checking_only(node, parents):
            continue
        if isinstance(node, ast.ImportFrom) and node.module == "ddpbench":
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ddpbench."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("ddpbench."))
    return found & set(MODULES) - {module}


def test_every_module_is_named_in_the_architecture_page():
    page = (REPO / "docs" / "architecture.md").read_text()
    missing = [m for m in MODULES if f"`{m}`" not in page]
    assert not missing, f"docs/architecture.md does not name {missing}: add a row to its module table"


def test_no_two_modules_import_each_other_in_a_circle():
    graph = {m: runtime_imports(m) for m in MODULES}
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        for dependency in sorted(graph[module]):
            assert dependency not in path, f"import circle: {' -> '.join([*path, dependency])}"
            if dependency not in done:
                visit(dependency, [*path, dependency])
        done.add(module)

    for module in MODULES:
        visit(module, [module])


def test_the_circle_check_finds_a_circle(tmp_path, monkeypatch):
    """The check above can fail: two modules that import each other are caught."""
    for name, other in (("a", "b"), ("b", "a")):
        (tmp_path / f"{name}.py").write_text(f"def f():\n    from ddpbench.{other} import f\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", tmp_path)
    monkeypatch.setattr(__import__(__name__), "MODULES", ["a", "b"])
    with pytest.raises(AssertionError, match="import circle: a -> b -> a"):
        test_no_two_modules_import_each_other_in_a_circle()


@pytest.mark.parametrize("module", MODULES)
def test_module_functions_and_classes_keep_their_size(module):
    source = (PACKAGE / f"{module}.py").read_text()
    assert len(source.splitlines()) <= LIMITS["module"], f"{module}.py is over {LIMITS['module']} lines: split it"
    for node in ast.walk(tree(module)):
        kind = "class" if isinstance(node, ast.ClassDef) else "function"
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            lines = node.end_lineno - node.lineno + 1
            assert lines <= LIMITS[kind], f"{module}.{node.name} is a {lines}-line {kind} (limit {LIMITS[kind]})"
