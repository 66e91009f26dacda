"""Configuring and attaching a new LoRA adapter: `lora_config` (targets, layers, head parts, item tower),
`attach_adapter`, `check_lora_layers`, `trainable_parameters` (what is trained is described in the package
docstring)."""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Sequence

import torch
from peft import LoraConfig, PeftModel, get_peft_model

from ..models.genrec import GenRecConfig, GenRecForNextItemPrediction

DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
HEAD_PARTS = {"projection": "head.projection", "item_vectors": "head.item_embeddings"}
ITEM_TOWER_MODES = ("frozen", "lora")
# Every module of the cold-start item tower (model.embeddings.item_tower): excluded from LoRA unless item_tower="lora".
TOWER_MODULES = r"(?:.*\.)?item_tower(?:\..*)?"
# The tower's Linear layers (item_tower.py): φ_sem is Sequential([Linear, GELU, Dropout] * (layers - 1)), so its
# Linear layers sit at indices 0, 3, 6, ...; then the input / output projections and the gate fusion's gate_proj.
_TOWER_LINEARS = (r"(?:.*\.)?item_tower\.(?:semantic_mlp\.(?:" + "|".join(str(3 * i) for i in range(64)) + r")"
                  r"|semantic_input_proj|semantic_output_proj|(?:input|output)_fusion\.gate_proj)")


def _head_modules(train_head: bool | str | Sequence[str]) -> list[str]:
    if train_head is True:
        parts: Sequence[str] = ("projection",)
    elif train_head is False or train_head is None:
        parts = ()
    elif isinstance(train_head, str):
        parts = ("projection", "item_vectors") if train_head == "all" else (train_head,)
    else:
        parts = tuple(train_head)
    unknown = sorted(set(parts) - set(HEAD_PARTS))
    if unknown:
        raise ValueError(f"train_head: unknown head part(s) {unknown}; expected True, False, 'all' or names from "
                         f"{sorted(HEAD_PARTS)}.")
    return [HEAD_PARTS[p] for p in parts]


def lora_config(
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.0,
    target_modules: Sequence[str] | None = None,
    layers: Sequence[int] | None = None,
    train_head: bool | str | Sequence[str] = True,
    item_tower: str = "frozen",
) -> LoraConfig:
    """A `peft.LoraConfig` for GenRec: LoRA on the named projections + task-specific head parts.

    Args:
        r, alpha, dropout: LoRA rank, scaling numerator (`alpha / r`) and dropout on the LoRA input.
        target_modules: Projection names to adapt (any of `DEFAULT_TARGET_MODULES`; None = all of them).
        layers: Decoder layer indices to adapt (None = all).
        train_head: Head parts trained in full per adapter (`modules_to_save`): True = `"projection"` (a no-op on
            heads without a projection), `"item_vectors"`, `"all"`, a list of those, or False for LoRA only.
        item_tower: The cold-start item tower (module docstring): `"frozen"` (default) excludes all of it from the
            adapter; `"lora"` also puts LoRA (same r, alpha, dropout) on its Linear layers. `layers` restricts the
            backbone projections only (with `"lora"` they are folded into one target regex, so `attach_adapter`
            cannot range-check them: `check_lora_layers` does, as the finetune runner calls it). `"lora"` needs a
            base with an item tower (`attach_adapter` checks).
    """
    target_modules = DEFAULT_TARGET_MODULES if target_modules is None else target_modules
    bad = sorted(set(target_modules) - set(DEFAULT_TARGET_MODULES))
    if bad:
        raise ValueError(f"target_modules: {bad} are not GenRec projection layers; expected names from "
                         f"{list(DEFAULT_TARGET_MODULES)}.")
    if r < 1:
        raise ValueError(f"LoRA rank r={r}; expected a positive integer.")
    if item_tower not in ITEM_TOWER_MODES:
        raise ValueError(f"item_tower={item_tower!r}; expected one of {ITEM_TOWER_MODES} (frozen: the item tower is "
                         "not adapted; lora: LoRA on its Linear layers too).")
    if item_tower == "lora":
        # One regex (PEFT full-matches it against module names): the backbone projections, restricted to `layers`
        # here because PEFT's layers_to_transform would drop the tower (it has no `layers.N.` in its name), or the
        # tower's Linear layers.
        names = "|".join(re.escape(name) for name in target_modules)
        layer = (r"(?:.*\.)?layers\.(?:" + "|".join(str(int(i)) for i in layers) + r")\.(?:.*\.)?"
                 if layers is not None else r"(?:.*\.)?")
        targets: list[str] | str = rf"(?!{TOWER_MODULES}$)(?:{layer}(?:{names}))|{_TOWER_LINEARS}"
        layers_to_transform = layers_pattern = None
        exclude = None
    else:
        targets = list(target_modules)
        layers_to_transform = list(layers) if layers is not None else None
        layers_pattern = "layers" if layers is not None else None
        exclude = TOWER_MODULES
    return LoraConfig(
        task_type=None, r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
        exclude_modules=exclude, layers_to_transform=layers_to_transform, layers_pattern=layers_pattern,
        modules_to_save=_head_modules(train_head) or None, bias="none",
    )


