"""Recipe → data → `transformers.Trainer` → saved model, vocab, metrics and card.

`GenRecTrainer` replaces Trainer's logits-gathering evaluation loop with the package's ranking protocol: per user,
the rank of the held-out item among the whole catalog (chunked, never batch × catalog), gathered across processes
without duplicates, turned into MRR / HR@K / NDCG@K. Checkpoint selection and early stopping use those metrics.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from datasets import Dataset, DatasetDict
from torch.utils.data import DataLoader
from transformers import (
    EarlyStoppingCallback,
    Trainer,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_utils import EvalLoopOutput

from .baselines import popularity_metrics, popularity_scores
from .configuration_genrec import SIZE_PRESETS, GenRecConfig
from .data import (
    InteractionData,
    ItemVocab,
    NextItemCollator,
    leave_one_out,
    load_interactions,
    sliding_windows,
    time_split,
)
from .evaluation import evaluate_model, metrics_from_ranks, target_ranks
from .modeling_genrec import GenRecForNextItemPrediction
from .recipes import Recipe

logger = logging.getLogger(__name__)

# Defaults for a recipe's `training:` section; the recipe overrides any of them.
DEFAULT_TRAINING_ARGUMENTS: dict[str, Any] = dict(
    num_train_epochs=20,
    per_device_train_batch_size=128,
    per_device_eval_batch_size=256,
    learning_rate=1e-3,
    weight_decay=0.0,
    warmup_steps=0,
    lr_scheduler_type="constant",
    eval_strategy="epoch",
    save_strategy="epoch",
    save_total_limit=2,
    load_best_model_at_end=True,
    logging_strategy="epoch",
    report_to=[],
    dataloader_num_workers=0,
    disable_tqdm=False,
)


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
    """`Trainer` whose evaluation ranks each held-out item against the full catalog (DESIGN.md §5)."""

    def __init__(self, *args: Any, eval_collator: NextItemCollator, ks: tuple[int, ...] = (1, 5, 10, 50, 200),
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.eval_collator = eval_collator
        self.ks = tuple(ks)

    def get_eval_dataloader(self, eval_dataset: str | Dataset | None = None) -> DataLoader:
        if isinstance(eval_dataset, str):
            eval_dataset = self.eval_dataset[eval_dataset]
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        loader = DataLoader(dataset, batch_size=self.args.eval_batch_size, collate_fn=self.eval_collator,
                            shuffle=False, num_workers=self.args.dataloader_num_workers)
        return self.accelerator.prepare(loader)

    def evaluation_loop(self, dataloader: DataLoader, description: str, prediction_loss_only: bool | None = None,
                        ignore_keys: list[str] | None = None, metric_key_prefix: str = "eval") -> EvalLoopOutput:
        model = self.accelerator.unwrap_model(self.model)
        metrics = evaluate_model(model, dataloader, ks=self.ks, gather=self.accelerator.gather_for_metrics,
                                 progress=not self.args.disable_tqdm and self.is_world_process_zero())
        num_users = int(metrics.pop("num_users"))
        metrics = {f"{metric_key_prefix}_{k}": v for k, v in metrics.items()}
        return EvalLoopOutput(predictions=None, label_ids=None, metrics=metrics, num_samples=num_users)


@dataclass
class PreparedData:
    """Everything `train` needs from the data section: the interactions, their splits and the training windows."""

    data: InteractionData
    splits: DatasetDict
    train_windows: Dataset


def prepare_data(recipe: Recipe) -> PreparedData:
    """Load the events, split them and cut the training histories into windows, as the recipe says."""
    section = recipe.data
    data = load_interactions(section.source, format=section.format, column_map=section.column_map,
                             min_user_events=section.min_user_events, k_core=section.k_core)
    if section.split == "leave_one_out":
        splits = leave_one_out(data)
    else:
        cut = section.time_split_cut
        splits = time_split(data, cut=cut, quantile=None if cut is not None else section.time_split_quantile)
    windows = sliding_windows(splits["train"], section.max_length, stride=section.window_stride)
    logger.info("data %s: %d users, %d items; %d training windows, %d validation and %d test users",
                data.name, len(data.sequences), len(data.vocab) - 1, len(windows), len(splits["validation"]),
                len(splits["test"]))
    return PreparedData(data=data, splits=splits, train_windows=windows)


def build_model(recipe: Recipe, data: InteractionData) -> GenRecForNextItemPrediction:
    """A fresh model of the recipe's preset sized to the catalog, or the `init_from` checkpoint."""
    if recipe.model.init_from:
        return GenRecForNextItemPrediction.from_pretrained(recipe.model.init_from)
    overrides = dict(recipe.model.overrides)
    overrides.setdefault("vocab_size", len(data.vocab))
    if overrides["vocab_size"] != len(data.vocab):
        raise ValueError(f"model.overrides.vocab_size={overrides['vocab_size']} but the data has "
                         f"{len(data.vocab)} item indices (catalog + padding); leave vocab_size out of the recipe.")
    if "num_action_types" not in SIZE_PRESETS[recipe.model.preset]:  # presets that fix it (sasrec) keep theirs
        overrides.setdefault("num_action_types", data.num_action_types)
    overrides.setdefault("max_position_embeddings", recipe.data.max_length)
    return GenRecForNextItemPrediction(GenRecConfig.from_preset(recipe.model.preset, **overrides))


