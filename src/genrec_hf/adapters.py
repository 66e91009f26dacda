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
`load_adapter_model(adapter_dir)` is the one way the package loads an adapter folder (evaluate, recommend, Python):
it finds the base the adapter names, verifies both folders' weights (`integrity`) and always runs that check.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import re
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.utils.other import ModulesToSaveWrapper

from .integrity import file_sha256, verify_weights, write_manifest
from .models.genrec import GenRecConfig, GenRecForNextItemPrediction
from .models.genrec.scoring import TopItems, chunked_topk

logger = logging.getLogger(__name__)

DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
HEAD_PARTS = {"projection": "head.projection", "item_vectors": "head.item_embeddings"}
ITEM_TOWER_MODES = ("frozen", "lora")
# Every module of the cold-start item tower (model.embeddings.item_tower): excluded from LoRA unless item_tower="lora".
TOWER_MODULES = r"(?:.*\.)?item_tower(?:\..*)?"
# The tower's Linear layers (item_tower.py): φ_sem is Sequential([Linear, GELU, Dropout] * (layers - 1)), so its
# Linear layers sit at indices 0, 3, 6, ...; then the input / output projections and the gate fusion's gate_proj.
_TOWER_LINEARS = (r"(?:.*\.)?item_tower\.(?:semantic_mlp\.(?:" + "|".join(str(3 * i) for i in range(64)) + r")"
                  r"|semantic_input_proj|semantic_output_proj|(?:input|output)_fusion\.gate_proj)")
BASE_FINGERPRINT_FILE = "genrec_base.json"
# Config fields that change the shape or meaning of weights an adapter is trained against.
FINGERPRINT_FIELDS = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                      "intermediate_size", "mlp_type", "head_projection_ratio", "tie_word_embeddings",
                      "num_action_types", "num_time_buckets", "position_encoding", "norm_type")


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
def _quiet_peft(tied: bool = True):
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
        with _quiet_peft(tied=False):
            model.add_adapter(adapter_name, config)
        model.set_adapter(adapter_name)
        return model
    if not isinstance(model, GenRecForNextItemPrediction):
        raise TypeError(f"attach_adapter expects a GenRecForNextItemPrediction, got {type(model).__name__}.")
    with _quiet_peft():
        return get_peft_model(model, config, adapter_name=adapter_name)


def trainable_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; a PEFT copy of a head part counts once, the frozen original too."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


# ---------------------------------------------------------------------------------------------------------------------
# Base fingerprint: refuse to load an adapter on the wrong base


def base_fingerprint(config: GenRecConfig, base_dir: str | Path | None = None) -> dict[str, Any]:
    """The fields of the base an adapter depends on: config shape + item-vocab and weight hashes when on disk."""
    out: dict[str, Any] = {name: getattr(config, name, None) for name in FINGERPRINT_FIELDS}
    if base_dir is not None:
        base_dir = Path(base_dir)
        out["base_dir"] = str(base_dir)
        out["item_vocab_sha256"] = file_sha256(base_dir / "item_vocab.json")
        out["weights_sha256"] = file_sha256(base_dir / "model.safetensors")
    return out


def check_base(adapter_dir: str | Path, config: GenRecConfig, base_dir: str | Path | None = None) -> None:
    """Raise `ValueError` naming both sides if `adapter_dir` was trained on a different base.

    Config fields and the item vocabulary must match (an adapter on a re-indexed catalog scores the wrong items);
    a different weight hash with the same shapes only warns (e.g. a re-saved or re-trained base).
    """
    adapter_dir = Path(adapter_dir)
    path = adapter_dir / BASE_FINGERPRINT_FILE
    if not path.is_file():
        warnings.warn(f"{adapter_dir} has no {BASE_FINGERPRINT_FILE}; cannot check it was trained on this base.")
        return
    expected = json.loads(path.read_text())
    actual = base_fingerprint(config, base_dir)
    where = f" at {base_dir}" if base_dir is not None else ""
    extended = _extended_catalog(base_dir, expected)
    diffs = [f"{k}: adapter expects {expected[k]!r}, base{where} has {actual.get(k)!r}"
             for k in FINGERPRINT_FIELDS if k in expected and expected[k] != actual.get(k)
             and not (extended and k == "vocab_size")]
    if expected.get("item_vocab_sha256") and actual.get("item_vocab_sha256") and not extended and \
            expected["item_vocab_sha256"] != actual["item_vocab_sha256"]:
        diffs.append("item_vocab.json differs (the item indices would not mean the same items)")
    if extended and not diffs:
        tables = _item_table_keys(adapter_dir)
        if tables:
            raise ValueError(f"Adapter {adapter_dir} was trained before items were added to the base{where} "
                             f"(vocab_size {expected.get('vocab_size')} -> {actual.get('vocab_size')}) and holds "
                             f"per-item tables ({tables[0]}, ...) of the old catalog: it cannot score the new "
                             "items. Re-train it on the grown base, or train one without train_head item_vectors.")
        logger.info("adapter %s: trained on a catalog the base extends (add_items); old item indices are kept",
                    adapter_dir)
    if diffs:
        raise ValueError(f"Adapter {adapter_dir} was trained on base {expected.get('base_dir', '?')!r} and does not "
                         f"fit the base{where}: " + "; ".join(diffs) + ".")
    if expected.get("weights_sha256") and actual.get("weights_sha256") and not extended and \
            expected["weights_sha256"] != actual["weights_sha256"]:
        warnings.warn(f"Adapter {adapter_dir} was trained on base weights {expected['weights_sha256'][:12]}…, this "
                      f"base{where} has {actual['weights_sha256'][:12]}… (same shapes; results may differ).")


