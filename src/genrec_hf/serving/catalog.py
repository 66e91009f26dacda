"""Grow a saved model's catalog without retraining: `add_items_to_folder` (the `genrec-hf add-items` command).

Reads a model folder (weights, config, `item_vocab.json`), adds new items from their metadata through
`model.add_items` (new ID rows are never used: new items are scored from their features alone), and writes the grown
model, vocabulary, weights manifest and `catalog_extensions.json` (which catalogs this one extends, so adapters
trained on an earlier catalog can still be attached; see `adapters.check_base`) into an output folder.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..data import ItemVocab, save_item_tokenizer
from ..data.item_features import metadata_features
from ..integrity import file_sha256, write_manifest
from ..loading import load_model
from ..models.genrec import GenRecForNextItemPrediction

logger = logging.getLogger(__name__)
EXTENSIONS_FILE = "catalog_extensions.json"


def read_items_file(path: str | Path) -> list[dict[str, Any]]:
    """New items from a JSON list or JSON-lines file of objects with `item_id` + metadata (title, genres, year,
    attributes, or a feature block's name with its value)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"items file {path} does not exist; expected JSON lines of "
                                '{"item_id": ..., "title": ..., "genres": [...], ...}.')
    text = path.read_text(encoding="utf-8").strip()
    try:
        items = json.loads(text) if text.startswith("[") else [json.loads(line) for line in text.splitlines()
                                                               if line.strip()]
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not JSON / JSON lines ({error}).") from None
    for n, item in enumerate(items, 1):
        if not isinstance(item, dict) or "item_id" not in item:
            raise ValueError(f"{path}: item {n} has no item_id; every entry needs one.")
    return items


def add_items_to_folder(model_dir: str | Path, items: Sequence[Mapping[str, Any]], output_dir: str | Path, *,
                        text_encoder: str | Path | None = None, overwrite: bool = False, verify: bool = True
                        ) -> tuple[GenRecForNextItemPrediction, ItemVocab]:
    """Load `model_dir`, add `items` (dicts with `item_id` + metadata), save everything into `output_dir`."""
    model_dir, output_dir = Path(model_dir), Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"output folder {output_dir} is not empty; pass overwrite=True (--overwrite).")
    if output_dir.resolve() == model_dir.resolve():
        raise ValueError("write the grown model to another folder than the one it is read from.")
    model, vocab = load_model(model_dir, verify=verify)
    if model.item_tower is None:
        raise ValueError(f"{model_dir} is an ID-only model (no item_tower_config): new items would have nothing to "
                         "be scored from. Train with model.item_tower (docs/cold_start.md).")
    schema = model.item_tower.tower_config.feature_schema
    raw_ids = [str(item["item_id"]) for item in items]
    features = {}
    for item, raw in zip(items, raw_ids):
        info = {k: v for k, v in item.items() if k != "item_id"}
        try:
            features[raw] = metadata_features(schema, info, text_encoder)
        except ValueError as error:
            raise ValueError(f"item {raw!r}: {error}") from None
    model.add_items(raw_ids, features, vocab=vocab)
    vocab.item_info.update({raw: {k: v for k, v in item.items() if k in ("title", "genres", "year", "attributes")}
                            for item, raw in zip(items, raw_ids)})
    output_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output_dir)
    save_item_tokenizer(output_dir, vocab, model.config)
    write_manifest(output_dir)
    history = json.loads((model_dir / EXTENSIONS_FILE).read_text()) if (model_dir / EXTENSIONS_FILE).is_file() else []
    history.append({"from": str(model_dir), "vocab_size": len(vocab) - len(raw_ids),
                    "item_vocab_sha256": file_sha256(model_dir / "item_vocab.json"), "added": len(raw_ids)})
    (output_dir / EXTENSIONS_FILE).write_text(json.dumps(history, indent=2))
    for name in ("README.md", "metrics.json", "training_recipe.yaml"):
        if (model_dir / name).is_file() and not (output_dir / name).exists():
            shutil.copy(model_dir / name, output_dir / name)
    logger.info("added %d items to %s -> %s (%d items)", len(raw_ids), model_dir, output_dir, vocab.num_items)
    return model, vocab
