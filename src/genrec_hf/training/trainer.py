"""The one ranking-aware `Trainer` of the package, used by pre-training and fine-tuning alike.

`GenRecTrainer` replaces Trainer's logits-gathering evaluation loop with the package's ranking path: per user, the
rank of each held-out target among the whole catalog (chunked, never batch × catalog), gathered across processes
without duplicates, turned into MRR / HR@K / NDCG@K / recall@K. What is ranked (the next item, a task's target set,
an availability window) is data handed to it as a `RankingProtocol` and an eval collator, not another loop.
Checkpoint selection and early stopping use those metrics.

It also keeps a run folder safe (see docs/failure_modes.md): checkpoints are written to a staging folder and renamed
into place once complete, a non-finite training loss stops the run naming the step, non-finite weights are never
saved, and a resumed state's best checkpoint is read from this run's folder. The helpers below (the run-folder lock,
`check_output_dir`, `clear_previous_run`, `resolve_resume_checkpoint`, `run_training_loss`) are shared by
pre-training and fine-tuning.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from torch.utils.data import DataLoader
from transformers import (EarlyStoppingCallback, Trainer, TrainerCallback, TrainerControl, TrainerState,
                          TrainingArguments)
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, EvalLoopOutput, rotate_checkpoints

from ..evaluation import DEFAULT_KS, LEAVE_ONE_OUT, RankingProtocol, evaluate_model
from ..integrity import MANIFEST_FILE, WeightsIntegrityError, verify_manifest, write_manifest
from .throughput import ThroughputCallback

logger = logging.getLogger(__name__)

RUN_LOCK_FILE = ".genrec-hf.lock"  # held by the run writing the folder (pid, host, start time)
STAGING_DIR = ".checkpoint-staging"  # checkpoints being written; renamed to checkpoint-N once complete
_PROBE_PREFIX = ".genrec-hf-write-test-"
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors",
                 "pytorch_model.bin", "pytorch_model.bin.index.json", "adapter_model.bin")
_OPTIMIZER_FILES = ("optimizer.pt", "optimizer.bin")


class NonFiniteError(RuntimeError):
    """A non-finite training loss or weight: the run stops and nothing non-finite is saved."""


class RunFolderLockedError(RuntimeError):
    """Another live run holds the output folder's lock."""


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
        super().__init__(*args, **kwargs)
        self.run_folder = RunFolderCallback()
        self.add_callback(self.run_folder)
        self.throughput = ThroughputCallback()
        self.add_callback(self.throughput)
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

    def final_evaluation(self, test_dataset: Dataset) -> tuple[dict[str, float], dict[str, float]]:
        """(validation, test) metrics of the trained (best) model, without prefixes, for metrics.json.

        Refuses non-finite weights first; early stopping is removed, since these evaluations are reports, not
        stopping signals.
        """
        require_finite_parameters(self.model, "final model")
        self.remove_callback(EarlyStoppingCallback)
        validation = self.evaluate(metric_key_prefix="validation")
        test = self.evaluate(test_dataset, metric_key_prefix="test")
        return strip_prefix(validation, "validation_"), strip_prefix(test, "test_")

    def training_step(self, model: torch.nn.Module, inputs: dict[str, Any],
                      num_items_in_batch: torch.Tensor | int | None = None) -> torch.Tensor:
        """Trainer's step, stopping at the first non-finite loss (Trainer would average it away and train on)."""
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
        if self.args.should_save:
            self.state.save_to_json(os.path.join(staged, TRAINER_STATE_NAME))
            write_manifest(staged)  # so a resume can tell a changed or corrupted checkpoint from a good one
        self.accelerator.wait_for_everyone()  # every process has written its RNG state
        if self.args.should_save:
            _sync_tree(staged)
            _replace_dir(staged, final)
            try:
                os.rmdir(staging_root)
            except OSError:
                pass
            rotate_checkpoints(output_dir=run_dir, save_total_limit=self.args.save_total_limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)
        self.accelerator.wait_for_everyone()


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
            if recorded is None or not _same_path(recorded, local):
                logger.warning("the resumed state's best checkpoint %s is read from this run folder: %s",
                               recorded or name, local)
            state.best_model_checkpoint = local
        else:
            logger.warning("the resumed state's best checkpoint %s is not in this run folder %s: best-model "
                           "selection restarts from this run's evaluations", recorded or name, args.output_dir)
            state.best_model_checkpoint = None
            state.best_metric = None
            state.best_global_step = None


