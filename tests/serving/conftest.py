"""Saved tiny models (raw ids that are not their indices, titles, a task adapter) shared by the serving tests."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import tiny_config

NUM_ITEMS = 40
RAW_IDS = [f"m{100 + i}" for i in range(NUM_ITEMS)]  # raw id "m100" is index 1: ids and indices never coincide


def save_tiny_model(path, seed: int = 0, **overrides):
    from genrec_hf import GenRecForNextItemPrediction
    from genrec_hf.data import ItemVocab

    torch.manual_seed(seed)
    model = GenRecForNextItemPrediction(tiny_config(vocab_size=NUM_ITEMS + 1, **overrides)).eval()
    model.save_pretrained(path)
    info = {raw: {"title": f"Title {raw}", "genres": ["even" if i % 2 == 0 else "odd"]}
            for i, raw in enumerate(RAW_IDS)}
    ItemVocab(RAW_IDS, info).save(path)
    return model


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("serving") / "base"
    save_tiny_model(path)
    return path


@pytest.fixture(scope="session")
def adapter_dir(model_dir):
    """A LoRA adapter with its own item vectors and non-zero weights, so it ranks differently from the base."""
    from genrec_hf import GenRecForNextItemPrediction
    from genrec_hf.adapters import attach_adapter, lora_config, save_adapter

    base = GenRecForNextItemPrediction.from_pretrained(model_dir)
    peft = attach_adapter(base, lora_config(r=4, train_head="item_vectors"), adapter_name="short")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in peft.named_parameters():
            if ".short." in f"{name}." and ("lora_" in name or "modules_to_save" in name):
                param.add_(0.5 * torch.randn(param.shape, generator=g))
    path = model_dir.parent / "adapter_short"
    save_adapter(peft, path, adapter_name="short", base_dir=model_dir)
    return path
