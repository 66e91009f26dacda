from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from genrec_hf.training.recipes import load_recipe, recipe_from_dict

from tests.helpers import REPO_ROOT

PRETRAIN = sorted((REPO_ROOT / "recipes" / "pretrain").glob("*.yaml"))


def _preset_of(path: Path) -> str:
    """A recipe is named after its preset, `<preset>.yaml`, or `<preset>-<method>.yaml` for a method variant."""
    from genrec_hf import SIZE_PRESETS

    return max((name for name in SIZE_PRESETS if path.stem == name or path.stem.startswith(f"{name}-")),
               key=len, default=path.stem)


def test_every_preset_has_a_recipe():
    from genrec_hf import SIZE_PRESETS

    assert {p.stem for p in PRETRAIN if p.stem in SIZE_PRESETS} == set(SIZE_PRESETS)
    assert all(_preset_of(p) in SIZE_PRESETS for p in PRETRAIN), [p.name for p in PRETRAIN]


@pytest.mark.parametrize("path", PRETRAIN, ids=lambda p: p.name)
def test_shipped_pretrain_recipe_is_valid(path: Path):
    recipe = load_recipe(path)
    assert recipe.model.preset == _preset_of(path)
    text = path.read_text()
    assert f"genrec-hf train recipes/pretrain/{path.name}" in text
    assert "accelerate launch --config_file recipes/accelerate_configs/" in text
    config_name = text.split("--config_file recipes/accelerate_configs/")[1].split()[0]
    assert (REPO_ROOT / "recipes" / "accelerate_configs" / config_name).is_file() or not (
        REPO_ROOT / "recipes" / "accelerate_configs").exists(), config_name
    # every key carries a comment
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#") and ":" in line:
            assert "#" in line, f"{path.name}: key without a comment: {line!r}"


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"modle": {}}, r"unknown top-level key\(s\) \['modle'\]"),
        ({"model": {"presett": "genrec-2m"}}, r"model: unknown key\(s\) \['presett'\]"),
        ({"model": {"preset": "genrec-3m"}}, r"model.preset='genrec-3m' is unknown"),
        ({"model": {"overrides": {"hidden": 3}}}, r"unknown GenRecConfig field\(s\) \['hidden'\]"),
        ({"model": {"overrides": {"hidden_size": 30}}}, r"GenRecConfig.hidden_size=30"),
        ({"training": {"learning_rat": 1}}, r"unknown TrainingArguments field\(s\) \['learning_rat'\]"),
        ({"training": {"output_dir": "x"}}, r"set by the recipe runner"),
        ({"training": {"seed": 1}}, r"\['seed'\] are set by the recipe runner \(use output_dir and seed at the top"),
        ({"data": {"split": "random"}}, r"data.split='random'"),
        ({"evaluation": {"metric_for_best_model": "hr@3"}}, r"metric_for_best_model='hr@3'"),
    ],
)
def test_recipe_errors_name_the_key(raw, message):
    with pytest.raises(ValueError, match=message):
        recipe_from_dict(raw)


