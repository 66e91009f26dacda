"""Merging one adapter into a standalone model (`merge_adapter`), leaving the shared base untouched."""

from __future__ import annotations

import copy

import torch
from peft import PeftModel
from peft.utils.other import ModulesToSaveWrapper

from ..models.genrec import GenRecForNextItemPrediction


def merge_adapter(model: PeftModel, adapter_name: str | None = None) -> GenRecForNextItemPrediction:
    """A standalone model with one adapter merged in (`merge_and_unload` on a copy: the shared base is untouched).

    When the adapter trained its own item output vectors on a tied model, the exported config gets
    `tie_word_embeddings=False`: otherwise saving would drop the task's output table and reloading would tie the
    head back to the input embeddings.
    """
    name = adapter_name or model.active_adapter
    if name not in model.peft_config:
        raise ValueError(f"No adapter named {name!r}; this model has {sorted(model.peft_config)}.")
    clone = copy.deepcopy(model)
    for other in list(clone.peft_config):
        if other != name:
            clone.delete_adapter(other)
    clone.set_adapter(name)
    table = clone.get_base_model().head.item_embeddings
    untie = isinstance(table, ModulesToSaveWrapper) and name in table.modules_to_save
    merged = clone.merge_and_unload()
    if untie:  # (PEFT may already have cleared the config flag while unwrapping the tied table)
        merged.config.tie_word_embeddings = False
        head = merged.head.item_embeddings
        if head.weight is merged.model.embeddings.item_embeddings.weight:
            head.weight = torch.nn.Parameter(head.weight.detach().clone())
        merged._keys_to_ignore_on_save = set(merged._keys_to_ignore_on_save or ()) - {"head.item_embeddings.weight"}
    merged.requires_grad_(True)
    return merged.eval()
