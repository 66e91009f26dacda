"""The one run pipeline's steps: what each one decides, checked where the decision is made."""

from __future__ import annotations

import pytest

from genrec_hf.data import generate_synthetic
from genrec_hf.training import build_model, build_trainer, prepare_run, recipe_from_dict, train

TINY = {"hidden_size": 16, "intermediate_size": 32, "num_attention_heads": 2, "num_hidden_layers": 1}


def _recipe(tmp_path, **sections):
    raw = {"output_dir": str(tmp_path / "run"), "model": {"preset": "genrec-100k", "overrides": dict(TINY)},
           "data": {"max_length": 12}, "evaluation": {"ks": [10], "num_examples": 0},
           "training": {"num_train_epochs": 1, "disable_tqdm": True, "per_device_train_batch_size": 32}}
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if isinstance(value, dict) else value
    return recipe_from_dict(raw)


@pytest.fixture(scope="module")
def data():
    return generate_synthetic(num_users=80, num_items=60, num_clusters=4)


def test_validation_users_are_one_seeded_sample_the_test_set_stays_whole(tmp_path, data, one_thread):
    """Catches evaluation that does not scale (every validation user ranked at every epoch) and a sample that
    changes between evaluations or runs (checkpoint selection would compare different users)."""
    recipe = _recipe(tmp_path, evaluation={"validation_users": 20})
    run = prepare_run(recipe, data)
    again = prepare_run(recipe, data)
    assert len(run.validation) == 20 < len(run.splits["validation"])
    assert run.validation["user_id"] == again.validation["user_id"]  # the same users, run after run
    other = prepare_run(_recipe(tmp_path, seed=1, evaluation={"validation_users": 20}), data)
    assert other.validation["user_id"] != run.validation["user_id"]  # the seed draws them
    trainer = build_trainer(recipe, build_model(recipe, run), run)
    assert trainer.eval_dataset is run.validation
    outcome = train(recipe, data=data)
    assert outcome.metrics["validation"]["num_users"] == 20
    assert outcome.metrics["test"]["num_users"] == len(run.splits["test"]) == 80
    full = prepare_run(_recipe(tmp_path), data)
    assert full.validation is full.splits["validation"]  # the default: every validation user
    sampled_test = train(_recipe(tmp_path, output_dir=str(tmp_path / "t"), evaluation={"test_users": 30}), data=data)
    assert sampled_test.metrics["test"]["num_users"] == 30
    assert sampled_test.metrics["popularity_baseline"]["test"]["num_users"] == 30


def test_a_large_catalog_trains_with_sampled_softmax_unless_the_recipe_says_otherwise(tmp_path, data, monkeypatch):
    """Catches a catalog-scale run materialising positions x catalog logits (the full softmax) by default, and the
    switch overriding a loss the recipe chose."""
    from genrec_hf.models.genrec import modeling_genrec

    small = _recipe(tmp_path, model={"sampled_softmax_above_items": 100})
    assert build_model(small, prepare_run(small, data)).config.loss_type == "full"  # < 100 items: full softmax
    large = _recipe(tmp_path, model={"sampled_softmax_above_items": 10})
    run = prepare_run(large, data)
    config = build_model(large, run).config
    assert (config.loss_type, config.negative_sharing, config.negative_sampler) == ("sampled", "position", "uniform")
    assert config.resolved_num_negatives == len(run.train_vocab) - 1 < 128  # 128 asked, capped at the catalog
    chosen = _recipe(tmp_path, model={"sampled_softmax_above_items": 10,
                                      "overrides": {**TINY, "loss_type": "full"}})
    assert build_model(chosen, prepare_run(chosen, data)).config.loss_type == "full"  # the recipe's choice wins
    monkeypatch.setattr(modeling_genrec, "full_softmax_loss",
                        lambda *a, **k: pytest.fail("the full softmax ran on a catalog above the threshold"))
    model = build_model(large, run)
    batch = build_trainer(large, model, run).data_collator([run.train_windows[i] for i in range(4)])
    assert model(**batch).loss.isfinite()


@pytest.mark.parametrize(("section", "message"), [
    ({"model": {"sampled_softmax_above_items": 0}}, r"model.sampled_softmax_above_items=0; expected a positive"),
    ({"evaluation": {"validation_users": 0}}, r"evaluation.validation_users=0; expected a positive"),
    ({"evaluation": {"test_users": -1}}, r"evaluation.test_users=-1; expected a positive"),
])
def test_scale_settings_are_checked(tmp_path, section, message):
    with pytest.raises(ValueError, match=message):
        _recipe(tmp_path, **section)


def test_the_mtp_objective_reaches_the_collator(tmp_path, data):
    """Catches the recipe's objective section not reaching the training batches (silently training NTP)."""
    ntp = _recipe(tmp_path)
    mtp = _recipe(tmp_path, objective={"type": "mtp", "num_targets": 3})
    assert build_trainer(ntp, build_model(ntp, prepare_run(ntp, data)), prepare_run(ntp, data)).data_collator \
        .targets is None
    run = prepare_run(mtp, data)
    collator = build_trainer(mtp, build_model(mtp, run), run).data_collator
    assert collator.targets is not None and collator.targets.num_targets == 3
    assert collator([run.train_windows[0]])["mtp_labels"].shape[-1] == 3
