"""The size-ladder runner: pre-train a list of presets with everything but the backbone held fixed, evaluate every
downstream task on the same users, append one CSV row per (size, task) for `genrec-hf scaling fit`.

    genrec-hf scaling run recipes/scaling/ladder.yaml [--section.key value ...]

Protocol (the paper's, PAPER §2; docs/scaling.md):

* **One data set, one vocabulary, one set of evaluation users.** Every task is built once from the log; every size
  is evaluated on the same task rows in the same order, so the fit's bootstrap resamples the same users at every
  size (paired). The backbones are pre-trained (next-event prediction) on each user's events *before the earliest
  validation anchor of any listed task*, so no task's validation or test target is seen in pre-training.
* **Only the blocks grow.** The shape fields of each preset change; every other `GenRecConfig` field is the same.
  With `model.item_embedding_size: E` the decoding head is the paper's projected head with E-wide item vectors at
  every size (`head_projection_ratio = hidden_size / E`, untied): the space the items are scored in is fixed. The
  input event embedding is `hidden_size` wide (the config has no input projection); it is not counted in N.
* **Fixed budget per size.** `max_train_minutes` boxes each size's pre-training and `tasks.max_train_minutes` each
  fine-tune, in minutes of `budget_clock` time (`wall`, or `cpu`: this process's CPU time, the fair box on shared
  cores); the learning rate, batch size, epochs, schedule and seed are the same for every size. With both boxes
  null, every size trains the same number of epochs (an epoch-matched ladder).
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
(`genrec-hf scaling fit data_axis.csv --size-column train_events`).
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import hashlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from torch.utils.data import DataLoader

from ..training.recipes import (DEFAULT_FINETUNE_ARGUMENTS, DEFAULT_TRAINING_ARGUMENTS, BATCHING_MODES, DataSection,
                                EvaluationSection, FinetuneRecipe, LoraSection, RecipeBase, load_recipe,
                                recipe_from_dict, validate_item_tower)

logger = logging.getLogger(__name__)

LADDER_MODES = ("zero_shot", "lora", "full")
FIT_SPLITS = ("validation", "test")
SHAPE_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
# Set by the ladder itself: the data decides these, or item_embedding_size does.
LADDER_SET_FIELDS = ("vocab_size", "max_position_embeddings", "num_action_types")
HEAD_FIELDS = ("head_projection_ratio", "tie_word_embeddings")
COLD_SLICE = "/cold"  # suffix of a task's cold-slice rows (`evaluation.cold_slice_max_events`)
MARKER = ".genrec_ladder"  # written first into every folder the ladder creates: "ours, may be cleared if unfinished"
BASE_DONE = "ladder_base.json"  # written last into a finished base folder
BASE_COLUMNS = (
    "ladder_id", "dataset", "preset", "backbone_params", "total_params", "item_embedding_size", "data_fraction",
    "train_users", "train_events", "task", "mode", "split", "mrr",
)
TAIL_COLUMNS = (
    "num_users", "validation_mrr", "test_mrr", "pretrain_steps", "pretrain_epochs", "pretrain_seconds",
    "pretrain_stop", "finetune_steps", "finetune_seconds", "seed", "ranks_path", "finished_at",
)


# --- the recipe -----------------------------------------------------------------------------------------------------


@dataclass
class LadderModelSection:
    item_embedding_size: int | None = 32  # item-vector width at every size (projected head); None = tied, d-wide
    overrides: dict[str, Any] = field(default_factory=dict)  # GenRecConfig fields fixed at every size (no shape fields)
    # The cold-start item tower at every size (docs/cold_start.md; the options of a pre-training recipe's
    # model.item_tower, mask_prob "auto" = the pre-training data's cold-start rate); None = ID embeddings only.
    item_tower: dict[str, Any] | None = None
    item_features: dict[str, Any] = field(default_factory=dict)  # feature-store options, as in a pre-training recipe


@dataclass
class LadderDataSection(DataSection):
    window_stride: int | None = None  # stride of pre-training windows over long histories (None = max_length)
    batching: str = "padded"  # pre-training batches: padded | grouped | packed


@dataclass
class LadderTasksSection:
    names: list[str] = field(default_factory=lambda: ["short_horizon", "long_horizon", "availability"])
    params: dict[str, dict[str, Any]] = field(default_factory=dict)  # per task: keyword arguments of its builder
    mode: str = "lora"  # zero_shot | lora | full, for every task ...
    modes: dict[str, str] = field(default_factory=dict)  # ... unless named here: {task: mode}
    max_train_minutes: float | None = 1.0  # time box of each (size, task) fine-tune
    training: dict[str, Any] = field(default_factory=dict)  # TrainingArguments of the fine-tunes


@dataclass
class DataAxisSection:
    preset: str | None = None  # the size also trained on fractions of the training users (None = no data axis)
    fractions: list[float] = field(default_factory=list)  # e.g. [0.125, 0.25, 0.5]; 1.0 is the size-axis run


@dataclass
class LadderEvaluationSection(EvaluationSection):
    fit_split: str = "test"  # split whose MRR is the `mrr` column and whose per-user ranks are saved
    batch_size: int = 256  # users per ranking batch
    # Also a `<task>/cold` row per (size, task): the test targets whose item had at most this many events in the
    # pre-training data (0 = never seen); None = no cold slice.
    cold_slice_max_events: int | None = None


@dataclass
class LadderRecipe(RecipeBase):
    """A scaling-ladder recipe (`genrec-hf scaling run`). `max_train_minutes` boxes each size's pre-training (and
    `tasks.max_train_minutes` each fine-tune) in minutes of `budget_clock` time, and `training:` holds the
    pre-training `TrainingArguments`, the same at every size."""

    output_dir: str = "runs/scaling/ladder"
    results_csv: str | None = None  # None = <output_dir>/results.csv
    presets: list[str] = field(default_factory=lambda: ["genrec-10k", "genrec-25k", "genrec-50k", "genrec-100k",
                                                        "genrec-500k", "genrec-2m"])
    model: LadderModelSection = field(default_factory=LadderModelSection)
    data: LadderDataSection = field(default_factory=LadderDataSection)
    tasks: LadderTasksSection = field(default_factory=LadderTasksSection)
    lora: LoraSection = field(default_factory=LoraSection)
    data_axis: DataAxisSection = field(default_factory=DataAxisSection)
    evaluation: LadderEvaluationSection = field(default_factory=LadderEvaluationSection)

    default_training_arguments: ClassVar[dict[str, Any]] = DEFAULT_TRAINING_ARGUMENTS

    def validate(self, source: str) -> None:
        from ..models.genrec import PRESET_NOMINAL_SIZES, SIZE_PRESETS, GenRecConfig

        super().validate(source)
        if not self.presets:
            raise ValueError(f"{source}: presets is empty; list at least one genrec_hf.SIZE_PRESETS name.")
        unknown = [p for p in self.presets if p not in SIZE_PRESETS]
        if unknown:
            raise ValueError(f"{source}: presets: unknown preset(s) {unknown}; expected names of "
                             f"{sorted(PRESET_NOMINAL_SIZES, key=PRESET_NOMINAL_SIZES.get)}.")
        duplicates = sorted({p for p in self.presets if self.presets.count(p) > 1})
        if duplicates:
            raise ValueError(f"{source}: presets lists {duplicates} more than once.")
        shapes = {}
        for preset in self.presets:
            shape = tuple(SIZE_PRESETS[preset].get(k) for k in SHAPE_FIELDS)
            if shape in shapes.values():
                raise ValueError(f"{source}: presets {preset!r} and "
                                 f"{next(p for p, s in shapes.items() if s == shape)!r} have the same shape.")
            shapes[preset] = shape
            extra = sorted(set(SIZE_PRESETS[preset]) - set(SHAPE_FIELDS))
            if extra:
                raise ValueError(f"{source}: preset {preset!r} also sets {extra}, not only the block shape "
                                 f"{list(SHAPE_FIELDS)}; a ladder varies the backbone size alone.")
        model = self.model
        validate_item_tower(model.item_tower, model.item_features, model.overrides, source)
        bad = sorted(set(model.overrides) & set(SHAPE_FIELDS))
        if bad:
            raise ValueError(f"{source}: model.overrides sets {bad}: the block shape is what the presets vary; "
                             "list other presets instead.")
        bad = sorted(set(model.overrides) & set(LADDER_SET_FIELDS))
        if bad:
            raise ValueError(f"{source}: model.overrides sets {bad}, which the ladder takes from the data "
                             "(vocab_size, num_action_types) and data.max_length.")
        if model.item_embedding_size is not None:
            bad = sorted(set(model.overrides) & set(HEAD_FIELDS))
            if bad:
                raise ValueError(f"{source}: model.overrides sets {bad}, which model.item_embedding_size="
                                 f"{model.item_embedding_size} decides; leave them out or set item_embedding_size: "
                                 "null.")
            if model.item_embedding_size < 1:
                raise ValueError(f"{source}: model.item_embedding_size={model.item_embedding_size}; expected a "
                                 "positive integer or null.")
            for preset in self.presets:
                width = SIZE_PRESETS[preset]["hidden_size"]
                if width % model.item_embedding_size:
                    raise ValueError(f"{source}: model.item_embedding_size={model.item_embedding_size} does not "
                                     f"divide the hidden_size {width} of {preset!r}; choose a width that divides "
                                     "every preset's hidden_size (e.g. 32).")
        for preset in self.presets:
            try:
                GenRecConfig(**self.config_fields(preset, vocab_size=2, num_action_types=0))
            except (ValueError, TypeError) as error:
                raise ValueError(f"{source}: model (preset {preset}): {error}") from None
        tasks = self.tasks
        if not tasks.names:
            raise ValueError(f"{source}: tasks.names is empty; list at least one downstream task.")
        duplicates = sorted({t for t in tasks.names if tasks.names.count(t) > 1})
        if duplicates:
            raise ValueError(f"{source}: tasks.names lists {duplicates} more than once.")
        for where, named in (("tasks.params", tasks.params), ("tasks.modes", tasks.modes)):
            for name in named:
                if name not in tasks.names:
                    raise ValueError(f"{source}: {where} names task {name!r}, which is not in tasks.names "
                                     f"{tasks.names}.")
        for name, mode in [("tasks.mode", tasks.mode)] + [(f"tasks.modes.{k}", v) for k, v in tasks.modes.items()]:
            if mode not in LADDER_MODES:
                raise ValueError(f"{source}: {name}={mode!r}; expected one of {LADDER_MODES}.")
        if tasks.max_train_minutes is not None and tasks.max_train_minutes <= 0:
            raise ValueError(f"{source}: tasks.max_train_minutes={tasks.max_train_minutes}; expected a positive "
                             "number of minutes (or null).")
        for name in tasks.names:  # task names, task params, lora, fine-tune TrainingArguments: checked before work
            self.finetune_recipe(name, Path("."), source=source)
        if self.data.batching not in BATCHING_MODES:
            raise ValueError(f"{source}: data.batching={self.data.batching!r}; expected one of {BATCHING_MODES}.")
        if self.evaluation.fit_split not in FIT_SPLITS:
            raise ValueError(f"{source}: evaluation.fit_split={self.evaluation.fit_split!r}; expected one of "
                             f"{FIT_SPLITS}.")
        if self.evaluation.batch_size < 1:
            raise ValueError(f"{source}: evaluation.batch_size={self.evaluation.batch_size}; expected a positive "
                             "integer.")
        cold = self.evaluation.cold_slice_max_events
        if cold is not None and cold < 0:
            raise ValueError(f"{source}: evaluation.cold_slice_max_events={cold}; expected a count of pre-training "
                             "events >= 0 (0 = items no backbone saw) or null (no cold slice).")
        axis = self.data_axis
        if axis.preset is not None:
            if axis.preset not in self.presets:
                raise ValueError(f"{source}: data_axis.preset={axis.preset!r} is not one of presets {self.presets}.")
            if not axis.fractions:
                raise ValueError(f"{source}: data_axis.fractions is empty; list fractions of the training users "
                                 "in (0, 1), e.g. [0.125, 0.25, 0.5].")
        elif axis.fractions:
            raise ValueError(f"{source}: data_axis.fractions is set but data_axis.preset is null; name the preset "
                             "to train on those fractions.")
        bad = [f for f in axis.fractions if not 0.0 < f < 1.0]
        if bad:
            raise ValueError(f"{source}: data_axis.fractions {bad} must lie in (0, 1) (1.0 is the size-axis run).")
        if len(set(axis.fractions)) != len(axis.fractions):
            raise ValueError(f"{source}: data_axis.fractions {axis.fractions} repeats a fraction.")

    # --- what the runner derives from the recipe ---

    def config_fields(self, preset: str, *, vocab_size: int, num_action_types: int) -> dict[str, Any]:
        """GenRecConfig keyword arguments of `preset` in this ladder: only the shape differs between sizes."""
        from ..models.genrec import SIZE_PRESETS

        fields = {**SIZE_PRESETS[preset], **self.model.overrides, "vocab_size": vocab_size,
                  "num_action_types": num_action_types, "max_position_embeddings": self.data.max_length}
        width = self.model.item_embedding_size
        if width is not None:
            fields.update(head_projection_ratio=fields["hidden_size"] // width, tie_word_embeddings=False)
        return fields

    def task_mode(self, task: str) -> str:
        return self.tasks.modes.get(task, self.tasks.mode)

    def finetune_recipe(self, task: str, output_dir: Path, source: str = "ladder") -> FinetuneRecipe:
        """The `FinetuneRecipe` of one (size, task): the ladder's data, lora, fine-tune training and evaluation."""
        mode = self.task_mode(task)
        raw = {
            "output_dir": str(output_dir), "mode": "lora" if mode == "zero_shot" else mode, "seed": self.seed,
            "max_train_minutes": self.tasks.max_train_minutes, "budget_clock": self.budget_clock,
            "keep_checkpoints": False,
            "task": {"name": task, "params": dict(self.tasks.params.get(task, {}))},
            "data": {f.name: getattr(self.data, f.name) for f in dataclasses.fields(DataSection)},
            "lora": dataclasses.asdict(self.lora),
            "training": dict(self.tasks.training),
            "evaluation": {"ks": list(self.evaluation.ks),
                           "metric_for_best_model": self.evaluation.metric_for_best_model,
                           "early_stopping_patience": self.evaluation.early_stopping_patience, "zero_shot": False},
        }
        return recipe_from_dict(raw, source=f"{source} (fine-tune of task {task})", kind=FinetuneRecipe)

    def fixed_settings(self) -> dict[str, Any]:
        """Everything that must be equal across the rows of one CSV (what `ladder_id` hashes)."""
        settings = self.to_dict()
        for key in ("output_dir", "results_csv", "presets", "data_axis"):
            settings.pop(key)
        settings["tasks"].pop("names")
        for key in ("item_tower", "item_features"):  # off (ID embeddings only): the id of a ladder without them
            if not settings["model"][key]:
                settings["model"].pop(key)
        settings["tasks"]["params"] = {k: v for k, v in sorted(settings["tasks"]["params"].items())}
        settings["tasks"]["modes"] = {k: v for k, v in sorted(settings["tasks"]["modes"].items())}
        settings["training_defaults"] = {**DEFAULT_TRAINING_ARGUMENTS, **self.training}
        settings["finetune_defaults"] = {**DEFAULT_FINETUNE_ARGUMENTS, **self.tasks.training}
        return settings

    def ladder_id(self) -> str:
        text = json.dumps(self.fixed_settings(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def csv_path(self) -> Path:
        return Path(self.results_csv) if self.results_csv else Path(self.output_dir) / "results.csv"

    def data_axis_csv_path(self) -> Path:
        path = self.csv_path()
        return path.with_name(f"{path.stem}_data_axis{path.suffix or '.csv'}")


def load_ladder_recipe(path: str | Path, overrides: dict[str, str] | None = None) -> LadderRecipe:
    """Read and validate a ladder recipe (unknown keys and wrongly typed values are errors naming them)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Ladder recipe {path} does not exist (expected a YAML file such as "
                                "recipes/scaling/ladder.yaml).")
    return load_recipe(path, overrides, kind=LadderRecipe)


# --- folders and the CSV ---------------------------------------------------------------------------------------------


def _claim(folder: Path) -> None:
    """Create `folder` as the ladder's (marker first); refuse a non-empty folder that is not the ladder's."""
    if folder.exists():
        if not folder.is_dir():
            raise FileExistsError(f"{folder} exists and is not a folder; the ladder will not replace it.")
        if not (folder / MARKER).is_file() and any(folder.iterdir()):
            raise FileExistsError(f"{folder} is not empty and was not written by the scaling ladder (no {MARKER} "
                                  "marker); the ladder never writes into it. Move it away or choose another "
                                  "output_dir.")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MARKER).write_text(json.dumps({"created": _now()}))


def _clear_unfinished(folder: Path, what: str) -> None:
    """Remove an interrupted run's folder, which must carry the ladder's marker (a user's folder is refused)."""
    if not folder.exists():
        return
    if not (folder / MARKER).is_file():
        if folder.is_dir() and not any(folder.iterdir()):
            return
        raise FileExistsError(f"{folder} is not empty and was not written by the scaling ladder (no {MARKER} "
                              "marker); the ladder never writes into it. Move it away or choose another output_dir.")
    logger.info("%s in %s was interrupted before it finished: clearing it and starting it again", what, folder)
    shutil.rmtree(folder)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def csv_columns(ks: list[int]) -> list[str]:
    """The results CSV's columns, in order (metrics at every cut-off of `evaluation.ks`)."""
    metrics = [f"{m}@{k}" for k in ks for m in ("hr", "ndcg", "recall")]
    return [*BASE_COLUMNS, *metrics, *TAIL_COLUMNS]


class ResultsCSV:
    """An append-only results CSV: rows keyed by (preset, data_fraction, task); each row is flushed when written."""

    def __init__(self, path: Path, columns: list[str], ladder_id: str) -> None:
        self.path = path
        self.columns = columns
        self.rows: dict[tuple[str, float, str], dict[str, str]] = {}
        if path.exists():
            if not path.is_file():
                raise IsADirectoryError(f"results_csv {path} is a folder; expected a CSV file path.")
            with path.open(newline="") as handle:
                reader = csv.DictReader(handle)
                header = reader.fieldnames or []
                if header and header != columns:
                    raise ValueError(f"{path} has columns {header}, not the ladder's {columns}; it is another "
                                     "file or another ladder's: choose another results_csv.")
                for row in reader:
                    if row.get("ladder_id") != ladder_id:
                        raise ValueError(f"{path} holds rows of another ladder (ladder_id {row.get('ladder_id')}, "
                                         f"this recipe's is {ladder_id}): the fixed settings differ, so the rows "
                                         "would not be comparable. Choose another results_csv or output_dir.")
                    self.rows[self.key(row)] = row
        else:
            path.parent.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(row: dict[str, Any]) -> tuple[str, float, str]:
        return str(row["preset"]), round(float(row["data_fraction"]), 6), str(row["task"])

    def has(self, preset: str, fraction: float, task: str) -> bool:
        return (preset, round(fraction, 6), task) in self.rows

    def append(self, row: dict[str, Any]) -> None:
        new = not self.path.exists() or self.path.stat().st_size == 0
        with self.path.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=self.columns)
            if new:
                writer.writeheader()
            writer.writerow({c: _cell(row.get(c)) for c in self.columns})
            handle.flush()
        self.rows[self.key(row)] = {c: _cell(row.get(c)) for c in self.columns}


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ""
    return str(value)


# --- the run ---------------------------------------------------------------------------------------------------------


@dataclass
class _Shared:
    """What every size shares: the log, the tasks (built once), the pre-training users' cut and the user order."""

    data: Any
    tasks: dict[str, Any]
    cut: dict[str, int]
    user_order: list[str]
    item_counts: np.ndarray  # (V,) events per item in the pre-training data of all users (the cold slice's count)
    store: Any = None  # the item feature store of `model.item_tower` (None = ID embeddings only) ...
    tower_config: dict[str, Any] | None = None  # ... and the tower config every size gets
    targets: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)  # (task, split) -> (U, T) target ids


@dataclass
class LadderOutcome:
    csv_path: Path
    data_axis_csv_path: Path | None
    rows_written: int
    rows_skipped: int
    rows: list[dict[str, str]] = field(default_factory=list)


def run_ladder(recipe: LadderRecipe) -> LadderOutcome:
    """Run (or resume) the ladder; returns where the rows are and how many were written or already there."""
    from ..training.trainer import RunFolderLock

    output_dir = Path(recipe.output_dir)
    _claim(output_dir)
    ladder_id = recipe.ladder_id()
    columns = csv_columns(list(recipe.evaluation.ks))
    with RunFolderLock(output_dir):
        results = ResultsCSV(recipe.csv_path(), columns, ladder_id)
        axis_results = (ResultsCSV(recipe.data_axis_csv_path(), columns, ladder_id)
                        if recipe.data_axis.preset else None)
        (output_dir / "ladder_recipe.json").write_text(json.dumps(recipe.to_dict(), indent=2))
        runs = [(p, 1.0) for p in recipe.presets]
        runs += [(recipe.data_axis.preset, f) for f in sorted(recipe.data_axis.fractions, reverse=True)]
        shared: _Shared | None = None
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
                shared = _prepare_shared(recipe)
            run_dir = output_dir / "sizes" / _run_name(preset, fraction)
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
                    axis_results.append(_relocated(results.rows[(recipe.data_axis.preset, 1.0, task)],
                                                   results.path, axis_results.path))
    logger.info("ladder done: %d rows written, %d already there, in %.1f min; fit with: genrec-hf scaling fit %s "
                "--plot scaling.png", written, skipped, (time.monotonic() - start) / 60, results.path)
    return LadderOutcome(csv_path=results.path, data_axis_csv_path=axis_results.path if axis_results else None,
                         rows_written=written, rows_skipped=skipped, rows=list(results.rows.values()))


def add_cold_slices(recipe: LadderRecipe, table: ResultsCSV, runs: list[tuple[str, float]],
                    shared: _Shared | None = None) -> tuple[int, _Shared | None]:
    """Append the missing `<task>/cold` row of every (preset, fraction) in `runs` whose task row `table` holds;
    returns how many were written and the shared data (prepared only if a slice was missing)."""
    written = 0
    for preset, fraction in runs:
        for task in recipe.tasks.names:
            if not table.has(preset, fraction, task) or table.has(preset, fraction, task + COLD_SLICE):
                continue
            if shared is None:
                shared = _prepare_shared(recipe)
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
    import torch

    from ..evaluation.cold_start import slice_ranks

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
    from ..data.collators import TaskCollator
    from ..evaluation.metrics import pad_ranks

    collator = TaskCollator(recipe.data.max_length, mode="eval", exclude_history=task.protocol.exclude_history)
    loader = DataLoader(getattr(task, split), batch_size=recipe.evaluation.batch_size, collate_fn=collator)
    return pad_ranks([task.protocol.targets(batch["target_ids"]) for batch in loader]).numpy()


def _cold_slice_row(recipe: LadderRecipe, shared: _Shared, parent: dict[str, str],
                    csv_path: Path) -> dict[str, Any] | None:
    """The `<task>/cold` row of a finished (size, task) row, from its saved ranks (None when no target is cold)."""
    from ..evaluation.metrics import metrics_from_ranks

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
                           f"{fit}_mrr": metrics["mrr"], "ranks_path": _relative(ranks_file, csv_path),
                           "finished_at": _now()}
    for k in recipe.evaluation.ks:
        for name in ("hr", "ndcg", "recall"):
            row[f"{name}@{k}"] = metrics.get(f"{name}@{k}")
    logger.info("%s %s: cold slice (targets with <= %d pre-training events) mrr %.4f on %d users", parent["preset"],
                task_name, limit, row["mrr"], row["num_users"])
    return row


