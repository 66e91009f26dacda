"""benchmarks/defaults/bench_defaults.py: arms parse into valid recipes, the protocol's table picks by the worst
data set, and one tiny run goes through the public CLI, the summary and the paired comparison."""

from __future__ import annotations

import importlib.util
import json
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
    rows = [{"arm": arm, "dataset": dataset, "seed": "0", "val_mrr": str(value)}
            for arm, triple in values.items() for dataset, value in zip(bench.DATASETS, triple)]
    table = bench.select(rows, "a")
    assert [row["arm"] for row in table] == ["c", "a", "b"]
    assert table[2]["worst Δ"] == pytest.approx(-0.2)
    assert table[0]["mean rank"] == pytest.approx((2 + 1 + 2) / 3)


def test_select_compares_arms_on_the_same_seeds(bench):
    """Catches a one-seed arm ranked against the reference's two-seed mean (its lucky seed would win), and --seeds
    being ignored: with seed 1 added for `a` and `b` only, `c` drops out; asked for seed 0 alone, all three count."""
    seed0 = {"a": (0.10, 0.05, 0.02), "b": (0.11, 0.06, 0.03), "c": (0.2, 0.2, 0.2)}
    seed1 = {"a": (0.12, 0.05, 0.02), "b": (0.10, 0.05, 0.02)}
    rows = [{"arm": arm, "dataset": dataset, "seed": str(seed), "val_mrr": str(value)}
            for seed, values in ((0, seed0), (1, seed1)) for arm, triple in values.items()
            for dataset, value in zip(bench.DATASETS, triple)]
    both = {row["arm"]: row for row in bench.select(rows, "a")}
    assert set(both) == {"a", "b"}
    assert both["b"][list(bench.DATASETS)[0]] == pytest.approx(0.105)  # the mean of its two seeds
    assert both["b"][f"{list(bench.DATASETS)[0]} Δ"] == pytest.approx(0.105 / 0.11 - 1)
    assert {row["arm"] for row in bench.select(rows, "a", seeds=[0])} == {"a", "b", "c"}


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


def test_summary_merges_and_never_drops_rows_of_other_runs(bench, tmp_path):
    """Catches `summary` rewriting the tracked CSV from one `--out` folder only: the screening rows of runs made
    elsewhere (or whose folders were deleted) would be lost, and a re-summarised run would appear twice."""
    path = tmp_path / "screen.csv"
    row = {field: "" for field in bench.SUMMARY_FIELDS}
    old = [{**row, "stage": "screen", "dataset": d, "arm": "a", "seed": "0", "val_mrr": "0.1"} for d in ("x", "y")]
    bench.write_summary(old, path)
    bench.write_summary([{**row, "stage": "screen", "dataset": "y", "arm": "a", "seed": 0, "val_mrr": 0.25},
                         {**row, "stage": "screen", "dataset": "y", "arm": "b", "seed": 0, "val_mrr": 0.3}], path)
    got = {(r["dataset"], r["arm"]): r["val_mrr"] for r in bench.read_summary(path)}
    assert got == {("x", "a"): "0.1", ("y", "a"): "0.25000", ("y", "b"): "0.30000"}


def test_comparison_file_keeps_earlier_comparisons(bench, tmp_path):
    """Catches `compare` overwriting the stored comparison: the seed-0 intervals of other arms would be lost when
    seed 1 of one arm is compared; the same pair compared again replaces its row instead of adding a second one."""
    path = tmp_path / "screen-compare-validation.json"
    row = {"dataset": "x", "split": "validation", "reference": "a", "seeds": "seed 0", "mrr": 0.1}
    bench.write_comparison([{**row, "arm": "b"}, {**row, "arm": "c"}], path)
    bench.write_comparison([{**row, "arm": "b", "mrr": 0.2}, {**row, "arm": "b", "seeds": "seed 1"}], path)
    stored = {(r["arm"], r["seeds"]): r["mrr"] for r in json.loads(path.read_text())}
    assert stored == {("c", "seed 0"): 0.1, ("b", "seed 0"): 0.2, ("b", "seed 1"): 0.1}
