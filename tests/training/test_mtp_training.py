"""Multi-token prediction through Trainer and the CLI: loss normalisation under gradient accumulation, and
`genrec-hf train` with the shipped MTP recipe followed by `genrec-hf evaluate --staleness`."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from genrec_hf.cli import main
from genrec_hf.data import NextItemCollator
from genrec_hf.data.mtp import MultiTokenTargets

from tests.helpers import REPO_ROOT, train_one_step

pytestmark = pytest.mark.usefixtures("one_thread")


def _rows():
    g = torch.Generator().manual_seed(0)
    rows = []
    for length in [3, 9, 5, 12, 2, 7, 11, 4]:  # uneven lengths and uneven target counts per micro-batch
        items = torch.randint(1, 41, (length + 1,), generator=g).tolist()
        times = torch.cumsum(torch.randint(1, 7200, (length + 1,), generator=g), 0).tolist()
        rows.append({"item_ids": items, "timestamps": times, "action_ids": [0] * (length + 1)})
    return rows


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
def test_mtp_grad_accumulation_matches_full_batch(tmp_path, packing):
    """An MTP loss normalised per micro-batch (or by its target count) weights positions differently when the
    same rows are split into 4 accumulated micro-batches: the update would depend on batch composition."""
    targets = MultiTokenTargets(num_targets=3, half_life_seconds=3600.0, weight_normalization="none")
    collator = NextItemCollator(16, targets=targets, packing=packing)
    results = {accumulation: train_one_step(tmp_path / f"run{accumulation}", _rows(), collator, batch_size,
                                            accumulation) for batch_size, accumulation in [(8, 1), (2, 4)]}
    for (name, a), (_, b) in zip(results[1].named_parameters(), results[4].named_parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


TINY_DATA = "synthetic:num_users=150,num_items=80,num_clusters=5"


def test_train_with_the_mtp_recipe_then_staleness_replay(tmp_path, capsys):
    """The shipped MTP recipe not reaching the collator (silently training NTP), its objective not saved with the
    model, or `evaluate --staleness` not wired to the replay: the CLI path of the issue breaks."""
    out = tmp_path / "mtp"
    code = main(["train", str(REPO_ROOT / "recipes/pretrain/genrec-500k-mtp.yaml"), "--output_dir", str(out),
                 "--data.source", TINY_DATA, "--training.max_steps", "3", "--training.disable_tqdm", "true",
                 "--training.per_device_train_batch_size", "32", "--data.max_length", "20",
                 "--model.overrides", "{hidden_size: 16, intermediate_size: 32, num_attention_heads: 2}",
                 "--objective.num_targets", "3", "--objective.half_life_seconds", "86400",
                 "--objective.reward_column", "ratings", "--evaluation.num_examples", "0"])
    assert code == 0
    saved = yaml.safe_load((out / "training_recipe.yaml").read_text())["objective"]
    assert saved["type"] == "mtp" and saved["num_targets"] == 3 and saved["reward_column"] == "ratings"
    assert "objective" not in json.loads((out / "config.json").read_text())  # training-only: not a model field
    capsys.readouterr()
    code = main(["evaluate", str(out), "--data", TINY_DATA, "--staleness", "0,1h,48h"])
    assert code == 0
    result = json.loads((out / "eval_results_staleness_short_horizon_test.json").read_text())
    assert set(result["staleness"]) == {"0", "1h", "48h"} and result["anchor"] == "request"
    metrics = json.loads((out / "metrics.json").read_text())
    # Δ = 0 is the recipe's leave-one-out test: the same users, the same MRR
    assert result["staleness"]["0"]["mrr"] == pytest.approx(metrics["test"]["mrr"], rel=1e-6)
    assert result["staleness"]["0"]["num_users"] == metrics["test"]["num_users"] == 150
    for m in result["staleness"].values():
        assert m["num_users"] + m["num_users_without_target"] + m["num_users_without_context"] == 150
    assert result["staleness"]["48h"]["mean_consumed_in_between"] > 0
    # the global-cut replay of a leave-one-out model: allowed, with the leak named in the result
    assert main(["evaluate", str(out), "--data", TINY_DATA, "--staleness", "0,24h", "--staleness_anchor", "cut"]) == 0
    cut = json.loads((out / "eval_results_staleness_short_horizon_cut.json").read_text())
    assert cut["anchor"] == "cut" and "may leak" in cut["cut_from"]


def test_evaluate_staleness_bad_flags(tmp_path, capsys):
    """A malformed --staleness reaching the replay as a string, or --cut given without --staleness silently
    ignored (a leave-one-out number reported as if it were the replay)."""
    folder = tmp_path / "m"
    folder.mkdir()
    with pytest.raises(SystemExit):
        main(["evaluate", str(folder), "--data", TINY_DATA, "--staleness", "0,1y"])
    assert "1y" in capsys.readouterr().err
    assert main(["evaluate", str(folder), "--data", TINY_DATA, "--cut", "5"]) == 2
    assert "add --staleness" in capsys.readouterr().err


def test_train_on_given_data_not_the_recipe_source(tmp_path):
    """Bug caught: `train` could only read `recipe.data.source`, so a benchmark that must train on a log cut before
    its held-out windows (bench_mtp's long-horizon rows) had to train on the whole log, whose later events are the
    long-horizon test targets (a leak that favours MTP, which learns those events as targets)."""
    import dataclasses

    from genrec_hf.data import load_interactions
    from genrec_hf.training import train
    from genrec_hf.training.recipes import load_recipe

    full = load_interactions(TINY_DATA)
    cut = full.sequences.map(lambda row: {c: row[c][:-3] for c in ("item_ids", "timestamps", "action_ids",
                                                                    "ratings")})
    given = dataclasses.replace(full, sequences=cut, name="tiny, last 3 events cut")
    recipe = load_recipe(REPO_ROOT / "recipes/pretrain/genrec-500k-mtp.yaml", {
        "output_dir": str(tmp_path / "run"), "data.source": "synthetic", "data.max_length": "20",
        "training.max_steps": "2", "training.disable_tqdm": "true", "evaluation.num_examples": "0",
        "model.overrides.hidden_size": "16", "model.overrides.intermediate_size": "32",
        "model.overrides.num_attention_heads": "2"})  # the source is never read: the default log has 1,000 items
    outcome = train(recipe, data=given)
    assert outcome.data is given and outcome.metrics["dataset"] == "tiny, last 3 events cut"
    assert outcome.model.config.vocab_size == len(full.vocab)  # the given log's vocabulary, not the default's
    assert outcome.metrics["test"]["num_users"] == 150
