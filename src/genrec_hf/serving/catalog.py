"""Grow a saved model's catalog without retraining: `add_items_to_folder` (the `genrec-hf add-items` command).

Reads a model folder (weights, config, `item_vocab.json`), adds new items from their metadata through
`model.add_items` (new ID rows are never used: new items are scored from their features alone), and writes the grown
model, vocabulary, `catalog_extensions.json` (which catalogs this one extends, so adapters trained on an earlier
catalog can still be attached; see `adapters.check_base`) and the manifest into an output folder, atomically
(`training.run_folder.staged_save`). `--overwrite` first removes exactly what the package wrote there, as train's
`--overwrite_output_dir` does.

Item ids are strings or integers as written in the items file; anything else (null, a list, 1.0, true, "") is an
error naming the line and the value.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..adapters import is_adapter_folder
from ..data import ItemVocab, save_item_tokenizer
from ..data.item_features import metadata_features
from ..integrity import file_sha256
from ..loading import load_model
from ..models.genrec import GenRecForNextItemPrediction
from ..training.run_folder import check_output_dir, clear_previous_run, staged_save

logger = logging.getLogger(__name__)
EXTENSIONS_FILE = "catalog_extensions.json"


def item_id_problem(value: Any) -> str | None:
    """Why `value` cannot be a raw item id (None when it can): ids are strings or integers, as in the event logs."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return f"{value!r} ({'missing' if value is None else type(value).__name__}) is not an item id; expected a " \
               "string or an integer"
    if isinstance(value, str) and not value.strip():
        return f"{value!r} is not an item id; expected a non-empty string"
    return None


def read_items_file(path: str | Path) -> list[dict[str, Any]]:
    """New items from a JSON list or JSON-lines file of objects with `item_id` + metadata (title, genres, year,
    attributes, or a feature block's name with its value); a bad entry is an error naming its line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"items file {path} does not exist; expected JSON lines of "
                                '{"item_id": ..., "title": ..., "genres": [...], ...}.')
    text = path.read_text(encoding="utf-8")
    try:
        if text.lstrip().startswith("["):
            items = json.loads(text)
            where = [f"item {n}" for n in range(1, len(items) + 1)] if isinstance(items, list) else []
        else:
            numbered = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
            where = [f"line {n}" for n, _ in numbered]
            items = []
            for n, line in numbered:
                try:
                    items.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path}, line {n}: not a JSON object ({error}).") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not JSON / JSON lines ({error}).") from None
    if not isinstance(items, list) or not items:
        raise ValueError(f"{path}: expected a JSON list or JSON lines of item objects, found no items.")
    for place, item in zip(where, items):
        if not isinstance(item, dict) or "item_id" not in item:
            raise ValueError(f"{path}, {place}: no item_id; every entry needs one.")
        problem = item_id_problem(item["item_id"])
        if problem:
            raise ValueError(f"{path}, {place}: item_id {problem}.")
    return items


def add_items_to_folder(model_dir: str | Path, items: Sequence[Mapping[str, Any]], output_dir: str | Path, *,
                        text_encoder: str | Path | None = None, overwrite: bool = False, verify: bool = True
                        ) -> tuple[GenRecForNextItemPrediction, ItemVocab]:
    """Load `model_dir`, add `items` (dicts with `item_id` + metadata), save everything into `output_dir`."""
    model_dir, output_dir = Path(model_dir), Path(output_dir)
    if is_adapter_folder(model_dir):
        raise ValueError(f"{model_dir} is a LoRA adapter folder: add the items to the model folder it was trained on "
                         "(its base), then load the adapter on the grown model.")
    if output_dir.resolve() == model_dir.resolve():
        raise ValueError("write the grown model to another folder than the one it is read from.")
    for n, item in enumerate(items, 1):
        problem = item_id_problem(item.get("item_id"))
        if problem:
            raise ValueError(f"item {n}: item_id {problem}.")
    check_output_dir(output_dir, overwrite, resuming=False, flag="--overwrite")
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
    history = json.loads((model_dir / EXTENSIONS_FILE).read_text()) if (model_dir / EXTENSIONS_FILE).is_file() else []
    history.append({"from": str(model_dir), "vocab_size": len(vocab) - len(raw_ids),
                    "item_vocab_sha256": file_sha256(model_dir / "item_vocab.json"), "added": len(raw_ids)})
    if overwrite:
        clear_previous_run(output_dir)  # another run's metrics, card, recipe or checkpoints must not stay beside it
    with staged_save(output_dir) as staging:
        model.save_pretrained(staging)
        save_item_tokenizer(staging, vocab, model.config)
        (staging / EXTENSIONS_FILE).write_text(json.dumps(history, indent=2))
        for name in ("README.md", "metrics.json", "training_recipe.yaml"):
            if (model_dir / name).is_file() and not (output_dir / name).exists():
                shutil.copy(model_dir / name, staging / name)
    logger.info("added %d items to %s -> %s (%d items)", len(raw_ids), model_dir, output_dir, vocab.num_items)
    return model, vocab
