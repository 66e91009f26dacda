"""Evaluate a saved model or adapter folder on an event log mapped into the model's item vocabulary.

The folder is read by `genrec_hf.loading.load_saved_model`: weights verified first
(`verify=False` skips it), an adapter folder merged onto the base it names (or `base`) after the base check.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from ..data import NextItemCollator, leave_one_out, load_interactions, remap_to_vocab
from ..loading import load_saved_model
from .metrics import DEFAULT_KS, metrics_from_ranks
from .protocols import RankingProtocol, rank_batches

def saved_model_ranks(model_dir: str | Path, source: str, *, format: str | None = None, split: str = "test",
                      max_length: int | None = None, batch_size: int = 256, exclude_history: bool = True,
                      base: str | Path | None = None, verify: bool = True) -> tuple[str, torch.Tensor]:
    """(dataset name, (users,) leave-one-out ranks) of a saved model on `source`, mapped into its vocabulary."""
    model, vocab = load_saved_model(model_dir, base=base, verify=verify)
    data = remap_to_vocab(load_interactions(source, format=format), vocab)
    rows = leave_one_out(data, required=(split,))[split]
    max_length = max_length or model.config.max_position_embeddings
    loader = DataLoader(rows, batch_size=batch_size,
                        collate_fn=NextItemCollator(max_length, mode="eval", exclude_history=exclude_history))
    ranks = rank_batches(model, loader, RankingProtocol(exclude_history=exclude_history))
    return data.name, ranks[:, 0]


def evaluate_saved_model(model_dir: str | Path, source: str, *, format: str | None = None, split: str = "test",
                         max_length: int | None = None, batch_size: int = 256, exclude_history: bool = True,
                         ks: tuple[int, ...] = DEFAULT_KS, base: str | Path | None = None,
                         verify: bool = True) -> dict[str, Any]:
    """Leave-one-out metrics of a saved model (or adapter, see `load_saved_model`) on `source`."""
    name, ranks = saved_model_ranks(model_dir, source, format=format, split=split, max_length=max_length,
                                    batch_size=batch_size, exclude_history=exclude_history, base=base,
                                    verify=verify)
    return {"dataset": name, "split": split, "protocol": "leave_one_out, full-catalog ranking, history "
            f"excluded={exclude_history}", **metrics_from_ranks(ranks, ks)}
