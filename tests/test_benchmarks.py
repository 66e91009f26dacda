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


def test_refresh_merge_pools_seeds_and_refuses_another_setup():
    merge = _module("bench_refresh").merge
    # An earlier 2-seed point saved before per-seed values existed: MRR 0.02 and 0.04 as mean ± spread.
    old = [{"dataset": "d", "preset": "p", "max_length": 50, "method": "full", "previous_mrr": 0.05,
            "mrr_mean": 0.03, "mrr_spread": 0.02, "cpu_s": 10.0, "overlap_vs_previous": 0.5, "tau_vs_previous": 0.8,
            "overlap_across_seeds": 0.6, "tau_across_seeds": 0.9}]
    new = [{"dataset": "d", "preset": "p", "max_length": 50, "method": "full", "previous_mrr": 0.05,
            "seeds": [2], "mrr_by_seed": [0.07], "cpu_s_by_seed": [13.0], "overlap_vs_previous_by_seed": [0.8],
            "tau_vs_previous_by_seed": [0.5], "across_seeds_pairs": [], "overlap_across_seeds": None,
            "tau_across_seeds": None, "mrr_mean": 0.07, "mrr_spread": 0.0, "cpu_s": 13.0,
            "overlap_vs_previous": 0.8, "tau_vs_previous": 0.5}]
    (point,) = merge(old, new, [0, 1])
    assert point["seeds"] == [0, 1, 2]
    assert point["mrr_by_seed"] == pytest.approx([0.02, 0.04, 0.07])
    assert point["mrr_mean"] == pytest.approx(0.13 / 3) and point["mrr_spread"] == pytest.approx(0.05)
    assert point["cpu_s"] == pytest.approx(11.0) and point["overlap_vs_previous"] == pytest.approx(0.6)
    assert point["overlap_across_seeds"] == pytest.approx(0.6) and point["across_seeds_pairs"] == [[0, 1]]
    with pytest.raises(SystemExit, match="`previous` differs"):
        merge(old, [{**new[0], "previous_mrr": 0.06}], [0, 1])
    with pytest.raises(SystemExit, match=r"seeds \[1\] are in both runs"):
        merge(old, [{**new[0], "seeds": [1]}], [0, 1])
