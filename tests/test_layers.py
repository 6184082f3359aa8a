"""The package's layering (docs/architecture.md, "Layers") holds, and the check can fail.

`lint-imports` checks the contracts declared in pyproject.toml (each layer imports only the
layers below it; no import cycles within any package). Imports inside functions would slip past
a reader, not past import-linter (grimp sees them too); still, outside the CLI, whose commands
defer their imports so that `circuit-atlas --help` starts fast, every internal import sits at
the top of its module where it can be seen.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "circuit_atlas"


def _lint_imports(cwd: Path, pythonpath: Path) -> subprocess.CompletedProcess:
    """import-linter's command (installed with the dev extra, beside this interpreter)."""
    beside = Path(sys.executable).with_name("lint-imports")
    command = str(beside) if beside.exists() else shutil.which("lint-imports")
    assert command, "lint-imports is missing: pip install -e '.[dev]'"
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    return subprocess.run([command], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_the_layer_contracts_are_kept():
    result = _lint_imports(ROOT, ROOT / "src")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_an_upward_import_hidden_in_a_function_breaks_the_contract(tmp_path):
    """The same kind of contract on a two-layer toy package: a function-level import from the
    lower layer of the upper one is reported."""
    package = tmp_path / "toypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "high.py").write_text("from toypkg import low\n")
    (package / "low.py").write_text("def show():\n    from toypkg import high\n    return high\n")
    (tmp_path / ".importlinter").write_text(
        "[importlinter]\nroot_package = toypkg\n\n"
        "[importlinter:contract:layers]\nname = toy layers\ntype = layers\n"
        "containers = toypkg\nlayers =\n    high\n    low\n"
    )
    result = _lint_imports(tmp_path, tmp_path)
    assert result.returncode != 0
    assert "toypkg.low is not allowed to import toypkg.high" in result.stdout


def _internal_imports(tree: ast.AST):
    """(node, inside a function) for every import of circuit_atlas in `tree`."""
    def walk(node, in_function):
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                if any(a.name.split(".")[0] == "circuit_atlas" for a in child.names):
                    yield child, in_function
            elif isinstance(child, ast.ImportFrom):
                if child.level == 0 and (child.module or "").split(".")[0] == "circuit_atlas":
                    yield child, in_function
            yield from walk(child, nested)

    yield from walk(tree, False)


def _imports_facade(node: ast.Import | ast.ImportFrom) -> bool:
    """`import circuit_atlas` / `from circuit_atlas import x`: the facade above every layer."""
    if isinstance(node, ast.Import):
        return any(alias.name == "circuit_atlas" for alias in node.names)
    return node.module == "circuit_atlas"


def test_internal_imports_sit_at_the_top_of_modules_outside_the_cli():
    hidden, facade = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).as_posix()
        for node, in_function in _internal_imports(ast.parse(path.read_text(encoding="utf-8"))):
            if in_function and not relative.startswith("circuit_atlas/cli/"):
                hidden.append(f"{relative}:{node.lineno}")
            if _imports_facade(node) and relative != "circuit_atlas/__init__.py":
                facade.append(f"{relative}:{node.lineno}")
    assert hidden == [], f"imports inside functions: {hidden}"
    assert facade == [], f"package modules importing the circuit_atlas facade: {facade}"
