"""The one run pipeline: every pre-training run is assembled here, whoever starts it.

    prepare_run(recipe, data=None)  → RunData         the events, their split, training windows, item-tower inputs
    build_model(recipe, run)         → model           the recipe's preset sized to the catalog (or `init_from`)
    build_trainer(recipe, model, run) → GenRecTrainer  collators (packing, multi-token targets), ranking protocol
    run_training(trainer, recipe)    → TrainRecord     Trainer's loop, timed on the wall and CPU clocks
    train(recipe, data=None)         → TrainOutcome    the above + final evaluation (+ cold / warm slices) + save_run

`genrec-hf train`, the scaling ladder, the benchmarks and the examples call these; features plug in as steps of
`prepare_run` / `build_model` / `build_trainer` (the item tower, a cold-start split, multi-token targets), never as a
second copy of the setup. Fine-tuning (`finetune.py`) reuses `run_training` and `save_run` on a task's rows.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from datasets import Dataset, DatasetDict
from transformers import TrainingArguments, set_seed

from ..cards import ModelCardCallback, write_model_card
from ..data import (InteractionData, ItemVocab, NextItemCollator, leave_one_out, save_item_tokenizer, sliding_windows,
                   time_split)
from ..data.cold_splits import ColdStartSplit, cold_time_split, hold_out_items
from ..data.collators import with_lengths
from ..data.mtp import MultiTokenTargets, check_reward_column
from ..data.prepared import PreparedData, check_filters, is_prepared_folder, open_prepared
from ..data.protocol import RankingProtocol
from ..data.streaming import (TrainingWindowStream, estimated_windows, read_split_rows, sequences_from_table,
                              split_dataset, train_item_counts)
from ..evaluation.baselines import popularity_metrics, popularity_scores
from ..evaluation.cold_slices import COLD_START_RANKS, cold_warm_ranks, cold_warm_slices, save_cold_start_ranks
from ..integrity import load_verified_model
from ..models.genrec import SIZE_PRESETS, GenRecConfig, GenRecForNextItemPrediction, count_backbone_parameters
from .item_tower import ItemTowerSetup, cold_mask_of, extend_catalog, item_tower_setup, known_items
from .recipes import SAMPLED_HEAD, Recipe, RecipeBase
from .run_folder import (RunFolderLock, check_output_dir, clear_previous_run, final_save_covers, remove_checkpoints,
                         require_training_left, resolve_resume_checkpoint, staged_save)
from .trainer import BUDGET_CLOCKS, GenRecTrainer, run_training_loss

logger = logging.getLogger(__name__)


@dataclass
class RunData:
    """What a pre-training run trains and evaluates on, prepared once by `prepare_run`."""

    data: InteractionData
    splits: DatasetDict
    train_windows: Dataset
    cold: ColdStartSplit | None = None  # cold-start split: the model trains on cold.warm_vocab, test adds the rest
    item_tower: ItemTowerSetup | None = None  # feature rows + tower config when the recipe has an item tower
    validation: Dataset | None = None  # the validation users evaluated during training (a seeded sample or all)
    stream: StreamedFolder | None = None  # a prepared folder read shard by shard (data.streaming)

    def __post_init__(self) -> None:
        if self.validation is None:
            self.validation = self.splits["validation"]

    def item_counts(self, vocab_size: int) -> torch.Tensor:
        """(V,) events per item in the training rows (summed over every process's shards when streaming)."""
        if self.stream is None:
            return popularity_scores(self.splits["train"], vocab_size)
        return torch.from_numpy(self.stream.item_counts(vocab_size).astype(np.float64))

    @property
    def train_vocab(self) -> ItemVocab:
        """The catalog the model trains with (the warm items of a cold-start split)."""
        return self.cold.warm_vocab if self.cold is not None else self.data.vocab

    @property
    def full_vocab(self) -> ItemVocab:
        """Every item of the run, cold ones included (what the test ranks, once they are added)."""
        return self.cold.vocab if self.cold is not None else self.data.vocab

    @property
    def train_events(self) -> int:
        if self.stream is not None:
            return int(self.item_counts(len(self.data.vocab)).sum())
        return int(sum(len(items) for items in self.splits["train"]["item_ids"]))


@dataclass
class StreamedFolder:
    """A prepared folder this process streams: its shards, split and layout (`data.streaming`)."""

    prepared: PreparedData
    rank: int = 0
    world_size: int = 1
    _counts: np.ndarray | None = None

    @property
    def shards(self) -> list[Path]:
        return self.prepared.shard_paths()

    @property
    def split(self) -> dict[str, Any]:
        return self.prepared.split

    def item_counts(self, vocab_size: int) -> np.ndarray:
        """Training events per item of the whole folder: each process counts its shards, the counts are summed."""
        if self._counts is None:
            counts = train_item_counts(self.shards, self.split, vocab_size, rank=self.rank,
                                       world_size=self.world_size)
            self._counts = all_processes_sum(counts)
        return self._counts

    def test_batches(self, users: int | None = None) -> Any:
        """This process's test users (the first `users / shards` of each shard when `users` is given), one
        in-memory batch of rows at a time."""
        limit = None if users is None else -(-users // self.prepared.num_shards)
        for rows in read_split_rows(self.shards, self.split, "test", limit_per_shard=limit, rank=self.rank,
                                    world_size=self.world_size):
            yield sequences_from_table(rows)


def prepare_run(recipe: Recipe, data: InteractionData | None = None, item_tower: ItemTowerSetup | None = None,
                *, rank: int = 0, world_size: int = 1) -> RunData:
    """Load the events (or take `data`, already loaded), split them as `data.split` says, cut the training histories
    into windows, and build the item tower's inputs when the recipe has one (or take `item_tower`, built once for
    many runs). With `data.streaming` nothing is loaded: process `rank` of `world_size` streams its shards of the
    prepared folder (`prepare_streamed_run`)."""
    section = recipe.data
    if section.streaming:
        if data is not None:
            raise ValueError("data.streaming reads a prepared folder shard by shard; it cannot take loaded `data`.")
        return prepare_streamed_run(recipe, item_tower, rank=rank, world_size=world_size)
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
    run = RunData(data=data, splits=splits, train_windows=windows, cold=cold,
                  validation=sample_users(splits["validation"], recipe.evaluation.validation_users, recipe.seed))
    if item_tower is None and recipe.model.item_tower is not None and not recipe.model.init_from:
        item_tower = item_tower_setup(recipe.model.item_tower, recipe.model.item_features, data,
                                      run.full_vocab.raw_ids, splits["train"], section.source,
                                      Path(recipe.output_dir))
    run.item_tower = item_tower
    return run


# Validation users of a streamed run when the recipe does not say: every process ranks them at every evaluation.
STREAMED_VALIDATION_USERS = 10_000


def prepare_streamed_run(recipe: Recipe, item_tower: ItemTowerSetup | None = None, *, rank: int = 0,
                         world_size: int = 1) -> RunData:
    """A run over a prepared folder read shard by shard: training windows streamed from this process's shards
    (`data.streaming.TrainingWindowStream`), a validation sample of users read from every shard (the first
    `evaluation.validation_users / shards` users of each: users are hash-partitioned, so this is a fixed, seeded-by-id
    sample), and the test users streamed once at the end."""
    section = recipe.data
    if not is_prepared_folder(section.source):
        raise ValueError(f"data.streaming: data.source={section.source!r} is not a prepared folder; run `genrec-hf "
                         "prepare` on the log first (docs/scale.md).")
    prepared = open_prepared(section.source)
    prepared.check_footers()  # sizes, schema, vocabulary of every shard before streaming them (no hashing)
    check_filters(prepared.manifest, section.source, min_user_events=section.min_user_events, k_core=section.k_core,
                  dedup=True)
    split = prepared.split
    if split["kind"] != section.split:
        raise ValueError(f"data.split={section.split!r} but {section.source} was prepared with a {split['kind']} "
                         "split: the split of a prepared folder is decided by `genrec-hf prepare`.")
    stream = StreamedFolder(prepared, rank=rank, world_size=world_size)
    windows = TrainingWindowStream(stream.shards, split, max_length=section.max_length, stride=section.window_stride,
                                   seed=recipe.seed, shuffle_users=section.shuffle_users, rank=rank,
                                   world_size=world_size)
    wanted = recipe.evaluation.validation_users or STREAMED_VALIDATION_USERS
    validation = split_dataset(stream.shards, split, "validation",
                               limit_per_shard=-(-wanted // prepared.num_shards))
    data = InteractionData(sequences=sequences_from_table(None), vocab=prepared.vocab,
                           item_info=prepared.vocab.item_info, has_timestamps=prepared.manifest["has_timestamps"],
                           num_action_types=prepared.manifest["num_action_types"], name=prepared.manifest["name"])
    logger.info("data %s (streamed, %d shards, this process reads %d): %d users, %d items, %d events; %d validation "
                "users", data.name, prepared.num_shards, len(windows.rank_files), prepared.manifest["num_users"],
                prepared.manifest["num_items"], prepared.manifest["num_events"], len(validation))
    if item_tower is None and recipe.model.item_tower is not None and not recipe.model.init_from:
        item_tower = item_tower_setup(recipe.model.item_tower, recipe.model.item_features, data,
                                      data.vocab.raw_ids, None, section.source, Path(recipe.output_dir))
    return RunData(data=data, splits=DatasetDict({"validation": validation}), train_windows=windows,
                   validation=validation, item_tower=item_tower, stream=stream)


def all_processes_sum(values: np.ndarray) -> np.ndarray:
    """`values` summed over the processes of a distributed run (unchanged in a single process)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return values
    tensor = torch.from_numpy(values.astype(np.int64))
    torch.distributed.all_reduce(tensor)
    return tensor.numpy()


def sample_users(rows: Dataset, count: int | None, seed: int) -> Dataset:
    """`count` of `rows` drawn once with `seed`, in their original order (all of them when `count` is None or not
    smaller): the same users at every evaluation of a run, and in every run with the same seed."""
    if count is None or count >= len(rows):
        return rows
    keep = np.sort(np.random.default_rng(seed).choice(len(rows), size=count, replace=False))
    logger.info("validation on %d of %d users (seed %d)", count, len(rows), seed)
    return rows.select(keep.tolist())


def build_model(recipe: Recipe, run: RunData) -> GenRecForNextItemPrediction:
    """A fresh model of the recipe's preset sized to the training catalog, or the `init_from` checkpoint; the
    item frequencies the sampled softmax draws from and the item tower's feature rows are set from the run."""
    if recipe.model.init_from:
        model = load_verified_model(recipe.model.init_from)
    else:
        vocab = run.train_vocab
        overrides = dict(recipe.model.overrides)
        if run.item_tower is not None:
            overrides["item_tower_config"] = run.item_tower.config
        overrides.setdefault("vocab_size", len(vocab))
        if overrides["vocab_size"] != len(vocab):
            raise ValueError(f"model.overrides.vocab_size={overrides['vocab_size']} but the data has "
                             f"{len(vocab)} item indices (catalog + padding); leave vocab_size out of the recipe.")
        if "num_action_types" not in SIZE_PRESETS[recipe.model.preset]:  # presets that fix it (sasrec) keep theirs
            overrides.setdefault("num_action_types", run.data.num_action_types)
        overrides.setdefault("max_position_embeddings", recipe.data.max_length)
        limit = recipe.model.sampled_softmax_above_items
        if limit is not None and len(vocab) - 1 > limit and "loss_type" not in overrides:
            logger.info("catalog of %d items > model.sampled_softmax_above_items=%d: sampled softmax (%s)",
                        len(vocab) - 1, limit, ", ".join(f"{k}={v}" for k, v in SAMPLED_HEAD.items()))
            overrides = {**SAMPLED_HEAD, **overrides}
        model = GenRecForNextItemPrediction(GenRecConfig.from_preset(recipe.model.preset, **overrides))
    config = model.config
    # A streamed log is counted in a pass over every shard: only when something reads the counts.
    wanted = run.stream is None or run.item_tower is not None or config.uses_logq_correction or (
        config.loss_type == "sampled" and config.negative_sampler == "popularity")
    if config.vocab_size == len(run.train_vocab) and wanted:  # the popularity sampler / logQ, the tower's known items
        counts = run.item_counts(config.vocab_size)
        model.set_item_frequencies(counts)
        if run.item_tower is not None:  # feature rows + which items have collaborative signal
            run.item_tower.store.apply_to(model, run.train_vocab, known=known_items(counts))
    return model


def multi_token_targets(recipe: Recipe, run: RunData) -> MultiTokenTargets | None:
    """The targets of `objective.type: mtp` (None for next-token prediction), after checking the data has what
    they read: timestamps for a horizon or a decay, a numeric per-event reward column."""
    targets = recipe.objective.targets()
    if targets is None:
        return None
    if targets.uses_time and not run.data.has_timestamps:
        raise ValueError(
            f"objective.type mtp with horizon_seconds={targets.horizon_seconds} and half_life_seconds="
            f"{targets.half_life_seconds} needs timestamps, but {run.data.name} has only the event order; set both "
            "to null (count-only targets, no decay) or use data with timestamps.")
    check_reward_column(run.train_windows, targets.reward_column)
    return targets


def build_trainer(recipe: Recipe, model: torch.nn.Module, run: RunData,
                  args: TrainingArguments | None = None) -> GenRecTrainer:
    """The pre-training `GenRecTrainer`: training windows (packed, grouped or padded; with multi-token targets),
    validation users ranked under the leave-one-out protocol, the model card written when training ends."""
    collator = NextItemCollator(recipe.data.max_length, mode="train", packing=recipe.data.batching == "packed",
                                targets=multi_token_targets(recipe, run))
    eval_collator = NextItemCollator(recipe.data.max_length, mode="eval",
                                     exclude_history=recipe.evaluation.exclude_history)
    return GenRecTrainer.from_recipe(
        recipe, model, args=args, train_dataset=run.train_windows, eval_dataset=run.validation,
        data_collator=collator, eval_collator=eval_collator, protocol=pretraining_protocol(recipe),
        callbacks=[ModelCardCallback(dataset_name=run.data.name)])


def streamed_arguments(args: TrainingArguments, recipe: Recipe, run: RunData) -> TrainingArguments:
    """TrainingArguments for a stream, which has no length: `max_steps` from `num_train_epochs` and the manifest's
    estimate of the windows (unless the recipe sets it), and per-epoch evaluation / saving / logging turned into
    their step equivalents (Trainer would never reach the end of an endless epoch)."""
    windows = estimated_windows(run.stream.prepared.manifest["shards"], recipe.data.max_length,
                                recipe.data.window_stride)
    per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    epoch_steps = max(1, -(-windows // per_step))
    changes: dict[str, Any] = {}
    if args.max_steps <= 0:
        changes["max_steps"] = max(1, math.ceil(args.num_train_epochs * epoch_steps))
    for strategy, steps in (("eval_strategy", "eval_steps"), ("save_strategy", "save_steps"),
                            ("logging_strategy", "logging_steps")):
        if getattr(args, strategy) == "epoch":
            changes.update({strategy: "steps", steps: epoch_steps})
    logger.info("streamed run: about %d windows an epoch (manifest estimate), %d steps an epoch%s", windows,
                epoch_steps, f", max_steps {changes['max_steps']}" if "max_steps" in changes else "")
    return dataclasses.replace(args, **changes) if changes else args


def pretraining_protocol(recipe: Recipe) -> RankingProtocol:
    return RankingProtocol(exclude_history=recipe.evaluation.exclude_history)


@dataclass
class TrainRecord:
    """How a training call went: what metrics.json's `train` section says."""

    runtime_s: float  # wall seconds of the training loop
    cpu_s: float  # CPU seconds of this process in it (all threads)
    loss: float | None  # mean training loss over the whole run (a resumed run's earlier steps too)
    epochs: float | None
    steps: int
    resumed_from_step: int
    stopped_by: str  # epochs | time_box | early_stopping
    metrics: dict[str, Any]  # Trainer's own train metrics (runtime, throughput, ...)

    def to_dict(self) -> dict[str, Any]:
        return {"runtime_s": self.runtime_s, "cpu_s": self.cpu_s, "loss": self.loss, "epochs": self.epochs,
                "steps": self.steps, "resumed_from_step": self.resumed_from_step, "stopped_by": self.stopped_by}


def run_training(trainer: GenRecTrainer, recipe: RecipeBase, checkpoint: str | None = None) -> TrainRecord:
    """`trainer.train()`, timed on both clocks, with the reason it stopped judged on the recipe's budget clock (under
    load, wall time passes a CPU-time box that was never reached)."""
    budget_clock = BUDGET_CLOCKS[recipe.budget_clock]
    if checkpoint:
        trainer.restore_stream(checkpoint)
    wall, cpu, budget = time.monotonic(), time.process_time(), budget_clock()
    result = trainer.train(resume_from_checkpoint=checkpoint)
    budget_spent = budget_clock() - budget
    args, state = trainer.args, trainer.state
    if recipe.max_train_minutes and budget_spent >= recipe.max_train_minutes * 60:
        stopped_by = "time_box"
    elif state.epoch is not None and state.epoch + 1e-6 < args.num_train_epochs and not (
            args.max_steps and args.max_steps > 0 and state.global_step >= args.max_steps):
        stopped_by = "early_stopping"
    else:
        stopped_by = "epochs"
    start_step = trainer.run_folder.start_step
    return TrainRecord(runtime_s=time.monotonic() - wall, cpu_s=time.process_time() - cpu,
                       loss=run_training_loss(state, result.training_loss, start_step), epochs=state.epoch,
                       steps=state.global_step, resumed_from_step=start_step, stopped_by=stopped_by,
                       metrics=dict(result.metrics))


@dataclass
class TrainOutcome:
    metrics: dict[str, Any]  # also written to output_dir/metrics.json
    data: InteractionData
    model: GenRecForNextItemPrediction  # the best checkpoint, as saved in output_dir
    run: RunData | None = None  # what it trained and was evaluated on
    record: TrainRecord | None = None
    is_main_process: bool = True  # False on the other ranks of a distributed run


def train(recipe: Recipe, *, overwrite_output_dir: bool = False, resume_from_checkpoint: str | bool | None = None,
          data: InteractionData | None = None, item_tower: ItemTowerSetup | None = None) -> TrainOutcome:
    """Run a pre-training recipe end to end: data, Trainer with best-checkpoint selection, final evaluation, save.

    `data` (an already-loaded `InteractionData`, e.g. a ladder's log cut before its tasks' anchors) replaces the
    events of `recipe.data.source`; the rest of the data section (split, windows, batching) applies to it, and
    `metrics.json` names it (`dataset`), while `training_recipe.yaml` still records the recipe's source.
    `item_tower` hands in an item tower built once for several runs.

    The run holds the output folder's lock throughout (a second run into it is refused). `resume_from_checkpoint`
    True resumes from the newest complete checkpoint of the folder; a resume with no training left is an error.
    `overwrite_output_dir` (without resuming) first removes what an earlier run of the package wrote there.
    """
    output_dir = Path(recipe.output_dir)
    with RunFolderLock(output_dir) as lock:
        check_output_dir(output_dir, overwrite_output_dir, bool(resume_from_checkpoint))
        args = recipe.training_arguments()
        checkpoint = resolve_resume_checkpoint(output_dir, resume_from_checkpoint)
        if checkpoint:
            if final_save_covers(output_dir, checkpoint, recover=lock.enabled):  # else: the run redoes its final save
                require_training_left(checkpoint, args)
        elif overwrite_output_dir and lock.enabled:
            clear_previous_run(output_dir)
        set_seed(recipe.seed)
        run = prepare_run(recipe, data, item_tower, rank=args.process_index, world_size=args.world_size)
        if run.stream is not None:
            args = streamed_arguments(args, recipe, run)
        model = build_model(recipe, run)
        trainer = build_trainer(recipe, model, run, args)
        record = run_training(trainer, recipe, checkpoint)
        return _evaluate_and_save(recipe, trainer, run, record, output_dir)


def _evaluate_and_save(recipe: Recipe, trainer: GenRecTrainer, run: RunData, record: TrainRecord,
                       output_dir: Path) -> TrainOutcome:
    """The final evaluation of the best model (cold / warm slices on a cold-start split) and the saved run."""
    ks = tuple(recipe.evaluation.ks)
    protocol = trainer.protocol
    vocab = run.train_vocab
    cold_start = cold_ranks = None
    if run.cold is not None:  # new items join the catalog without retraining, then cold / warm slices
        validation, _ = trainer.final_evaluation(run.validation)
        vocab = extend_catalog(trainer.model, vocab, run.cold.vocab,
                               run.item_tower.store if run.item_tower is not None else None)
        batches = list(trainer.get_eval_dataloader(run.splits["test"]))
        cold_ranks = cold_warm_ranks(trainer.model, batches, protocol)  # kept per user: COLD_START_RANKS
        sliced = cold_warm_slices(*cold_ranks, cold_mask_of(trainer.model.config.vocab_size, run.cold.num_warm),
                                  ks=ks)
        test = sliced["all"]
        cold_start = {**run.cold.summary(), "cold": sliced["cold"], "warm": sliced["warm"]}
    elif run.stream is not None:  # each process ranks the test users of its own shards, once
        validation, _ = trainer.final_evaluation(None)
        test, popularity = trainer.evaluate_local(run.stream.test_batches(recipe.evaluation.test_users),
                                                  item_scores=run.item_counts(len(run.data.vocab)))
    else:
        validation, test = trainer.final_evaluation(
            sample_users(run.splits["test"], recipe.evaluation.test_users, recipe.seed))
    best = trainer.state.best_model_checkpoint
    args = trainer.args
    metrics = {
        "dataset": run.data.name,
        "task": "next-item",
        "protocol": f"{recipe.data.split}, full-catalog ranking, history excluded={recipe.evaluation.exclude_history}",
        "validation": validation,
        "test": test,
        "train": {**record.to_dict(), "best_checkpoint": Path(best).name if best else None,
                  "world_size": args.world_size, "device": str(args.device), "batching": recipe.data.batching,
                  "real_events_per_s": record.metrics.get("train_real_events_per_s"),
                  "padding_fraction": record.metrics.get("train_padding_fraction")},
        "parameters": parameter_counts(trainer.model),
        **({"cold_start": cold_start} if cold_start is not None else {}),
        "popularity_baseline": {"test": popularity if run.stream is not None else popularity_metrics(
            {**run.splits, "test": sample_users(run.splits["test"], recipe.evaluation.test_users, recipe.seed)},
            len(run.data.vocab), trainer.eval_collator, ks=ks, protocol=protocol)},
    }
    if trainer.is_world_process_zero():
        saved_vocab = vocab if run.cold is not None or run.item_tower is not None else run.data.vocab

        def write_model(folder: Path) -> None:
            trainer.save_model(str(folder))
            save_item_tokenizer(folder, saved_vocab, trainer.model.config)
            if cold_ranks is not None:  # per-user test ranks, for paired comparisons of runs on the same split
                save_cold_start_ranks(folder / COLD_START_RANKS, *cold_ranks, run.cold.num_warm)

        save_run(output_dir, metrics, recipe, "training_recipe.yaml", run.data.name, write_model=write_model,
                 training_args=args, trainer=trainer)
        if not recipe.keep_checkpoints:  # only once the final save is published: until then a resume needs them
            remove_checkpoints(output_dir)
    return TrainOutcome(metrics=metrics, data=run.data, model=trainer.model, run=run, record=record,
                        is_main_process=trainer.is_world_process_zero())


def save_run(output_dir: Path, metrics: dict[str, Any], recipe: RecipeBase, recipe_file: str, dataset_name: str, *,
             write_model: Callable[[Path], None], training_args: TrainingArguments | None = None,
             trainer: GenRecTrainer | None = None) -> None:
    """What every run writes at its end, published atomically (`run_folder.staged_save`): `write_model(folder)`'s
    files (weights, config, vocabulary, ...), metrics.json and the recipe it ran, the manifest last; then the
    model card (a card failure is logged, never raised: it must not lose a finished run). With
    `training.push_to_hub` the finished folder is then uploaded to `training.hub_model_id` through
    `trainer.push_to_hub`."""
    with staged_save(output_dir) as staging:
        write_model(staging)
        (staging / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str))
        (staging / recipe_file).write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
    args = training_args if training_args is not None else getattr(trainer, "args", None)
    try:
        write_model_card(output_dir, dataset_name=dataset_name, training_args=training_args,
                         repo_id=getattr(args, "hub_model_id", None))
    except Exception as error:  # noqa: BLE001 - reported, not raised
        logger.warning("model card not written to %s: %s", output_dir, error)
    if trainer is not None and trainer.args.push_to_hub:
        try:
            trainer.push_to_hub()
        except (RuntimeError, OSError) as error:
            raise RuntimeError(f"{error} The run is saved in {output_dir}; upload it later with `genrec-hf card "
                               f"{output_dir} --push_to_hub REPO_ID`.") from error


def parameter_counts(model: torch.nn.Module) -> dict[str, int]:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return {"backbone": count_backbone_parameters(base), "total": sum(p.numel() for p in base.parameters())}


__all__ = ["RunData", "TrainOutcome", "TrainRecord", "build_model", "build_trainer", "multi_token_targets",
           "parameter_counts", "prepare_run", "pretraining_protocol", "run_training", "save_run", "train"]
