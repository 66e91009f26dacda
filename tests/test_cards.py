"""Model cards: front matter round-trips through huggingface_hub, sizes and usage in the body, metrics layouts,
user READMEs kept, adapter cards, the training callback, and a push that fails fast offline."""

from __future__ import annotations

import json
import logging
import re
import time

import pytest
import torch
from huggingface_hub import ModelCard
from peft import LoraConfig, get_peft_model
from transformers import TrainerControl, TrainerState, TrainingArguments

from genrec_hf import GenRecConfig, GenRecForNextItemPrediction, count_backbone_parameters
from genrec_hf.cards import (
    GENERATED_MARK,
    ModelCardCallback,
    build_model_card,
    model_sizes,
    parse_metrics,
    push_to_hub,
    write_model_card,
)
from genrec_hf.cli import main
from genrec_hf.data.vocab import ItemVocab

from tests.helpers import REPO_ROOT

METRICS = {"dataset": "ml-100k", "task": "next-item", "protocol": "leave_one_out, full-catalog ranking",
           "validation": {"mrr": 0.1, "hr@10": 0.2}, "test": {"mrr": 0.0912, "hr@10": 0.2031, "ndcg@10": 0.1044,
                                                               "num_users": 943},
           "popularity_baseline": {"test": {"mrr": 0.0311, "hr@10": 0.0655}}, "train": {"loss": 3.2}}
NUM_ITEMS = 50


def _config() -> GenRecConfig:
    return GenRecConfig.from_preset("genrec-100k", vocab_size=NUM_ITEMS + 1)


@pytest.fixture
def model_dir(tmp_path):
    torch.manual_seed(0)
    model = GenRecForNextItemPrediction(_config())
    model.save_pretrained(tmp_path / "model")
    ItemVocab([str(i) for i in range(100, 100 + NUM_ITEMS)]).save(tmp_path / "model")
    (tmp_path / "model" / "metrics.json").write_text(json.dumps(METRICS))
    return tmp_path / "model"


def _results(card: ModelCard) -> dict[tuple[str, str, str, str], float]:
    data = card.data.to_dict()
    return {(r["task"]["name"], r["dataset"]["name"], r["dataset"]["split"], m["type"]): m["value"]
            for r in data["model-index"][0]["results"] for m in r["metrics"]}


def test_card_metadata_round_trip(model_dir):
    path = write_model_card(model_dir, repo_id="me/genrec-100k-ml")
    assert path == model_dir / "README.md"
    card = ModelCard.load(path)
    data = card.data.to_dict()
    assert data["library_name"] == "genrec_hf"
    assert {"recommendation", "sequential-recommendation", "generative-recommender", "genrec",
            "transformers"} <= set(data["tags"])
    assert "peft" not in data["tags"] and "base_model" not in data
    assert data["datasets"] == ["ml-100k"]
    assert data["model-index"][0]["name"] == "me/genrec-100k-ml"
    results = _results(card)
    assert results == {("next-item", "ml-100k", "test", "mrr"): pytest.approx(0.0912),
                       ("next-item", "ml-100k", "test", "hr@10"): pytest.approx(0.2031),
                       ("next-item", "ml-100k", "test", "ndcg@10"): pytest.approx(0.1044),
                       ("next-item", "ml-100k", "validation", "mrr"): pytest.approx(0.1),
                       ("next-item", "ml-100k", "validation", "hr@10"): pytest.approx(0.2)}
    assert set(data["metrics"]) == {"mrr", "hr@10", "ndcg@10"}
    assert GENERATED_MARK in path.read_text()


