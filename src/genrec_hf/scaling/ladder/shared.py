"""What every size of a ladder shares, built once: the log, the tasks, the pre-training cut, the user order (the data
axis's nested subsets), the pre-training item counts (the cold slice's) and the item tower."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ...data import InteractionData, leave_one_out
from ...data.tasks import TaskData, build_task, events_before, validation_cut
from ...training.item_tower import ItemTowerSetup, item_tower_setup
from .recipe import LadderRecipe

logger = logging.getLogger(__name__)


@dataclass
class LadderData:
    """What every size shares (module docstring)."""

    data: InteractionData
    tasks: dict[str, TaskData]
    cut: dict[str, int]  # per evaluated user: events before the earliest validation anchor of any task
    user_order: list[str]  # a seeded permutation: the data axis trains on prefixes of it
    item_counts: np.ndarray  # (V,) events per item in the pre-training data of all users (the cold slice's count)
    item_tower: ItemTowerSetup | None = None  # the one tower every size and data fraction gets
    targets: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)  # (task, split) -> (U, T) target ids

    def training_users(self, fraction: float) -> list[str] | None:
        """The users a data fraction trains on (None: all of them)."""
        if fraction >= 1.0:
            return None
        return self.user_order[:max(1, int(round(fraction * len(self.user_order))))]

    def pretraining_data(self, fraction: float = 1.0) -> InteractionData:
        """Each (selected) user's events before the earliest validation anchor of any task: no target leaks."""
        return events_before(self.data, self.cut, users=self.training_users(fraction))


def run_name(preset: str, fraction: float) -> str:
    return preset if fraction == 1.0 else f"{preset}-users{fraction:g}"


def prepare_shared(recipe: LadderRecipe) -> LadderData:
    started = time.monotonic()
    data = recipe.pretrain.data.load()
    tasks = {name: build_task(name, data, **recipe.tasks.params.get(name, {})) for name in recipe.tasks.names}
    for name, task in tasks.items():
        if len(task.validation) == 0 or len(task.test) == 0:
            raise ValueError(f"task {name!r} on {data.name} has no evaluation users (every user was dropped: "
                             f"{task.stats}); change its tasks.params or the data.")
    users = [str(u) for u in data.sequences["user_id"]]
    rng = np.random.default_rng(recipe.seed)
    order = [users[i] for i in rng.permutation(len(users))]  # nested user subsets for the data axis
    shared = LadderData(data=data, tasks=tasks, cut=validation_cut(tasks.values()), user_order=order,
                        item_counts=np.zeros(0, dtype=np.int64))
    trained = leave_one_out(shared.pretraining_data())["train"]  # the events pre-training trains on
    shared.item_counts = item_counts(trained, len(data.vocab))
    model = recipe.pretrain.model
    if model.item_tower is not None:  # one store and one tower config for every size and data fraction
        shared.item_tower = item_tower_setup(model.item_tower, model.item_features, data, data.vocab.raw_ids,
                                             trained, recipe.pretrain.data.source, Path(recipe.output_dir))
        config = shared.item_tower.config
        logger.info("ladder item tower: %s fusion, mask_prob %s, features %s", config["fusion"],
                    config["mask_prob"], [b["name"] for b in config["feature_schema"]])
    logger.info("ladder data %s: %d users, %d items; tasks %s (test users %s); built in %.1f s", data.name,
                len(users), len(data.vocab) - 1, list(tasks), [len(t.test) for t in tasks.values()],
                time.monotonic() - started)
    return shared


def item_counts(trained: Any, vocab_size: int) -> np.ndarray:
    """(V,) events per item in the rows pre-training trains on (its leave-one-out train split; 0 is padding)."""
    rows = trained["item_ids"]
    items = np.concatenate([np.asarray(r, dtype=np.int64) for r in rows]) if rows else np.zeros(0, np.int64)
    return np.bincount(items, minlength=vocab_size)