def test_overrides_and_missing_file(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"model": {"preset": "genrec-100k"}}))
    recipe = load_recipe(path, {"training.learning_rate": "3e-4", "model.overrides.hidden_dropout_prob": "0.3",
                                "output_dir": "elsewhere"})
    assert recipe.training["learning_rate"] == 3e-4
    assert recipe.model.overrides == {"hidden_dropout_prob": 0.3}
    assert recipe.output_dir == "elsewhere"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"evaluation": {"exclude_history": "maybe"}}, r"evaluation.exclude_history='maybe' has the wrong type: "
                                                        r"expected bool"),
        ({"data": {"max_length": "fifty"}}, r"data.max_length='fifty' has the wrong type: expected int"),
        ({"data": {"max_length": 0}}, r"data.max_length=0; expected a positive integer"),
        ({"evaluation": {"early_stopping_patience": "3"}}, r"early_stopping_patience='3' has the wrong type"),
        ({"evaluation": {"ks": [10, "x"]}}, r"evaluation.ks=\[10, 'x'\] has the wrong type: expected a list of int"),
        ({"seed": "zero"}, r"seed='zero' has the wrong type: expected int"),
        ({"seed": True}, r"seed=True has the wrong type: expected int"),
        ({"max_train_minutes": "soon"}, r"max_train_minutes='soon' has the wrong type: expected float or null"),
        ({"max_train_minutes": -1}, r"max_train_minutes=-1; expected a positive number"),
        ({"budget_clock": "gpu"}, r"budget_clock='gpu'; expected one of \['cpu', 'wall'\]"),
        ({"training": {"num_train_epochs": "three"}}, r"training.num_train_epochs='three' has the wrong type"),
        ({"training": {"learning_rate": "fast"}}, r"training.learning_rate='fast' has the wrong type"),
        ({"training": {"per_device_train_batch_size": 1.5}}, r"per_device_train_batch_size=1.5 has the wrong type"),
        ({"model": {"overrides": {"hidden_size": "big"}}}, r"model.overrides.hidden_size='big' has the wrong type: "
                                                         r"expected int"),
        ({"training": ["a"]}, r"training: expected a mapping"),
    ],
)
def test_recipe_values_are_type_checked_before_any_work(raw, message):
    """Catches recipe values of the wrong type reaching training: `exclude_history: maybe` used to train and record
    'history excluded=maybe', and a string epoch count failed with a TypeError deep inside TrainingArguments."""
    with pytest.raises(ValueError, match=message):
        recipe_from_dict(raw)


def test_numeric_values_of_the_right_kind_pass():
    """Catches over-strict checking: YAML ints where floats are expected (lr 1, minutes 2) are valid."""
    recipe = recipe_from_dict({"max_train_minutes": 2, "training": {"learning_rate": 1, "num_train_epochs": 3},
                               "evaluation": {"early_stopping_patience": None}})
    assert recipe.max_train_minutes == 2 and recipe.training["learning_rate"] == 1


def test_pretrain_and_finetune_share_one_schema():
    """Catches the two recipe kinds drifting apart again: shared keys are declared once, in the bases."""
    import dataclasses

    from genrec_hf.training.recipes import (DataSection, EvaluationSection, FinetuneRecipe, Recipe, RecipeBase)

    base = {f.name for f in dataclasses.fields(RecipeBase)}
    for kind in (Recipe, FinetuneRecipe):
        fields = {f.name: f for f in dataclasses.fields(kind)}
        assert base <= set(fields)
        hints = __import__("typing").get_type_hints(kind)
        assert issubclass(hints["data"], DataSection) and issubclass(hints["evaluation"], EvaluationSection)
    with pytest.raises(ValueError, match=r"unknown top-level key\(s\) \['mode'\]"):
        recipe_from_dict({"mode": "lora"})  # a finetune key is not a pretrain key
    finetune = recipe_from_dict({"mode": "full", "data": {"max_length": 20}}, kind=FinetuneRecipe)
    assert finetune.mode == "full" and finetune.training_arguments().num_train_epochs == 10


@pytest.mark.parametrize("content", [b"- a\n- b\n", b"\x00\x01\xff\xfe binary"], ids=["yaml-list", "binary"])
def test_a_recipe_that_is_not_a_mapping_is_a_clear_error(tmp_path, content):
    """Catches a YAML list or a binary file as recipe ending in an AttributeError / UnicodeDecodeError traceback."""
    path = tmp_path / "r.yaml"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"r.yaml: (a recipe must be a YAML mapping|not a valid YAML recipe)"):
        load_recipe(path)


