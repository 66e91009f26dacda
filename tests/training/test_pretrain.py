"""End to end through the CLI: train → files on disk → evaluate → recommend, plus the guard rails."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from genrec_hf import GenRecForNextItemPrediction
from genrec_hf.cli import build_parser, main
from genrec_hf.data import ItemVocab, load_interactions
from genrec_hf.serving import Recommender
from genrec_hf.data import remap_to_vocab
from genrec_hf.evaluation.saved_models import evaluate_saved_model

from tests.helpers import REPO_ROOT

TINY_DATA = "synthetic:num_users=150,num_items=80,num_clusters=5"
TINY = [
    "--data.source", TINY_DATA, "--training.num_train_epochs", "6", "--training.disable_tqdm", "true",
    "--training.learning_rate", "0.01", "--training.per_device_train_batch_size", "32",
    "--model.overrides", "{hidden_size: 16, intermediate_size: 32, num_attention_heads: 2}",
    "--data.max_length", "20", "--evaluation.num_examples", "1",
]


def tiny_args(epochs: int, extra_overrides: str = "") -> list[str]:
    """TINY with another epoch count and, optionally, more `model.overrides` entries (YAML mapping body)."""
    args = [str(epochs) if a == "6" else a for a in TINY]
    if extra_overrides:
        args[args.index("--model.overrides") + 1] = ("{hidden_size: 16, intermediate_size: 32, num_attention_heads: 2, "
                                                     f"{extra_overrides}}}")
    return args


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "model"
    code = main(["train", str(REPO_ROOT / "recipes/pretrain/genrec-100k.yaml"), "--output_dir", str(out), *TINY])
    assert code == 0
    return out


def test_train_writes_everything(trained):
    for name in ("config.json", "model.safetensors", "item_vocab.json", "metrics.json", "README.md",
                 "training_recipe.yaml", "modeling_genrec.py", "genrec_weights.json", "tokenizer_config.json",
                 "tokenization_genrec.py", "pipeline_genrec.py"):
        assert (trained / name).is_file(), name
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["dataset"] == "synthetic"
    for split in ("validation", "test"):
        assert 0 < metrics[split]["mrr"] <= 1 and 0 <= metrics[split]["hr@10"] <= 1
    assert metrics["parameters"]["backbone"] > 0
    card = (trained / "README.md").read_text()
    assert "library_name: genrec_hf" in card and "model-index" in card


def test_refuses_non_empty_output_dir(trained, capsys):
    code = main(["train", str(REPO_ROOT / "recipes/pretrain/genrec-100k.yaml"), "--output_dir", str(trained), *TINY])
    assert code == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert (trained / "model.safetensors").is_file()


def test_resume_from_checkpoint(trained, tmp_path, monkeypatch):
    """Catches a resume that silently restarts from scratch (it would train every step again) or drops the
    optimizer / scheduler / RNG state (it would end on other weights than the uninterrupted run)."""
    checkpoints = sorted(trained.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert checkpoints, "Trainer wrote no checkpoint"
    import shutil

    import torch
    from safetensors.torch import load_file

    from genrec_hf.training import GenRecTrainer

    run = tmp_path / "resumed"
    shutil.copytree(checkpoints[0], run / checkpoints[0].name)
    start = json.loads((checkpoints[0] / "trainer_state.json").read_text())["global_step"]
    trained_steps = []
    real_step = GenRecTrainer.training_step

    def counted(self, *args, **kwargs):
        trained_steps.append(self.state.global_step)
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(GenRecTrainer, "training_step", counted)
    code = main(["train", str(REPO_ROOT / "recipes/pretrain/genrec-100k.yaml"), "--output_dir", str(run),
                 "--resume_from_checkpoint", *TINY])
    assert code == 0
    state = json.loads((run / "metrics.json").read_text())
    assert state["train"]["epochs"] == 6.0
    total = json.loads((trained / "metrics.json").read_text())["train"]["steps"]
    assert 0 < start < total and trained_steps == list(range(start, total))  # continues at the checkpoint's step
    assert state["train"]["steps"] == total and state["train"]["resumed_from_step"] == start
    resumed, uninterrupted = load_file(str(run / "model.safetensors")), load_file(str(trained / "model.safetensors"))
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in uninterrupted)


def test_evaluate_matches_training_metrics(trained, tmp_path, capsys):
    out = tmp_path / "eval.json"
    assert main(["evaluate", str(trained), "--data", TINY_DATA, "--output", str(out)]) == 0
    evaluated = json.loads(out.read_text())
    recorded = json.loads((trained / "metrics.json").read_text())["test"]
    assert evaluated["mrr"] == pytest.approx(recorded["mrr"], abs=1e-9)
    assert main(["evaluate", str(trained), "--data", TINY_DATA, "--output", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_recommend_cli_and_python(trained, capsys):
    vocab = ItemVocab.load(trained)
    history = vocab.raw_ids[:3]
    assert main(["recommend", str(trained), "--history", ",".join(history), "--k", "5", "--json"]) == 0
    recs = json.loads(capsys.readouterr().out)
    assert len(recs) == 5 and not set(r["item_id"] for r in recs) & set(history)
    assert all(r["title"] for r in recs)
    python = Recommender.from_pretrained(trained).recommend(history, k=5)
    assert [r.item_id for r in python] == [r["item_id"] for r in recs]
    with_seen = Recommender.from_pretrained(trained).recommend(history, k=len(vocab) - 1, exclude_seen=False)
    assert set(history) <= {r.item_id for r in with_seen}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--history", "definitely-not-an-item"], "definitely-not-an-item"),
        (["--history", ","], "history is empty"),
    ],
)
def test_recommend_bad_input(trained, capsys, args, message):
    assert main(["recommend", str(trained), *args]) == 2
    assert message in capsys.readouterr().err


def test_long_history_is_truncated(trained):
    recommender = Recommender.from_pretrained(trained)
    vocab = recommender.vocab
    long = [vocab.raw_ids[i % 50] for i in range(200)]  # far beyond max_position_embeddings=20
    recent = long[-recommender.model.config.max_position_embeddings:]
    a = recommender.recommend(long, k=5, exclude_seen=False)
    b = recommender.recommend(recent, k=5, exclude_seen=False)
    assert [r.item_id for r in a] == [r.item_id for r in b]


def test_model_dir_without_vocab(trained, tmp_path, capsys):
    model = GenRecForNextItemPrediction.from_pretrained(trained)
    model.save_pretrained(tmp_path / "novocab")
    assert main(["recommend", str(tmp_path / "novocab"), "--history", "1"]) == 2
    assert "item_vocab.json" in capsys.readouterr().err


def test_remap_to_vocab_drops_unknown_items(trained):
    vocab = ItemVocab.load(trained)
    other = load_interactions("synthetic:num_users=150,num_items=120,num_clusters=5,seed=3")
    remapped = remap_to_vocab(other, vocab)
    assert remapped.vocab is vocab
    for row in remapped.sequences:
        assert all(0 < i < len(vocab) for i in row["item_ids"])
        assert len(row["item_ids"]) == len(row["timestamps"])


def test_evaluate_saved_model_function(trained):
    metrics = evaluate_saved_model(trained, TINY_DATA, split="validation")
    assert metrics["split"] == "validation" and metrics["num_users"] > 0


@pytest.mark.parametrize("command", ["train", "evaluate", "recommend", "card", "finetune"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0 and f"usage: genrec-hf {command}" in capsys.readouterr().out


def test_module_entry_point():
    result = subprocess.run([sys.executable, "-m", "genrec_hf.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "usage: genrec-hf" in result.stdout


def test_parser_lists_commands():
    help_text = build_parser().format_help()
    for command in ("train", "evaluate", "recommend", "card"):
        assert command in help_text


def test_bad_recipe_key_is_one_clear_line(tmp_path, capsys):
    code = main(["train", str(REPO_ROOT / "recipes/pretrain/genrec-100k.yaml"), "--output_dir", str(tmp_path / "x"),
                 "--training.learning_rat", "1"])
    assert code == 2
    assert "unknown TrainingArguments field(s) ['learning_rat']" in capsys.readouterr().err


def test_trained_model_beats_popularity_on_synthetic(trained):
    """The embedded default is learnable: a few epochs of a tiny model already beat most-popular, which every
    training run reports next to its own metrics (same split, same protocol)."""
    metrics = json.loads((trained / "metrics.json").read_text())
    popularity = metrics["popularity_baseline"]["test"]
    # Both count every test user of the split (the old `.get(..., popularity["num_users"])` compared it to itself).
    from genrec_hf.data import leave_one_out

    test_users = len(leave_one_out(load_interactions(TINY_DATA))["test"])
    assert popularity["num_users"] == metrics["test"]["num_users"] == test_users > 0
    assert 0 < popularity["mrr"] < metrics["test"]["mrr"], (popularity["mrr"], metrics["test"]["mrr"])


def test_bf16_autocast_on_cpu(tmp_path):
    args = tiny_args(1)
    code = main(["train", str(REPO_ROOT / "recipes/pretrain/genrec-100k.yaml"), "--output_dir", str(tmp_path / "bf16"),
                 "--training.bf16", "true", *args])
    assert code == 0
    metrics = json.loads((tmp_path / "bf16" / "metrics.json").read_text())
    assert 0 < metrics["test"]["mrr"] <= 1


def test_train_gives_the_popularity_sampler_the_training_counts(tmp_path):
    import torch

    from genrec_hf.evaluation.baselines import popularity_scores
    from genrec_hf.data import leave_one_out
    from genrec_hf.models.genrec.losses import item_log_probabilities

    args = tiny_args(1, "loss_type: sampled, num_negatives: 20, negative_sampler: popularity")
    code = main(["train", str(REPO_ROOT / "recipes/pretrain/genrec-100k.yaml"), "--output_dir", str(tmp_path / "m"),
                 *args])
    assert code == 0
    model = GenRecForNextItemPrediction.from_pretrained(tmp_path / "m")
    data = load_interactions(TINY_DATA)
    counts = popularity_scores(leave_one_out(data)["train"], len(data.vocab))
    torch.testing.assert_close(model.head.item_log_q, item_log_probabilities(counts))
    assert json.loads((tmp_path / "m" / "metrics.json").read_text())["test"]["mrr"] > 0


def test_best_checkpoint_reload_of_a_tied_model_does_not_warn(tmp_path, caplog):
    """Trainer reloads the best checkpoint with strict=False; the tied head table is not in it by design."""
    import logging

    import torch
    from transformers import Trainer, TrainingArguments

    from tests.helpers import tiny_config

    model = GenRecForNextItemPrediction(tiny_config())
    model.save_pretrained(tmp_path)
    from safetensors.torch import load_file

    state = load_file(str(tmp_path / "model.safetensors"))
    assert "head.item_embeddings.weight" not in state
    trainer = Trainer(model=model, args=TrainingArguments(output_dir=str(tmp_path / "t"), use_cpu=True, report_to=[]))
    with caplog.at_level(logging.WARNING):
        trainer._issue_warnings_after_load(model.load_state_dict(state, strict=False))
    assert "missing keys" not in caplog.text
    assert model.head.item_embeddings.weight is model.model.embeddings.item_embeddings.weight
    untied = GenRecForNextItemPrediction(tiny_config(head_projection_ratio=2, tie_word_embeddings=False))
    untied.save_pretrained(tmp_path / "untied")
    assert "head.item_embeddings.weight" in load_file(str(tmp_path / "untied" / "model.safetensors"))
    assert torch.equal(GenRecForNextItemPrediction.from_pretrained(tmp_path / "untied").head.item_embeddings.weight,
                       untied.head.item_embeddings.weight)


def test_a_seed_reproduces_a_run_exactly(tmp_path):
    """Same recipe and seed → bit-identical weights (dropout, shuffling and sampled negatives are all seeded)."""
    import torch
    from safetensors.torch import load_file

    args = tiny_args(2, "loss_type: sampled, num_negatives: 20, hidden_dropout_prob: 0.2")
    weights = {}
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        code = main(["train", str(REPO_ROOT / "recipes/pretrain/genrec-100k.yaml"), "--output_dir",
                     str(tmp_path / name), "--seed", seed, *args])
        assert code == 0
        weights[name] = load_file(str(tmp_path / name / "model.safetensors"))
    assert all(torch.equal(weights["a"][k], weights["b"][k]) for k in weights["a"])
    assert not all(torch.equal(weights["a"][k], weights["c"][k]) for k in weights["a"])