def adapts_item_tower(config: LoraConfig) -> bool:
    """Whether an adapter config (of `lora_config(item_tower="lora")`) puts LoRA on the item tower."""
    return isinstance(config.target_modules, str) and "item_tower" in config.target_modules


@contextlib.contextmanager
def quiet_peft(tied: bool = True):
    """Silence PEFT's expected warnings: "no modules were excluded" (an ID-only base has no item tower to exclude)
    and, with `tied`, the tied-weights notice of wrapping a head whose item vectors are tied to the input table."""
    with warnings.catch_warnings():
        if tied:
            warnings.filterwarnings("ignore", message=".*tied.*")
        warnings.filterwarnings("ignore", message=".*no modules were excluded.*")
        yield


def check_lora_layers(layers: int | Sequence[int] | None, config: GenRecConfig) -> None:
    """Raise `ValueError` naming the value and the range when a layer index is not a decoder layer of the base."""
    if layers is None:
        return
    layers = [layers] if isinstance(layers, int) else list(layers)
    num_layers = config.num_hidden_layers
    bad = [i for i in layers if not 0 <= i < num_layers]
    if bad:
        raise ValueError(f"lora.layers={layers}: {bad} not decoder layers of this base, which has "
                         f"num_hidden_layers={num_layers}; expected indices in 0..{num_layers - 1}.")


def attach_adapter(model: GenRecForNextItemPrediction | PeftModel, config: LoraConfig | None = None,
                   adapter_name: str = "default") -> PeftModel:
    """Wrap a GenRec model with a new trainable LoRA adapter (or add one to an existing PeftModel).

    Only the adapter's parameters require grad; the base model's weights are frozen and never modified. Layer
    indices outside the base's decoder layers are refused here (PEFT would only say no target module was found).
    """
    config = config or lora_config()
    base_config = model.get_base_model().config if isinstance(model, PeftModel) else getattr(model, "config", None)
    if base_config is not None:
        check_lora_layers(config.layers_to_transform, base_config)
        if adapts_item_tower(config) and getattr(base_config, "item_tower_config", None) is None:
            raise ValueError("item_tower='lora' adapts the cold-start item tower, but this base has none "
                             "(config.item_tower_config is None): use item_tower='frozen'.")
    if isinstance(model, PeftModel):
        with quiet_peft(tied=False):
            model.add_adapter(adapter_name, config)
        model.set_adapter(adapter_name)
        return model
    if not isinstance(model, GenRecForNextItemPrediction):
        raise TypeError(f"attach_adapter expects a GenRecForNextItemPrediction, got {type(model).__name__}.")
    with quiet_peft():
        return get_peft_model(model, config, adapter_name=adapter_name)


def trainable_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; a PEFT copy of a head part counts once, the frozen original too."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
