"""Cold-start splits: test targets include items the model never trained on.

Both give a `ColdStartSplit`: a catalog ordered warm items first (indices 1..num_warm, the vocabulary the model
trains on) then cold items (added after training with `model.add_items`, as a new title would be), and train /
validation / test rows in that index space. No cold item appears in any training or validation row, nor in any test
history: cold items are only test targets.

    hold_out_items(data, 0.1)     a random 10% of items held out of training entirely (their events removed from every
                                  history); test = each user's last event, cold or warm (leave-one-out)
    cold_time_split(data, 0.9)    a global time cut; items first rated after the cut are cold; test = each user's
                                  first event after the cut, history = the events before it

Cold / warm metrics of such a split come from one ranking pass: `genrec_hf.evaluation.cold_slices`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from datasets import DatasetDict

from .interactions import InteractionData, sequences_from_columns
from .vocab import ItemVocab

logger = logging.getLogger(__name__)
_COLUMNS = ("item_ids", "timestamps", "action_ids", "ratings")


@dataclass
class ColdStartSplit:
    """A cold-start split (module docstring). `vocab` is the full catalog, warm first; `warm_vocab` the first
    `num_warm` items, which is what the model is trained with."""

    vocab: ItemVocab
    num_warm: int
    splits: DatasetDict
    description: str

    @property
    def cold_raw_ids(self) -> list[str]:
        return self.vocab.raw_ids[self.num_warm:]

    @property
    def warm_vocab(self) -> ItemVocab:
        warm = self.vocab.raw_ids[:self.num_warm]
        return ItemVocab(warm, {raw: self.vocab.item_info[raw] for raw in warm if raw in self.vocab.item_info})

    def cold_mask(self) -> torch.Tensor:
        """(V,) bool over the full catalog: True for cold items."""
        mask = torch.zeros(len(self.vocab), dtype=torch.bool)
        mask[self.num_warm + 1:] = True
        return mask

    def summary(self) -> dict[str, Any]:
        test_targets = np.array([row[-1] for row in self.splits["test"]["item_ids"]], dtype=np.int64)
        cold = int((test_targets > self.num_warm).sum())
        return {"protocol": self.description, "items": self.vocab.num_items, "warm_items": self.num_warm,
                "cold_items": self.vocab.num_items - self.num_warm, "test_users": int(len(test_targets)),
                "test_users_cold_target": cold, "test_users_warm_target": int(len(test_targets)) - cold}


def _row(columns: dict[str, list], source: dict[str, Any], keep: np.ndarray, lookup: np.ndarray) -> None:
    columns["user_id"].append(source["user_id"])
    columns["item_ids"].append(lookup[np.asarray(source["item_ids"], dtype=np.int64)[keep]].tolist())
    for name in _COLUMNS[1:]:
        columns[name].append(np.asarray(source[name])[keep].tolist())


def _reindex(vocab: ItemVocab, cold: set[str]) -> tuple[ItemVocab, np.ndarray, int]:
    warm_ids = [raw for raw in vocab.raw_ids if raw not in cold]
    cold_ids = [raw for raw in vocab.raw_ids if raw in cold]
    new = ItemVocab(warm_ids + cold_ids, vocab.item_info)
    lookup = np.array([0] + [new.encode(raw) for raw in vocab.raw_ids], dtype=np.int64)
    return new, lookup, len(warm_ids)


def choose_cold_items(raw_ids: list[str], fraction: float, seed: int) -> list[str]:
    """The `fraction` of `raw_ids` a cold-item split holds out, drawn with `seed`, in vocabulary order (the one
    draw: `hold_out_items` in memory and `genrec-hf prepare --split cold_items` make the same)."""
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction={fraction}; expected a share of items strictly between 0 and 1.")
    rng = np.random.default_rng(seed)
    count = max(1, int(round(fraction * len(raw_ids))))
    chosen = set(rng.choice(len(raw_ids), size=count, replace=False).tolist())
    return [raw for i, raw in enumerate(raw_ids) if i in chosen]


def hold_out_items(data: InteractionData, fraction: float = 0.1, seed: int = 0) -> ColdStartSplit:
    """Protocol (a): a random `fraction` of items never trained on; test targets = every user's last event."""
    cold = set(choose_cold_items(data.vocab.raw_ids, fraction, seed))
    vocab, lookup, num_warm = _reindex(data.vocab, cold)
    empty = lambda: {name: [] for name in ("user_id", *_COLUMNS)}  # noqa: E731
    train, validation, test = empty(), empty(), empty()
    for row in data.sequences:
        items = lookup[np.asarray(row["item_ids"], dtype=np.int64)]
        n = len(items)
        if n < 2:
            continue
        warm = items <= num_warm
        history = warm.copy()
        history[-1] = False
        if history.sum() >= 1:  # test: warm history + the last event (cold or warm)
            keep = history.copy()
            keep[-1] = True
            _row(test, row, keep, lookup)
        positions = np.flatnonzero(history)
        if len(positions) >= 2:  # validation: warm events before the test target, the last as target
            keep = np.zeros(n, dtype=bool)
            keep[positions] = True
            _row(validation, row, keep, lookup)
        if len(positions) >= 3:
            keep = np.zeros(n, dtype=bool)
            keep[positions[:-1]] = True
            _row(train, row, keep, lookup)
    splits = DatasetDict({name: sequences_from_columns(cols) for name, cols in
                          (("train", train), ("validation", validation), ("test", test))})
    split = ColdStartSplit(vocab=vocab, num_warm=num_warm, splits=splits,
                           description=f"hold-out {fraction:.0%} of items (seed {seed}), leave-one-out test")
    logger.info("cold-start split: %s", split.summary())
    return split


