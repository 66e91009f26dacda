"""The item-tower and cold-start steps of the run pipeline: feature store → tower config → new items added.

`pipeline.prepare_run` calls `item_tower_setup` when a recipe sets `model.item_tower`, and `pipeline.train` calls
`extend_catalog` after training on a cold-start split (`data.split: cold_items` or `cold_time`); see
docs/cold_start.md. The scaling ladder builds one `ItemTowerSetup` and hands it to every size.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data import InteractionData, ItemVocab
from ..data.item_features import ItemFeatureStore, estimate_cold_start_rate, find_kg
from .recipes import ItemFeaturesSection, ItemTowerSection

logger = logging.getLogger(__name__)
FEATURE_CACHE = "item_feature_store"  # under the run's output_dir


@dataclass
class ItemTowerSetup:
    """What every model of a run (or of a ladder's sizes) gets for its item tower: the feature rows and the tower
    config (feature schema + tower options, `mask_prob` resolved)."""

    store: ItemFeatureStore
    config: dict[str, Any]


def item_tower_setup(tower: ItemTowerSection, features: ItemFeaturesSection, data: InteractionData,
                     raw_ids: Sequence[str], train_rows: Any, source: str, output_dir: Path) -> ItemTowerSetup:
    """The feature store of the full catalog `raw_ids` (cold items included) and the tower config, with
    `mask_prob: auto` resolved to the cold-start rate of `train_rows` (the events the model trains on)."""
    cache = Path(features.cache) if features.cache else Path(output_dir) / FEATURE_CACHE
    store = build_feature_store(features, data, list(raw_ids), source, cache)
    mask_prob = None
    if tower.mask_prob == "auto":
        mask_prob = auto_mask_prob(train_rows, data.has_timestamps, features.serving_gap)
    return ItemTowerSetup(store=store, config=store.tower_config(**tower.config_options(mask_prob)).to_dict())


def build_feature_store(options: ItemFeaturesSection, data: InteractionData, raw_ids: list[str], source: str,
                        cache_dir: Path | None = None) -> ItemFeatureStore:
    """The store for `raw_ids` (the full catalog, cold items included), read from `cache_dir` when it holds the
    same catalog, else built and cached there (text and KG features are not recomputed per run or epoch)."""
    if cache_dir is not None and (cache_dir / "item_features.json").is_file():
        store = ItemFeatureStore.load(cache_dir)
        if store.raw_ids == list(raw_ids):
            logger.info("item features: cached store %s", cache_dir)
            return store
    kg_path = find_kg(source) if options.kg == "auto" else options.kg
    store = ItemFeatureStore.build(
        raw_ids, data.item_info, blocks=options.blocks, text_encoder=options.text_encoder, kg_path=kg_path,
        kg_dim=options.kg_dim, hashing_dim=options.hashing_dim, min_category_count=options.min_category_count)
    if cache_dir is not None:
        store.save(cache_dir)
    return store


def auto_mask_prob(train_rows: Any, has_timestamps: bool, serving_gap: float) -> float:
    """`mask_prob: auto`: the cold-start rate of the training events (how often an item is new at serving time)."""
    if not has_timestamps:
        raise ValueError('model.item_tower.mask_prob: "auto" needs timestamps to estimate the cold-start rate; '
                         "this data has only event order: give a number.")
    rate = round(estimate_cold_start_rate(train_rows["item_ids"], train_rows["timestamps"], serving_gap), 4)
    logger.info("item tower: mask_prob = cold-start rate %.4f (serving gap %s s)", rate, serving_gap)
    return rate


def known_items(counts: torch.Tensor) -> torch.Tensor:
    """(V,) items with training events: they have collaborative signal; the rest use the OOV vector."""
    return counts > 0


def extend_catalog(model: torch.nn.Module, vocab: ItemVocab, full_vocab: ItemVocab,
                   store: ItemFeatureStore | None) -> ItemVocab:
    """Add the items of `full_vocab` beyond `vocab` to `model` (in order); returns the grown vocabulary.

    With an item tower: `model.add_items` with the store's rows (scored from features alone). ID-only: the new
    rows are set to the mean of the trained rows (the usual ID-only way to serve an unseen item)."""
    new_ids = full_vocab.raw_ids[vocab.num_items:]
    if full_vocab.raw_ids[:vocab.num_items] != vocab.raw_ids:
        raise ValueError("the full catalog must list the trained items first, in the same order.")
    grown = copy.deepcopy(vocab)
    if not new_ids:
        return grown
    if model.item_tower is not None:
        rows = store.rows_for(new_ids) if store is not None else {}
        features = torch.stack([rows.get(raw, torch.zeros(model.item_tower.feature_dim)) for raw in new_ids]) \
            if model.item_tower.feature_dim else None
        model.add_items(new_ids, features, vocab=grown)
    else:
        mean_rows(model, len(new_ids))
        grown.add(new_ids)
    grown.item_info.update({raw: full_vocab.item_info[raw] for raw in new_ids if raw in full_vocab.item_info})
    return grown


@torch.no_grad()
def mean_rows(model: torch.nn.Module, count: int) -> None:
    """Grow an ID-only model by `count` items whose input and output rows are the mean of the existing items."""
    old = model.config.vocab_size
    model.resize_token_embeddings(old + count, mean_resizing=False)
    tables = {id(model.get_input_embeddings().weight): model.get_input_embeddings().weight}
    tables[id(model.get_output_embeddings().weight)] = model.get_output_embeddings().weight
    for table in tables.values():
        table[old:] = table[1:old].mean(dim=0)


def cold_mask_of(vocab_size: int, num_warm: int) -> torch.Tensor:
    mask = torch.zeros(vocab_size, dtype=torch.bool)
    mask[num_warm + 1:] = True
    return mask

