"""The benchmark scripts stay runnable: `--help` works and every named variant is a valid recipe.

A typo in a head's overrides would otherwise surface an hour into a benchmark run, not in CI.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from genrec_hf.training.recipes import load_recipe

from tests.helpers import REPO_ROOT

SCRIPTS = sorted((REPO_ROOT / "benchmarks").glob("bench_*.py"))


def _module(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_benchmark_has_help(script):
    result = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout


def test_every_quality_head_is_a_valid_recipe():
    heads = _module("bench_quality").HEADS
    assert "full" in heads and heads["full"] == {}
    for name, overrides in heads.items():
        recipe = load_recipe(REPO_ROOT / "recipes" / "pretrain" / "genrec-100k.yaml", overrides)  # validates config
        assert recipe.model.overrides.get("loss_type", "full") == ("full" if name == "full" else "sampled"), name
