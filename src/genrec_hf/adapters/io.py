"""Adapter folders on disk: `save_adapter` (flat folder + `genrec_base.json` + weights manifest), the base
fingerprint and `check_base`, finding an adapter's base (`adapter_base_dir`), and loading adapters on a base
(`load_adapter_model`, `load_adapters`), the base check always run.

Every saved adapter folder carries `genrec_base.json`: the base config fields that shape the weights, plus the hash of
the base's item vocabulary and weights, and where the base is (absolute, and relative to the adapter folder, so a
pair moved together still finds it). Loading on another base raises a `ValueError` naming both; a base found from a
path relative to the current folder is used only if its weights are the ones the adapter was trained on.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

from peft import PeftModel
from safetensors import safe_open

from ..integrity import check_save_complete, file_sha256, load_verified_model, verify_weights, write_manifest
from ..models.genrec import GenRecConfig, GenRecForNextItemPrediction
from .config import quiet_peft

logger = logging.getLogger(__name__)

BASE_FINGERPRINT_FILE = "genrec_base.json"
# Config fields that change the shape or meaning of weights an adapter is trained against.
FINGERPRINT_FIELDS = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                      "intermediate_size", "mlp_type", "head_projection_ratio", "tie_word_embeddings",
                      "num_action_types", "num_time_buckets", "position_encoding", "norm_type")


def base_fingerprint(config: GenRecConfig, base_dir: str | Path | None = None,
                     adapter_dir: str | Path | None = None) -> dict[str, Any]:
    """The fields of the base an adapter depends on: config shape + item-vocab and weight hashes when on disk, the
    base's absolute path and (with `adapter_dir`, where the adapter will be read from) its path relative to it."""
    out: dict[str, Any] = {name: getattr(config, name, None) for name in FINGERPRINT_FIELDS}
    if base_dir is not None:
        base_dir = Path(base_dir)
        out["base_dir"] = str(base_dir.resolve())
        if adapter_dir is not None:
            out["base_dir_relative"] = os.path.relpath(base_dir.resolve(), Path(adapter_dir).resolve())
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
    keys: list[str] = []
    for path in sorted(Path(adapter_dir).glob("*.safetensors")):
        with safe_open(str(path), "pt") as handle:
            keys += [k for k in handle.keys() if "item_embeddings" in k or "item_log_q" in k]
    return keys


def save_adapter(model: PeftModel, output_dir: str | Path, *, adapter_name: str | None = None,
                 base_dir: str | Path | None = None, final_dir: str | Path | None = None) -> Path:
    """Save one adapter flat into `output_dir` (adapter_model.safetensors, adapter_config.json, genrec_base.json).

    PEFT puts non-default adapter names into a subfolder; this keeps every adapter folder loadable the same way.
    `final_dir`: the folder the adapter will be read from when `output_dir` is a staging folder published there
    (the base's relative path is recorded from it).
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
    fingerprint = base_fingerprint(config, base_dir, final_dir if final_dir is not None else output_dir)
    fingerprint["adapter_name"] = name
    (output_dir / BASE_FINGERPRINT_FILE).write_text(json.dumps(fingerprint, indent=2))
    write_manifest(output_dir)
    return output_dir


def _load_base(base: str | Path | GenRecForNextItemPrediction,
               verify: bool = True) -> tuple[GenRecForNextItemPrediction, Path | None]:
    """(model, its folder) of a base given as a loaded model (folder None) or a model folder (verified, read)."""
    if isinstance(base, GenRecForNextItemPrediction):
        return base, None
    return load_verified_model(base, verify), Path(base)


def is_adapter_folder(folder: str | Path) -> bool:
    """True for a saved adapter (adapter_config.json) that is not a full model folder (no config.json)."""
    folder = Path(folder)
    return (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file()


def adapter_base_dir(adapter_dir: str | Path, base: str | Path | None = None) -> Path:
    """The base folder of an adapter: `base` when given, else the one its genrec_base.json / adapter_config names.

    Candidates, in order: the recorded path relative to the adapter folder, the recorded absolute path, and (older
    adapters recorded the path as given) a relative path taken from the adapter folder, then from the current
    folder. The first model folder whose weights (or, without a weights hash, item vocabulary) match the
    fingerprint is the base; without a match a candidate found through the adapter folder or an absolute path is
    used (`check_base` then warns about the weights), but never one found only from the current folder, which
    may hold another `runs/base`: that is a `ValueError` asking for `--base`. Raises `FileNotFoundError` saying
    how to pass the base when no candidate is a model folder.
    """
    adapter_dir = Path(adapter_dir)
    if base is not None:
        return Path(base)
    fingerprint = _read_json(adapter_dir / BASE_FINGERPRINT_FILE)
    named: list[str] = []
    for data, key in ((fingerprint, "base_dir"), (_read_json(adapter_dir / "adapter_config.json"),
                                                  "base_model_name_or_path")):
        value = data.get(key)
        if value and str(value) not in named:
            named.append(str(value))
    candidates: list[tuple[Path, bool]] = []  # (folder, found only from the current folder)
    if fingerprint.get("base_dir_relative"):
        candidates.append((Path(os.path.normpath(adapter_dir / fingerprint["base_dir_relative"])), False))
    for value in named:
        path = Path(value)
        candidates += [(path, False)] if path.is_absolute() else [(Path(os.path.normpath(adapter_dir / path)), False),
                                                                  (path, True)]
    folders, seen = [], set()
    for path, from_cwd in candidates:
        if (path / "config.json").is_file() and os.path.realpath(path) not in seen:
            seen.add(os.path.realpath(path))
            folders.append((path, from_cwd))
    if not folders:
        found = f"it names {named}, which is not a model folder here" if named else "it names no base"
        raise FileNotFoundError(f"{adapter_dir} is a LoRA adapter and needs its base model, but {found}; pass the "
                                "base folder (`--base DIR` on the command line, `base=` in Python).")
    for path, _ in folders:
        if _is_recorded_base(path, fingerprint):
            return path
    trusted = [path for path, from_cwd in folders if not from_cwd]
    if trusted:
        return trusted[0]
    raise ValueError(f"{adapter_dir} names its base as {named[0]!r}, a path relative to the folder it was trained "
                     f"from; from here that is {folders[0][0].resolve()}, a model whose weights differ from the "
                     "base the adapter was trained on. Pass the base folder (`--base DIR` on the command line, "
                     "`base=` in Python).")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _is_recorded_base(folder: Path, fingerprint: dict[str, Any]) -> bool:
    """Whether `folder` holds the weights (or, without a recorded weights hash, the item vocabulary) the adapter's
    fingerprint recorded; True when it recorded neither."""
    if fingerprint.get("weights_sha256"):
        return file_sha256(folder / "model.safetensors") == fingerprint["weights_sha256"]
    if fingerprint.get("item_vocab_sha256"):
        return file_sha256(folder / "item_vocab.json") == fingerprint["item_vocab_sha256"]
    return True


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
        check_save_complete(adapter_dir)
        if not (adapter_dir / "adapter_config.json").is_file():
            raise FileNotFoundError(f"Adapter folder {adapter_dir} has no adapter_config.json.")
        check_base(adapter_dir, model.config, base_dir)
        verify_weights(adapter_dir, verify)
        try:
            with quiet_peft():
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