def test_recipes_read_yaml_1_2_scalars(tmp_path):
    """Catches YAML 1.1 readings that break recipes: `eval_strategy: no` turning into False (TrainingArguments then
    fails deep inside), and `1e-3` turning into a string."""
    path = tmp_path / "r.yaml"
    path.write_text("training:\n  eval_strategy: no\n  save_strategy: no\n  learning_rate: 1e-3\n  use_cpu: true\n")
    recipe = load_recipe(path, {"training.logging_strategy": "no", "training.weight_decay": "1e-2"})
    assert recipe.training["eval_strategy"] == "no" and recipe.training["logging_strategy"] == "no"
    assert recipe.training["learning_rate"] == 1e-3 and recipe.training["weight_decay"] == 0.01
    assert recipe.training["use_cpu"] is True
    assert recipe.training_arguments().eval_strategy == "no"


def test_tracking_defaults_to_tensorboard_when_installed(monkeypatch):
    """`report_to` was `[]` whatever was installed; now TensorBoard (offline) when it is, nothing when it is not, and
    a recipe's own choice (trackio, wandb, none) wins."""
    monkeypatch.setattr("genrec_hf.training.recipes.is_tensorboard_available", lambda: True)
    assert recipe_from_dict({}).training_arguments().report_to == ["tensorboard"]
    assert recipe_from_dict({"training": {"report_to": "none"}}).training_arguments().report_to == []
    monkeypatch.setattr("genrec_hf.training.recipes.is_tensorboard_available", lambda: False)
    assert recipe_from_dict({}).training_arguments().report_to == []


@pytest.mark.parametrize("path", sorted((REPO_ROOT / "recipes").glob("[pfc]*/*.yaml")), ids=lambda p: p.stem)
def test_shipped_recipes_say_how_to_track_and_push(path):
    """Each pre-training, fine-tuning and cold-start recipe shows, in its training section, how to turn on
    TensorBoard / trackio / W&B and the Hub upload."""
    section = path.read_text().split("\ntraining:", 1)[1]
    assert "report_to:" in section and all(name in section for name in ("tensorboard", "trackio", "wandb"))
    assert "push_to_hub: true" in section and "hub_model_id" in section


def _alias_bomb(levels: int = 9, width: int = 9) -> str:
    """A 'billion laughs' document: each level lists the previous one `width` times (width**levels values)."""
    lines = ["a0: &a0 [" + ", ".join(["lol"] * width) + "]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def test_a_yaml_alias_bomb_fails_fast_naming_the_file(tmp_path):
    """Issue 27 item 7: a 1.4 KB alias bomb hung the recipe loader (still running at 60 s): overrides round-tripped
    through yaml.safe_dump, which expands every alias. The document is bounded before it is walked, as a file and
    as an override value (no timed assertion: a hang shows as the test never finishing)."""
    bomb = _alias_bomb()
    assert len(bomb) < 1500
    path = tmp_path / "bomb.yaml"
    path.write_text("training:\n  num_train_epochs: 1\n" + bomb)
    with pytest.raises(ValueError, match=r"bomb.yaml: the recipe expands to more than 100,000 values"):
        load_recipe(path)
    path.write_text("model:\n  preset: genrec-100k\n")
    nested = "{" + ", ".join(bomb.strip().splitlines()) + "}"
    with pytest.raises(ValueError, match=r"expands to more than 100,000 values"):
        load_recipe(path, {"data.column_map": nested})
    path.write_text("x" * (1 << 20) + "x")
    with pytest.raises(ValueError, match="bytes is not a recipe"):
        load_recipe(path)


@pytest.mark.parametrize("training", [{"num_train_epochs": 0}, {"num_train_epochs": -1},
                                      {"num_train_epochs": 0, "max_steps": -1}])
def test_a_recipe_that_trains_nothing_is_refused(training):
    """Issue 27 R2: `--training.num_train_epochs 0` exited 0 with an untrained model, metrics and a card."""
    with pytest.raises(ValueError, match=r"training.num_train_epochs=-?\d+ trains nothing"):
        recipe_from_dict({"training": training})
    assert recipe_from_dict({"training": {"num_train_epochs": 0, "max_steps": 5}}).training["max_steps"] == 5
