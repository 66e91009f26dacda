"""The ladder's cold slice: per (size, task) a `<task>/cold` row scored from the saved ranks of the test targets
whose item had at most K events in the backbones' pre-training data, derived without a model (so a resumed ladder
heals a missing slice without training anything)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from ...data.collators import TaskCollator
from ...evaluation.cold_slices import slice_ranks
from ...evaluation.metrics import metrics_from_ranks, pad_ranks
from .recipe import LadderRecipe
from .results import COLD_SLICE, ResultsCSV, now, relative
from .shared import LadderData, prepare_shared

logger = logging.getLogger(__name__)
def add_cold_slices(recipe: LadderRecipe, table: ResultsCSV, runs: list[tuple[str, float]],
                    shared: LadderData | None = None) -> tuple[int, LadderData | None]:
    """Append the missing `<task>/cold` row of every (preset, fraction) in `runs` whose task row `table` holds;
    returns how many were written and the shared data (prepared only if a slice was missing)."""
    written = 0
    for preset, fraction in runs:
        for task in recipe.tasks.names:
            if not table.has(preset, fraction, task) or table.has(preset, fraction, task + COLD_SLICE):
                continue
            if shared is None:
                shared = prepare_shared(recipe)
            row = _cold_slice_row(recipe, shared, table.rows[(preset, round(fraction, 6), task)], table.path)
            if row is not None:
                table.append(row)
                written += 1
    return written, shared


def cold_slice_ranks(ranks: np.ndarray, targets: np.ndarray, item_counts: np.ndarray,
                     max_events: int) -> tuple[np.ndarray, np.ndarray]:
    """The cold slice of (U, T) or (U,) 1-based `ranks` (0 = padding) of the `targets`: (rows, sliced) where `rows`
    indexes the users with at least one target whose item has at most `max_events` in the (V,) `item_counts`, and
    `sliced` is their ranks with every other target's rank set to 0 (the same rule as a `target_items` pass)."""
    ranks, targets = (a[:, None] if a.ndim == 1 else a for a in (np.asarray(ranks), np.asarray(targets)))
    if ranks.shape[0] != targets.shape[0]:
        raise ValueError(f"{ranks.shape[0]} ranked rows for {targets.shape[0]} target rows: the ranks belong to "
                         "another split.")
    width = max(ranks.shape[1], targets.shape[1])
    ranks = np.pad(ranks, ((0, 0), (0, width - ranks.shape[1])))
    targets = np.pad(targets, ((0, 0), (0, width - targets.shape[1])))
    cold = torch.as_tensor(np.asarray(item_counts) <= max_events)
    cold[0] = False  # padding
    sliced = slice_ranks(torch.as_tensor(ranks, dtype=torch.long), torch.as_tensor(targets, dtype=torch.long),
                         cold).numpy()
    rows = np.flatnonzero((sliced > 0).any(axis=1))
    return rows, sliced[rows]


def _split_targets(recipe: LadderRecipe, task: Any, split: str) -> np.ndarray:
    """(U, T) target ids of a task split in ranking order, as the ranking path sees them (collated, protocol)."""
    collator = TaskCollator(recipe.pretrain.data.max_length, mode="eval", exclude_history=task.protocol.exclude_history)
    loader = DataLoader(getattr(task, split), batch_size=recipe.evaluation.batch_size, collate_fn=collator)
    return pad_ranks([task.protocol.targets(batch["target_ids"]) for batch in loader]).numpy()


def _cold_slice_row(recipe: LadderRecipe, shared: LadderData, parent: dict[str, str],
                    csv_path: Path) -> dict[str, Any] | None:
    """The `<task>/cold` row of a finished (size, task) row, from its saved ranks (None when no target is cold)."""
    task_name, fit = parent["task"], parent["split"]
    limit = recipe.evaluation.cold_slice_max_events
    ranks = np.load(csv_path.parent / parent["ranks_path"], allow_pickle=False)
    if (task_name, fit) not in shared.targets:
        shared.targets[task_name, fit] = _split_targets(recipe, shared.tasks[task_name], fit)
    rows, sliced = cold_slice_ranks(ranks, shared.targets[task_name, fit], shared.item_counts, limit)
    if rows.size == 0:
        logger.info("%s %s: no %s target has <= %d pre-training events; no cold-slice row", parent["preset"],
                    task_name, fit, limit)
        return None
    ranks_file = (csv_path.parent / parent["ranks_path"]).with_name(f"{task_name}_cold_{fit}.npy")
    np.save(ranks_file, sliced.astype(np.int32))
    metrics = metrics_from_ranks(sliced, list(recipe.evaluation.ks))
    row: dict[str, Any] = {**parent, "task": task_name + COLD_SLICE, "mrr": metrics["mrr"],
                           "num_users": int(metrics["num_users"]), "validation_mrr": None, "test_mrr": None,
                           f"{fit}_mrr": metrics["mrr"], "ranks_path": relative(ranks_file, csv_path),
                           "finished_at": now()}
    for k in recipe.evaluation.ks:
        for name in ("hr", "ndcg", "recall"):
            row[f"{name}@{k}"] = metrics.get(f"{name}@{k}")
    logger.info("%s %s: cold slice (targets with <= %d pre-training events) mrr %.4f on %d users", parent["preset"],
                task_name, limit, row["mrr"], row["num_users"])
    return row
