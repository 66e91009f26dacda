"""Finetune recipes: every shipped YAML validates and is fully commented; lora end to end saves only the adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from genrec_hf.data import ItemVocab
from genrec_hf.training import FinetuneRecipe, load_recipe, recipe_from_dict, run_finetune

from tests.helpers import REPO_ROOT, tiny_config

RECIPES = sorted((REPO_ROOT / "recipes" / "finetune").glob("*.yaml"))
SOURCE = "synthetic:num_users=120,num_items=60,num_clusters=4,seed=2"


def test_every_task_has_lora_and_full_recipes():
    """Catches a registered task shipping without its lora / full recipes."""
    from genrec_hf.data.tasks import TASKS

    names = {p.stem for p in RECIPES}
    for task in ("short_horizon", "long_horizon", "availability", "high_engagement"):
        assert task in TASKS and {f"{task}_lora", f"{task}_full"} <= names


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_shipped_recipe_validates_and_is_commented(path):
    """Catches a shipped recipe that no longer validates or has an undocumented key."""
    recipe = load_recipe(path, kind=FinetuneRecipe)
    assert path.stem.endswith(recipe.mode) and path.stem.startswith(recipe.task.name)
    text = path.read_text()
    assert "genrec-hf finetune" in text.split("\n\n")[0]  # launch command in the header
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#") and ":" in line:
            assert "#" in line, f"{path.name}: key without a comment: {line!r}"


def test_unknown_keys_are_errors():
    """Catches recipe typos being silently ignored."""
    with pytest.raises(ValueError, match="unknown top-level"):
        recipe_from_dict(kind=FinetuneRecipe, raw={"epochs": 3})
    with pytest.raises(ValueError, match="lora: unknown key"):
        recipe_from_dict(kind=FinetuneRecipe, raw={"lora": {"rank": 4}})
    with pytest.raises(ValueError, match="TrainingArguments"):
        recipe_from_dict(kind=FinetuneRecipe, raw={"training": {"num_epochs": 1}})
    with pytest.raises(ValueError, match="mode"):
        recipe_from_dict(kind=FinetuneRecipe, raw={"mode": "qlora"})
    with pytest.raises(ValueError, match="task.name"):
        recipe_from_dict(kind=FinetuneRecipe, raw={"task": {"name": "nope"}})


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    from genrec_hf import GenRecForNextItemPrediction
    from genrec_hf.data import load_interactions

    data = load_interactions(SOURCE)
    torch.manual_seed(0)
    model = GenRecForNextItemPrediction(tiny_config(vocab_size=len(data.vocab), num_action_types=data.num_action_types))
    path = tmp_path_factory.mktemp("base")
    model.save_pretrained(path)
    data.vocab.save(path)
    return path


def _recipe(tmp_path: Path, task: str = "short_horizon") -> Path:
    raw = yaml.safe_load((REPO_ROOT / "recipes" / "finetune" / f"{task}_lora.yaml").read_text())
    raw["output_dir"] = str(tmp_path / "out-lora")
    raw["data"].update(source=SOURCE, max_length=16)
    raw["lora"]["r"] = 2
    raw["training"].update(num_train_epochs=2, per_device_train_batch_size=64)
    raw["evaluation"]["ks"] = [10]
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_lora_end_to_end_saves_adapter_only(tmp_path, base_dir):
    """Catches LoRA fine-tuning (through GenRecTrainer and the task protocol) saving the base, touching it
    on disk, or reporting no test / zero-shot metrics."""
    from safetensors.torch import load_file

    before = load_file(base_dir / "model.safetensors")
    metrics = run_finetune(str(base_dir), str(_recipe(tmp_path)))
    out = tmp_path / "out-lora"
    files = {p.name for p in out.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "genrec_base.json", "metrics.json",
            "genrec_weights.json", "tokenizer_config.json", "item_vocab.json"} <= files
    from transformers import AutoTokenizer  # the adapter folder maps raw ids like its base

    assert AutoTokenizer.from_pretrained(out).raw_ids == ItemVocab.load(base_dir).raw_ids
    assert "model.safetensors" not in files and not any(n.startswith("checkpoint-") for n in files)
    assert (out / "adapter_model.safetensors").stat().st_size < 0.5 * (base_dir / "model.safetensors").stat().st_size
    assert metrics["mode"] == "lora" and 0 < metrics["test"]["mrr"] <= 1 and "mrr" in metrics["zero_shot_test"]
    assert 0 < metrics["parameters"]["trainable_fraction"] < 0.5
    assert json.loads((out / "metrics.json").read_text())["task"] == "short_horizon"
    after = load_file(base_dir / "model.safetensors")  # the base on disk is untouched
    assert all(torch.equal(before[k], after[k]) for k in before)
    # The adapter loads back on the base and is refused without --overwrite_output_dir.
    from genrec_hf.adapters import load_adapters

    load_adapters(base_dir, {"short_horizon": out})
    with pytest.raises(FileExistsError, match="overwrite_output_dir"):
        run_finetune(str(base_dir), str(_recipe(tmp_path)))


@pytest.mark.parametrize("mode", ["full", "from_scratch"])
def test_full_and_scratch_modes(tmp_path, base_dir, mode):
    """Catches the full and from-scratch modes not saving a loadable model with its vocabulary."""
    metrics = run_finetune(str(base_dir), str(_recipe(tmp_path, "high_engagement")), mode=mode,
                           overrides={"training.num_train_epochs": "1", "evaluation.zero_shot": "false"})
    out = tmp_path / f"out-{mode}"
    assert (out / "model.safetensors").is_file() and (out / "item_vocab.json").is_file()
    assert (out / "tokenizer_config.json").is_file()
    assert "model.safetensors" in json.loads((out / "genrec_weights.json").read_text())["files"]
    assert metrics["mode"] == mode and metrics["parameters"]["trainable_fraction"] == 1.0


@pytest.mark.parametrize(("mode", "starts_from_base"), [("full", True), ("from_scratch", False)])
def test_full_starts_from_the_base_and_from_scratch_does_not(tmp_path, base_dir, mode, starts_from_base):
    """Catches `full` and `from_scratch` being swapped or both doing the same: after one optimizer step of lr 1e-4
    (Adam moves each weight by at most lr), full is within 1e-4 of the base, from_scratch is a fresh init."""
    from safetensors.torch import load_file

    run_finetune(str(base_dir), str(_recipe(tmp_path, "high_engagement")), mode=mode,
                 overrides={"training.max_steps": "1", "training.learning_rate": "1e-4", "seed": "7",
                            "evaluation.zero_shot": "false"})
    base = load_file(base_dir / "model.safetensors")
    tuned = load_file(tmp_path / f"out-{mode}" / "model.safetensors")
    assert tuned.keys() == base.keys()
    distance = max((tuned[k] - base[k]).abs().max().item() for k in base)
    if starts_from_base:
        assert 0 < distance <= 1e-4 * 1.01
    else:
        assert distance > 1e-2


def test_a_finetune_task_with_no_eligible_user_fails_naming_it(tmp_path, base_dir, capsys):
    """Issue 27 A3: `threshold: 99` trained on nothing and failed at the end with "No ranks to average"."""
    from genrec_hf.cli import main

    recipe = _recipe(tmp_path, "high_engagement")
    assert main(["finetune", str(base_dir), str(recipe), "--task.params", "{threshold: 99}"]) == 2
    (line,) = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert "task 'high_engagement' (threshold=99" in line and "has no eligible user" in line
    assert not (tmp_path / "out-lora" / "metrics.json").exists()


def test_a_killed_finetune_save_is_refused_by_loads_and_rerun_with_overwrite(tmp_path, base_dir, monkeypatch):
    """Issue 27 X2 for fine-tuning: a kill while the adapter is being published leaves a folder that loads refuse
    by name (it may mix two saves); the documented remedy, a re-run with --overwrite_output_dir, clears it."""
    from genrec_hf.adapters import load_adapters
    from tests.faults import Killed, fault

    recipe = _recipe(tmp_path)
    raw = yaml.safe_load(recipe.read_text())
    raw["training"]["num_train_epochs"], raw["evaluation"]["zero_shot"] = 1, False
    recipe.write_text(yaml.safe_dump(raw))
    fault(monkeypatch, "genrec_hf.training.run_folder:_move", call=2)
    with pytest.raises(Killed):
        run_finetune(str(base_dir), str(recipe))
    monkeypatch.undo()
    out = tmp_path / "out-lora"
    with pytest.raises(ValueError, match="last save was interrupted.*--overwrite_output_dir"):
        load_adapters(base_dir, {"task": out})
    run_finetune(str(base_dir), str(recipe), overwrite_output_dir=True)
    load_adapters(base_dir, {"task": out})
    assert not (out / ".genrec-save-staging").exists()
