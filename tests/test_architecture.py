"""The package's shape: imports point down the layers (import-linter contract in pyproject.toml), and a module
imports at its top except for an optional extra or the CLI's per-command imports."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT

PACKAGE = REPO_ROOT / "src" / "genrec_hf"
# Imports a function may make: an optional extra's library (the module must import without it), or the CLI's
# command modules (so `genrec-hf --help` does not load torch). Everything else belongs at the top of its module.
OPTIONAL_EXTRAS = {"faiss", "fastapi", "uvicorn", "starlette", "matplotlib", "duckdb", "pyspark", "polars",
                   "deepspeed", "all_minilm_l6_v2", "evaluate"}
LAZY_MODULES = {"genrec_hf/cli.py"}
# The `evaluate` metric script is loaded by path by `evaluate.load`, outside the package: it imports it lazily.
LOADED_BY_PATH = {"genrec_hf/evaluation/genrec_ranking/genrec_ranking.py"}


def _lint(config: Path, cwd: Path, pythonpath: Path) -> subprocess.CompletedProcess:
    command = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run([sys.executable, "-c", command, "--config", str(config), "--no-cache"], cwd=cwd,
                          capture_output=True, text=True, env={"PYTHONPATH": str(pythonpath), "PATH": ""})


def test_imports_point_down_the_layers():
    """An upward or circular import between layers (data importing evaluation, serving importing a CLI helper)
    fails here, naming the import chain."""
    pytest.importorskip("importlinter")
    result = _lint(REPO_ROOT / "pyproject.toml", REPO_ROOT, PACKAGE.parent)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "BROKEN" not in result.stdout and "2 kept, 0 broken" in result.stdout


def test_the_layer_contract_bites(tmp_path):
    """The contract itself: a copy of the package with one upward import (data → training) must break it, or a
    misconfigured contract (a renamed layer, a wrong root) would pass everything."""
    pytest.importorskip("importlinter")
    copy = tmp_path / "src" / "genrec_hf"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    vocab = copy / "data" / "vocab.py"
    vocab.write_text(vocab.read_text() + "\nfrom ..training import pipeline  # noqa: E402,F401\n")
    shutil.copy(REPO_ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    result = _lint(tmp_path / "pyproject.toml", tmp_path, tmp_path / "src")
    assert result.returncode != 0 and "genrec_hf.data.vocab -> genrec_hf.training.pipeline" in result.stdout, \
        result.stdout[-3000:]


def _function_imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for function in ast.walk(ast.parse(path.read_text())):
        if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(function):
                if isinstance(node, ast.Import):
                    found += [(node.lineno, alias.name) for alias in node.names]
                elif isinstance(node, ast.ImportFrom):
                    found.append((node.lineno, "." * node.level + (node.module or "")))
    return found


def test_imports_inside_functions_are_only_optional_extras():
    """An in-function import hides a dependency (or an upward import) from the module's header and from the layer
    contract's reader; only an optional extra, whose module must import without it, or the CLI's lazy commands
    may do it."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = path.relative_to(PACKAGE.parent).as_posix()
        if name in LAZY_MODULES | LOADED_BY_PATH:
            continue
        for line, module in _function_imports(path):
            if module.split(".")[0] not in OPTIONAL_EXTRAS:
                offenders.append(f"{name}:{line} imports {module}")
    assert not offenders, "\n".join(offenders)