def _extended_catalog(base_dir: str | Path | None, expected: dict[str, Any]) -> bool:
    """Whether the base folder was grown by `add_items` from the catalog the adapter was trained on (old item
    indices unchanged: `serving.catalog.add_items_to_folder` records each extension)."""
    if base_dir is None or not expected.get("item_vocab_sha256"):
        return False
    path = Path(base_dir) / "catalog_extensions.json"
    if not path.is_file():
        return False
    return any(entry.get("item_vocab_sha256") == expected["item_vocab_sha256"]
               and entry.get("vocab_size") == expected.get("vocab_size") for entry in json.loads(path.read_text()))


def _item_table_keys(adapter_dir: Path) -> list[str]:
    """Saved tensors of an adapter that have one row per item (a trained copy of an item table)."""
    from safetensors import safe_open

    keys: list[str] = []
    for path in sorted(Path(adapter_dir).glob("*.safetensors")):
        with safe_open(str(path), "pt") as handle:
            keys += [k for k in handle.keys() if "item_embeddings" in k or "item_log_q" in k]
    return keys


def save_adapter(model: PeftModel, output_dir: str | Path, *, adapter_name: str | None = None,
                 base_dir: str | Path | None = None) -> Path:
    """Save one adapter flat into `output_dir` (adapter_model.safetensors, adapter_config.json, genrec_base.json).

    PEFT puts non-default adapter names into a subfolder; this keeps every adapter folder loadable the same way.
    """
    output_dir = Path(output_dir)
    name = adapter_name or model.active_adapter
    if name not in model.peft_config:
        raise ValueError(f"No adapter named {name!r}; this model has {sorted(model.peft_config)}.")
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(output_dir), selected_adapters=[name])
    if name != "default":
        sub = output_dir / name
        for path in sub.iterdir():
            shutil.move(str(path), output_dir / path.name)
        sub.rmdir()
    config = model.get_base_model().config
    fingerprint = base_fingerprint(config, base_dir)
    fingerprint["adapter_name"] = name
    (output_dir / BASE_FINGERPRINT_FILE).write_text(json.dumps(fingerprint, indent=2))
    write_manifest(output_dir)
    return output_dir


def _load_base(base: str | Path | GenRecForNextItemPrediction,
               verify: bool = True) -> tuple[GenRecForNextItemPrediction, Path | None]:
    if isinstance(base, GenRecForNextItemPrediction):
        return base, None
    base_dir = Path(base)
    if not (base_dir / "config.json").is_file():
        raise FileNotFoundError(f"Base model folder {base_dir} has no config.json (expected a saved "
                                "GenRecForNextItemPrediction, e.g. the output_dir of `genrec-hf train`).")
    verify_weights(base_dir, verify)
    return GenRecForNextItemPrediction.from_pretrained(str(base_dir)), base_dir