def _relocated(row: dict[str, str], source: Path, target: Path) -> dict[str, str]:
    """A copy of `row` whose ranks_path is relative to `target`'s folder instead of `source`'s."""
    row = dict(row)
    if row.get("ranks_path"):
        absolute = (source.parent / row["ranks_path"]).resolve()
        row["ranks_path"] = _relative(absolute, target)
    return row


def _relative(path: Path, csv_path: Path) -> str:
    return os.path.relpath(path.resolve(), csv_path.parent.resolve())


def _run_name(preset: str, fraction: float) -> str:
    return preset if fraction == 1.0 else f"{preset}-users{fraction:g}"


def _prepare_shared(recipe: LadderRecipe) -> _Shared:
    from ..data.tasks import build_task

    started = time.monotonic()
    data = recipe.data.load()
    tasks = {name: build_task(name, data, **recipe.tasks.params.get(name, {})) for name in recipe.tasks.names}
    cut: dict[str, int] = {}
    for task in tasks.values():
        for row in task.validation:
            user = str(row["user_id"])
            cut[user] = min(cut.get(user, 1 << 62), len(row["item_ids"]))
    for name, task in tasks.items():
        if len(task.validation) == 0 or len(task.test) == 0:
            raise ValueError(f"task {name!r} on {data.name} has no evaluation users (every user was dropped: "
                             f"{task.stats}); change its tasks.params or the data.")
    users = [str(u) for u in data.sequences["user_id"]]
    rng = np.random.default_rng(recipe.seed)
    order = [users[i] for i in rng.permutation(len(users))]  # nested user subsets for the data axis
    shared = _Shared(data=data, tasks=tasks, cut=cut, user_order=order, item_counts=np.zeros(0, dtype=np.int64))
    from ..data import leave_one_out

    trained = leave_one_out(_pretraining_data(shared, None))["train"]  # the events pre-training trains on
    shared.item_counts = _item_counts(trained, len(data.vocab))
    if recipe.model.item_tower is not None:  # one store and one tower config for every size and data fraction
        from ..training.cold_start import FEATURE_CACHE, build_feature_store, tower_options

        features = recipe.model.item_features
        cache = features.get("cache")
        shared.store = build_feature_store(features, data, data.vocab.raw_ids, recipe.data.source,
                                           Path(cache) if cache else Path(recipe.output_dir) / FEATURE_CACHE)
        options = tower_options(recipe.model.item_tower, trained, data.has_timestamps,
                                float(features.get("serving_gap", 7 * 24 * 3600)))
        shared.tower_config = shared.store.tower_config(**options).to_dict()
        logger.info("ladder item tower: %s fusion, mask_prob %s, features %s", shared.tower_config["fusion"],
                    shared.tower_config["mask_prob"], [b["name"] for b in shared.tower_config["feature_schema"]])
    logger.info("ladder data %s: %d users, %d items; tasks %s (test users %s); built in %.1f s", data.name,
                len(users), len(data.vocab) - 1, list(tasks), [len(t.test) for t in tasks.values()],
                time.monotonic() - started)
    return shared


