"""Pre-training: recipe → data → `GenRecTrainer` → saved model, vocab, metrics and card."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from datasets import Dataset, DatasetDict
from transformers import TrainingArguments, set_seed

from ..data import InteractionData, NextItemCollator, leave_one_out, sliding_windows, time_split
from ..data.collators import with_lengths
from ..data.mtp import MultiTokenTargets, check_reward_column
from ..evaluation import RankingProtocol
from ..evaluation.baselines import popularity_metrics, popularity_scores
from ..integrity import verify_weights, write_manifest
from ..models.genrec import SIZE_PRESETS, GenRecConfig, GenRecForNextItemPrediction, count_backbone_parameters
from ..data import ItemVocab
from ..evaluation.cold_start import (ColdStartSplit, cold_time_split, cold_warm_ranks, cold_warm_slices, hold_out_items,
                                     save_cold_start_ranks)
from .cold_start import (COLD_START_RANKS, FEATURE_CACHE, build_feature_store, cold_mask_of, extend_catalog,
                         known_items, tower_options)
from .recipes import Recipe
from .trainer import (GenRecTrainer, RunFolderLock, check_output_dir, clear_previous_run, require_training_left,
                      resolve_resume_checkpoint, run_training_loss, stopping_callbacks)

logger = logging.getLogger(__name__)


@dataclass
class PreparedData:
    """Everything `train` needs from the data section: the interactions, their splits and the training windows."""

    data: InteractionData
    splits: DatasetDict
    train_windows: Dataset
    cold: ColdStartSplit | None = None  # cold-start split: the model trains on cold.warm_vocab, test adds the rest

    @property
    def train_vocab(self):
        """The catalog the model trains with (the warm items of a cold-start split)."""
        return self.cold.warm_vocab if self.cold is not None else self.data.vocab


def prepare_data(recipe: Recipe, data: InteractionData | None = None) -> PreparedData:
    """Load the events (or take `data`, already loaded), split them and cut the training histories into windows,
    as the recipe says."""
    section = recipe.data
    data = section.load() if data is None else data
    cold = None
    if section.split == "leave_one_out":
        splits = leave_one_out(data)
    elif section.split == "cold_items":
        cold = hold_out_items(data, section.cold_item_fraction, seed=recipe.seed)
        splits = cold.splits
    elif section.split == "cold_time":
        cold = cold_time_split(data, section.time_split_quantile, cut=section.time_split_cut)
        splits = cold.splits
    else:
        cut = section.time_split_cut
        splits = time_split(data, cut=cut, quantile=None if cut is not None else section.time_split_quantile)
    windows = sliding_windows(splits["train"], section.max_length, stride=section.window_stride)
    if section.batching == "grouped":  # the column Trainer's LengthGroupedSampler sorts by
        windows = with_lengths(windows, section.max_length)
    logger.info("data %s: %d users, %d items; %d training windows, %d validation and %d test users",
                data.name, len(data.sequences), len(data.vocab) - 1, len(windows), len(splits["validation"]),
                len(splits["test"]))
    return PreparedData(data=data, splits=splits, train_windows=windows, cold=cold)


def build_model(recipe: Recipe, data: InteractionData, vocab: ItemVocab | None = None,
                item_tower_config: dict[str, Any] | None = None) -> GenRecForNextItemPrediction:
    """A fresh model of the recipe's preset sized to the catalog (`vocab`, default the data's), or the `init_from`
    checkpoint; `item_tower_config` adds the cold-start item tower."""
    if recipe.model.init_from:
        verify_weights(recipe.model.init_from)
        return GenRecForNextItemPrediction.from_pretrained(recipe.model.init_from)
    vocab = vocab if vocab is not None else data.vocab
    overrides = dict(recipe.model.overrides)
    if item_tower_config is not None:
        overrides["item_tower_config"] = item_tower_config
    overrides.setdefault("vocab_size", len(vocab))
    if overrides["vocab_size"] != len(vocab):
        raise ValueError(f"model.overrides.vocab_size={overrides['vocab_size']} but the data has "
                         f"{len(vocab)} item indices (catalog + padding); leave vocab_size out of the recipe.")
    if "num_action_types" not in SIZE_PRESETS[recipe.model.preset]:  # presets that fix it (sasrec) keep theirs
        overrides.setdefault("num_action_types", data.num_action_types)
    overrides.setdefault("max_position_embeddings", recipe.data.max_length)
    return GenRecForNextItemPrediction(GenRecConfig.from_preset(recipe.model.preset, **overrides))


@dataclass
class TrainOutcome:
    metrics: dict[str, Any]  # also written to output_dir/metrics.json
    data: InteractionData
    model: GenRecForNextItemPrediction  # the best checkpoint, as saved in output_dir
    is_main_process: bool = True  # False on the other ranks of a distributed run


def train(recipe: Recipe, *, overwrite_output_dir: bool = False,
          resume_from_checkpoint: str | bool | None = None, data: InteractionData | None = None) -> TrainOutcome:
    """Run a recipe end to end: data, Trainer with best-checkpoint selection, final evaluation, save, card.

    `data` (an already-loaded `InteractionData`, e.g. a benchmark's log cut before its held-out windows) replaces
    the events of `recipe.data.source`; the rest of the data section (split, windows, batching) applies to it, and
    `metrics.json` names it (`dataset`), while `training_recipe.yaml` still records the recipe's source.

    The run holds the output folder's lock throughout (a second run into it is refused). `resume_from_checkpoint`
    True resumes from the newest complete checkpoint of the folder; a resume with no training left is an error.
    `--overwrite_output_dir` (without resuming) first removes what an earlier run of the package wrote there.
    """
    output_dir = Path(recipe.output_dir)
    with RunFolderLock(output_dir) as lock:
        check_output_dir(output_dir, overwrite_output_dir, bool(resume_from_checkpoint))
        args = recipe.training_arguments()
        checkpoint = resolve_resume_checkpoint(output_dir, resume_from_checkpoint)
        if checkpoint:
            require_training_left(checkpoint, args)
        elif overwrite_output_dir and lock.enabled:
            clear_previous_run(output_dir)
        return _train(recipe, args, output_dir, checkpoint, data)


def _train(recipe: Recipe, args: TrainingArguments, output_dir: Path, checkpoint: str | None,
           data: InteractionData | None = None) -> TrainOutcome:
    from ..cards import ModelCardCallback, write_model_card

    set_seed(recipe.seed)
    prepared = prepare_data(recipe, data)
    train_vocab = prepared.train_vocab
    store = None
    tower_config = None
    if recipe.model.item_tower is not None and not recipe.model.init_from:
        full_raw = (prepared.cold.vocab if prepared.cold is not None else prepared.data.vocab).raw_ids
        cache = recipe.model.item_features.get("cache")
        store = build_feature_store(recipe.model.item_features, prepared.data, full_raw, recipe.data.source,
                                    Path(cache) if cache else output_dir / FEATURE_CACHE)
        options = tower_options(recipe.model.item_tower, prepared.splits["train"], prepared.data.has_timestamps,
                                float(recipe.model.item_features.get("serving_gap", 7 * 24 * 3600)))
        tower_config = store.tower_config(**options).to_dict()
    model = build_model(recipe, prepared.data, train_vocab, tower_config)
    if model.config.vocab_size == len(train_vocab):  # the sampled softmax's popularity sampler / logQ
        counts = popularity_scores(prepared.splits["train"], model.config.vocab_size)
        model.set_item_frequencies(counts)
        if store is not None:  # feature rows + which items have collaborative signal
            store.apply_to(model, train_vocab, known=known_items(counts))
    targets = multi_token_targets(model.config, prepared)
    collator = NextItemCollator(recipe.data.max_length, mode="train", packing=recipe.data.batching == "packed",
                                targets=targets)
    eval_collator = NextItemCollator(recipe.data.max_length, mode="eval",
                                     exclude_history=recipe.evaluation.exclude_history)
    protocol = RankingProtocol(exclude_history=recipe.evaluation.exclude_history)
    callbacks = [ModelCardCallback(dataset_name=prepared.data.name),
                 *stopping_callbacks(args, recipe.evaluation.early_stopping_patience, recipe.max_train_minutes,
                                                    recipe.budget_clock)]
    trainer = GenRecTrainer(
        model=model, args=args, train_dataset=prepared.train_windows, eval_dataset=prepared.splits["validation"],
        data_collator=collator, eval_collator=eval_collator, protocol=protocol, ks=tuple(recipe.evaluation.ks),
        callbacks=callbacks,
    )
    train_result = trainer.train(resume_from_checkpoint=checkpoint)
    resumed_step = trainer.run_folder.start_step
    cold_start = None
    if prepared.cold is not None:  # new items join the catalog without retraining, then cold / warm slices
        validation, _ = trainer.final_evaluation(prepared.splits["validation"])
        model = trainer.model
        train_vocab = extend_catalog(model, train_vocab, prepared.cold.vocab, store)
        batches = list(trainer.get_eval_dataloader(prepared.splits["test"]))
        cold_ranks = cold_warm_ranks(model, batches, protocol)  # kept per user: COLD_START_RANKS
        sliced = cold_warm_slices(*cold_ranks, cold_mask_of(model.config.vocab_size, prepared.cold.num_warm),
                                  ks=tuple(recipe.evaluation.ks))
        test = sliced["all"]
        cold_start = {**prepared.cold.summary(), "cold": sliced["cold"], "warm": sliced["warm"]}
    else:
        validation, test = trainer.final_evaluation(prepared.splits["test"])
    best = trainer.state.best_model_checkpoint
    metrics = {
        "dataset": prepared.data.name,
        "task": "next-item",
        "protocol": f"{recipe.data.split}, full-catalog ranking, history excluded={recipe.evaluation.exclude_history}",
        "validation": validation,
        "test": test,
        # loss: mean over the whole run's steps (a resumed run's earlier steps too), from the state's log history
        "train": {"runtime_s": train_result.metrics.get("train_runtime"),
                  "loss": run_training_loss(trainer.state, train_result.training_loss, resumed_step),
                  "epochs": trainer.state.epoch, "steps": trainer.state.global_step, "resumed_from_step": resumed_step,
                  "best_checkpoint": Path(best).name if best else None,
                  "world_size": args.world_size, "device": str(args.device), "batching": recipe.data.batching,
                  "real_events_per_s": train_result.metrics.get("train_real_events_per_s"),
                  "padding_fraction": train_result.metrics.get("train_padding_fraction")},
        "parameters": _parameter_counts(model),
        **({"cold_start": cold_start} if cold_start is not None else {}),
        "popularity_baseline": {"test": popularity_metrics(prepared.splits, len(prepared.data.vocab), eval_collator,
                                                           ks=tuple(recipe.evaluation.ks), protocol=protocol)},
    }
    if trainer.is_world_process_zero():
        trainer.save_model(str(output_dir))
        write_manifest(output_dir)
        (train_vocab if prepared.cold is not None or store is not None else prepared.data.vocab).save(output_dir)
        (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
        if cold_start is not None:  # per-user test ranks, for paired comparisons of runs on the same split
            save_cold_start_ranks(output_dir / COLD_START_RANKS, *cold_ranks, prepared.cold.num_warm)
        (output_dir / "training_recipe.yaml").write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
        write_model_card(output_dir, dataset_name=prepared.data.name, training_args=args)
    return TrainOutcome(metrics=metrics, data=prepared.data, model=trainer.model,
                        is_main_process=trainer.is_world_process_zero())


def multi_token_targets(config: GenRecConfig, prepared: PreparedData) -> MultiTokenTargets | None:
    """The multi-token targets `config.objective="mtp"` trains on (None for next-token prediction), after checking
    that the data has what they read: timestamps for a horizon or a decay, a numeric per-event reward column."""
    targets = MultiTokenTargets.from_config(config)
    if targets is None:
        return None
    if targets.uses_time and not prepared.data.has_timestamps:
        raise ValueError(
            f"objective mtp with mtp_horizon_seconds={targets.horizon_seconds} and mtp_half_life_seconds="
            f"{targets.half_life_seconds} needs timestamps, but {prepared.data.name} has only the event order; set "
            "both to null (count-only targets, no decay) or use data with timestamps.")
    check_reward_column(prepared.train_windows, targets.reward_column)
    return targets


def _parameter_counts(model: GenRecForNextItemPrediction) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    return {"backbone": count_backbone_parameters(model), "total": total}



