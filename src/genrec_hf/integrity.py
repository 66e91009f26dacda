"""Saved-folder integrity: a sha256 manifest written last into a saved folder, and checks run before it is loaded.

`genrec_weights.json` maps each file a load reads to its sha256 and size: the weights (`model.safetensors`, shards,
`adapter_model.safetensors`) and the files that give them meaning (`PROTECTED_FILES`: config, item vocabulary,
catalog extensions, adapter fingerprint, item-feature store, tokenizer files), with the time it was recorded and the
genrec_hf version. Loading a folder through the package (`verify_weights`) compares the files with the manifest and
refuses NaN / infinite tensors, so a corrupted or replaced file fails with its name instead of serving wrong scores
or another item order. A manifest written before it covered the non-weight files (format 1) still loads, with a
warning naming the files it cannot vouch for; a folder without a manifest (a plain `save_pretrained`) is still
checked for non-finite values.

A save that was interrupted leaves `SAVE_STAGING_DIR` in the folder (`training.run_folder.staged_save` writes there
and publishes by renames, the manifest last): `check_save_complete` refuses such a folder by name, since its files
may come from two saves.

`load_verified_model` is the one read of a saved model folder's weights, after those checks: adapters load their base
through it, and `genrec_hf.loading` (a model or adapter folder with its vocabulary) builds on it.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from ._version import __version__
from .models.genrec import GenRecForNextItemPrediction

logger = logging.getLogger(__name__)

MANIFEST_FILE = "genrec_weights.json"
MANIFEST_FORMAT = 2  # 1: weights only; 2: weights + PROTECTED_FILES
# Non-weight files a load reads (paths relative to the folder). A new kind of file a load reads joins this list, so
# every saved folder's manifest covers it; files written after a save on purpose (README.md, metrics.json,
# eval_results_*.json) are not in it.
PROTECTED_FILES = (
    "config.json", "generation_config.json", "item_vocab.json", "catalog_extensions.json",  # model folders
    "adapter_config.json", "genrec_base.json",  # adapter folders
    "item_feature_store/item_features.json", "item_feature_store/item_features.safetensors",  # item tower inputs
    "tokenizer_config.json", "tokenizer.json", "special_tokens_map.json", "added_tokens.json", "vocab.json",
    "vocab.txt", "tokenization_genrec.py",  # an item tokenizer's save_pretrained (the .py: its remote code)
)
SAVE_STAGING_DIR = ".genrec-save-staging"  # a final save being written; published into the folder by renames
# Tensors that legitimately hold -inf (log q of the padding item and of items with probability 0); NaN is refused.
NEG_INF_ALLOWED = ("item_log_q",)


class WeightsIntegrityError(ValueError):
    """A weights file does not match its manifest, or holds non-finite values where none are allowed."""


def weight_files(folder: str | Path) -> list[Path]:
    """The safetensors weights files of a model or adapter folder, sorted by name."""
    folder = Path(folder)
    return sorted(p for p in folder.glob("*.safetensors") if p.is_file())


def file_sha256(path: str | Path) -> str | None:
    """Hex sha256 of a file's bytes (read in 1 MiB blocks), or None when there is no such file."""
    if not Path(path).is_file():
        return None
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def protected_files(folder: str | Path) -> list[str]:
    """The `PROTECTED_FILES` present in `folder` (relative paths)."""
    folder = Path(folder)
    return [name for name in PROTECTED_FILES if (folder / name).is_file()]


def write_manifest(folder: str | Path) -> Path:
    """Record sha256 and size of every weights file and every `PROTECTED_FILES` entry in `folder` into
    `genrec_weights.json` (write it after everything else: it vouches for what is there); returns its path."""
    folder = Path(folder)
    files = weight_files(folder)
    if not files:
        raise FileNotFoundError(f"{folder} holds no .safetensors weights to record in {MANIFEST_FILE}.")
    names = [p.name for p in files] + protected_files(folder)
    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "genrec_hf_version": __version__,
        "created_at": created,
        "files": {name: {"sha256": file_sha256(folder / name), "size": (folder / name).stat().st_size}
                  for name in names},
    }
    path = folder / MANIFEST_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2))
    tmp.replace(path)
    return path


