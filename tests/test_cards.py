"""Model cards: one Jinja template (package data) rendered by `ModelCard.from_template` for models and adapters;
front matter round-trips through huggingface_hub, sizes, features and usage in the body match the saved config,
metrics layouts, user READMEs kept, the training callback, and a push that fails fast offline."""

from __future__ import annotations

import fnmatch
import importlib.resources
import importlib.util
import json
import logging
import re
import time
import tomllib
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from peft import LoraConfig, get_peft_model
from transformers import TrainerControl, TrainerState, TrainingArguments

from genrec_hf import GenRecConfig, GenRecForNextItemPrediction, count_backbone_parameters
from genrec_hf.cards import (
    GENERATED_MARK,
    TEMPLATE_PATH,
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
    """Catches front matter the Hub cannot read back: wrong tags/datasets, or model-index entries lost or invented."""
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
    """Catches parameter counts that disagree with count_backbone_parameters, broken usage snippets, missing sections
    or a results table whose cells slide under the wrong column."""
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
    """Catches a head count that misses the projection or the untied item vectors, or parts not summing to the total."""
    config = _config().to_dict() | {"tie_word_embeddings": False, "head_projection_ratio": 4}
    sizes = model_sizes(config)
    d, v = 64, NUM_ITEMS + 1
    assert sizes["head"] == d * (d // 4) + v * (d // 4)  # projection + own item vectors
    assert sizes["backbone"] + sizes["embeddings"] + sizes["head"] == sizes["total"]


def test_write_is_idempotent_and_reads_recipe_and_args(model_dir, tmp_path):
    """Catches a card that changes between identical writes (noisy Hub diffs), or one without recipe / arguments."""
    (model_dir / "training_recipe.yaml").write_text("preset: genrec-100k\ndata:\n  source: movielens:ml-100k\n")
    args = TrainingArguments(output_dir=str(tmp_path / "out"), learning_rate=3e-3, seed=7, report_to=[])
    first = write_model_card(model_dir, training_args=args).read_bytes()
    second = write_model_card(model_dir, training_args=args).read_bytes()
    assert first == second
    text = first.decode()
    assert "| learning_rate | 0.003 |" in text and "| seed | 7 |" in text
    assert "source: movielens:ml-100k" in text


def test_metrics_layouts():
    """Catches a metrics layout (flat, Trainer-prefixed, explicit, by split) misread, or non-metric keys kept."""
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
    """Catches eval_results.json not overriding metrics.json, and an empty model-index when nothing was measured."""
    (model_dir / "eval_results.json").write_text(json.dumps({"test": {"mrr": 0.5}, "task": "next-item"}))
    results = _results(build_model_card(model_dir))
    assert results[("next-item", "ml-100k", "test", "mrr")] == pytest.approx(0.5)
    assert results[("next-item", "ml-100k", "test", "hr@10")] == pytest.approx(0.2031)
    (model_dir / "metrics.json").unlink()
    (model_dir / "eval_results.json").unlink()
    card = build_model_card(model_dir, dataset_name="my-logs")
    assert "model-index" not in card.data.to_dict() and card.data.datasets == ["my-logs"]
    assert "No evaluation results were saved" in card.text


def test_genrec_hf_evaluate_outputs_reach_the_card(model_dir):
    """Catches `genrec-hf evaluate`'s eval_results_<split>.json being ignored by the card, filed under `test` whatever
    its split, or two such files overwriting each other's flat metric keys."""
    for split, mrr in (("test", 0.31), ("validation", 0.29)):
        (model_dir / f"eval_results_{split}.json").write_text(json.dumps(
            {"dataset": "ml-100k", "split": split, "protocol": "leave_one_out, full-catalog ranking", "mrr": mrr,
             "hr@10": 0.5, "num_users": 943}))
    results = _results(build_model_card(model_dir))
    assert results[("next-item", "ml-100k", "test", "mrr")] == pytest.approx(0.31)
    assert results[("next-item", "ml-100k", "validation", "mrr")] == pytest.approx(0.29)
    assert results[("next-item", "ml-100k", "test", "ndcg@10")] == pytest.approx(0.1044)  # kept from metrics.json
    assert {r.split for r in parse_metrics({"split": "validation", "mrr": 0.2})} == {"validation"}


def test_user_readme_is_never_overwritten(model_dir, caplog):
    """Catches write_model_card clobbering a README.md the user wrote (on the first or any later run)."""
    (model_dir / "README.md").write_text("# my notes\n")
    with caplog.at_level(logging.WARNING, logger="genrec_hf.cards"):
        path = write_model_card(model_dir)
    assert path.name == "README.genrec.md" and GENERATED_MARK in path.read_text()
    assert "was not written by genrec_hf" in caplog.text
    assert (model_dir / "README.md").read_text() == "# my notes\n"
    assert write_model_card(model_dir) == path  # still protected on the second run
    assert (model_dir / "README.md").read_text() == "# my notes\n"


def test_adapter_card(tmp_path):
    """Catches an adapter card without its base model, PEFT tags, LoRA settings, loading snippet or parameter count."""
    base = GenRecForNextItemPrediction(_config())
    base.save_pretrained(tmp_path / "base")
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                 task_type=None))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    peft_model.save_pretrained(tmp_path / "adapter")  # PEFT writes its own template README: replaced
    (tmp_path / "adapter" / "metrics.json").write_text(json.dumps(
        {"dataset": "ml-100k", "task": "short-horizon", "test": {"mrr": 0.12}}))
    path = write_model_card(tmp_path / "adapter", base_model="me/genrec-base")
    assert path.name == "README.md"
    card = ModelCard.load(path)
    assert card.data.base_model == "me/genrec-base" and card.data.pipeline_tag == "other"
    assert card.data.library_name == "genrec_hf"
    assert {"peft", "lora", "genrec"} <= set(card.data.tags)
    assert _results(card) == {("short-horizon", "ml-100k", "test", "mrr"): pytest.approx(0.12)}
    assert 'PeftModel.from_pretrained(base, "adapter")' in card.text  # repo_id defaults to the folder name
    assert 'GenRecForNextItemPrediction.from_pretrained("me/genrec-base")' in card.text
    assert 'adapters={"task": "adapter"}' in card.text and "BASE_MODEL" not in card.text
    assert "| rank r | 4 |" in card.text and "| alpha | 8 |" in card.text
    assert "| target modules | q_proj, v_proj |" in card.text
    assert f"| adapter parameters | {trainable:,} |" in card.text