def _item_counts(trained: Any, vocab_size: int) -> np.ndarray:
    """(V,) events per item in the rows pre-training trains on (its leave-one-out train split; 0 is padding)."""
    rows = trained["item_ids"]
    items = np.concatenate([np.asarray(r, dtype=np.int64) for r in rows]) if rows else np.zeros(0, np.int64)
    return np.bincount(items, minlength=vocab_size)


def _training_users(shared: _Shared, fraction: float) -> set[str] | None:
    if fraction >= 1.0:
        return None
    count = max(1, int(round(fraction * len(shared.user_order))))
    return set(shared.user_order[:count])


def _pretraining_data(shared: _Shared, users: set[str] | None) -> Any:
    """Each (selected) user's events before the earliest validation anchor of any task: no target leaks."""
    data, cut = shared.data, shared.cut
    sequences = data.sequences
    if users is not None:
        sequences = sequences.filter(lambda r: str(r["user_id"]) in users)
    columns = [c for c in ("item_ids", "timestamps", "action_ids", "ratings") if c in sequences.column_names]

    def truncate(row: dict[str, Any]) -> dict[str, Any]:
        stop = cut.get(str(row["user_id"]), len(row["item_ids"]))  # users no task evaluates keep every event
        return {c: row[c][:stop] if row[c] is not None else None for c in columns}

    sequences = sequences.map(truncate)
    sequences = sequences.filter(lambda r: len(r["item_ids"]) >= 3)
    return dataclasses.replace(data, sequences=sequences)


