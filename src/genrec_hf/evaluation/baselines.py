"""Non-neural baselines scored by the same ranking code as the models.

A baseline is a fixed (V,) item score vector; ranking it with `evaluation.ranking.rank_targets` through a 1-d
"query" of 1.0 reuses exactly the rule and protocols the models use (padding never ranked, history excluded, ties
and NaN pessimistic, availability windows).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np
import torch
from datasets import Dataset, DatasetDict
from torch.utils.data import DataLoader

from ..data.interactions import flat_column
from .metrics import DEFAULT_KS, metrics_from_ranks, pad_ranks
from .protocols import LEAVE_ONE_OUT, RankingProtocol
from .ranking import rank_targets


def popularity_scores(train: Dataset, vocab_size: int) -> torch.Tensor:
    """(V,) count of each item's events in the training rows; padding scores 0 (and is never ranked anyway)."""
    items, _ = flat_column(train, "item_ids")
    if items.size and (items.min() < 0 or items.max() >= vocab_size):
        raise ValueError(f"training item indices span [{items.min()}, {items.max()}] but the catalog has "
                         f"vocab_size={vocab_size} indices (0 = padding).")
    return torch.from_numpy(np.bincount(items, minlength=vocab_size).astype(np.float64))


def static_ranks(item_scores: torch.Tensor, batches: Iterable[dict[str, torch.Tensor]],
                 protocol: RankingProtocol = LEAVE_ONE_OUT) -> torch.Tensor:
    """(U, T) ranks of each batch's targets under one score vector shared by every user (`rank_batches`' shape)."""
    item_vectors = item_scores.float().unsqueeze(1)  # (V, 1)
    ranks = []
    for batch in batches:
        exclude = batch.get("exclude_ids") if protocol.exclude_history else None
        out = rank_targets(torch.ones(batch["target_ids"].shape[0], 1), item_vectors,
                           protocol.targets(batch["target_ids"]), exclude_ids=exclude, allowed=protocol.allowed(batch))
        ranks.append(out[:, None] if out.dim() == 1 else out)
    return pad_ranks(ranks)


def evaluate_static_scores(
    item_scores: torch.Tensor, batches: Iterable[dict[str, torch.Tensor]],
    protocol: RankingProtocol = LEAVE_ONE_OUT, ks: tuple[int, ...] = DEFAULT_KS,
) -> dict[str, float]:
    """Metrics of each batch's `target_ids` ranked under one score vector shared by every user."""
    return metrics_from_ranks(static_ranks(item_scores, batches, protocol), ks)


def popularity_metrics(splits: DatasetDict, vocab_size: int, collator: Callable, split: str = "test",
                       ks: tuple[int, ...] = DEFAULT_KS, protocol: RankingProtocol = LEAVE_ONE_OUT,
                       ) -> dict[str, float]:
    """Most-popular (train counts) on `splits[split]`, batched by an eval `collator`: the floor every model
    must clear, under the same protocol as the models."""
    loader = DataLoader(splits[split], batch_size=512, collate_fn=collator)
    return evaluate_static_scores(popularity_scores(splits["train"], vocab_size), loader, protocol, ks=ks)