def check_output_dir(output_dir: Path, overwrite: bool, resuming: bool) -> None:
    """Refuse to write into a non-empty folder unless asked: nothing a user saved is lost silently."""
    if output_dir.is_dir() and any(output_dir.iterdir()) and not (overwrite or resuming):
        raise FileExistsError(f"Output folder {output_dir} exists and is not empty; pass --overwrite_output_dir to "
                              "write into it, --resume_from_checkpoint to continue a run, or choose another "
                              "--output_dir.")


def training_arguments(recipe: Recipe, output_dir: Path) -> TrainingArguments:
    """TrainingArguments from the recipe's `training:` section on top of `DEFAULT_TRAINING_ARGUMENTS`."""
    values = {**DEFAULT_TRAINING_ARGUMENTS, **recipe.training}
    if not torch.cuda.is_available():
        values.setdefault("use_cpu", True)
    return TrainingArguments(
        output_dir=str(output_dir), remove_unused_columns=False, seed=recipe.seed,
        metric_for_best_model=f"eval_{recipe.evaluation.metric_for_best_model}", greater_is_better=True, **values,
    )


@dataclass
class TrainOutcome:
    metrics: dict[str, Any]  # also written to output_dir/metrics.json
    data: InteractionData
    model: GenRecForNextItemPrediction  # the best checkpoint, as saved in output_dir
    is_main_process: bool = True  # False on the other ranks of a distributed run


def train(recipe: Recipe, *, overwrite_output_dir: bool = False,
          resume_from_checkpoint: str | bool | None = None) -> TrainOutcome:
    """Run a recipe end to end: data, Trainer with best-checkpoint selection, final evaluation, save, card."""
    from .cards import ModelCardCallback, write_model_card

    output_dir = Path(recipe.output_dir)
    check_output_dir(output_dir, overwrite_output_dir, bool(resume_from_checkpoint))
    set_seed(recipe.seed)
    prepared = prepare_data(recipe)
    model = build_model(recipe, prepared.data)
    if model.config.vocab_size == len(prepared.data.vocab):  # the sampled softmax's popularity sampler / logQ
        model.set_item_frequencies(popularity_scores(prepared.splits["train"], model.config.vocab_size))
    args = training_arguments(recipe, output_dir)
    collator = NextItemCollator(recipe.data.max_length, mode="train")
    eval_collator = NextItemCollator(recipe.data.max_length, mode="eval",
                                     exclude_history=recipe.evaluation.exclude_history)
    callbacks = [ModelCardCallback(dataset_name=prepared.data.name)]
    if recipe.evaluation.early_stopping_patience and args.eval_strategy != "no":
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=recipe.evaluation.early_stopping_patience))
    if recipe.max_train_minutes:
        callbacks.append(TimeBudgetCallback(recipe.max_train_minutes))
    trainer = GenRecTrainer(
        model=model, args=args, train_dataset=prepared.train_windows, eval_dataset=prepared.splits["validation"],
        data_collator=collator, eval_collator=eval_collator, ks=tuple(recipe.evaluation.ks), callbacks=callbacks,
    )
    train_result = trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    trainer.remove_callback(EarlyStoppingCallback)  # the final evaluations below are reports, not stopping signals
    validation = trainer.evaluate(metric_key_prefix="validation")
    test = trainer.evaluate(prepared.splits["test"], metric_key_prefix="test")
    metrics = {
        "dataset": prepared.data.name,
        "task": "next-item",
        "protocol": f"{recipe.data.split}, full-catalog ranking, history excluded={recipe.evaluation.exclude_history}",
        "validation": _strip_prefix(validation, "validation_"),
        "test": _strip_prefix(test, "test_"),
        "train": {"runtime_s": train_result.metrics.get("train_runtime"), "loss": train_result.training_loss,
                  "epochs": trainer.state.epoch, "best_checkpoint": trainer.state.best_model_checkpoint,
                  "world_size": args.world_size, "device": str(args.device)},
        "parameters": _parameter_counts(model),
        "popularity_baseline": {"test": popularity_metrics(prepared.splits, len(prepared.data.vocab), eval_collator,
                                                           ks=tuple(recipe.evaluation.ks))},
    }
    if trainer.is_world_process_zero():
        trainer.save_model(str(output_dir))
        prepared.data.vocab.save(output_dir)
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        (output_dir / "training_recipe.yaml").write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
        write_model_card(output_dir, dataset_name=prepared.data.name, training_args=args)
    return TrainOutcome(metrics=metrics, data=prepared.data, model=trainer.model,
                        is_main_process=trainer.is_world_process_zero())


