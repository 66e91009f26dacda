"""Serving several tasks from one base: each adapter's item vectors, switching the active adapter for a block of
code, and mixed-adapter batches (`score_mixed_batch`: row i served by adapter i)."""

from __future__ import annotations

import contextlib

import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer
from peft.utils.other import ModulesToSaveWrapper

from ..models.genrec.scoring import TopItems

BASE_ADAPTER = "__base__"  # PEFT's adapter name for "no adapter" (the frozen base) in per-row `adapter_names`


def adapter_item_vectors(model: PeftModel, adapter_name: str) -> torch.Tensor:
    """The (V, d_out) item output vectors adapter `adapter_name` scores with (`BASE_ADAPTER` = the frozen base).

    With an item tower these are the fused vectors ψ(ẽ, z) of that adapter's ID table, through the adapter's LoRA on
    the tower when it has one (`item_tower="lora"`), the base tower otherwise: the vectors `model.item_vectors`
    gives with that adapter active (the raw ID table would score new items by their unused ID rows)."""
    base = model.get_base_model()
    table = base.head.item_embeddings
    if isinstance(table, ModulesToSaveWrapper):
        if adapter_name != BASE_ADAPTER and adapter_name in table.modules_to_save:
            ids = table.modules_to_save[adapter_name].weight
        else:
            ids = table.original_module.weight
    else:
        ids = table.weight
    tower = base.item_tower
    if tower is None:
        return ids
    if not tower_has_lora(model):
        return tower.output_vectors(ids)
    with only_adapter(model, adapter_name):  # the tower's LoRA is this adapter's (or none for BASE_ADAPTER)
        return tower.output_vectors(ids)


def tower_has_lora(model: torch.nn.Module) -> bool:
    """Whether some adapter of `model` puts LoRA on the item tower (`lora_config(item_tower="lora")`)."""
    base = model.get_base_model() if isinstance(model, PeftModel) else model
    tower = getattr(base, "item_tower", None)
    return tower is not None and any(isinstance(module, LoraLayer) for module in tower.modules())


@contextlib.contextmanager
def only_adapter(model: PeftModel, adapter_name: str):
    """Run the body with `adapter_name` the active adapter (`BASE_ADAPTER`: adapters disabled), then put the active
    adapter and every parameter's requires_grad back.

    PEFT's per-row `adapter_names` cannot serve an adapter with LoRA on the item tower: the tower's layers run on
    the catalog's feature rows, not on the batch's rows. Serving such an adapter switches the active one instead."""
    if adapter_name == BASE_ADAPTER:
        with model.disable_adapter():
            yield model
        return
    if adapter_name not in model.peft_config:
        raise ValueError(f"No adapter named {adapter_name!r}; this model has {sorted(model.peft_config)}.")
    previous = model.active_adapter
    flags = {name: param.requires_grad for name, param in model.named_parameters()}
    model.set_adapter(adapter_name, inference_mode=True)
    try:
        yield model
    finally:
        model.set_adapter(previous, inference_mode=True)
        for name, param in model.named_parameters():
            param.requires_grad_(flags.get(name, False))


@torch.no_grad()
def score_mixed_batch(model: PeftModel, batch: dict[str, torch.Tensor], adapter_names: list[str], k: int = 10,
                      exclude: torch.Tensor | None = None, allowed: torch.Tensor | None = None,
                      ) -> TopItems:
    """Top-k items for a batch whose row i is served by adapter `adapter_names[i]` (`BASE_ADAPTER` = no adapter).

    One forward pass with PEFT's per-row `adapter_names` gives each row's query vector (the same
    `model(**batch, adapter_names=...)` call returns them as `user_embeddings`); rows are then scored in groups
    against their adapter's item vectors. Returns `TopItems(items, scores)`, each (B, k), best first. Runs in eval
    mode and puts the model back in the mode it was in.
    """
    base = model.get_base_model()
    inputs = {key: batch[key] for key in ("input_ids", "attention_mask", "timestamps", "action_ids") if key in batch}
    was_training = model.training
    try:
        if tower_has_lora(model):  # per-row adapter_names cannot reach the tower's LoRA: one group at a time
            queries = None
            for name in dict.fromkeys(adapter_names):
                rows = torch.tensor([i for i, n in enumerate(adapter_names) if n == name])
                with only_adapter(model.eval(), name):
                    part = model(**{key: value[rows] for key, value in inputs.items()}).user_embeddings
                if queries is None:
                    queries = part.new_zeros(len(adapter_names), part.shape[-1])
                queries[rows.to(part.device)] = part
        else:
            queries = model.eval()(**inputs, adapter_names=list(adapter_names)).user_embeddings
    finally:
        model.train(was_training)
    batch_size = queries.shape[0]
    scores = torch.full((batch_size, k), float("-inf"), device=queries.device)
    indices = torch.zeros(batch_size, k, dtype=torch.long, device=queries.device)
    for name in dict.fromkeys(adapter_names):
        rows = torch.tensor([i for i, n in enumerate(adapter_names) if n == name], device=queries.device)
        top = base.topk(queries[rows], k, exclude=None if exclude is None else exclude[rows], allowed=allowed,
                        item_vectors=adapter_item_vectors(model, name))
        indices[rows], scores[rows] = top.items, top.scores
    return TopItems(indices, scores)
