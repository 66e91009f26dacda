"""Weights integrity: a sha256 manifest written next to saved weights, and checks run before a folder is loaded.

`genrec_weights.json` maps each weights file of a folder (`model.safetensors`, shards, `adapter_model.safetensors`) to
its sha256, size, the time it was recorded and the genrec_hf version. Loading a folder through the package
(`verify_weights`) compares the files with the manifest and refuses NaN / infinite tensors, so a corrupted payload
fails with the file or tensor named instead of serving NaN scores. A folder without a manifest (runs saved before
the manifest existed, or with a plain `save_pretrained`) is still checked for non-finite values.

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


def write_manifest(folder: str | Path) -> Path:
    """Record sha256 and size of every weights file in `folder` into `genrec_weights.json`; returns its path."""
    folder = Path(folder)
    files = weight_files(folder)
    if not files:
        raise FileNotFoundError(f"{folder} holds no .safetensors weights to record in {MANIFEST_FILE}.")
    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    manifest: dict[str, Any] = {
        "genrec_hf_version": __version__,
        "created_at": created,
        "files": {p.name: {"sha256": file_sha256(p), "size": p.stat().st_size} for p in files},
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
        recorded = json.loads(path.read_text())["files"]
    except (ValueError, KeyError, TypeError) as error:
        raise WeightsIntegrityError(f"{path} is not a valid weights manifest ({error}); save the model again or "
                                    "pass verify=False / --no_verify to load without the check.") from None
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


def load_verified_model(folder: str | Path, verify: bool = True, **kwargs: Any) -> GenRecForNextItemPrediction:
    """The `GenRecForNextItemPrediction` saved in `folder`, read after `verify_weights` (`verify=False` skips it).

    `kwargs` go to `from_pretrained`. A folder without config.json is refused naming it (not a saved model).
    """
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is not a saved genrec_hf model: it has no config.json (expected a saved "
                                "GenRecForNextItemPrediction, e.g. the output_dir of `genrec-hf train`).")
    verify_weights(folder, verify)
    return GenRecForNextItemPrediction.from_pretrained(str(folder), **kwargs)