def test_adapter_card_never_names_a_local_base_as_base_model(tmp_path):
    """Bug: the adapter card's `base_model` was the local folder the base was trained in (PEFT's
    base_model_name_or_path), which the Hub cannot resolve. A local base (absolute, relative, or the one
    genrec_base.json records) is left out of the metadata, with a placeholder and a note in the text."""
    from genrec_hf.cards import hub_repo_id

    base = GenRecForNextItemPrediction(_config())
    base.save_pretrained(tmp_path / "base")
    get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"], task_type=None)).save_pretrained(
        tmp_path / "adapter")
    (tmp_path / "adapter" / "genrec_base.json").write_text(json.dumps({"base_dir": "runs/base"}))
    for given in (None, str(tmp_path / "base"), "runs/base", "../base"):
        card = build_model_card(tmp_path / "adapter", base_model=given)
        assert card.data.base_model is None, given
        assert "BASE_MODEL" in card.text and "--base_model NAMESPACE/BASE" in card.text
    assert hub_repo_id("runs/base") == "runs/base" and hub_repo_id("runs/base", known_local=("runs/base",)) is None
    assert hub_repo_id("a/b/c") is None and hub_repo_id(str(tmp_path)) is None


def test_metrics_are_in_numeric_order(model_dir):
    """Bug: the card sorted metric names as text: NDCG@1 after NDCG@200, Recall @1, @10, @200, @5, @50."""
    ks = (1, 5, 10, 50, 200)
    test = {"mrr": 0.1, **{f"{m}@{k}": 0.1 for m in ("recall", "ndcg", "hr") for k in reversed(ks)}}
    card = build_model_card(model_dir, metrics={"dataset": "ml-100k", "test": test})
    order = [*(["mrr"]), *(f"hr@{k}" for k in ks), *(f"ndcg@{k}" for k in ks), *(f"recall@{k}" for k in ks)]
    assert card.data.metrics == order
    header = next(line for line in card.text.splitlines() if line.startswith("| task | dataset | split |"))
    names = {"mrr": "MRR", "hr": "HR", "ndcg": "NDCG", "recall": "Recall"}
    assert header.split(" | ")[3:] == [names[m.split("@")[0]] + ("@" + m.split("@")[1] if "@" in m else "")
                                       for m in order[:-1]] + ["Recall@200 |"]
    assert [r.metric_type for r in card.data.eval_results] == order


