from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from genrec_hf.training.recipes import load_recipe, recipe_from_dict

from tests.helpers import REPO_ROOT

PRETRAIN = sorted((REPO_ROOT / "recipes" / "pretrain").glob("*.yaml"))


def test_every_preset_has_a_recipe():
    from genrec_hf import SIZE_PRESETS

    assert {p.stem for p in PRETRAIN} == set(SIZE_PRESETS)


@pytest.mark.parametrize("path", PRETRAIN, ids=lambda p: p.name)
def test_shipped_pretrain_recipe_is_valid(path: Path):
    recipe = load_recipe(path)
    assert recipe.model.preset == path.stem
    text = path.read_text()
    assert f"genrec-hf train recipes/pretrain/{path.name}" in text
    assert f"accelerate launch --config_file recipes/accelerate_configs/" in text
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
