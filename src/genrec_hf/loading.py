"""Loading a saved run: the one way evaluation and serving turn a folder into a model and its item vocabulary.

A folder is either a saved model (`config.json`, weights, `item_vocab.json`) or a LoRA adapter folder
(`adapter_config.json`, `genrec_base.json`) that names its base. Every load verifies the weights first
(`integrity.verify_weights`: manifest hashes, NaN / inf refused; `verify=False` skips it), checks an adapter against
its base (`adapters.check_base`) and checks that the vocabulary fits the model:

* `load_model`: a model folder → (model, vocabulary);
* `load_saved_model`: a model folder, or an adapter folder merged onto its base (`genrec-hf evaluate`, export);
* `load_serving_model`: what `Recommender.from_pretrained` serves: an adapter folder merged, or a model folder with
  any number of task adapters loaded once on it (one `PeftModel`, switched per request).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from peft import PeftModel

from .adapters import adapter_base_dir, is_adapter_folder, load_adapter_model, load_adapters, merge_adapter
from .data import VOCAB_FILE, ItemVocab
from .integrity import load_verified_model
from .models.genrec import GenRecForNextItemPrediction


def check_vocab(model: GenRecForNextItemPrediction | PeftModel, vocab: ItemVocab) -> None:
    """Raise `ValueError` when `vocab` does not have one entry per item index of `model` (another model's file)."""
    config = model.get_base_model().config if isinstance(model, PeftModel) else model.config
    if len(vocab) != config.vocab_size:
        raise ValueError(f"{VOCAB_FILE} has {len(vocab)} entries but the model was built for vocab_size="
                         f"{config.vocab_size}; the vocabulary belongs to another model.")


def load_model(model_dir: str | Path, *, verify: bool = True,
               **kwargs: Any) -> tuple[GenRecForNextItemPrediction, ItemVocab]:
    """(model in eval mode, item vocabulary) of a saved model folder; `kwargs` go to `from_pretrained`."""
    model = load_verified_model(model_dir, verify, **kwargs).eval()
    vocab = ItemVocab.load(model_dir)
    check_vocab(model, vocab)
    return model, vocab


def load_saved_model(model_dir: str | Path, *, base: str | Path | None = None,
                     verify: bool = True) -> tuple[GenRecForNextItemPrediction, ItemVocab]:
    """(model in eval mode, item vocabulary) of a model folder, or of an adapter folder merged onto its base (`base`,
    else the base the adapter names; the vocabulary is the base's)."""
    if not is_adapter_folder(model_dir):
        return load_model(model_dir, verify=verify)
    base_dir = adapter_base_dir(model_dir, base)
    model = merge_adapter(load_adapter_model(model_dir, base, verify=verify)).eval()
    vocab = ItemVocab.load(base_dir)
    check_vocab(model, vocab)
    return model, vocab


def load_serving_model(model_dir: str | Path, *, adapters: Mapping[str, str | Path] | None = None,
                       base: str | Path | None = None, verify: bool = True,
                       **kwargs: Any) -> tuple[GenRecForNextItemPrediction | PeftModel, ItemVocab]:
    """(model, item vocabulary) to serve: an adapter folder merged onto its base, else the model folder with every
    `{task: adapter_dir}` of `adapters` loaded on it (a `PeftModel`, first adapter active), else the model alone.

    `kwargs` go to `from_pretrained` of a model folder served without adapters.
    """
    if is_adapter_folder(model_dir):
        return load_saved_model(model_dir, base=base, verify=verify)
    if not adapters:
        return load_model(model_dir, verify=verify, **kwargs)
    model = load_adapters(model_dir, dict(adapters), verify=verify)
    vocab = ItemVocab.load(model_dir)
    check_vocab(model, vocab)
    return model, vocab