def _ensure_base(recipe: LadderRecipe, shared: _Shared, preset: str, fraction: float, run_dir: Path, base_dir: Path,
                 ladder_id: str, label: str) -> dict[str, Any]:
    """The finished base of this size (pre-trained now unless a finished one is there)."""
    done = base_dir / BASE_DONE
    if done.is_file():
        info = json.loads(done.read_text())
        if info.get("ladder_id") != ladder_id:
            raise ValueError(f"{base_dir} was trained by another ladder (ladder_id {info.get('ladder_id')}, this "
                             f"recipe's is {ladder_id}); choose another output_dir.")
        logger.info("%s: base already trained (%s), reused", label, base_dir)
        return info
    _clear_unfinished(base_dir, f"{label} pre-training")
    _claim(run_dir)
    _claim(base_dir)
    return _pretrain(recipe, shared, preset, fraction, base_dir, ladder_id, label)


def _pretrain(recipe: LadderRecipe, shared: _Shared, preset: str, fraction: float, base_dir: Path, ladder_id: str,
              label: str) -> dict[str, Any]:
    from transformers import set_seed

    from ..data import NextItemCollator, leave_one_out, sliding_windows
    from ..data.collators import with_lengths
    from ..evaluation import RankingProtocol
    from ..evaluation.baselines import popularity_scores
    from ..integrity import write_manifest
    from ..models.genrec import GenRecConfig, GenRecForNextItemPrediction, count_backbone_parameters
    from ..training.trainer import BUDGET_CLOCKS, GenRecTrainer, stopping_callbacks

    set_seed(recipe.seed)
    users = _training_users(shared, fraction)
    pre = _pretraining_data(shared, users)
    splits = leave_one_out(pre)
    section = recipe.data
    windows = sliding_windows(splits["train"], section.max_length, stride=section.window_stride)
    fixed: dict[str, Any] = {}
    if section.batching == "grouped":
        windows = with_lengths(windows, section.max_length)
        from ..data.collators import LENGTH_COLUMN

        fixed = {"train_sampling_strategy": "group_by_length", "length_column_name": LENGTH_COLUMN}
    data = shared.data
    config = GenRecConfig(**recipe.config_fields(preset, vocab_size=len(data.vocab),
                                                 num_action_types=data.num_action_types),
                          item_tower_config=shared.tower_config)
    model = GenRecForNextItemPrediction(config)
    counts = popularity_scores(splits["train"], config.vocab_size)
    model.set_item_frequencies(counts)
    if shared.store is not None:  # feature rows; items without training events score through the OOV vector
        from ..training.cold_start import known_items

        shared.store.apply_to(model, data.vocab, known=known_items(counts))
    backbone = count_backbone_parameters(model)
    logger.info("%s (%d backbone parameters, item vectors %d wide): pre-training on %d users' events before the "
                "task anchors (%d windows), time box %s min (%s clock)", label, backbone, config.head_output_size,
                len(pre.sequences), len(windows), recipe.max_train_minutes, recipe.budget_clock)
    args = dataclasses.replace(recipe, output_dir=str(base_dir)).training_arguments(**fixed)
    protocol = RankingProtocol(exclude_history=True)
    trainer = GenRecTrainer(
        model=model, args=args, train_dataset=windows, eval_dataset=splits["validation"],
        data_collator=NextItemCollator(section.max_length, mode="train", packing=section.batching == "packed"),
        eval_collator=NextItemCollator(section.max_length, mode="eval", exclude_history=True), protocol=protocol,
        ks=tuple(recipe.evaluation.ks),
        callbacks=stopping_callbacks(args, recipe.evaluation.early_stopping_patience, recipe.max_train_minutes,
                                     recipe.budget_clock),
    )
    budget_clock = BUDGET_CLOCKS[recipe.budget_clock]
    started, cpu_started, budget_started = time.monotonic(), time.process_time(), budget_clock()
    result = trainer.train()
    seconds, cpu_seconds = time.monotonic() - started, time.process_time() - cpu_started
    validation = trainer.evaluate(metric_key_prefix="validation")
    # The box is judged on the clock that ran it: under load, wall time passes a CPU box that was never reached.
    stop = _stop_reason(trainer, args, budget_clock() - budget_started, recipe.max_train_minutes)
    trainer.save_model(str(base_dir))
    write_manifest(base_dir)
    data.vocab.save(base_dir)
    for checkpoint in base_dir.glob("checkpoint-*"):
        shutil.rmtree(checkpoint, ignore_errors=True)
    info = {
        "ladder_id": ladder_id, "preset": preset, "data_fraction": fraction, "backbone_params": backbone,
        "total_params": sum(p.numel() for p in trainer.model.parameters()),
        "item_embedding_size": config.head_output_size, "train_users": len(pre.sequences),
        "train_events": int(sum(len(r) for r in splits["train"]["item_ids"])),
        "steps": trainer.state.global_step, "epochs": trainer.state.epoch, "seconds": seconds,
        "cpu_seconds": cpu_seconds, "budget_clock": recipe.budget_clock, "stop": stop,
        "train_loss": result.training_loss, "validation_mrr": validation.get("validation_mrr"),
        "finished_at": _now(),
    }
    (base_dir / BASE_DONE).write_text(json.dumps(info, indent=2))  # last: marks the base finished
    logger.info("%s: pre-trained %d steps (%.2f epochs) in %.1f min (%.1f CPU-min), stopped by %s; next-event "
                "validation mrr %.4f", label, info["steps"], info["epochs"] or 0.0, seconds / 60, cpu_seconds / 60,
                stop, info["validation_mrr"] or 0.0)
    return info


