"""Model cards: front matter round-trips through huggingface_hub, sizes and usage in the body, user READMEs kept."""

from __future__ import annotations

import json

import pytest
import torch
from huggingface_hub import ModelCard
from peft import LoraConfig, get_peft_model

from genrec_hf import GenRecForNextItemPrediction, count_backbone_parameters
from genrec_hf.cards import GENERATED_MARK, build_model_card, push_to_hub, write_model_card
from genrec_hf.cli import main

from .conftest import tiny_config

METRICS = {"dataset": "ml-100k", "task": "next-item", "protocol": "leave_one_out, full-catalog ranking",
           "validation": {"mrr": 0.1, "hr@10": 0.2}, "test": {"mrr": 0.0912, "hr@10": 0.2031, "ndcg@10": 0.1044}}


@pytest.fixture
def model_dir(tmp_path):
    torch.manual_seed(0)
    model = GenRecForNextItemPrediction(tiny_config())
    model.save_pretrained(tmp_path / "model")
    (tmp_path / "model" / "metrics.json").write_text(json.dumps(METRICS))
    return tmp_path / "model"


def test_card_metadata_round_trip(model_dir):
    path = write_model_card(model_dir, repo_id="me/genrec-tiny")
    card = ModelCard.load(path)
    data = card.data.to_dict()
    assert data["library_name"] == "genrec_hf"
    assert {"recommendation", "genrec"} <= set(data["tags"])
    assert data["datasets"] == ["ml-100k"]
    results = {(r["dataset"]["split"], m["type"]): m["value"]
               for r in data["model-index"][0]["results"] for m in r["metrics"]}
    assert results[("test", "mrr")] == pytest.approx(0.0912)
    assert results[("test", "ndcg@10")] == pytest.approx(0.1044)
    assert results[("validation", "hr@10")] == pytest.approx(0.2)
    backbone = count_backbone_parameters(tiny_config())
    assert f"| backbone | {backbone:,} |" in card.text
    assert 'from_pretrained("me/genrec-tiny")' in card.text and "trust_remote_code=True" in card.text
    assert "accelerate launch" in card.text and "Evaluation protocol" in card.text
    assert GENERATED_MARK in path.read_text()
    assert write_model_card(model_dir) == path  # regenerating replaces our own card


def test_user_readme_is_never_overwritten(model_dir):
    (model_dir / "README.md").write_text("# my notes\n")
    path = write_model_card(model_dir)
    assert path.name == "README.genrec.md"
    assert (model_dir / "README.md").read_text() == "# my notes\n"


def test_adapter_card(tmp_path):
    base = GenRecForNextItemPrediction(tiny_config())
    base.save_pretrained(tmp_path / "base")
    peft_model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type=None))
    peft_model.save_pretrained(tmp_path / "adapter")  # PEFT writes its own template README: replaced
    data_path = write_model_card(tmp_path / "adapter", base_model=str(tmp_path / "base"))
    assert data_path.name == "README.md"
    card = ModelCard.load(data_path)
    assert card.data.base_model == str(tmp_path / "base")
    assert {"peft", "lora"} <= set(card.data.tags)
    assert "PeftModel.from_pretrained" in card.text and "| rank r | 4 |" in card.text


def test_card_cli_and_errors(model_dir, tmp_path, capsys):
    assert main(["card", str(model_dir)]) == 0
    assert (model_dir / "README.md").is_file()
    with pytest.raises(FileNotFoundError, match="neither config.json nor adapter_config.json"):
        build_model_card(tmp_path)


def test_push_to_hub_fails_fast_offline(model_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="HF_HUB_OFFLINE"):
        push_to_hub(model_dir, "me/genrec-tiny")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_TOKEN", "")
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    with pytest.raises(RuntimeError, match="no token"):
        push_to_hub(model_dir, "me/genrec-tiny")