def _adapter_dir(tmp_path):
    base = GenRecForNextItemPrediction(_config())
    peft_model = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"], task_type=None))
    peft_model.save_pretrained(tmp_path / "adapter")
    (tmp_path / "adapter" / "metrics.json").write_text(json.dumps(
        {"dataset": "ml-100k", "task": "short-horizon", "test": {"mrr": 0.12, "recall@10": 0.3}}))
    return tmp_path / "adapter"


def test_one_template_for_models_and_adapters(model_dir, tmp_path):
    """Catches a section of the shipped template that no card renders (a dead Jinja branch), a card section that is
    not in the template (layout written outside it), and the hand-written copy of the template coming back."""
    template = TEMPLATE_PATH.read_text()
    headings = set(re.findall(r"^## .+$", template, flags=re.M))
    generated = set()
    for folder in (model_dir, _adapter_dir(tmp_path)):
        found = set(re.findall(r"^## .+$", build_model_card(folder).text, flags=re.M))
        assert found <= headings, found - headings
        generated |= found
    assert generated == headings
    assert GENERATED_MARK in template
    assert not (REPO_ROOT / "model_cards" / "genrec_template.md").exists()


def test_template_is_package_data():
    """Catches the template left out of the wheel: an installed genrec_hf could then write no card at all."""
    packaged = importlib.resources.files("genrec_hf") / "templates" / TEMPLATE_PATH.name
    assert packaged.is_file() and Path(str(packaged)).resolve() == TEMPLATE_PATH
    patterns = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    relative = TEMPLATE_PATH.relative_to(REPO_ROOT / "src" / "genrec_hf").as_posix()
    assert any(fnmatch.fnmatch(relative, pattern) for pattern in patterns["genrec_hf"]), patterns


def test_rendered_cards_round_trip_through_model_card_load(model_dir, tmp_path):
    """Catches Jinja syntax leaking into the card ({{ / {% / {#), front matter ModelCard.load cannot parse, and a
    model-index that differs from the metrics file, for a base model and an adapter alike."""
    for folder, expected in ((model_dir, METRICS), (_adapter_dir(tmp_path), None)):
        path = write_model_card(folder, repo_id=f"me/{folder.name}")
        text = path.read_text()
        for token in ("{{", "}}", "{%", "%}", "{#", "#}"):
            assert token not in text, token
        card = ModelCard.load(path)
        metrics = expected or json.loads((folder / "metrics.json").read_text())
        want = {(r.task, r.dataset, r.split, r.metric): pytest.approx(r.value) for r in parse_metrics(metrics)}
        assert _results(card) == want
        assert card.data.to_dict()["model-index"][0]["name"] == f"me/{folder.name}"
        assert card.data.eval_results and all(r.task_type == "recommendation" for r in card.data.eval_results)
        assert card.text.lstrip().startswith(GENERATED_MARK)


def test_sasrec_card_describes_its_own_config(tmp_path):
    """Catches the SASRec card telling users to train `genrec-2m.yaml` and describing time-gap / action tokens the
    `sasrec` preset does not have."""
    config = GenRecConfig.from_preset("sasrec", vocab_size=NUM_ITEMS + 1)
    GenRecForNextItemPrediction(config).save_pretrained(tmp_path / "sasrec")
    (tmp_path / "sasrec" / "training_recipe.yaml").write_text("model:\n  preset: sasrec\n")
    text = build_model_card(tmp_path / "sasrec").text
    assert "recipes/pretrain/sasrec.yaml" in text and "genrec-2m" not in text
    assert "one token per event (item + learned position)" in text
    assert "| event token | item + learned position |" in text
    assert "| time-gap buckets | off (0) |" in text and "| action types | off (0) |" in text
    assert "| positions | learned embeddings, max 200 events |" in text and "| preset | sasrec |" in text


def test_card_features_and_preset_come_from_config_and_recipe(tmp_path):
    """Catches a card that lists event features the config turned off (or hides ones it turned on), and a training
    command that would build another shape than the saved model's."""
    config = GenRecConfig.from_preset("genrec-100k", vocab_size=NUM_ITEMS + 1, num_action_types=6,
                                      num_time_buckets=16, hidden_size=96, intermediate_size=256)
    GenRecForNextItemPrediction(config).save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "training_recipe.yaml").write_text("model:\n  preset: genrec-100k\n")
    text = build_model_card(tmp_path / "m").text
    assert "| preset | genrec-100k |" in text and "the `genrec-100k` preset with shape overrides" in text
    assert ("train recipes/pretrain/genrec-100k.yaml --model.overrides.hidden_size 96 "
            "--model.overrides.intermediate_size 256") in text
    assert "| event token | item + action type + time-gap bucket, rotary positions |" in text
    assert "| positions | rotary (RoPE) inside attention, max 200 events |" in text
    assert "| time-gap buckets | 16 |" in text and "| action types | 6 |" in text
    assert f"| backbone | {count_backbone_parameters(config):,} |" in text
    custom = GenRecConfig(vocab_size=NUM_ITEMS + 1, hidden_size=48, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=96, position_encoding="none", num_time_buckets=0)
    GenRecForNextItemPrediction(custom).save_pretrained(tmp_path / "custom")
    text = build_model_card(tmp_path / "custom").text
    assert "| preset | custom |" in text and "recipes/pretrain/" not in text
    assert "| positions | none |" in text and "one token per event (item, no position encoding)" in text