def is_adapter_folder(folder: str | Path) -> bool:
    """True for a saved adapter (adapter_config.json) that is not a full model folder (no config.json)."""
    folder = Path(folder)
    return (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file()


def adapter_base_dir(adapter_dir: str | Path, base: str | Path | None = None) -> Path:
    """The base folder of an adapter: `base` when given, else the one its genrec_base.json / adapter_config names.

    A recorded relative path is tried as given and relative to the adapter folder. Raises `FileNotFoundError`
    saying how to pass the base when none of them is a model folder.
    """
    adapter_dir = Path(adapter_dir)
    if base is not None:
        return Path(base)
    named: list[str] = []
    for file, key in ((BASE_FINGERPRINT_FILE, "base_dir"), ("adapter_config.json", "base_model_name_or_path")):
        path = adapter_dir / file
        if path.is_file():
            value = json.loads(path.read_text()).get(key)
            if value and value not in named:
                named.append(str(value))
    for value in named:
        for candidate in (Path(value), adapter_dir / value):
            if (candidate / "config.json").is_file():
                return candidate
    found = f"it names {named}, which is not a model folder here" if named else "it names no base"
    raise FileNotFoundError(f"{adapter_dir} is a LoRA adapter and needs its base model, but {found}; pass the base "
                            "folder (`--base DIR` on the command line, `base=` in Python).")


def load_adapter_model(adapter_dir: str | Path, base: str | Path | GenRecForNextItemPrediction | None = None, *,
                       verify: bool = True, is_trainable: bool = False) -> PeftModel:
    """Load an adapter folder on its base: `base`, or the base the adapter names (logged), always `check_base`ed."""
    adapter_dir = Path(adapter_dir)
    if not isinstance(base, GenRecForNextItemPrediction):
        named = base is None
        base = adapter_base_dir(adapter_dir, base)
        if named:
            logger.info("%s is a LoRA adapter: loading the base it names, %s", adapter_dir, base)
    return load_adapters(base, {"default": adapter_dir}, is_trainable=is_trainable, verify=verify)


def load_adapters(base: str | Path | GenRecForNextItemPrediction, adapters: dict[str, str | Path], *,
                  is_trainable: bool = False, verify: bool = True) -> PeftModel:
    """Load the base once and attach every `{name: adapter_dir}`; the first one is active (`set_adapter` switches).

    Each adapter is checked against the base (`check_base`) and its weights verified (`integrity.verify_weights`,
    skipped for both folders with `verify=False`) before they are read.
    """
    if not adapters:
        raise ValueError("load_adapters needs at least one {name: adapter_dir}.")
    model, base_dir = _load_base(base, verify)
    peft_model: PeftModel | None = None
    for name, adapter_dir in adapters.items():
        adapter_dir = Path(adapter_dir)
        if not (adapter_dir / "adapter_config.json").is_file():
            raise FileNotFoundError(f"Adapter folder {adapter_dir} has no adapter_config.json.")
        check_base(adapter_dir, model.config, base_dir)
        verify_weights(adapter_dir, verify)
        try:
            with _quiet_peft():
                if peft_model is None:
                    peft_model = PeftModel.from_pretrained(model, str(adapter_dir), adapter_name=name,
                                                           is_trainable=is_trainable)
                else:
                    peft_model.load_adapter(str(adapter_dir), adapter_name=name, is_trainable=is_trainable)
        except RuntimeError as error:  # shape mismatch on an adapter saved without a fingerprint
            raise ValueError(f"Adapter {adapter_dir} does not fit the base {base_dir or 'model'} "
                             f"(vocab_size={model.config.vocab_size}, hidden_size={model.config.hidden_size}): "
                             f"{error}") from None
    assert peft_model is not None
    peft_model.set_adapter(next(iter(adapters)))
    if not is_trainable:
        peft_model.eval()
    return peft_model


# ---------------------------------------------------------------------------------------------------------------------
# Serving several tasks from one base


def adapter_item_vectors(model: PeftModel, adapter_name: str) -> torch.Tensor:
    """The (V, d_out) item output vectors adapter `adapter_name` scores with (`"__base__"` = the frozen base).

    With an item tower these are the fused vectors ψ(ẽ, z) of that adapter's ID table, through the adapter's LoRA on
    the tower when it has one (`item_tower="lora"`), the base tower otherwise: the vectors `model.item_vectors`
    gives with that adapter active (the raw ID table would score new items by their unused ID rows)."""
    base = model.get_base_model()
    table = base.head.item_embeddings
    if isinstance(table, ModulesToSaveWrapper):
        if adapter_name != "__base__" and adapter_name in table.modules_to_save:
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
    with only_adapter(model, adapter_name):  # the tower's LoRA is this adapter's (or none for "__base__")
        return tower.output_vectors(ids)


def tower_has_lora(model: torch.nn.Module) -> bool:
    """Whether some adapter of `model` puts LoRA on the item tower (`lora_config(item_tower="lora")`)."""
    from peft.tuners.lora import LoraLayer

    base = model.get_base_model() if isinstance(model, PeftModel) else model
    tower = getattr(base, "item_tower", None)
    return tower is not None and any(isinstance(module, LoraLayer) for module in tower.modules())


@contextlib.contextmanager
def only_adapter(model: PeftModel, adapter_name: str):
    """Run the body with `adapter_name` the active adapter (`"__base__"`: adapters disabled), then put the active
    adapter and every parameter's requires_grad back.

    PEFT's per-row `adapter_names` cannot serve an adapter with LoRA on the item tower: the tower's layers run on
    the catalog's feature rows, not on the batch's rows. Serving such an adapter switches the active one instead."""
    if adapter_name == "__base__":
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
    """Top-k items for a batch whose row i is served by adapter `adapter_names[i]` (`"__base__"` = no adapter).

    One forward pass with PEFT's per-row `adapter_names` gives each row's query vector (the same
    `model(**batch, adapter_names=...)` call returns them as `user_embeddings`); rows are then scored in groups
    against their adapter's item vectors. Returns `TopItems(items, scores)`, each (B, k), best first. Runs in eval
    mode and puts the model back in the mode it was in.
    """
    config = model.get_base_model().config
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
        top = chunked_topk(queries[rows], adapter_item_vectors(model, name), k,
                           exclude=None if exclude is None else exclude[rows], allowed=allowed,
                           chunk_size=config.score_chunk_size, temperature=config.score_temperature,
                           l2_normalize=config.l2_normalize_scores)
        indices[rows], scores[rows] = top.items, top.scores
    return TopItems(indices, scores)


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
