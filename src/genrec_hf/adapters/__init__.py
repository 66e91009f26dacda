"""PEFT LoRA adapters on a frozen GenRec backbone: one small adapter per downstream task.

What is trained per task:
  * LoRA on the backbone's named projections (`q_proj k_proj v_proj o_proj gate_proj up_proj down_proj`);
  * task-specific head parts through `modules_to_save` (a full trainable copy per adapter, the base stays frozen):
    - `"projection"` → `head.projection`, the projected decoding head `Linear(d, d/r)` (present only when
      `config.head_projection_ratio` is set; PEFT ignores the name otherwise);
    - `"item_vectors"` → `head.item_embeddings`, the item output table (V × d_out). With tied embeddings
      (`tie_word_embeddings=True`, the default presets) this table IS the input item embedding: `modules_to_save`
      deep-copies it, so the adapter gets its own *output* vectors while the input embeddings stay the frozen base
      ones (deliberately untied). It costs V × d_out parameters per adapter — large next to LoRA — so it is opt-in.

The cold-start item tower (`model.item_tower`: φ_sem, OOV vectors, fusion ψ) is a base part: `item_tower="frozen"`
(default) keeps it out of every adapter — also when a tower layer shares a projection's name (the gate fusion's
`gate_proj`) — so the adapter scores with the base's item vectors; `item_tower="lora"` adds LoRA to the tower's
Linear layers (φ_sem's layers and output projections, the gate fusion's `gate_proj`), so the adapter also adapts
how items are represented from their features (new items added later included). The OOV vectors and the
weighted-sum fusion weights stay frozen in both.

Wrapping the whole `head` in `modules_to_save` is avoided on purpose: PEFT's mixed-batch forward (`adapter_names=`)
only supports Linear/Embedding/Conv leaves, so the head's leaves are wrapped instead, and mixed batches work.
Item vectors are read through `.weight`, not a forward call, so a mixed batch is scored per adapter group with
that adapter's table (`adapter_item_vectors`, `score_mixed_batch`).

Every saved adapter folder carries `genrec_base.json`: the base config fields that shape the weights, plus the
hash of the base's item vocabulary and weights. Loading on another base raises a `ValueError` naming both.
`load_adapter_model(adapter_dir)` loads an adapter folder on the base it names, verifies both folders' weights
(`integrity`) and always runs that check; evaluation and serving reach it through `genrec_hf.loading`.

Modules: `config` (a new adapter: `lora_config`, `attach_adapter`), `io` (adapter folders: save, base fingerprint,
load), `mixing` (several adapters on one base: item vectors per adapter, switching, mixed batches), `merge`.
"""

from .config import (
    DEFAULT_TARGET_MODULES,
    HEAD_PARTS,
    ITEM_TOWER_MODES,
    TOWER_MODULES,
    adapts_item_tower,
    attach_adapter,
    check_lora_layers,
    lora_config,
    trainable_parameters,
)
from .io import (
    BASE_FINGERPRINT_FILE,
    FINGERPRINT_FIELDS,
    adapter_base_dir,
    base_fingerprint,
    check_base,
    is_adapter_folder,
    load_adapter_model,
    load_adapters,
    save_adapter,
)
from .merge import merge_adapter
from .mixing import BASE_ADAPTER, adapter_item_vectors, only_adapter, score_mixed_batch, tower_has_lora

__all__ = [
    "BASE_ADAPTER",
    "BASE_FINGERPRINT_FILE",
    "DEFAULT_TARGET_MODULES",
    "FINGERPRINT_FIELDS",
    "HEAD_PARTS",
    "ITEM_TOWER_MODES",
    "TOWER_MODULES",
    "adapter_base_dir",
    "adapter_item_vectors",
    "adapts_item_tower",
    "attach_adapter",
    "base_fingerprint",
    "check_base",
    "check_lora_layers",
    "is_adapter_folder",
    "load_adapter_model",
    "load_adapters",
    "lora_config",
    "merge_adapter",
    "only_adapter",
    "save_adapter",
    "score_mixed_batch",
    "tower_has_lora",
    "trainable_parameters",
]