def _same_path(a: str | Path, b: str | Path) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def _sync_tree(folder: str) -> None:
    """fsync a folder's files, so the rename that publishes it never points at unwritten data."""
    for entry in os.scandir(folder):
        if entry.is_file():
            fd = os.open(entry.path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _replace_dir(source: str, target: str) -> None:
    """Move the folder `source` to `target`, replacing a `target` already there (a re-saved step)."""
    if os.path.isdir(target):
        old = f"{source}.replaced"
        os.replace(target, old)
        os.replace(source, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(source, target)


def is_main_rank() -> bool:
    """Whether this is global rank 0, the process that writes the run folder: from the launcher's `RANK` (torchrun,
    accelerate launch, deepspeed), else from accelerate's state once it has started, else True."""
    for variable in ("RANK", "LOCAL_RANK"):
        if os.environ.get(variable, "").strip().isdigit():
            return int(os.environ[variable]) == 0
    from accelerate import PartialState

    if PartialState._shared_state != {}:
        return PartialState().is_main_process
    return True


def _make_writable_folder(output_dir: Path) -> None:
    """Create `output_dir` and write a probe file in it; any OSError becomes one clear line."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=_PROBE_PREFIX, dir=output_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        reason = error.strerror or str(error)
        where = f" ({error.filename})" if error.filename and not _same_path(error.filename, output_dir) else ""
        raise OSError(f"cannot create or write the output folder {output_dir}: {reason}{where}; choose another "
                      "--output_dir.") from error


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


class RunFolderLock:
    """An exclusive lock on a run folder for the length of a run: a second run into the same folder is refused.

    The lock is the file `RUN_LOCK_FILE` created atomically (O_CREAT | O_EXCL) with the holder's pid, host and
    start time, and removed when the run ends, however it ends. A lock whose pid is dead on this host is stale
    (a killed run) and is taken over with a warning. Only global rank 0 takes it (`enabled`), as only it writes.
    """

    def __init__(self, output_dir: str | Path, enabled: bool | None = None) -> None:
        self.output_dir = Path(output_dir)
        self.path = self.output_dir / RUN_LOCK_FILE
        self.enabled = is_main_rank() if enabled is None else enabled
        self.held = False

    def __enter__(self) -> RunFolderLock:
        if not self.enabled:
            return self
        _make_writable_folder(self.output_dir)
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "command": " ".join(sys.argv)}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self._remove_if_stale():
                    continue
                raise RunFolderLockedError(self._held_message()) from None
            with os.fdopen(fd, "w") as handle:
                json.dump(holder, handle)
            self.held = True
            return self
        raise RunFolderLockedError(self._held_message())

    def __exit__(self, *exc: Any) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def _holder(self) -> dict[str, Any] | None:
        try:
            holder = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return holder if isinstance(holder, dict) else None

    def _remove_if_stale(self) -> bool:
        holder = self._holder()
        pid = holder.get("pid") if holder else None
        if not isinstance(pid, int) or pid <= 0 or holder.get("host") != socket.gethostname() or _pid_alive(pid):
            return False
        logger.warning("removing the stale lock %s of run pid %s (started %s), which is no longer running",
                       self.path, holder.get("pid"), holder.get("started"))
        self.path.unlink(missing_ok=True)
        return True

    def _held_message(self) -> str:
        holder = self._holder()
        who = (f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}" if holder
               else "an unknown process")
        return (f"output folder {self.output_dir} is in use by another run ({who}); wait for it to finish or choose "
                f"another --output_dir (if no run is writing there, delete {self.path}).")


def check_output_dir(output_dir: Path, overwrite: bool, resuming: bool) -> None:
    """Refuse to write into a non-empty folder unless asked (nothing a user saved is lost silently), and fail
    early, before any data is loaded, when the folder cannot be created or written."""
    output_dir = Path(output_dir)
    _make_writable_folder(output_dir)
    ours = {RUN_LOCK_FILE}
    entries = [p for p in output_dir.iterdir() if p.name not in ours and not p.name.startswith(_PROBE_PREFIX)]
    if entries and not (overwrite or resuming):
        raise FileExistsError(f"Output folder {output_dir} exists and is not empty; pass --overwrite_output_dir to "
                              "write into it, --resume_from_checkpoint to continue a run, or choose another "
                              "--output_dir.")


def _package_file_names() -> set[str]:
    """The remote-code `.py` files `save_pretrained` copies next to config.json."""
    from ..models import genrec

    return {p.name for p in Path(genrec.__file__).parent.glob("*.py") if p.name != "__init__.py"}


def _is_package_card(path: Path) -> bool:
    try:
        head = path.read_text(errors="replace")[:4000]
    except OSError:
        return False
    return "generated by genrec_hf" in head or "library_name: genrec_hf" in head or "library_name: peft" in head


def clear_previous_run(output_dir: str | Path) -> list[str]:
    """Remove what an earlier run of the package wrote into `output_dir` (for `--overwrite_output_dir`), keep
    every other file, and return the removed names (also logged).

    Removed: checkpoint-* and the staging folder, model / adapter weights and configs, item_vocab.json,
    metrics.json, cold_start_ranks.json, the recipes, training_args.bin, eval_results_*.json, a README.md model card
    written by the package, and the remote-code `.py` files beside config.json.
    """
    from .cold_start import COLD_START_RANKS

    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    files = {"model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json",
             "config.json", "generation_config.json", "item_vocab.json", "metrics.json", "training_recipe.yaml",
             "finetune_recipe.yaml", "training_args.bin", "adapter_model.safetensors", "adapter_model.bin",
             "adapter_config.json", "genrec_base.json", "genrec_weights.json", COLD_START_RANKS}
    code = _package_file_names() if (output_dir / "config.json").is_file() else set()
    removed = []
    for path in sorted(output_dir.iterdir()):
        name = path.name
        if path.is_dir() and not path.is_symlink():
            if name == STAGING_DIR or (name.startswith(f"{PREFIX_CHECKPOINT_DIR}-")
                                       and name[len(PREFIX_CHECKPOINT_DIR) + 1:].isdigit()):
                shutil.rmtree(path)
                removed.append(name)
            continue
        if (name in files or name in code or (name.startswith("eval_results_") and name.endswith(".json"))
                or (name.startswith("model-") and name.endswith(".safetensors"))
                or (name == "README.md" and _is_package_card(path))):
            path.unlink()
            removed.append(name)
    if removed:
        logger.info("--overwrite_output_dir: removed the previous run's %s from %s (other files kept)",
                    ", ".join(removed), output_dir)
    return removed


def checkpoint_problem(checkpoint: str | Path) -> str | None:
    """Why `checkpoint` cannot be resumed from (a missing or unreadable file), or None when it is complete."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_dir():
        return "not a folder"
    try:
        json.loads((checkpoint / TRAINER_STATE_NAME).read_text())
    except FileNotFoundError:
        return f"no {TRAINER_STATE_NAME}"
    except (OSError, ValueError):
        return f"unreadable {TRAINER_STATE_NAME}"
    weights = [checkpoint / n for n in _WEIGHT_FILES if (checkpoint / n).is_file()]
    if not weights:
        return "no model weights"
    for path in weights:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            try:
                with safe_open(str(path), framework="pt"):
                    pass
            except Exception:  # truncated: safetensors checks the header against the file size
                return f"truncated {path.name}"
    try:
        verify_manifest(checkpoint)
    except WeightsIntegrityError:
        return f"weights differ from {MANIFEST_FILE}"
    if not any((checkpoint / n).is_file() for n in _OPTIMIZER_FILES):
        return "no optimizer state"
    return None


def _checkpoint_step(path: Path) -> int | None:
    suffix = path.name[len(PREFIX_CHECKPOINT_DIR) + 1:]
    return int(suffix) if path.name.startswith(f"{PREFIX_CHECKPOINT_DIR}-") and suffix.isdigit() else None


def resolve_resume_checkpoint(output_dir: str | Path, resume: str | bool | None) -> str | None:
    """The checkpoint to resume from: `True` = the newest complete `checkpoint-N` of `output_dir` (partial ones,
    from an interrupted save, are skipped and logged), a path = that checkpoint, checked to be complete."""
    if not resume:
        return None
    output_dir = Path(output_dir)
    if resume is not True:
        problem = checkpoint_problem(resume)
        if problem:
            raise ValueError(f"cannot resume from checkpoint {resume}: {problem} (an interrupted save?); pass an "
                             "earlier checkpoint, or --resume_from_checkpoint alone for the newest complete one.")
        return str(resume)
    candidates = sorted(((step, p) for p in (output_dir.iterdir() if output_dir.is_dir() else [])
                         if p.is_dir() and (step := _checkpoint_step(p)) is not None), reverse=True)
    staged = output_dir / STAGING_DIR
    if staged.is_dir() and any(staged.iterdir()):
        logger.warning("skipping the interrupted checkpoint save(s) in %s: %s", staged,
                       ", ".join(sorted(p.name for p in staged.iterdir())))
    skipped = []
    for _, path in candidates:
        problem = checkpoint_problem(path)
        if problem is None:
            if skipped:
                logger.warning("resuming from %s; skipped the partial checkpoint(s) %s", path.name, "; ".join(skipped))
            return str(path)
        skipped.append(f"{path.name} ({problem})")
    raise ValueError(f"no complete checkpoint to resume from in {output_dir}"
                     + (f" (partial: {'; '.join(skipped)})" if skipped else "")
                     + "; start the run without --resume_from_checkpoint.")


def require_training_left(checkpoint: str | Path, args: TrainingArguments) -> None:
    """Refuse a resume that would train nothing (the checkpoint already reached the run's epochs or steps),
    which Trainer would otherwise accept and report a training loss of 0.0 for."""
    state = json.loads((Path(checkpoint) / TRAINER_STATE_NAME).read_text())
    epoch, step = float(state.get("epoch") or 0.0), int(state.get("global_step") or 0)
    if args.max_steps and args.max_steps > 0:
        if step >= args.max_steps:
            raise ValueError(f"checkpoint {checkpoint} already trained {step} steps and training.max_steps="
                             f"{args.max_steps}: resuming would train nothing; raise training.max_steps to continue.")
    elif epoch >= args.num_train_epochs - 1e-9:
        raise ValueError(f"checkpoint {checkpoint} already trained {epoch:g} epochs and training.num_train_epochs="
                         f"{args.num_train_epochs:g}: resuming would train nothing; raise "
                         "training.num_train_epochs to continue.")


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