def _strip_prefix(metrics: dict[str, float], prefix: str) -> dict[str, float]:
    return {k[len(prefix):]: v for k, v in metrics.items() if k.startswith(prefix) and not math.isnan(v)}


def _parameter_counts(model: GenRecForNextItemPrediction) -> dict[str, int]:
    from . import count_backbone_parameters

    total = sum(p.numel() for p in model.parameters())
    return {"backbone": count_backbone_parameters(model), "total": total}



def remap_to_vocab(data: InteractionData, vocab: ItemVocab) -> InteractionData:
    """Re-index `data` into a model's vocabulary; events of items the model does not know are dropped (and counted)."""
    if data.vocab == vocab:
        return data
    lookup = np.array([0] + [vocab.encode(raw) if raw in vocab else 0 for raw in data.vocab.raw_ids], dtype=np.int64)
    unknown = int((lookup[1:] == 0).sum())
    if unknown == data.vocab.num_items:
        raise ValueError(f"None of the {unknown} items of {data.name} is in the model's item_vocab.json: "
                         "the data and the model use different item ids.")

    def remap(row: dict[str, Any]) -> dict[str, Any]:
        items = lookup[np.asarray(row["item_ids"], dtype=np.int64)]
        keep = items > 0
        return {"item_ids": items[keep], **{c: np.asarray(row[c])[keep] for c in ("timestamps", "action_ids",
                                                                                   "ratings")}}

    sequences = data.sequences.map(remap, features=data.sequences.features, desc="mapping items to the model vocab")
    sequences = sequences.filter(lambda row: len(row["item_ids"]) >= 2)
    if unknown:
        logger.warning("%d of %d items of %s are unknown to the model: their events are dropped (%d users kept)",
                       unknown, data.vocab.num_items, data.name, len(sequences))
    return dataclasses.replace(data, sequences=sequences, vocab=vocab)


def saved_model_ranks(model_dir: str | Path, source: str, *, format: str | None = None, split: str = "test",
                      max_length: int | None = None, batch_size: int = 256,
                      exclude_history: bool = True) -> tuple[str, torch.Tensor]:
    """(dataset name, per-user leave-one-out ranks) of a saved model on `source`, mapped into its vocabulary."""
    model = GenRecForNextItemPrediction.from_pretrained(model_dir).eval()
    vocab = ItemVocab.load(model_dir)
    data = remap_to_vocab(load_interactions(source, format=format), vocab)
    rows = leave_one_out(data)[split]
    max_length = max_length or model.config.max_position_embeddings
    loader = DataLoader(rows, batch_size=batch_size,
                        collate_fn=NextItemCollator(max_length, mode="eval", exclude_history=exclude_history))
    return data.name, target_ranks(model, loader, exclude_history=exclude_history)


def evaluate_saved_model(model_dir: str | Path, source: str, *, format: str | None = None, split: str = "test",
                         max_length: int | None = None, batch_size: int = 256, exclude_history: bool = True,
                         ks: tuple[int, ...] = (1, 5, 10, 50, 200)) -> dict[str, Any]:
    """Leave-one-out metrics of a saved model on `source` (mapped into the model's vocabulary)."""
    name, ranks = saved_model_ranks(model_dir, source, format=format, split=split, max_length=max_length,
                                    batch_size=batch_size, exclude_history=exclude_history)
    return {"dataset": name, "split": split, "protocol": "leave_one_out, full-catalog ranking, history "
            f"excluded={exclude_history}", **metrics_from_ranks(ranks, ks), "num_users": float(ranks.numel())}
