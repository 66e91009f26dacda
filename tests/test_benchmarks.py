"""The benchmark scripts stay runnable: `--help` works and every named variant is a valid recipe.

A typo in a head's overrides would otherwise surface an hour into a benchmark run, not in CI.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from genrec_hf.training.recipes import load_recipe

from tests.helpers import REPO_ROOT, benchmark_module

SCRIPTS = sorted((REPO_ROOT / "benchmarks").glob("*/*.py"))  # every script of every topic folder


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_every_benchmark_has_help(script):
    result = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout


def test_every_quality_head_is_a_valid_recipe():
    heads = benchmark_module("bench_quality").HEADS
    assert "full" in heads and heads["full"] == {}
    for name, overrides in heads.items():
        recipe = load_recipe(REPO_ROOT / "recipes" / "pretrain" / "genrec-100k.yaml", overrides)  # validates config
        assert recipe.model.overrides.get("loss_type", "full") == ("full" if name == "full" else "sampled"), name


def test_refresh_merge_pools_seeds_and_refuses_another_setup():
    merge = benchmark_module("bench_refresh").merge
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


def test_every_mtp_row_is_a_valid_recipe_with_its_options():
    """A typo in an `--extra` row name silently training the default MTP (position-normalised, no reward), or
    `-sum` / `-reward-<column>` not reaching the config: the paper's plain-sum and reward rows would be mislabelled."""
    bench = benchmark_module("bench_mtp")
    grid = bench.variants([5], [3600, 86400], ["mtp-k5-b24h-sum", "mtp-k5-b24h-reward-ratings"])
    assert list(grid) == ["ntp", "mtp-k5-b1h", "mtp-k5-b24h", "mtp-k5-b24h-sum", "mtp-k5-b24h-reward-ratings"]
    for name, overrides in grid.items():
        recipe = load_recipe(bench.RECIPE, overrides)  # validates the objective section
        assert recipe.objective.type == ("ntp" if name == "ntp" else "mtp"), name
    assert load_recipe(bench.RECIPE, grid["mtp-k5-b24h-sum"]).objective.weight_normalization == "none"
    reward = load_recipe(bench.RECIPE, grid["mtp-k5-b24h-reward-ratings"]).objective
    assert reward.reward_column == "ratings" and reward.half_life_seconds == 86400
    assert reward.weight_normalization == "position"
    # `--ks` with no value: only ntp and the extra rows, trained in the order given
    assert list(bench.variants([], [86400], ["mtp-k5-b24h-reward-ratings", "mtp-k5-b24h"])) == [
        "ntp", "mtp-k5-b24h-reward-ratings", "mtp-k5-b24h"]
    with pytest.raises(ValueError, match="mtp-k5-b24h-summ"):
        bench.variant_overrides("mtp-k5-b24h-summ")


def test_mtp_bench_pairs_set_valued_rows_on_the_best_rank():
    """Bug caught: the paired bootstrap fed `ranks[:, 0]` (the first target's rank). For the set-valued long-horizon
    task the user's MRR term is 1 / best rank, so the intervals would not be those of the reported MRR."""
    import torch

    from genrec_hf.evaluation import metrics_from_ranks

    bench = benchmark_module("bench_mtp")
    ranks = torch.tensor([[5, 2, 0], [0, 0, 0], [3, 0, 0], [7, 9, 4]])
    best = bench.best_ranks(ranks)
    assert best == [2, 3, 4]  # the user without a target is left out, as metrics_from_ranks does
    assert sum(1 / r for r in best) / len(best) == pytest.approx(metrics_from_ranks(ranks)["mrr"])
    assert bench.best_ranks(torch.tensor([4, 1])) == [4, 1] and bench.best_ranks(None) == []


