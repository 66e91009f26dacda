"""The size-ladder runner: pre-train a list of presets with everything but the backbone held fixed, evaluate every
downstream task on the same users, append one CSV row per (size, task) for `genrec-hf scaling fit`.

    genrec-hf scaling run recipes/scaling/ladder.yaml [--section.key value ...]

Protocol (the paper's; docs/scaling.md):

* **One data set, one vocabulary, one set of evaluation users.** Every task is built once from the log; every size
  is evaluated on the same task rows in the same order, so the fit's bootstrap resamples the same users at every
  size (paired). The backbones are pre-trained (next-event prediction) on each user's events *before the earliest
  validation anchor of any listed task*, so no task's validation or test target is seen in pre-training.
* **Only the blocks grow.** The shape fields of each preset change; every other `GenRecConfig` field is the same.
  With `item_embedding_size: E` the decoding head is the paper's projected head with E-wide item vectors at
  every size (`head_projection_ratio = hidden_size / E`, untied): the space the items are scored in is fixed. The
  input event embedding is `hidden_size` wide (the config has no input projection); it is not counted in N.
* **Fixed budget per size.** `pretrain.max_train_minutes` boxes each size's pre-training and
  `tasks.finetune.max_train_minutes` each fine-tune, in minutes of `budget_clock` time (`wall`, or `cpu`: this
  process's CPU time, the fair box on shared cores); the learning rate, batch size, epochs, schedule and seed are the
  same for every size. With both boxes null, every size trains the same number of epochs (an epoch-matched ladder).
* **One run pipeline.** Each size is pre-trained by `genrec_hf.training.train` (the templates as each size's
  recipe, the pre-training data handed in) and each task by `genrec_hf.training.finetune`: no setup of its own.
* **Per task** the base is fine-tuned (`lora` or `full`) or evaluated as it is (`zero_shot`), and the test (or
  validation, `evaluation.fit_split`) rows are ranked through the package's one ranking path; the per-user ranks
  are saved (`.npy`) and the CSV row points at them (`ranks_path`, relative to the CSV).

Resumable: a (preset, data fraction, task) already in the CSV is skipped, a size whose base is finished is not
pre-trained again, and a size or task interrupted mid-way (its folder carries the ladder's marker but no finished
record) is cleared and redone. A folder without the ladder's marker is never written into. Rows written by a
different ladder (other fixed settings, see `ladder_id`) make the CSV an error rather than a mix.

Optional cold slice (`evaluation.cold_slice_max_events: K`): beside every (size, task) row, a `<task>/cold` row
scores the same saved ranks on the test targets whose item had at most K events in the backbones' pre-training
data (K = 0: items no backbone saw), the paper's cold-start slice on an ID-only ladder. It is derived from the
saved ranks, without a model, so a resumed ladder adds a missing slice row without training anything.

Optional data-size axis (`data_axis`): one preset is also trained on nested fractions of the training users (the
same evaluation users), written to a second CSV with the same columns, fitted against `train_events`
(`genrec-hf scaling fit data_axis.csv --size_column train_events`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from ...data.collators import TaskCollator
from ...evaluation.metrics import metrics_from_ranks
from ...evaluation.protocols import rank_batches
from ...integrity import load_verified_model
from ...models.genrec import count_backbone_parameters
from ...training.finetune import finetune
from ...training.pipeline import train
from ...training.run_folder import RunFolderLock
from .cold import add_cold_slices
from .recipe import LadderRecipe
from .results import (BASE_DONE, COLD_SLICE, ResultsCSV, claim, clear_unfinished, csv_columns, now, relative,
                      relocated)
from .shared import LadderData, prepare_shared, run_name

logger = logging.getLogger(__name__)
FIT_SPLITS = ("validation", "test")


@dataclass
class LadderOutcome:
    csv_path: Path
    data_axis_csv_path: Path | None
    rows_written: int
    rows_skipped: int
    rows: list[dict[str, str]] = field(default_factory=list)


def run_ladder(recipe: LadderRecipe) -> LadderOutcome:
    """Run (or resume) the ladder; returns where the rows are and how many were written or already there."""
    output_dir = Path(recipe.output_dir)
    claim(output_dir)
    ladder_id = recipe.ladder_id()
    columns = csv_columns(list(recipe.evaluation.ks))
    with RunFolderLock(output_dir):
        results = ResultsCSV(recipe.csv_path(), columns, ladder_id)
        axis_results = (ResultsCSV(recipe.data_axis_csv_path(), columns, ladder_id)
                        if recipe.data_axis.preset else None)
        (output_dir / "ladder_recipe.json").write_text(json.dumps(recipe.to_dict(), indent=2))
        runs = [(p, 1.0) for p in recipe.presets]
        runs += [(recipe.data_axis.preset, f) for f in sorted(recipe.data_axis.fractions, reverse=True)]
        shared: LadderData | None = None
        written = skipped = 0
        start = time.monotonic()
        for index, (preset, fraction) in enumerate(runs, 1):
            table = results if fraction == 1.0 else axis_results
            assert table is not None
            todo = [t for t in recipe.tasks.names if not table.has(preset, fraction, t)]
            label = f"[{index}/{len(runs)}] {preset}" + (f" on {fraction:g} of the training users"
                                                         if fraction < 1.0 else "")
            if not todo:
                logger.info("%s: every task already in %s, skipped", label, table.path)
                skipped += len(recipe.tasks.names)
                continue
            skipped += len(recipe.tasks.names) - len(todo)
            if shared is None:
                shared = prepare_shared(recipe)
            run_dir = output_dir / "sizes" / run_name(preset, fraction)
            base_dir = run_dir / "base"
            base_info = _ensure_base(recipe, shared, preset, fraction, run_dir, base_dir, ladder_id, label)
            for task in todo:
                row = _run_task(recipe, shared, preset, fraction, task, run_dir, base_dir, base_info, table.path,
                                ladder_id, label)
                table.append(row)
                written += 1
                logger.info("%s %s (%s): %s mrr %.4f on %d users; row appended to %s (%.1f min so far)", label,
                            task, row["mode"], row["split"], row["mrr"], row["num_users"], table.path,
                            (time.monotonic() - start) / 60)
        if recipe.evaluation.cold_slice_max_events is not None:
            for table in (results, axis_results):  # after the runs: also heals a slice an interruption left out
                if table is not None:
                    added, shared = add_cold_slices(recipe, table, runs, shared)
                    written += added
        if axis_results is not None and recipe.data_axis.preset:
            slices = [t + COLD_SLICE for t in recipe.tasks.names] if recipe.evaluation.cold_slice_max_events \
                is not None else []
            for task in recipe.tasks.names + slices:  # the data axis's full-data point is the size-axis run
                if not axis_results.has(recipe.data_axis.preset, 1.0, task) and \
                        results.has(recipe.data_axis.preset, 1.0, task):
                    axis_results.append(relocated(results.rows[(recipe.data_axis.preset, 1.0, task)],
                                                   results.path, axis_results.path))
    logger.info("ladder done: %d rows written, %d already there, in %.1f min; fit with: genrec-hf scaling fit %s "
                "--plot scaling.png", written, skipped, (time.monotonic() - start) / 60, results.path)
    return LadderOutcome(csv_path=results.path, data_axis_csv_path=axis_results.path if axis_results else None,
                         rows_written=written, rows_skipped=skipped, rows=list(results.rows.values()))


def rerun_tasks(recipe: LadderRecipe, bases_from: Path) -> Path:
    """The task stage of `recipe` (e.g. zero-shot, or a longer fine-tune) on the finished bases of the ladder in
    `bases_from`, on the same users, into `recipe.output_dir`'s CSV (its own ladder_id); no base is trained. Returns
    the CSV path."""
    bases_from = Path(bases_from)
    output_dir = Path(recipe.output_dir)
    claim(output_dir)
    ladder_id = recipe.ladder_id()
    with RunFolderLock(output_dir):
        table = ResultsCSV(recipe.csv_path(), csv_columns(list(recipe.evaluation.ks)), ladder_id)
        (output_dir / "ladder_recipe.json").write_text(
            json.dumps({**recipe.to_dict(), "bases_from": str(bases_from)}, indent=2))
        shared = prepare_shared(recipe)
        for index, preset in enumerate(recipe.presets, 1):
            base_dir = bases_from / "sizes" / preset / "base"
            if not (base_dir / BASE_DONE).is_file():
                logger.warning("%s: no finished base in %s, skipped", preset, base_dir)
                continue
            base_info = json.loads((base_dir / BASE_DONE).read_text())
            run_dir = output_dir / "sizes" / preset
            claim(run_dir)
            label = f"[{index}/{len(recipe.presets)}] {preset}"
            for task in recipe.tasks.names:
                if not table.has(preset, 1.0, task):
                    table.append(_run_task(recipe, shared, preset, 1.0, task, run_dir, base_dir, base_info,
                                           table.path, ladder_id, label))
        if recipe.evaluation.cold_slice_max_events is not None:
            add_cold_slices(recipe, table, [(p, 1.0) for p in recipe.presets], shared)
    return table.path


def _ensure_base(recipe: LadderRecipe, shared: LadderData, preset: str, fraction: float, run_dir: Path,
                 base_dir: Path, ladder_id: str, label: str) -> dict[str, Any]:
    """The finished base of this size (pre-trained now unless a finished one is there)."""
    done = base_dir / BASE_DONE
    if done.is_file():
        info = json.loads(done.read_text())
        if info.get("ladder_id") != ladder_id:
            raise ValueError(f"{base_dir} was trained by another ladder (ladder_id {info.get('ladder_id')}, this "
                             f"recipe's is {ladder_id}); choose another output_dir.")
        logger.info("%s: base already trained (%s), reused", label, base_dir)
        return info
    clear_unfinished(base_dir, f"{label} pre-training")
    claim(run_dir)
    claim(base_dir)
    return _pretrain(recipe, shared, preset, fraction, base_dir, ladder_id, label)


def _pretrain(recipe: LadderRecipe, shared: LadderData, preset: str, fraction: float, base_dir: Path,
              ladder_id: str, label: str) -> dict[str, Any]:
    """Pre-train one size through the run pipeline on the events before the tasks' anchors; the record
    `BASE_DONE` (written last) is what the rows and a resumed ladder read."""
    data = shared.pretraining_data(fraction)
    size_recipe = recipe.pretrain_recipe(preset, base_dir)
    logger.info("%s: pre-training on %d users' events before the task anchors, item vectors %s wide, time box %s "
                "min (%s clock)", label, len(data.sequences), recipe.item_embedding_size or "d",
                size_recipe.max_train_minutes, recipe.budget_clock)
    outcome = train(size_recipe, overwrite_output_dir=True, data=data, item_tower=shared.item_tower)
    record, model = outcome.record, outcome.model
    info = {
        "ladder_id": ladder_id, "preset": preset, "data_fraction": fraction,
        "backbone_params": count_backbone_parameters(model),
        "total_params": sum(p.numel() for p in model.parameters()),
        "item_embedding_size": model.config.head_output_size, "train_users": len(data.sequences),
        "train_events": outcome.run.train_events, "steps": record.steps, "epochs": record.epochs,
        "seconds": record.runtime_s, "cpu_seconds": record.cpu_s, "budget_clock": recipe.budget_clock,
        "stop": record.stopped_by, "train_loss": record.loss,
        "validation_mrr": outcome.metrics["validation"].get("mrr"), "finished_at": now(),
    }
    (base_dir / BASE_DONE).write_text(json.dumps(info, indent=2))  # last: marks the base finished
    logger.info("%s: pre-trained %d steps (%.2f epochs) in %.1f min (%.1f CPU-min), stopped by %s; next-event "
                "validation mrr %.4f", label, info["steps"], info["epochs"] or 0.0, info["seconds"] / 60,
                info["cpu_seconds"] / 60, info["stop"], info["validation_mrr"] or 0.0)
    return info


def _run_task(recipe: LadderRecipe, shared: LadderData, preset: str, fraction: float, task_name: str, run_dir: Path,
              base_dir: Path, base_info: dict[str, Any], csv_path: Path, ladder_id: str,
              label: str) -> dict[str, Any]:
    task = shared.tasks[task_name]
    mode = recipe.task_mode(task_name)
    task_dir = run_dir / task_name
    clear_unfinished(task_dir, f"{label} task {task_name}")
    steps, seconds = 0, 0.0
    if mode == "zero_shot":
        model: torch.nn.Module = load_verified_model(base_dir)
    else:
        claim(task_dir)
        users = shared.training_users(fraction)
        if users is not None:
            keep = set(users)
            task = dataclasses.replace(task, train=task.train.filter(lambda r: str(r["user_id"]) in keep))
        logger.info("%s %s: %s fine-tune (time box %s min)", label, task_name, mode,
                    recipe.tasks.finetune.max_train_minutes)
        outcome = finetune(recipe.finetune_recipe(task_name, task_dir), base_dir, overwrite_output_dir=True,
                           task=task, data_name=shared.data.name)
        model = outcome.model
        steps, seconds = outcome.metrics["train"]["steps"], outcome.metrics["train"]["runtime_s"]
    collator = TaskCollator(recipe.pretrain.data.max_length, mode="eval",
                            exclude_history=task.protocol.exclude_history)
    ks = list(recipe.evaluation.ks)
    metrics, ranks = {}, {}
    for split in FIT_SPLITS:
        loader = DataLoader(getattr(task, split), batch_size=recipe.evaluation.batch_size, collate_fn=collator)
        ranks[split] = rank_batches(model, loader, task.protocol)
        metrics[split] = metrics_from_ranks(ranks[split], ks)
    fit = recipe.evaluation.fit_split
    ranks_file = Path(recipe.output_dir) / "ranks" / run_name(preset, fraction) / f"{task_name}_{fit}.npy"
    ranks_file.parent.mkdir(parents=True, exist_ok=True)
    np.save(ranks_file, ranks[fit].numpy().astype(np.int32))
    chosen = metrics[fit]
    row = {
        "ladder_id": ladder_id, "dataset": shared.data.name, "preset": preset,
        "backbone_params": base_info["backbone_params"], "total_params": base_info["total_params"],
        "item_embedding_size": base_info["item_embedding_size"], "data_fraction": fraction,
        "train_users": base_info["train_users"], "train_events": base_info["train_events"], "task": task_name,
        "mode": mode, "split": fit, "mrr": chosen["mrr"], "num_users": int(chosen["num_users"]),
        "validation_mrr": metrics["validation"]["mrr"], "test_mrr": metrics["test"]["mrr"],
        "pretrain_steps": base_info["steps"], "pretrain_epochs": base_info["epochs"],
        "pretrain_seconds": base_info["seconds"], "pretrain_stop": base_info["stop"], "finetune_steps": steps,
        "finetune_seconds": seconds, "seed": recipe.seed, "ranks_path": relative(ranks_file, csv_path),
        "finished_at": now(),
    }
    for k in ks:
        for name in ("hr", "ndcg", "recall"):
            row[f"{name}@{k}"] = chosen.get(f"{name}@{k}")
    return row
