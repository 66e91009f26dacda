"""benchmarks/defaults/bench_defaults.py: arms parse into valid recipes, the protocol's table picks by the worst
data set, and one tiny run goes through the public CLI, the summary and the paired comparison."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

from genrec_hf.training.recipes import load_recipe

from tests.helpers import REPO_ROOT

SCRIPT = REPO_ROOT / "benchmarks" / "defaults" / "bench_defaults.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_defaults", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_help():
    result = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout


def test_every_knob_is_a_valid_recipe(bench):
    """A typo in a knob's keys or values would otherwise fail an hour into a stage."""
    for knob in bench.KNOBS:
        arm = "genrec-100k+" + knob.replace("{}", "0.1" if any(word in knob for word in ("drop", "wd", "mask")) else "2")
        preset, overrides = bench.parse_arm(arm)
        recipe = load_recipe(REPO_ROOT / "recipes" / "pretrain" / f"{preset}.yaml", overrides)
        recipe.training_arguments()
    _, overrides = bench.parse_arm("sasrec+drop0.3+lr1e-3")
    assert overrides["model.overrides.attention_dropout"] == "0.3" and overrides["training.learning_rate"] == "1e-3"


@pytest.mark.parametrize("arm, message", [("genrec-100k+dorp0.2", "unknown knob 'dorp0.2'"),
                                          ("genrec-7k", "no recipe pretrain/genrec-7k.yaml")])
def test_bad_arm_is_one_line(bench, arm, message):
    with pytest.raises(ValueError, match=message):
        bench.parse_arm(arm)


def test_select_ranks_by_the_worst_data_set(bench):
    """`b` is best on average but loses 20% on toys; `c` gains a little everywhere and must come first."""
    values = {"a": (0.10, 0.05, 0.02), "b": (0.13, 0.04, 0.03), "c": (0.105, 0.051, 0.021)}
    rows = [{"arm": arm, "dataset": dataset, "val_mrr": str(value)}
            for arm, triple in values.items() for dataset, value in zip(bench.DATASETS, triple)]
    table = bench.select(rows, "a")
    assert [row["arm"] for row in table] == ["c", "a", "b"]
    assert table[2]["worst Δ"] == pytest.approx(-0.2)
    assert table[0]["mean rank"] == pytest.approx((2 + 1 + 2) / 3)


def test_tiny_stage_runs_summarises_and_compares(bench, tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "DATASETS", {"synthetic": ("synthetic:num_users=60,num_items=30,num_clusters=3", 8)})
    monkeypatch.setattr(bench, "RESULTS", tmp_path / "results")
    arms = ["genrec-10k+ep1", "genrec-10k+ep1+drop0.2"]
    for arm in arms:
        assert bench.execute(bench.Run("tiny", "synthetic", arm, 0, 0.2), tmp_path, tmp_path)
    row = bench.summarize(bench.Run("tiny", "synthetic", arms[1], 0, 0.2), tmp_path)
    assert row["epochs"] == pytest.approx(1.0) and row["best_epoch"] == pytest.approx(1.0)
    assert 0 < row["val_mrr"] <= 1 and row["cpu_s"] > 0
    table = bench.compare("tiny", arms[0], arms[1:], [0], tmp_path, tmp_path)
    assert [r["seeds"] for r in table] == ["seed 0"]  # one seed: no "pooled" row repeating it
    assert table[0]["mrr"] == pytest.approx(row["test_mrr"])  # the saved model re-ranks to the run's own test MRR
