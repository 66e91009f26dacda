"""Fine-tune a pre-trained GenRec base on a downstream task: LoRA adapter, full fine-tune, or from scratch.

    genrec-hf finetune BASE_DIR recipes/finetune/short_horizon_lora.yaml [--mode lora|full|from_scratch]
        [--output_dir DIR] [--overwrite_output_dir] [--section.key value ...]

A finetune recipe (YAML, unknown keys are errors):

    output_dir:          where the adapter (lora) or the model (full, from_scratch) + metrics.json + card go
    mode:                lora | full | from_scratch
    seed:                seeds adapter/model init, data order and negative sampling
    max_train_minutes:   optional wall-time budget (stops after the current step, best checkpoint kept)
    keep_checkpoints:    keep Trainer's checkpoint-* folders (default false: the output holds only the result)
    task:       {name: a genrec_hf.data.tasks.TASKS name, params: {task keyword arguments}}
    data:       {source, format, column_map, min_user_events, k_core, max_length}
    lora:       {r, alpha, dropout, target_modules, layers, train_head, item_tower}   (used by mode: lora)
    training:   any transformers.TrainingArguments field (on top of DEFAULT_FINETUNE_ARGUMENTS)
    evaluation: {ks, metric_for_best_model, early_stopping_patience, zero_shot}

Every mode trains through `GenRecTrainer` (the package's one `transformers.Trainer`, pre-training uses it too) with the
task's collator and `RankingProtocol`, so the three modes differ only in which parameters are trained and what is
saved.
"""

from __future__ import annotations

import logging
import resource
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from transformers import set_seed

from ..adapters import attach_adapter, check_lora_layers, save_adapter, trainable_parameters
from ..data import ItemVocab, remap_to_vocab, save_item_tokenizer
from ..data.collators import TaskCollator, label_windows
from ..data.tasks import TaskData, build_task, require_eligible_users
from ..evaluation import evaluate_model
from ..integrity import load_verified_model
from ..models.genrec import GenRecForNextItemPrediction
from .pipeline import run_training, sample_users, save_run
from .recipes import FINETUNE_MODES, FinetuneRecipe, load_recipe
from .run_folder import RunFolderLock, check_output_dir, clear_previous_run, remove_checkpoints
from .trainer import GenRecTrainer

logger = logging.getLogger(__name__)


def _dir_bytes(path: Path, names: tuple[str, ...]) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file() and p.name in names)


@dataclass
class FinetuneOutcome:
    metrics: dict[str, Any]  # also written to output_dir/metrics.json
    model: torch.nn.Module  # PeftModel (lora) or GenRecForNextItemPrediction
    task: TaskData


def finetune(recipe: FinetuneRecipe, base_dir: str | Path, *, overwrite_output_dir: bool = False,
             task: TaskData | None = None, data_name: str | None = None) -> FinetuneOutcome:
    """Train a task on top of the base in `base_dir` as the recipe's `mode` says; save the result and metrics.

    The run holds the output folder's lock throughout; `overwrite_output_dir` first removes what an earlier run of
    the package wrote there (other files are kept). `task` (with `data_name`, the data set's name for the metrics
    and card) replaces loading `recipe.data` and building `recipe.task`: a caller that fine-tunes many bases on one
    task (the scaling ladder) builds it once, already in the bases' item vocabulary, and may thin its training rows.
    """
    base_dir = Path(base_dir)
    output_dir = Path(recipe.output_dir)
    if not (base_dir / "config.json").is_file():
        raise FileNotFoundError(f"Base model folder {base_dir} has no config.json (train one with `genrec-hf train`).")
    with RunFolderLock(output_dir) as lock:
        check_output_dir(output_dir, overwrite_output_dir, resuming=False)
        if overwrite_output_dir and lock.enabled:
            clear_previous_run(output_dir)
        return _finetune(recipe, base_dir, output_dir, task, data_name)


