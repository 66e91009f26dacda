"""`genrec_hf.loading`: the one way evaluation and serving read a saved model or adapter folder."""

from __future__ import annotations

import re

import pytest
import torch
from peft import PeftModel

from genrec_hf import GenRecForNextItemPrediction
from genrec_hf.adapters import attach_adapter, lora_config, save_adapter
from genrec_hf.data import ItemVocab
from genrec_hf.evaluation.saved_models import evaluate_saved_model
from genrec_hf.integrity import write_manifest
from genrec_hf.loading import load_model, load_saved_model, load_serving_model
from genrec_hf.serving import Recommender

from tests.helpers import tiny_config

TINY_DATA = "synthetic:num_users=30,num_items=40,num_clusters=3"
BATCH = {"input_ids": torch.tensor([[0, 3, 7, 2], [5, 1, 9, 4]])}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A tiny saved model (40 items) and a LoRA adapter with its own item vectors saved against it."""
    root = tmp_path_factory.mktemp("loading")
    base_dir, adapter_dir = root / "base", root / "adapter"
    torch.manual_seed(0)
    model = GenRecForNextItemPrediction(tiny_config(num_action_types=8)).eval()  # the synthetic data's actions
    model.save_pretrained(base_dir)
    ItemVocab([str(i) for i in range(1, 41)]).save(base_dir)
    write_manifest(base_dir)
    peft = attach_adapter(model, lora_config(r=4, train_head="item_vectors"), adapter_name="task")
    with torch.no_grad():
        for name, param in peft.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                param.add_(0.3 * torch.randn(param.shape))
    save_adapter(peft, adapter_dir, adapter_name="task", base_dir=base_dir)
    return base_dir, adapter_dir


def test_adapter_folder_loads_as_the_same_model_for_evaluation_and_serving(folders):
    """Catches evaluation and serving reading an adapter folder differently (one merging it, the other serving the
    bare base), and the served task adapter scoring other queries than its merged form."""
    base_dir, adapter_dir = folders
    merged, vocab = load_saved_model(adapter_dir)
    served, served_vocab = load_serving_model(adapter_dir)
    assert isinstance(merged, GenRecForNextItemPrediction) and not merged.training
    assert vocab.raw_ids == served_vocab.raw_ids == ItemVocab.load(base_dir).raw_ids
    with torch.no_grad():
        expected = merged(**BATCH).user_embeddings
        torch.testing.assert_close(served(**BATCH).user_embeddings, expected)
        tasks, _ = load_serving_model(base_dir, adapters={"task": adapter_dir})
        assert isinstance(tasks, PeftModel) and list(tasks.peft_config) == ["task"]
        torch.testing.assert_close(tasks(**BATCH, adapter_names=["task"] * 2).user_embeddings, expected)
        plain, _ = load_model(base_dir)
        assert not torch.allclose(plain(**BATCH).user_embeddings, expected, atol=1e-4)


def test_every_load_refuses_the_vocabulary_of_another_model(folders, tmp_path):
    """Catches a model folder whose item_vocab.json has another catalog size being evaluated or served: the ids
    would map to the wrong rows. Evaluation used to take it silently; now every load refuses it, naming both."""
    base_dir, _ = folders
    folder = tmp_path / "other_vocab"
    folder.mkdir()
    for path in base_dir.iterdir():
        if path.name != "genrec_weights.json":  # with the manifest, the changed vocabulary is refused even earlier
            (folder / path.name).write_bytes(path.read_bytes())
    ItemVocab([str(i) for i in range(1, 31)]).save(folder)  # 31 indices for a model of vocab_size=41
    for load in (lambda: load_model(folder), lambda: load_saved_model(folder), lambda: load_serving_model(folder),
                 lambda: Recommender.from_pretrained(folder), lambda: evaluate_saved_model(folder, TINY_DATA)):
        with pytest.raises(ValueError, match=r"item_vocab.json has 31 entries but the model was built for "
                                             r"vocab_size=41"):
            load()


def test_a_folder_without_config_is_named(tmp_path, folders):
    """Catches a folder that is not a saved model (a typo, a checkpoint's parent) failing deep in transformers."""
    _, adapter_dir = folders
    for load in (lambda: load_model(tmp_path), lambda: load_serving_model(tmp_path, adapters={"t": adapter_dir})):
        with pytest.raises(FileNotFoundError, match=re.escape(f"{tmp_path} is not a saved genrec_hf model: it has "
                                                              "no config.json")):
            load()


def test_adapter_load_does_not_warn_about_gradient_checkpointing(tmp_path):
    """Every adapter load, fine-tune and serve printed transformers' `is_gradient_checkpointing` FutureWarning
    (PEFT reads the deprecated property); the model answers it without the warning, and still truthfully."""
    import warnings

    from genrec_hf.adapters import load_adapters

    base = GenRecForNextItemPrediction(tiny_config())
    base.save_pretrained(tmp_path / "base")
    save_adapter(attach_adapter(GenRecForNextItemPrediction.from_pretrained(tmp_path / "base"), lora_config(r=2)),
                 tmp_path / "adapter", base_dir=tmp_path / "base")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        load_adapters(tmp_path / "base", {"task": tmp_path / "adapter"})
    assert not [w for w in caught if "gradient_checkpointing" in str(w.message)], [str(w.message) for w in caught]
    assert base.is_gradient_checkpointing is False
    base.activation_checkpointing_enable()
    assert base.is_gradient_checkpointing is True


def _adapter_on(base: GenRecForNextItemPrediction, base_dir, adapter_dir):
    peft = attach_adapter(base, lora_config(r=2))
    with torch.no_grad():
        for name, param in peft.named_parameters():
            if "lora_B" in name:
                param.add_(0.3 * torch.randn(param.shape))
    save_adapter(peft, adapter_dir, base_dir=base_dir)


def _tiny_base(folder, seed: int) -> GenRecForNextItemPrediction:
    torch.manual_seed(seed)
    model = GenRecForNextItemPrediction(tiny_config()).eval()
    model.save_pretrained(folder)
    ItemVocab([str(i) for i in range(1, 41)]).save(folder)
    write_manifest(folder)
    return model


def test_an_adapters_base_is_found_from_the_adapter_not_the_current_folder(tmp_path, monkeypatch):
    """Issue 27 P8: an adapter's base_dir ("runs/base", as given when it was trained) was resolved against the
    current folder: from another folder holding a different runs/base, the adapter silently loaded on the wrong
    base. The base is now recorded absolute and relative to the adapter, and a base found only from the current
    folder must have the recorded weights."""
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    for root, seed in ((project, 0), (elsewhere, 1)):
        (root / "runs").mkdir(parents=True)
        _tiny_base(root / "runs" / "base", seed)
    monkeypatch.chdir(project)
    _adapter_on(GenRecForNextItemPrediction.from_pretrained("runs/base"), "runs/base", "runs/adapter")
    expected, _ = load_saved_model("runs/adapter")
    adapter = project / "runs" / "adapter"
    monkeypatch.chdir(elsewhere)  # a different runs/base here
    merged, _ = load_saved_model(adapter)
    with torch.no_grad():
        torch.testing.assert_close(merged(**BATCH).user_embeddings, expected(**BATCH).user_embeddings)
    moved = tmp_path / "moved"  # base and adapter moved together: found relative to the adapter
    (project / "runs").rename(moved)
    merged, _ = load_saved_model(moved / "adapter")
    with torch.no_grad():
        torch.testing.assert_close(merged(**BATCH).user_embeddings, expected(**BATCH).user_embeddings)

    import json

    legacy = moved / "adapter" / "genrec_base.json"  # as older versions wrote it: the path as given, nothing else
    fingerprint = json.loads(legacy.read_text())
    fingerprint.pop("base_dir_relative")
    fingerprint["base_dir"] = "runs/base"
    legacy.write_text(json.dumps(fingerprint))
    config = json.loads((moved / "adapter" / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "runs/base"
    (moved / "adapter" / "adapter_config.json").write_text(json.dumps(config))
    write_manifest(moved / "adapter")
    with pytest.raises(ValueError, match=r"names its base as 'runs/base'.*weights differ.*--base DIR"):
        load_saved_model(moved / "adapter")
    merged, _ = load_saved_model(moved / "adapter", base=moved / "base")
    with torch.no_grad():
        torch.testing.assert_close(merged(**BATCH).user_embeddings, expected(**BATCH).user_embeddings)