def verify_manifest(folder: str | Path) -> None:
    """Raise `WeightsIntegrityError` when a file recorded in the folder's manifest is missing or changed."""
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    if not path.is_file():
        logger.debug("%s has no %s (saved before weight manifests or outside genrec_hf); hashes not checked",
                     folder, MANIFEST_FILE)
        return
    try:
        manifest = json.loads(path.read_text())
        recorded = manifest["files"]
        if not isinstance(recorded, dict) or not all(isinstance(e, dict) for e in recorded.values()):
            raise TypeError("'files' is not a mapping of file names to {sha256, size}")
    except (ValueError, KeyError, TypeError) as error:
        raise WeightsIntegrityError(f"{path} is not a valid weights manifest ({error}); save the model again or "
                                    "pass verify=False / --no_verify to load without the check.") from None
    unvouched = [name for name in protected_files(folder) if name not in recorded]
    if unvouched:
        why = ("it was written before manifests covered more than the weights (genrec_hf "
               f"{manifest.get('genrec_hf_version', '?')})" if manifest.get("format", 1) < 2
               else "they were added after it was written")
        logger.warning("%s does not cover %s of %s (%s): a changed copy of them would load unnoticed; save the "
                       "folder again to cover them", MANIFEST_FILE, ", ".join(unvouched), folder, why)
    for name, entry in recorded.items():
        file = folder / name
        if not file.is_file():
            raise WeightsIntegrityError(f"{file} is listed in {MANIFEST_FILE} but missing.")
        actual = file_sha256(file)
        if actual != entry.get("sha256"):
            raise WeightsIntegrityError(
                f"{file} does not match {MANIFEST_FILE}: recorded sha256 {entry.get('sha256')} "
                f"({entry.get('size')} bytes), actual sha256 {actual} ({file.stat().st_size} bytes); the file is "
                "corrupted or was replaced. Save or download the model again, or pass verify=False / --no_verify "
                "to load it anyway.")


def check_finite(folder: str | Path) -> None:
    """Raise `WeightsIntegrityError` naming the first tensor with NaN or ±inf (-inf allowed in `NEG_INF_ALLOWED`)."""
    for file in weight_files(folder):
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                tensor = handle.get_tensor(key)
                if not tensor.is_floating_point() or bool(torch.isfinite(tensor).all()):
                    continue
                nan = int(torch.isnan(tensor).sum())
                pos = int(torch.isposinf(tensor).sum())
                neg = int(torch.isneginf(tensor).sum())
                if nan == 0 and pos == 0 and key.split(".")[-1] in NEG_INF_ALLOWED:
                    continue
                raise WeightsIntegrityError(
                    f"{file}: tensor {key!r} holds non-finite values ({nan} NaN, {pos} +inf, {neg} -inf of "
                    f"{tensor.numel()}); the weights are corrupted or come from a diverged run.")


def verify_weights(folder: str | Path, verify: bool = True) -> None:
    """The checks run before loading `folder`: manifest hashes, then finite values. `verify=False` skips both."""
    if not verify:
        return
    verify_manifest(folder)
    check_finite(folder)


class IncompleteSaveError(ValueError):
    """A folder whose last save did not finish: its files may come from two different saves."""


def check_save_complete(folder: str | Path) -> None:
    """Raise `IncompleteSaveError` when `folder`'s last save was interrupted (`SAVE_STAGING_DIR` is left in it)."""
    folder = Path(folder)
    if (folder / SAVE_STAGING_DIR).is_dir():
        raise IncompleteSaveError(
            f"{folder}: its last save was interrupted ({folder / SAVE_STAGING_DIR} is left), so its files may come "
            "from two saves. A pre-training run: run the same `genrec-hf train` command with "
            "--resume_from_checkpoint to finish the save; a fine-tune or add-items: run it again with "
            "--overwrite_output_dir / --overwrite.")


def load_verified_model(folder: str | Path, verify: bool = True, **kwargs: Any) -> GenRecForNextItemPrediction:
    """The `GenRecForNextItemPrediction` saved in `folder`, read after `verify_weights` (`verify=False` skips it).

    `kwargs` go to `from_pretrained`. A folder without config.json (not a saved model, or a run that has not saved
    its final model) or with an interrupted save is refused naming it.
    """
    folder = Path(folder)
    check_save_complete(folder)
    if not (folder / "config.json").is_file():
        steps = sorted(int(p.name[len("checkpoint-"):]) for p in folder.glob("checkpoint-*")
                       if p.name[len("checkpoint-"):].isdigit() and (p / "config.json").is_file())
        if steps:
            raise FileNotFoundError(
                f"{folder} holds checkpoints ({', '.join(f'checkpoint-{n}' for n in steps[-3:])}) but no final model: "
                "the run did not finish. Resume it (`genrec-hf train ... --resume_from_checkpoint`), or load a "
                "checkpoint folder.")
        raise FileNotFoundError(f"{folder} is not a saved genrec_hf model: it has no config.json (expected a saved "
                                "GenRecForNextItemPrediction, e.g. the output_dir of `genrec-hf train`).")
    verify_weights(folder, verify)
    return GenRecForNextItemPrediction.from_pretrained(str(folder), **kwargs)