def cold_time_split(data: InteractionData, quantile: float = 0.9, cut: int | None = None) -> ColdStartSplit:
    """Protocol (b): a global time cut; items first seen at/after it are cold; test = first event after the cut."""
    if not data.has_timestamps:
        raise ValueError(f"{data.name} has no timestamps (only event order): a time split means nothing; use "
                         "hold_out_items.")
    times = np.concatenate([np.asarray(t, dtype=np.int64) for t in data.sequences["timestamps"]])
    if cut is None:
        if not 0.0 < quantile < 1.0:
            raise ValueError(f"quantile={quantile}; expected a number strictly between 0 and 1.")
        cut = int(np.quantile(times, quantile))
    first_seen: dict[int, int] = {}
    for items, stamps in zip(data.sequences["item_ids"], data.sequences["timestamps"]):
        for item, stamp in zip(items, stamps):
            first_seen[item] = min(first_seen.get(item, stamp), stamp)
    cold = {data.vocab.decode(i) for i, t in first_seen.items() if t >= cut}
    cold |= {raw for i, raw in enumerate(data.vocab.raw_ids, start=1) if i not in first_seen}
    vocab, lookup, num_warm = _reindex(data.vocab, cold)
    empty = lambda: {name: [] for name in ("user_id", *_COLUMNS)}  # noqa: E731
    train, test = empty(), empty()
    for row in data.sequences:
        stamps = np.asarray(row["timestamps"], dtype=np.int64)
        before = int((stamps < cut).sum())
        if before >= 2:
            keep = np.zeros(len(stamps), dtype=bool)
            keep[:before] = True
            _row(train, row, keep, lookup)
        if 1 <= before < len(stamps):
            keep = np.zeros(len(stamps), dtype=bool)
            keep[:before + 1] = True
            _row(test, row, keep, lookup)
    train_rows = sequences_from_columns(train)
    splits = DatasetDict({"train": train_rows, "validation": train_rows, "test": sequences_from_columns(test)})
    split = ColdStartSplit(vocab=vocab, num_warm=num_warm, splits=splits,
                           description=f"time split at {cut} (quantile {quantile}); items first seen after it cold")
    logger.info("cold-start split: %s", split.summary())
    return split
