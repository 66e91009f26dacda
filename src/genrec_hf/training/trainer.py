"""The one ranking-aware `Trainer` of the package, used by pre-training and fine-tuning alike.

`GenRecTrainer` replaces Trainer's logits-gathering evaluation loop with the package's ranking path: per user, the
rank of each held-out target among the whole catalog (chunked, never batch × catalog), gathered across processes
without duplicates, turned into MRR / HR@K / NDCG@K / recall@K. What is ranked (the next item, a task's target set,
an availability window) is data handed to it as a `RankingProtocol` and an eval collator, not another loop.
Checkpoint selection and early stopping use those metrics.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from torch.utils.data import DataLoader
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_utils import EvalLoopOutput

from ..evaluation import DEFAULT_KS, LEAVE_ONE_OUT, RankingProtocol, evaluate_model

logger = logging.getLogger(__name__)

class TimeBudgetCallback(TrainerCallback):
    """Stop training once `max_minutes` of wall time are spent (after an evaluation, so the best model is kept)."""

    def __init__(self, max_minutes: float) -> None:
        self.max_seconds = max_minutes * 60
        self.start = time.monotonic()

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        self.start = time.monotonic()

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        if time.monotonic() - self.start > self.max_seconds:
            logger.info("time budget of %.1f min spent at step %d: evaluating and stopping",
                        self.max_seconds / 60, state.global_step)
            control.should_training_stop = True
            control.should_evaluate = args.eval_strategy != "no"
            control.should_save = args.save_strategy != "no"
        return control


class GenRecTrainer(Trainer):
    """`Trainer` whose evaluation ranks each eval row's targets against the full catalog under a protocol.

    Args (besides Trainer's):
        eval_collator: Turns eval rows into ranking batches (`NextItemCollator(mode="eval")` for leave-one-out,
            `TaskCollator(mode="eval")` for a task).
        protocol: The `RankingProtocol` (default leave-one-out next item, history excluded).
        ks: Cut-offs of hr@K / ndcg@K / recall@K.

    `evaluate(eval_dataset)` takes a Dataset, a split name of a dict `eval_dataset`, or None (the eval dataset).
    Across processes each batch's (B, T) ranks are padded to a common T and gathered without the duplicates of an
    uneven last batch; `num_samples` is the number of users scored.
    """

    def __init__(self, *args: Any, eval_collator: Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]],
                 protocol: RankingProtocol = LEAVE_ONE_OUT, ks: Sequence[int] = DEFAULT_KS, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.eval_collator = eval_collator
        self.protocol = protocol
        self.ks = tuple(ks)

    def get_eval_dataloader(self, eval_dataset: str | Dataset | None = None) -> DataLoader:
        if isinstance(eval_dataset, str):
            eval_dataset = self.eval_dataset[eval_dataset]
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if dataset is None:
            raise ValueError("GenRecTrainer: evaluation requires an eval_dataset.")
        loader = DataLoader(dataset, batch_size=self.args.eval_batch_size, collate_fn=self.eval_collator,
                            shuffle=False, num_workers=self.args.dataloader_num_workers,
                            pin_memory=self.args.dataloader_pin_memory)
        return self.accelerator.prepare(loader)

    def _gather_ranks(self, ranks: torch.Tensor) -> torch.Tensor:
        """Every process's (B, T) ranks, T padded with 0 to the widest process first (gather needs equal shapes)."""
        return self.accelerator.gather_for_metrics(self.accelerator.pad_across_processes(ranks, dim=1))

    def evaluation_loop(self, dataloader: DataLoader, description: str, prediction_loss_only: bool | None = None,
                        ignore_keys: list[str] | None = None, metric_key_prefix: str = "eval") -> EvalLoopOutput:
        model = self.accelerator.unwrap_model(self.model)
        metrics = evaluate_model(model, dataloader, self.protocol, ks=self.ks, gather=self._gather_ranks,
                                 progress=not self.args.disable_tqdm and self.is_world_process_zero())
        num_users = int(metrics["num_users"])
        metrics = {f"{metric_key_prefix}_{k}": v for k, v in metrics.items()}
        return EvalLoopOutput(predictions=None, label_ids=None, metrics=metrics, num_samples=num_users)


def check_output_dir(output_dir: Path, overwrite: bool, resuming: bool) -> None:
    """Refuse to write into a non-empty folder unless asked: nothing a user saved is lost silently."""
    if output_dir.is_dir() and any(output_dir.iterdir()) and not (overwrite or resuming):
        raise FileExistsError(f"Output folder {output_dir} exists and is not empty; pass --overwrite_output_dir to "
                              "write into it, --resume_from_checkpoint to continue a run, or choose another "
                              "--output_dir.")


def strip_prefix(metrics: dict[str, Any], prefix: str) -> dict[str, float]:
    """The numeric `prefix`-ed entries of Trainer metrics, without the prefix (NaN entries dropped)."""
    return {k[len(prefix):]: v for k, v in metrics.items()
            if k.startswith(prefix) and isinstance(v, (int, float)) and not math.isnan(v)}