def _finetune(recipe: FinetuneRecipe, base_dir: Path, output_dir: Path, task: TaskData | None = None,
              data_name: str | None = None) -> FinetuneOutcome:
    set_seed(recipe.seed)
    base = load_verified_model(base_dir)
    if recipe.mode == "lora":  # before the data and zero-shot work, not at attach time
        check_lora_layers(recipe.lora.layers, base.config)
    if recipe.data.max_length > base.config.max_position_embeddings:
        raise ValueError(f"data.max_length={recipe.data.max_length} exceeds the base's max_position_embeddings="
                         f"{base.config.max_position_embeddings}.")
    vocab_file = base_dir / "item_vocab.json"
    if task is None:
        data = recipe.data.load()
        if vocab_file.is_file():
            data = remap_to_vocab(data, ItemVocab.load(base_dir))
        elif len(data.vocab) != base.config.vocab_size:
            raise ValueError(f"The data has {len(data.vocab)} item indices but the base {base_dir} has vocab_size="
                             f"{base.config.vocab_size}, and the base has no item_vocab.json to map ids with.")
        task = build_task(recipe.task.name, data, **recipe.task.params)
        data_name = data.name
    data_name = data_name or recipe.data.source
    require_eligible_users(task, data_name)
    train_rows = label_windows(task.train, recipe.data.max_length)
    ks = tuple(recipe.evaluation.ks)
    logger.info("task %s on %s: %d training windows, %d validation and %d test users", task.name, data_name,
                len(train_rows), len(task.validation), len(task.test))

    eval_collator = TaskCollator(recipe.data.max_length, mode="eval", exclude_history=task.protocol.exclude_history)
    zero_shot = None
    if recipe.evaluation.zero_shot:
        loader = DataLoader(task.test, batch_size=256, collate_fn=eval_collator)
        zero_shot = evaluate_model(base, loader, task.protocol, ks=ks)

    if recipe.mode == "lora":
        model: torch.nn.Module = attach_adapter(base, recipe.lora.config())
    elif recipe.mode == "full":
        model = base
    else:
        torch.manual_seed(recipe.seed)
        model = GenRecForNextItemPrediction(base.config)
    trainable, total = trainable_parameters(model)

    trainer = GenRecTrainer.from_recipe(
        recipe, model, args=recipe.training_arguments(label_names=["labels"]), train_dataset=train_rows,
        eval_dataset=sample_users(task.validation, recipe.evaluation.validation_users, recipe.seed), data_collator=TaskCollator(recipe.data.max_length, mode="train"),
        eval_collator=eval_collator, protocol=task.protocol)
    record = run_training(trainer, recipe)
    validation, test = trainer.final_evaluation(task.test)
    model = trainer.model

    metrics: dict[str, Any] = {
        "dataset": data_name,
        "task": task.name,
        "task_description": task.protocol.description,
        "task_params": task.params,
        "task_stats": task.stats,
        "mode": recipe.mode,
        "base_model": str(base_dir),
        "protocol": "per-user last qualifying target = test, previous = validation; " + task.protocol.summary(),
        "validation": validation,
        "test": test,
        "zero_shot_test": zero_shot,
        "train": {**record.to_dict(), "windows": len(train_rows)},
        "parameters": {"trainable": trainable, "total": total, "trainable_fraction": trainable / total},
    }
    if trainer.is_world_process_zero():
        def write_model(folder: Path) -> None:
            if recipe.mode == "lora":
                save_adapter(model, folder, base_dir=base_dir, final_dir=output_dir)
                metrics["checkpoint_bytes"] = _dir_bytes(folder, ("adapter_model.safetensors",))
            else:
                trainer.save_model(str(folder))
                metrics["checkpoint_bytes"] = _dir_bytes(folder, ("model.safetensors",))
            if vocab_file.is_file():  # the base's items, for adapters too: AutoTokenizer reads any run folder
                save_item_tokenizer(folder, ItemVocab.load(base_dir), base.config)
            metrics["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

        save_run(output_dir, metrics, recipe, "finetune_recipe.yaml", data_name, write_model=write_model,
                 trainer=trainer)
        if not recipe.keep_checkpoints:
            remove_checkpoints(output_dir)
    return FinetuneOutcome(metrics=metrics, model=model, task=task)


def run_finetune(base_dir: str, recipe_path: str, *, mode: str | None = None, overrides: dict[str, str] | None = None,
                 overwrite_output_dir: bool = False) -> dict:
    """CLI entry (`genrec-hf finetune`): load + override the recipe, fine-tune, return the metrics dict (with the
    `output_dir` it was written to).

    `mode` overrides the recipe's mode; unless `output_dir` is overridden too, a trailing `-lora` / `-full` /
    `-from_scratch` of the recipe's output folder becomes `-<mode>`, so comparison runs never overwrite each other.
    """
    overrides = dict(overrides or {})
    if mode is not None:
        overrides["mode"] = mode
    recipe = load_recipe(recipe_path, overrides, kind=FinetuneRecipe)
    if mode is not None and "output_dir" not in overrides:
        stem = recipe.output_dir
        for suffix in FINETUNE_MODES:
            if stem.endswith(f"-{suffix}"):
                stem = stem[: -len(suffix) - 1]
        recipe.output_dir = f"{stem}-{mode}"
    return {**finetune(recipe, base_dir, overwrite_output_dir=overwrite_output_dir).metrics,
            "output_dir": recipe.output_dir}
