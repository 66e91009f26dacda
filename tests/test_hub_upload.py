"""Hub uploads, offline: a stand-in `HfApi` records what would be uploaded, and the planned file list is computed with
huggingface_hub's own filter (`filter_repo_objects`, what `upload_folder` applies). Every upload — `genrec-hf card
--push_to_hub` of a model or adapter, an embeddings export, and `training.push_to_hub` through Trainer — must send the
model files, card, tokenizer and vocabulary, never `checkpoint-*`, optimizer state, lock files or staging folders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from huggingface_hub.utils import filter_repo_objects

from genrec_hf import GenRecForNextItemPrediction
from genrec_hf.cli import main
from genrec_hf.data import ItemVocab, save_item_tokenizer
from genrec_hf.integrity import write_manifest

from tests.helpers import REPO_ROOT, tiny_config

RAW = [str(i) for i in range(1, 41)]
LEFTOVERS = ["checkpoint-12/optimizer.pt", "checkpoint-12/model.safetensors", "checkpoint-12/config.json",
             "checkpoint-12/modeling_genrec.py", ".checkpoint-staging/checkpoint-14/optimizer.pt", ".genrec-hf.lock",
             "training_args.bin", "trainer_state.json", "optimizer.pt", "scheduler.pt", "rng_state.pth",
             "runs/events.out.tfevents.1.host"]


class FakeHub:
    """Records create_repo / upload_folder calls; `planned` is the file list upload_folder would send."""

    def __init__(self) -> None:
        self.uploads: list[dict] = []
        self.repos: list[tuple[str, str]] = []

    def api(self, *args, **kwargs) -> FakeHub:
        return self

    def create_repo(self, repo_id, repo_type="model", private=False, exist_ok=False, **kwargs):
        self.repos.append((repo_id, repo_type))
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def upload_folder(self, *, folder_path, repo_id, **kwargs):
        folder = Path(folder_path)
        files = sorted(p.relative_to(folder).as_posix() for p in folder.glob("**/*") if p.is_file())
        planned = set(filter_repo_objects(files, allow_patterns=kwargs.get("allow_patterns"),
                                          ignore_patterns=kwargs.get("ignore_patterns")))
        card = (folder / "README.md").read_text() if "README.md" in planned else ""
        self.uploads.append({"repo_id": repo_id, "planned": planned, "card": card, **kwargs})
        return f"https://huggingface.co/{repo_id}/commit/0"


@pytest.fixture
def hub(monkeypatch):
    fake = FakeHub()
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    monkeypatch.setattr("genrec_hf.cards.HfApi", fake.api)
    monkeypatch.setattr("transformers.trainer.hf_api", fake.api)
    return fake


def _leftovers(folder: Path) -> None:
    for name in LEFTOVERS:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"x")


def _model_folder(path: Path) -> Path:
    torch.manual_seed(0)
    GenRecForNextItemPrediction(tiny_config()).save_pretrained(path)
    save_item_tokenizer(path, ItemVocab(RAW), tiny_config())
    write_manifest(path)
    (path / "metrics.json").write_text('{"dataset": "synthetic", "test": {"mrr": 0.1}}')
    return path


def test_card_push_uploads_model_files_card_and_tokenizer_only(tmp_path, hub, capsys):
    """Bug: `genrec-hf card --push_to_hub` uploaded the whole folder, checkpoint-*/optimizer.pt included (15 of a run
    folder's 18 MB)."""
    folder = _model_folder(tmp_path / "run")
    _leftovers(folder)
    assert main(["card", str(folder), "--push_to_hub", "me/genrec-tiny"]) == 0
    (upload,) = hub.uploads
    code = {p.name for p in folder.glob("*.py")}
    assert upload["planned"] == {"config.json", "model.safetensors", "README.md", "tokenizer_config.json",
                                 "item_vocab.json", "genrec_weights.json", *code}
    assert {"tokenization_genrec.py", "pipeline_genrec.py", "modeling_genrec.py"} <= code
    assert hub.repos == [("me/genrec-tiny", "model")] and upload["repo_type"] == "model"
    assert "me/genrec-tiny" in upload["card"]  # the card names the repo it is uploaded to


def test_adapter_push_and_its_card_metadata(tmp_path, hub, capsys):
    """An adapter upload: adapter weights and config, fingerprint, card, tokenizer; the card's base_model is the
    Hub id given, never the local base folder the adapter was trained on."""
    from genrec_hf.adapters import attach_adapter, lora_config, save_adapter
    from huggingface_hub import ModelCard

    base = _model_folder(tmp_path / "base")
    adapter = save_adapter(attach_adapter(GenRecForNextItemPrediction.from_pretrained(base), lora_config(r=2)),
                           tmp_path / "adapter", base_dir=base)
    save_item_tokenizer(adapter, ItemVocab(RAW), tiny_config())
    _leftovers(adapter)
    assert main(["card", str(adapter), "--push_to_hub", "me/tiny-lora"]) == 0
    planned = hub.uploads[-1]["planned"]
    assert {"adapter_model.safetensors", "adapter_config.json", "genrec_base.json", "README.md",
            "tokenizer_config.json", "item_vocab.json"} <= planned
    assert not {name for name in planned if "/" in name or name.startswith(".") or name.endswith((".pt", ".bin"))}
    card = ModelCard.load(adapter / "README.md")
    assert card.data.base_model is None and "BASE_MODEL" in card.text  # local base: omitted, with a note
    assert main(["card", str(adapter), "--push_to_hub", "me/tiny-lora", "--base_model", "me/genrec-tiny"]) == 0
    assert ModelCard.load(adapter / "README.md").data.base_model == "me/genrec-tiny"


def test_export_push_uploads_the_export_files_to_a_dataset_repo(tmp_path, hub, monkeypatch):
    """An embeddings export goes to a dataset repo with its six files, nothing else the folder holds."""
    from genrec_hf.serving.export import EXPORT_FILES, push_export_to_hub

    out = tmp_path / "export"
    out.mkdir()
    with pytest.raises(FileNotFoundError, match="not an embedding export"):  # refused before any upload
        push_export_to_hub(out, "me/embeddings")
    assert not hub.uploads
    for name in EXPORT_FILES:
        (out / name).write_bytes(b"x")
    _leftovers(out)
    monkeypatch.setattr("genrec_hf.serving.export.read_export", lambda directory: None)  # stand-in files
    push_export_to_hub(out, "me/embeddings")
    (upload,) = hub.uploads
    assert upload["planned"] == set(EXPORT_FILES) and upload["repo_type"] == "dataset"


def test_training_push_to_hub_goes_through_trainer_once_the_run_is_complete(tmp_path, hub, capsys):
    """`training.push_to_hub` + `hub_model_id`: Trainer creates the repo, nothing is pushed mid-training (a folder
    without tokenizer and card), and the finished run goes up once with the package's card (not Trainer's generic
    one) and without checkpoints."""
    out = tmp_path / "run"
    code = main(["train", str(REPO_ROOT / "recipes/pretrain/genrec-100k.yaml"), "--output_dir", str(out),
                 "--data.source", "synthetic:num_users=40,num_items=30,num_clusters=3",
                 "--training.num_train_epochs", "2", "--training.disable_tqdm", "true",
                 "--model.overrides", "{hidden_size: 16, intermediate_size: 32, num_attention_heads: 2}",
                 "--data.max_length", "10", "--evaluation.num_examples", "0", "--keep_checkpoints", "true",
                 "--training.push_to_hub", "true", "--training.hub_model_id", "me/genrec-run"])
    assert code == 0, capsys.readouterr().err
    assert any(p.name.startswith("checkpoint-") for p in out.iterdir())
    assert hub.repos == [("me/genrec-run", "model")]
    (upload,) = hub.uploads
    assert upload["repo_id"] == "me/genrec-run"
    assert {"config.json", "model.safetensors", "README.md", "tokenizer_config.json", "item_vocab.json",
            "pipeline_genrec.py"} <= upload["planned"]
    assert not {name for name in upload["planned"] if "/" in name or name.endswith((".bin", ".pt", ".pth"))}
    assert "generated by genrec_hf" in upload["card"] and "me/genrec-run" in upload["card"]