def test_card_body_sizes_usage_and_sections(model_dir):
    text = build_model_card(model_dir, repo_id="me/genrec-100k-ml").text
    model = GenRecForNextItemPrediction(_config())
    backbone = count_backbone_parameters(_config())
    total = sum(p.numel() for p in model.parameters())
    assert f"| backbone | {backbone:,} |" in text and f"| total | {total:,} |" in text
    assert "| head | 0 |" in text  # tied: the head owns nothing beyond the input embeddings
    assert f"| embeddings | {total - backbone:,} |" in text
    assert "| preset | genrec-100k |" in text and f"| catalog (items) | {NUM_ITEMS} |" in text
    assert 'GenRecForNextItemPrediction.from_pretrained("me/genrec-100k-ml")' in text
    assert 'AutoModel.from_pretrained("me/genrec-100k-ml", trust_remote_code=True)' in text
    assert ("accelerate launch --config_file recipes/accelerate_configs/cpu.yaml -m genrec_hf.cli train "
            "recipes/pretrain/genrec-100k.yaml") in text
    assert "genrec-hf recommend me/genrec-100k-ml --history" in text and "--k 10" in text
    for heading in ("## Usage", "## Architecture and size", "## Training data and recipe", "## Evaluation protocol",
                    "## Results", "## Limitations and intended use", "## Citation"):
        assert heading in text, heading
    assert "pessimistic" in text and "full catalog" in text and "arXiv 2605.23312" in text
    assert "| next-item | ml-100k | test | 0.0912 | 0.2031 | 0.1044 |" in text
    assert "| next-item (most-popular baseline) | ml-100k | test | 0.0311 | 0.0655 |  |" in text


def test_model_sizes_untied_projected_head():
    config = _config().to_dict() | {"tie_word_embeddings": False, "head_projection_ratio": 4}
    sizes = model_sizes(config)
    d, v = 64, NUM_ITEMS + 1
    assert sizes["head"] == d * (d // 4) + v * (d // 4)  # projection + own item vectors
    assert sizes["backbone"] + sizes["embeddings"] + sizes["head"] == sizes["total"]


def test_write_is_idempotent_and_reads_recipe_and_args(model_dir, tmp_path):
    (model_dir / "training_recipe.yaml").write_text("preset: genrec-100k\ndata:\n  source: movielens:ml-100k\n")
    args = TrainingArguments(output_dir=str(tmp_path / "out"), learning_rate=3e-3, seed=7, report_to=[])
    first = write_model_card(model_dir, training_args=args).read_bytes()
    second = write_model_card(model_dir, training_args=args).read_bytes()
    assert first == second
    text = first.decode()
    assert "| learning_rate | 0.003 |" in text and "| seed | 7 |" in text
    assert "source: movielens:ml-100k" in text


def test_metrics_layouts():
    flat = parse_metrics({"mrr": 0.5, "HR@10": 0.7, "num_users": 3, "loss": 1.0, "ndcg@10": float("nan")})
    assert {(r.split, r.metric): r.value for r in flat} == {("test", "mrr"): 0.5, ("test", "hr@10"): 0.7}
    prefixed = parse_metrics({"eval_mrr": 0.2, "test_ndcg@10": 0.3, "test_loss": 2.0}, dataset="d")
    assert {(r.dataset, r.split, r.metric) for r in prefixed} == {("d", "eval", "mrr"), ("d", "test", "ndcg@10")}
    explicit = parse_metrics({"dataset": "ml-1m", "results": [
        {"task": "long-horizon", "split": "test", "metrics": {"mrr": 0.05}},
        {"task": "short-horizon", "dataset": "other", "metrics": {"hr@50": 0.4}}]})
    assert {(r.task, r.dataset, r.split, r.metric) for r in explicit} == {
        ("long-horizon", "ml-1m", "test", "mrr"), ("short-horizon", "other", "test", "hr@50")}
    nested = parse_metrics(METRICS)
    assert len(nested) == 5 and all(r.task == "next-item" and r.dataset == "ml-100k" for r in nested)


def test_eval_results_json_wins_and_no_metrics(model_dir):
    (model_dir / "eval_results.json").write_text(json.dumps({"test": {"mrr": 0.5}, "task": "next-item"}))
    results = _results(build_model_card(model_dir))
    assert results[("next-item", "ml-100k", "test", "mrr")] == pytest.approx(0.5)
    assert results[("next-item", "ml-100k", "test", "hr@10")] == pytest.approx(0.2031)
    (model_dir / "metrics.json").unlink()
    (model_dir / "eval_results.json").unlink()
    card = build_model_card(model_dir, dataset_name="my-logs")
    assert "model-index" not in card.data.to_dict() and card.data.datasets == ["my-logs"]
    assert "No evaluation results were saved" in card.text


def test_user_readme_is_never_overwritten(model_dir, caplog):
    (model_dir / "README.md").write_text("# my notes\n")
    with caplog.at_level(logging.WARNING, logger="genrec_hf.cards"):
        path = write_model_card(model_dir)
    assert path.name == "README.genrec.md" and GENERATED_MARK in path.read_text()
    assert "was not written by genrec_hf" in caplog.text
    assert (model_dir / "README.md").read_text() == "# my notes\n"
    assert write_model_card(model_dir) == path  # still protected on the second run
    assert (model_dir / "README.md").read_text() == "# my notes\n"


def test_adapter_card(tmp_path):
    base = GenRecForNextItemPrediction(_config())
    base.save_pretrained(tmp_path / "base")
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                 task_type=None))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    peft_model.save_pretrained(tmp_path / "adapter")  # PEFT writes its own template README: replaced
    (tmp_path / "adapter" / "metrics.json").write_text(json.dumps(
        {"dataset": "ml-100k", "task": "short-horizon", "test": {"mrr": 0.12}}))
    path = write_model_card(tmp_path / "adapter", base_model=str(tmp_path / "base"))
    assert path.name == "README.md"
    card = ModelCard.load(path)
    assert card.data.base_model == str(tmp_path / "base")
    assert card.data.library_name == "genrec_hf"
    assert {"peft", "lora", "genrec"} <= set(card.data.tags)
    assert _results(card) == {("short-horizon", "ml-100k", "test", "mrr"): pytest.approx(0.12)}
    assert 'PeftModel.from_pretrained(base, "adapter")' in card.text  # repo_id defaults to the folder name
    assert f'GenRecForNextItemPrediction.from_pretrained("{tmp_path / "base"}")' in card.text
    assert "| rank r | 4 |" in card.text and "| alpha | 8 |" in card.text
    assert "| target modules | q_proj, v_proj |" in card.text
    assert f"| adapter parameters | {trainable:,} |" in card.text