def _stop_reason(trainer: Any, args: Any, budget_seconds: float, minutes: float | None) -> str:
    """Why pre-training ended; `budget_seconds` is the time spent on the recipe's `budget_clock`."""
    if minutes and budget_seconds >= minutes * 60:
        return "time_box"
    if trainer.state.epoch is not None and trainer.state.epoch + 1e-6 < args.num_train_epochs:
        return "early_stopping"
    return "epochs"


def _run_task(recipe: LadderRecipe, shared: _Shared, preset: str, fraction: float, task_name: str, run_dir: Path,
              base_dir: Path, base_info: dict[str, Any], csv_path: Path, ladder_id: str,
              label: str) -> dict[str, Any]:
    import torch

    from ..data.collators import TaskCollator
    from ..evaluation.metrics import metrics_from_ranks
    from ..evaluation.protocols import rank_batches
    from ..integrity import verify_weights
    from ..models.genrec import GenRecForNextItemPrediction
    from ..training.finetune import finetune

    task = shared.tasks[task_name]
    mode = recipe.task_mode(task_name)
    task_dir = run_dir / task_name
    _clear_unfinished(task_dir, f"{label} task {task_name}")
    steps, seconds = 0, 0.0
    if mode == "zero_shot":
        verify_weights(base_dir)
        model: torch.nn.Module = GenRecForNextItemPrediction.from_pretrained(str(base_dir))
    else:
        _claim(task_dir)
        users = _training_users(shared, fraction)
        if users is not None:
            task = dataclasses.replace(task, train=task.train.filter(lambda r: str(r["user_id"]) in users))
        logger.info("%s %s: %s fine-tune (time box %s min)", label, task_name, mode, recipe.tasks.max_train_minutes)
        outcome = finetune(recipe.finetune_recipe(task_name, task_dir), base_dir, overwrite_output_dir=True,
                           task=task, data_name=shared.data.name)
        model = outcome.model
        steps, seconds = outcome.metrics["train"]["steps"], outcome.metrics["train"]["runtime_s"]
    collator = TaskCollator(recipe.data.max_length, mode="eval", exclude_history=task.protocol.exclude_history)
    ks = list(recipe.evaluation.ks)
    metrics, ranks = {}, {}
    for split in FIT_SPLITS:
        loader = DataLoader(getattr(task, split), batch_size=recipe.evaluation.batch_size, collate_fn=collator)
        ranks[split] = rank_batches(model, loader, task.protocol)
        metrics[split] = metrics_from_ranks(ranks[split], ks)
    fit = recipe.evaluation.fit_split
    ranks_file = Path(recipe.output_dir) / "ranks" / _run_name(preset, fraction) / f"{task_name}_{fit}.npy"
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
        "finetune_seconds": seconds, "seed": recipe.seed, "ranks_path": _relative(ranks_file, csv_path),
        "finished_at": _now(),
    }
    for k in ks:
        for name in ("hr", "ndcg", "recall"):
            row[f"{name}@{k}"] = chosen.get(f"{name}@{k}")
    return row