EXAMPLE_CARDS = sorted(p for p in (REPO_ROOT / "model_cards").glob("*.md") if p.name != "README.md")


@pytest.mark.parametrize("path", EXAMPLE_CARDS, ids=[p.stem for p in EXAMPLE_CARDS])
def test_example_cards_are_current_and_documented(path):
    """Catches an example card that cites a run the benchmark results (benchmarks/RESULTS.md and the topic READMEs)
    do not document, one rendered by an older template (stale layout, wrong training recipe), or one that points at
    this machine's private data paths."""
    card = ModelCard.load(path)
    text = path.read_text()
    assert text.endswith("\n") and "{{" not in text and "{%" not in text
    assert not re.search(r"\.\./shared|/work/", text)  # placeholders (/path/to/...) instead of private paths
    expected = set(re.findall(r"^## .+$", TEMPLATE_PATH.read_text(), flags=re.M)) - {"## Adapter"}
    assert set(re.findall(r"^## .+$", card.text, flags=re.M)) == expected
    preset = re.search(r"^\| preset \| (\S+) \|$", text, flags=re.M).group(1)
    assert f"train recipes/pretrain/{preset}.yaml" in text
    assert (REPO_ROOT / "recipes" / "pretrain" / f"{preset}.yaml").is_file()
    test_mrr = _results(card)[("next-item", card.data.datasets[0], "test", "mrr")]
    results = [REPO_ROOT / "benchmarks" / "RESULTS.md", *(REPO_ROOT / "benchmarks").glob("*/README.md")]
    assert any(f"{test_mrr:.4f}" in path.read_text() for path in results), test_mrr


@pytest.mark.parametrize("path", EXAMPLE_CARDS, ids=[p.stem for p in EXAMPLE_CARDS])
def test_example_cards_are_rendered_by_todays_template(path):
    """Catches a template or card-code change (metric order, usage snippets, metadata) that leaves the shipped cards
    as an older version rendered them: `tools/rerender_model_card.py` rebuilds each card's inputs from the card and
    renders it again; the file must come out unchanged (run the tool to refresh them)."""
    spec = importlib.util.spec_from_file_location("rerender_model_card",
                                                  REPO_ROOT / "tools" / "rerender_model_card.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    text = tool.rerender(path)
    assert (text if text.endswith("\n") else text + "\n") == path.read_text()


def test_template_variable_nobody_fills_is_an_error(model_dir, tmp_path):
    """Catches a typo in a template variable rendering silently as an empty string (Jinja's default)."""
    custom = tmp_path / "template.md"
    custom.write_text("---\n{{ card_data }}\n---\n# {{ name }} {{ no_such_variable }}\n")
    with pytest.raises(ValueError, match="no_such_variable"):
        build_model_card(model_dir, template_path=custom)
    custom.write_text("---\n{{ card_data }}\n---\n" + GENERATED_MARK + "\n# {{ name }}: {{ sizes.backbone }}\n")
    card = build_model_card(model_dir, template_path=custom, repo_id="me/x")
    assert card.text.strip().endswith(f"# me/x: {count_backbone_parameters(_config()):,}")


def test_callback_writes_on_main_process_only(model_dir, tmp_path):
    """Catches every DDP rank writing the card, or the callback crashing when no model was saved yet."""
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
    """Catches `genrec-hf card` failing, and cards silently built for folders that hold no GenRec model."""
    assert main(["card", str(model_dir)]) == 0
    assert (model_dir / "README.md").is_file()
    with pytest.raises(FileNotFoundError, match="neither config.json nor adapter_config.json"):
        build_model_card(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="not 'genrec'"):
        build_model_card(tmp_path)


def test_push_to_hub_fails_fast_offline(model_dir, monkeypatch):
    """Catches push_to_hub hanging on the network offline or without a token, or writing files before failing."""
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