def test_mtp_bench_trains_before_the_long_horizon_windows():
    """Bug caught: long-horizon rows from models trained on the whole log, whose later events are the long-horizon
    test targets (an MTP model learns exactly those as targets). The cut log ends where each test context ends."""
    from genrec_hf.data import load_interactions
    from genrec_hf.data.tasks import build_task

    bench = benchmark_module("bench_mtp")
    full = load_interactions("synthetic:num_users=150,num_items=80,num_clusters=5")
    cut, info = bench.before_long_horizon_windows(full)
    task = build_task("long_horizon", full)
    assert len(task.test) == info["long_horizon_users"] > 0
    contexts = {str(r["user_id"]): r["item_ids"] for r in task.test}
    rows = {str(r["user_id"]): r for r in cut.sequences}
    whole = {str(r["user_id"]): r["item_ids"] for r in full.sequences}
    for user, row in rows.items():
        assert row["item_ids"] == contexts.get(user, whole[user])  # users the task drops keep every event
        assert len(row["timestamps"]) == len(row["ratings"]) == len(row["item_ids"])
    assert cut.vocab == full.vocab and info["events"] < info["events_full"]


def test_scaling_report_pools_seeds_and_compares_the_headroom_rankings(tmp_path):
    """Catches a report that drops a seed, pools nothing, or ranks tasks by the wrong headroom."""
    report = benchmark_module("scaling_report").report
    rng = np.random.default_rng(0)
    sizes = [10_000, 30_000, 100_000, 300_000, 1_000_000]
    folders = []
    for seed in range(2):
        folder = tmp_path / f"s{seed}"
        (folder / "ranks").mkdir(parents=True)
        rows = []
        for task, ceiling in (("A", 0.3), ("B", 0.6)):
            for size in sizes:
                target = ceiling - (size / 30) ** -0.3  # an offset law, so each seed's ceiling is identified
                ranks = rng.geometric(min(0.99, target * 1.3), size=400).clip(min=1)
                np.save(folder / "ranks" / f"{task}{size}.npy", ranks)
                rows.append({"task": task, "preset": f"p{size}", "backbone_params": size, "seed": seed,
                             "num_users": 400, "mrr": float(np.mean(1.0 / ranks)),
                             "ranks_path": f"ranks/{task}{size}.npy"})
        pd.DataFrame(rows).to_csv(folder / "results.csv", index=False)
        axis = [{**r, "data_fraction": f, "train_events": int(f * 1000) + 2 * seed}  # each seed drew its own users
                for r, f in zip(rows[:5], (0.125, 0.25, 0.5, 0.75, 1.0))]
        pd.DataFrame(axis).to_csv(folder / "results_data_axis.csv", index=False)
        folders.append(folder)
    text = report(folders, bootstrap=20, plot=None, name="toy")
    assert "seed 0, seed 1" in text and "| A | pooled (ranks+seeds) |" in text and "| B | seed 1 |" in text
    assert text.count(" / ") >= 2 * len(sizes)  # both seeds' values in every cell
    assert "Kendall τ of the headroom ranking, seed 0 vs seed 1" in text and "Kendall τ of the gain ranking" in text
    axis = text[text.index("## Data-size axis"):]
    assert "0.125 (126 events)" in axis and "| A | pooled (ranks+seeds) |" in axis  # pooled on the shared fractions


def test_ladder_task_rerun_reuses_the_bases_and_reproduces_zero_shot_rows(tmp_path, monkeypatch, one_thread):
    """Catches a task re-run that trains a base again, reads another size's base, or evaluates other users: on a
    zero-shot ladder, re-running zero-shot must give the very same rows; a LoRA re-run fine-tunes every task."""
    import csv

    from genrec_hf.scaling.ladder import run_ladder
    from genrec_hf.scaling.ladder import runner as ladder_runner

    from tests.scaling.test_ladder import tiny_recipe

    ladder = tmp_path / "ladder"
    outcome = run_ladder(tiny_recipe(ladder, presets=["genrec-10k", "genrec-25k"], tasks__names=["short_horizon"],
                                     tasks__mode="zero_shot", tasks__modes={}))
    bench = benchmark_module("bench_ladder_tasks")
    monkeypatch.setattr(ladder_runner, "_pretrain", lambda *a, **k: pytest.fail("a base was trained again"))
    read = lambda path: {r["preset"]: r for r in csv.DictReader(path.open())}  # noqa: E731
    original = read(outcome.csv_path)
    again = read(bench.run(ladder, tmp_path / "zero", "zero_shot", None))
    assert set(again) == {"genrec-10k", "genrec-25k"}
    for preset, row in again.items():
        assert row["mode"] == "zero_shot" and row["num_users"] == original[preset]["num_users"]
        assert float(row["mrr"]) == pytest.approx(float(original[preset]["mrr"]), abs=1e-12)
    assert float(again["genrec-10k"]["mrr"]) != float(again["genrec-25k"]["mrr"])  # each size its own base
    lora = read(bench.run(ladder, tmp_path / "lora", "lora", 1))
    assert all(r["mode"] == "lora" and int(r["finetune_steps"]) > 0 for r in lora.values())