def test_template_mirrors_the_generated_sections(model_dir, tmp_path):
    template = (REPO_ROOT / "model_cards" / "genrec_template.md").read_text()
    headings = set(re.findall(r"^## .+$", template, flags=re.M))
    base = GenRecForNextItemPrediction(_config())
    peft_model = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"], task_type=None))
    peft_model.save_pretrained(tmp_path / "adapter")
    generated = set()
    for folder in (model_dir, tmp_path / "adapter"):
        found = set(re.findall(r"^## .+$", build_model_card(folder).text, flags=re.M))
        assert found <= headings, found - headings
        generated |= found
    assert generated == headings
    assert GENERATED_MARK in template


def test_callback_writes_on_main_process_only(model_dir, tmp_path):
    args = TrainingArguments(output_dir=str(model_dir), report_to=[], learning_rate=1e-3)
    callback = ModelCardCallback(dataset_name="ml-100k")
    callback.on_train_end(args, TrainerState(is_world_process_zero=False), TrainerControl())
    assert not (model_dir / "README.md").exists()
    callback.on_train_end(args, TrainerState(is_world_process_zero=True), TrainerControl())
    text = (model_dir / "README.md").read_text()
    assert "| learning_rate | 0.001 |" in text
    empty = TrainingArguments(output_dir=str(tmp_path / "nothing-saved"), report_to=[])
    callback.on_train_end(empty, TrainerState(is_world_process_zero=True), TrainerControl())  # skipped, no error
    assert not (tmp_path / "nothing-saved" / "README.md").exists()


def test_card_cli_and_errors(model_dir, tmp_path):
    assert main(["card", str(model_dir)]) == 0
    assert (model_dir / "README.md").is_file()
    with pytest.raises(FileNotFoundError, match="neither config.json nor adapter_config.json"):
        build_model_card(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="not 'genrec'"):
        build_model_card(tmp_path)


def test_push_to_hub_fails_fast_offline(model_dir, monkeypatch):
    import huggingface_hub

    def no_network(*args, **kwargs):
        raise AssertionError("push_to_hub must not touch the network here")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", no_network)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", no_network)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(RuntimeError, match="HF_HUB_OFFLINE is set"):
        push_to_hub(model_dir, "me/genrec-tiny", token="hf_fake")
    assert time.perf_counter() - start < 2.0
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(RuntimeError, match="no Hugging Face token"):
        push_to_hub(model_dir, "me/genrec-tiny")
    assert not (model_dir / "README.md").exists()  # nothing written before failing
