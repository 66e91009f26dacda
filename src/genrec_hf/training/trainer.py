"""The one ranking-aware `Trainer` of the package, used by pre-training and fine-tuning alike.

`GenRecTrainer` replaces Trainer's logits-gathering evaluation loop with the package's ranking path: per user, the
rank of each held-out target among the whole catalog (chunked, never batch × catalog), gathered across processes
without duplicates, turned into MRR / HR@K / NDCG@K / recall@K. What is ranked (the next item, a task's target set,
an availability window) is data handed to it as a `RankingProtocol` and an eval collator, not another loop.
Checkpoint selection and early stopping use those metrics.

It also keeps its checkpoints safe (see docs/failure_modes.md): they are written to a staging folder and renamed
into place once complete, a non-finite training loss stops the run naming the step, non-finite weights are never
saved, and a resumed state's best checkpoint is read from this run's folder. The output folder itself (lock,
overwrite, resume) is `run_folder`'s.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import shutil
import sys
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from torch.utils.data import DataLoader
from transformers import (EarlyStoppingCallback, Trainer, TrainerCallback, TrainerControl, TrainerState,
                          TrainingArguments)
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, EvalLoopOutput, rotate_checkpoints

from ..cards import upload_to_hub
from ..data.streaming import TrainingWindowStream
from ..evaluation import DEFAULT_KS, LEAVE_ONE_OUT, RankingProtocol, evaluate_model
from ..evaluation.baselines import static_ranks
from ..evaluation.metrics import metrics_from_ranks, pad_ranks
from ..evaluation.protocols import rank_batches
from ..integrity import write_manifest
from .run_folder import STAGING_DIR, publish_dir, same_path, sync_tree
from .throughput import ThroughputCallback

logger = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    """A non-finite training loss or weight: the run stops and nothing non-finite is saved."""


BUDGET_CLOCKS = {"wall": time.monotonic, "cpu": time.process_time}


class TimeBudgetCallback(TrainerCallback):
    """Stop training once `max_minutes` are spent (after an evaluation, so the best model is kept).

    `clock="wall"` counts elapsed time; `clock="cpu"` counts this process's CPU time (all its threads), so two runs
    given the same budget get the same compute even when other jobs share the cores.
    """

    def __init__(self, max_minutes: float, clock: str = "wall") -> None:
        if clock not in BUDGET_CLOCKS:
            raise ValueError(f"budget_clock={clock!r}; expected one of {sorted(BUDGET_CLOCKS)}.")
        self.max_seconds = max_minutes * 60
        self.clock = clock
        self.now = BUDGET_CLOCKS[clock]
        self.start = self.now()

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        self.start = self.now()

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        if self.now() - self.start > self.max_seconds:
            logger.info("%s-time budget of %.1f min spent at step %d: evaluating and stopping",
                        self.clock, self.max_seconds / 60, state.global_step)
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
        training_args = kwargs.get("args", args[1] if len(args) > 1 else None)
        # the event-feature inputs every step must carry when DDP is told no parameter sits idle (else: empty)
        self.required_event_inputs: tuple[str, ...] = ()
        if training_args is not None and training_args.ddp_find_unused_parameters is None:
            # Trainer's default (True) makes DDP search every step's graph and warn that it found nothing
            model = kwargs["model"] if "model" in kwargs else args[0]
            training_args.ddp_find_unused_parameters = may_leave_parameters_idle(model)
            if not training_args.ddp_find_unused_parameters:
                self.required_event_inputs = event_feature_inputs(model)
        super().__init__(*args, **kwargs)
        self.run_folder = RunFolderCallback()
        self.add_callback(self.run_folder)
        self.throughput = ThroughputCallback()
        self.add_callback(self.throughput)
        self.eval_collator = eval_collator
        self.protocol = protocol
        self.ks = tuple(ks)

    @classmethod
    def from_recipe(cls, recipe: Any, model: torch.nn.Module, *, args: TrainingArguments | None = None,
                    callbacks: Sequence[TrainerCallback] = (), **kwargs: Any) -> GenRecTrainer:
        """A trainer with a recipe's `TrainingArguments` (unless `args` is given), metric cut-offs and stopping rules
        (early stopping on the validation metric, the time box on the recipe's budget clock); `kwargs` are
        datasets, collators and the protocol."""
        args = args if args is not None else recipe.training_arguments()
        stops = stopping_callbacks(args, recipe.evaluation.early_stopping_patience, recipe.max_train_minutes,
                                   recipe.budget_clock)
        return cls(model=model, args=args, ks=tuple(recipe.evaluation.ks), callbacks=[*callbacks, *stops], **kwargs)

    def get_train_dataloader(self) -> DataLoader:
        """Trainer's loader, except for a stream of this process's own shards (`TrainingWindowStream`): accelerate
        would hand every process the whole stream and keep 1/n of its batches, so the stream gets a plain loader
        whose collator notes the stream position after every batch (what a checkpoint saves for an exact resume)."""
        if not isinstance(self.train_dataset, TrainingWindowStream):
            return super().get_train_dataloader()
        self.stream_positions = StreamPositions(self.train_dataset, self.data_collator)
        return DataLoader(self.train_dataset, batch_size=self._train_batch_size, collate_fn=self.stream_positions,
                          num_workers=0, pin_memory=self.args.dataloader_pin_memory)

    def restore_stream(self, checkpoint: str | Path) -> bool:
        """Before a resume: put the training stream back where it stood at `checkpoint` (True), or leave it (False:
        no stream, or a checkpoint without a stream position, which Trainer's batch skipping then handles)."""
        if not isinstance(self.train_dataset, TrainingWindowStream):
            return False
        path = Path(checkpoint) / stream_state_file(self.args.process_index)
        if not path.is_file():
            logger.warning("checkpoint %s has no %s: the stream restarts and Trainer skips the trained batches",
                           checkpoint, path.name)
            return False
        self.train_dataset.load_state_dict(json.loads(path.read_text()))
        self._stream_restored = True
        return True

    def get_resumed_dataloader(self, dataloader: DataLoader, num_batches: int) -> DataLoader:
        if getattr(self, "_stream_restored", False):
            return dataloader  # the stream itself continues after the last trained batch: nothing to skip
        return super().get_resumed_dataloader(dataloader, num_batches)

    def evaluate_local(self, batches: Iterable[Dataset], item_scores: torch.Tensor | None = None
                       ) -> tuple[dict[str, float], dict[str, float] | None]:
        """Metrics of the users each process holds (its own shards' rows, in-memory `batches` of them), gathered
        over the processes: (model metrics, metrics of the static `item_scores` baseline or None). Unlike
        `evaluate`, nothing is split between processes: each ranks its own users once."""
        model = self.accelerator.unwrap_model(self.model)
        ranks, baseline = [], []
        for rows in batches:
            loader = DataLoader(rows, batch_size=self.args.eval_batch_size, collate_fn=self.eval_collator)
            ranks.append(rank_batches(model, loader, self.protocol))
            if item_scores is not None:
                baseline.append(static_ranks(item_scores, loader, self.protocol))
        metrics = metrics_from_ranks(self._gather_rows(pad_ranks(ranks)), self.ks)
        if item_scores is None:
            return metrics, None
        return metrics, metrics_from_ranks(self._gather_rows(pad_ranks(baseline)), self.ks)

    def _gather_rows(self, ranks: torch.Tensor) -> torch.Tensor:
        """Every process's (U_p, T) ranks stacked: T and U padded to the widest process for the gather, the padding
        rows dropped after it."""
        if self.args.world_size == 1:
            return ranks
        device = self.args.device
        ranks = self.accelerator.pad_across_processes(ranks.to(device), dim=1)
        counts = self.accelerator.gather(torch.tensor([ranks.shape[0]], device=device)).cpu()
        padded = self.accelerator.pad_across_processes(ranks, dim=0)
        gathered = self.accelerator.gather(padded).cpu()
        rows = int(padded.shape[0])
        return torch.cat([gathered[p * rows:p * rows + int(n)] for p, n in enumerate(counts)])

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
        # the ranking bar nests under Trainer's: in a log file (no terminal) each redraw leaves cursor-up codes
        progress = not self.args.disable_tqdm and self.is_world_process_zero() and sys.stderr.isatty()
        metrics = evaluate_model(model, dataloader, self.protocol, ks=self.ks, gather=self._gather_ranks,
                                 progress=progress)
        num_users = int(metrics["num_users"])
        metrics = {f"{metric_key_prefix}_{k}": v for k, v in metrics.items()}
        return EvalLoopOutput(predictions=None, label_ids=None, metrics=metrics, num_samples=num_users)

    def final_evaluation(self, test_dataset: Dataset | None) -> tuple[dict[str, float], dict[str, float] | None]:
        """(validation, test) metrics of the trained (best) model, without prefixes, for metrics.json (test None
        when `test_dataset` is None: a streamed test set is ranked by `evaluate_local`).

        Refuses non-finite weights first; early stopping is removed, since these evaluations are reports, not
        stopping signals.
        """
        require_finite_parameters(self.model, "final model")
        self.remove_callback(EarlyStoppingCallback)
        validation = self.evaluate(metric_key_prefix="validation")
        if test_dataset is None:
            return strip_prefix(validation, "validation_"), None
        test = self.evaluate(test_dataset, metric_key_prefix="test")
        return strip_prefix(validation, "validation_"), strip_prefix(test, "test_")

    def training_step(self, model: torch.nn.Module, inputs: dict[str, Any],
                      num_items_in_batch: torch.Tensor | int | None = None) -> torch.Tensor:
        """Trainer's step, stopping at the first non-finite loss (Trainer would average it away and train on)."""
        if self.args.world_size > 1:
            require_event_inputs(inputs, self.required_event_inputs)
        self.throughput.record(inputs)
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not bool(torch.isfinite(loss).all()):
            raise NonFiniteError(
                f"training loss is {loss.item()} at step {self.state.global_step + 1} (epoch "
                f"{self.state.epoch or 0:.2f}); stopping without saving it. Lower training.learning_rate, set "
                "training.max_grad_norm, or check the data; checkpoints saved so far are kept.")
        return loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Trainer's log; training logs also get real events/s and the padding fraction (`ThroughputCallback`)."""
        if "loss" in logs or "train_runtime" in logs:
            logs.update(self.throughput.log_entries(self.accelerator.gather, final="train_runtime" in logs))
        super().log(logs, start_time)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        """Trainer's save without its push: `push_to_hub` uploads the run folder once it is complete."""
        super().save_model(output_dir, _internal_call=True)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """No push while training (whatever `hub_strategy` says): a folder without its tokenizer, vocabulary and card
        does not load from the Hub, and checkpoint pushes would upload optimizer state. The run pipeline pushes the
        finished run (`push_to_hub`)."""

    def push_to_hub(self, commit_message: str | None = "End of training", blocking: bool = True,
                    token: str | None = None, revision: str | None = None, private: bool | None = None,
                    **kwargs: Any) -> Any:
        """Upload the finished run folder to `args.hub_model_id` (the repo Trainer created): the model files, the
        package's card, the item tokenizer and vocabulary only (`cards.HUB_ALLOW_PATTERNS`), never checkpoints,
        optimizer state, lock or staging files. Trainer's own version would replace the card with its generic one
        and upload every file but `checkpoint-*`. Main process only; `kwargs` (Trainer's card options) are unused."""
        if not self.is_world_process_zero():
            return None
        token = token if token is not None else self.args.hub_token
        if getattr(self, "hub_model_id", None) is None:
            self.init_hf_repo(token=token, private=private)
        self._finish_current_push()
        return upload_to_hub(self.args.output_dir, self.hub_model_id, token=token, create_repo=False,
                             revision=revision or self.args.hub_revision,
                             commit_message=commit_message or "End of training", run_as_future=not blocking)

    def _get_output_dir(self, trial: Any) -> str:
        staging = getattr(self, "_staging_root", None)
        return staging if staging is not None else super()._get_output_dir(trial)

    def _save_checkpoint(self, model: torch.nn.Module, trial: Any) -> None:
        """Trainer's checkpoint, written under `STAGING_DIR` and renamed to `checkpoint-N` once every file (and
        every process's RNG state) is on disk, so an interrupted or disk-full save never leaves a `checkpoint-N`
        that looks complete. Non-finite weights are refused."""
        require_finite_parameters(self.model, f"checkpoint at step {self.state.global_step}")
        run_dir = super()._get_output_dir(trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staging_root = os.path.join(run_dir, STAGING_DIR)
        staged, final = os.path.join(staging_root, name), os.path.join(run_dir, name)
        if self.args.should_save and os.path.isdir(staged):
            shutil.rmtree(staged)  # left by an interrupted save
        self.accelerator.wait_for_everyone()
        self._staging_root = staging_root
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_root = None
        best_step = self.state.best_global_step
        if best_step:  # Trainer looked for the best checkpoint in the staging folder: point at the final one
            best = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{best_step}")
            if best_step == self.state.global_step or os.path.isdir(best):
                self.state.best_model_checkpoint = best
        positions = getattr(self, "stream_positions", None)
        if positions is not None:  # every process: where its stream stands after the last trained batch
            trained = (self.state.global_step - self.run_folder.start_step) * self.args.gradient_accumulation_steps
            os.makedirs(staged, exist_ok=True)
            Path(staged, stream_state_file(self.args.process_index)).write_text(
                json.dumps(positions.state_after(trained)))
        if self.args.should_save:
            self.state.save_to_json(os.path.join(staged, TRAINER_STATE_NAME))
            write_manifest(staged)  # so a resume can tell a changed or corrupted checkpoint from a good one
        self.accelerator.wait_for_everyone()  # every process has written its RNG state (and stream position)
        if self.args.should_save:
            sync_tree(staged)
            publish_dir(staged, final)
            try:
                os.rmdir(staging_root)
            except OSError:
                pass
            rotate_checkpoints(output_dir=run_dir, save_total_limit=self.args.save_total_limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)
        self.accelerator.wait_for_everyone()


def stream_state_file(process_index: int) -> str:
    return f"stream_state-{process_index}.json"


class StreamPositions:
    """A training collator that also notes the stream's position after each batch it collates.

    The loader collates batches ahead of the step that trains them (accelerate looks one batch ahead), so the
    position after the n-th *trained* batch is looked up by n (`state_after`), not read at save time."""

    def __init__(self, stream: TrainingWindowStream, collator: Callable[[list[dict[str, Any]]], dict[str, Any]],
                 keep: int = 256) -> None:
        self.stream, self.collator, self.keep = stream, collator, keep
        self.batches = 0
        self.states: OrderedDict[int, dict[str, Any]] = OrderedDict({0: copy.deepcopy(stream.state_dict())})

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collator(examples)
        self.batches += 1
        self.states[self.batches] = copy.deepcopy(self.stream.state_dict())
        while len(self.states) > self.keep:
            self.states.popitem(last=False)
        return batch

    def state_after(self, batches: int) -> dict[str, Any]:
        if batches not in self.states:
            raise RuntimeError(f"the stream position after batch {batches} is no longer known (positions of batches "
                               f"{min(self.states)}..{max(self.states)} are); checkpoint more often than every "
                               f"{self.keep} batches.")
        return self.states[batches]


class RunFolderCallback(TrainerCallback):
    """On resume, read the state's best checkpoint from this run folder, never from the folder it was copied from.

    `trainer_state.json` records `best_model_checkpoint` as a path; in a copied or moved run folder it still names
    the original folder, whose weights would then be loaded at the end and saved as this run's model. The
    same-named checkpoint of this folder is used instead; without one, best-model selection restarts.
    `start_step` is the global step training (re)started from, as Trainer restored it.
    """

    start_step: int = 0

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any):
        self.start_step = state.global_step
        recorded = state.best_model_checkpoint
        if recorded:
            name = Path(recorded).name
        elif state.best_global_step:
            name = f"{PREFIX_CHECKPOINT_DIR}-{state.best_global_step}"
        else:
            return
        local = os.path.join(args.output_dir, name)
        if os.path.isdir(local):
            if recorded is None or not same_path(recorded, local):
                logger.warning("the resumed state's best checkpoint %s is read from this run folder: %s",
                               recorded or name, local)
            state.best_model_checkpoint = local
        else:
            logger.warning("the resumed state's best checkpoint %s is not in this run folder %s: best-model "
                           "selection restarts from this run's evaluations", recorded or name, args.output_dir)
            state.best_model_checkpoint = None
            state.best_metric = None
            state.best_global_step = None


def may_leave_parameters_idle(model: torch.nn.Module) -> bool:
    """Whether a step can leave trainable parameters without a gradient, which DDP must then search for
    (`ddp_find_unused_parameters`): only with an item tower fusing by semantics alone, whose ID tables and OOV vectors
    are then unused. Every other part takes part in every step (an event feature the config turns off has no table,
    and the collators always give timestamps and action ids)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    tower = getattr(base, "item_tower", None)
    return tower is not None and tower.tower_config.fusion == "semantic"


def event_feature_inputs(model: torch.nn.Module) -> tuple[str, ...]:
    """The batch keys the model's event-feature tables read (`timestamps` for time gaps, `action_ids` for action
    types): a batch without one leaves that table idle."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    embeddings = getattr(getattr(base, "model", base), "embeddings", None)
    tables = {"timestamps": "time_gap_embeddings", "action_ids": "action_embeddings"}
    return tuple(key for key, table in tables.items() if getattr(embeddings, table, None) is not None)


def require_event_inputs(inputs: dict[str, Any], required: Sequence[str]) -> None:
    """Refuse a data-parallel batch that leaves an event-feature table idle while DDP was told none is: DDP would
    skip averaging that bucket's gradients on the last step and fail on the next one."""
    missing = [key for key in required if inputs.get(key) is None]
    if missing:
        raise ValueError(
            f"the training batch has no {', '.join(repr(k) for k in missing)} although the model has a table for "
            f"{'them' if len(missing) > 1 else 'it'} (config num_time_buckets / num_action_types): under DDP every "
            "parameter must take part in every step. Give the collator those fields, build the model with "
            "num_time_buckets=0 / num_action_types=0, or set TrainingArguments(ddp_find_unused_parameters=True).")


def run_training_loss(state: TrainerState, session_loss: float, session_start_step: int) -> float | None:
    """The mean training loss over the whole run's optimizer steps, a resumed run's earlier steps included.

    Each `loss` entry of `state.log_history` is the mean over the steps since the previous entry, so it is weighted
    by that step count. Steps after the last entry are recovered from Trainer's `session_loss` (the mean over this
    session's `global_step - session_start_step` steps). Steps trained before the resumed checkpoint but after its
    last log entry have no recorded loss and are left out. None when no step has a known loss.
    """
    total, known, last = 0.0, 0, 0
    logged_this_session = 0.0
    for entry in state.log_history:
        step = entry.get("step", 0)
        if "loss" not in entry or step <= last:
            continue
        start = max(last, session_start_step) if step > session_start_step else last
        total += entry["loss"] * (step - start)
        known += step - start
        if step > session_start_step:
            logged_this_session += entry["loss"] * (step - start)
        last = step
    tail_start = max(last, session_start_step)
    if state.global_step > tail_start:
        total += session_loss * (state.global_step - session_start_step) - logged_this_session
        known += state.global_step - tail_start
    return total / known if known else None


def stopping_callbacks(args: TrainingArguments, early_stopping_patience: int | None,
                       max_train_minutes: float | None, budget_clock: str = "wall") -> list[TrainerCallback]:
    """Early stopping on the validation metric (when evaluating) and the time budget, as a recipe asks."""
    callbacks: list[TrainerCallback] = []
    if early_stopping_patience and args.eval_strategy != "no":
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=early_stopping_patience))
    if max_train_minutes:
        callbacks.append(TimeBudgetCallback(max_train_minutes, budget_clock))
    return callbacks


def require_finite_parameters(model: torch.nn.Module, what: str) -> None:
    """Raise `NonFiniteError` naming the first parameter with a NaN or infinite value, or buffer with a NaN (a
    buffer may hold -inf by design, e.g. the log-frequency of an item never seen)."""
    tensors = [(name, p, torch.isfinite) for name, p in model.named_parameters()]
    tensors += [(name, b, lambda t: ~torch.isnan(t)) for name, b in model.named_buffers()]
    for name, tensor, ok in tensors:
        if tensor.is_floating_point() and not bool(ok(tensor.detach()).all()):
            raise NonFiniteError(f"refusing to save the {what}: tensor {name} has non-finite values (NaN or inf); "
                                 "the training diverged, lower training.learning_rate.")


def strip_prefix(metrics: dict[str, Any], prefix: str) -> dict[str, float]:
    """The numeric `prefix`-ed entries of Trainer metrics, without the prefix (NaN entries dropped)."""
    return {k[len(prefix):]: v for k, v in metrics.items()
            if k.startswith(prefix) and isinstance(v, (int, float)) and not math.isnan(v)}