def test_machine_summary_counts_the_cores_not_the_omp_threads(monkeypatch):
    """Catches a report header that says '1 cores' for a one-thread run (`nproc` honours OMP_NUM_THREADS)."""
    import os

    from genrec_hf.training.throughput import machine_summary

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert f"{os.cpu_count()} CPU cores" in machine_summary()


def test_adapter_benchmark_pretrains_its_base_through_the_run_pipeline(tmp_path, one_thread):
    """Catches the adapter benchmark's base drifting from what `genrec-hf train` builds (a setup of its own), or
    seeing a task's validation / test target in pre-training."""
    import json

    from genrec_hf.data import load_interactions
    from genrec_hf.data.tasks import build_task, validation_cut

    bench = benchmark_module("bench_adapters")
    source = "synthetic:num_users=60,num_items=40,num_clusters=3"
    base = bench.pretrain_base(source, tmp_path / "base", "genrec-10k", epochs=1, max_length=10, minutes=1.0)
    metrics = json.loads((base / "metrics.json").read_text())
    assert metrics["train"]["steps"] > 0 and not list(base.glob("checkpoint-*"))
    data = load_interactions(source)
    cut = validation_cut(build_task(name, data) for name in bench.TASK_NAMES)
    # every evaluated user's pre-training history stops before their earliest validation anchor
    assert metrics["validation"]["num_users"] <= len(data.sequences)
    assert all(stop < len(items) for user, items in zip(data.sequences["user_id"], data.sequences["item_ids"])
               if (stop := cut.get(str(user))) is not None)


def test_refresh_benchmark_trains_through_fine_tuning(tmp_path, one_thread):
    """Catches the refresh benchmark's three trainings (previous, full retrain, LoRA refresh) going through a
    Trainer setup of their own, or the LoRA refresh not starting from `previous`."""
    import argparse

    bench = benchmark_module("bench_refresh")
    args = argparse.Namespace(data="synthetic:num_users=80,num_items=40,num_clusters=3", sizes=["genrec-10k"],
                              max_lengths=[12], seeds=[0], new_fraction=0.2, epochs=1.0, lr=2e-3, lora_epochs=1.0,
                              lora_lr=5e-3, lora_rank=4, max_users=50, tau_items=20, workdir=tmp_path)
    results = bench.run(args)
    assert [r["method"] for r in results] == ["full", "lora"]
    for point in results:
        assert point["cpu_s"] > 0 and 0.0 < point["mrr_mean"] <= 1.0
    lora = tmp_path / "genrec-10k-len12" / "lora-s0"
    assert (lora / "adapter_config.json").is_file()
    assert "previous" in (lora / "genrec_base.json").read_text()  # the adapter names the base it refreshed


def test_scale_baseline_builds_the_prepared_rows(tmp_path):
    """The scale benchmark compares prepare with a baseline doing the same work: same users, same lists."""
    from genrec_hf.data.prepare import generate_event_log, prepare_events

    bench = benchmark_module("bench_scale")
    generate_event_log(tmp_path / "log", 3_000, 200, events_per_file=1_000, seed=1)
    bench.stage_baseline(tmp_path / "log", tmp_path, "baseline", bench.parse_args([]))
    prepare_events(tmp_path / "log", tmp_path / "prepared-memory", engine="memory", num_shards=2)
    assert bench.check_same_rows(tmp_path)
