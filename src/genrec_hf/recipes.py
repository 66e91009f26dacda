"""Training recipes: YAML hyperparameters → validated dataclasses (unknown keys are errors, never ignored).

A recipe has four sections plus the output folder:

    model:      preset + GenRecConfig overrides
    data:       where the events come from, how they are split and windowed
    training:   any `transformers.TrainingArguments` field
    evaluation: ranking cut-offs, early stopping, eval batch size

Command-line overrides use dotted keys: `--training.learning_rate 3e-4 --model.preset genrec-8m`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from transformers import TrainingArguments

from .configuration_genrec import SIZE_PRESETS, GenRecConfig

TRAINING_ARGUMENT_FIELDS = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
# Set by the recipe runner itself (from other sections), so a recipe must not set them under `training:`.
RESERVED_TRAINING_KEYS = {"output_dir", "overwrite_output_dir", "remove_unused_columns", "metric_for_best_model",
                          "greater_is_better", "label_names", "seed"}


@dataclass
class ModelSection:
    preset: str = "genrec-2m"  # a name of genrec_hf.SIZE_PRESETS
    overrides: dict[str, Any] = field(default_factory=dict)  # GenRecConfig fields on top of the preset
    init_from: str | None = None  # start from a saved model folder instead of random weights


@dataclass
class DataSection:
    source: str = "synthetic"  # a path (file, folder or zip) or "synthetic[:key=value,...]"
    format: str | None = None  # loader name; None = detect from the file names
    column_map: dict[str, str] | None = None  # for generic csv/parquet: canonical name -> column name
    split: str = "leave_one_out"  # "leave_one_out" or "time"
    time_split_quantile: float = 0.9  # for split: time, when no time_split_cut is given
    time_split_cut: int | None = None  # for split: time, a unix timestamp
    min_user_events: int = 2  # users with fewer events are dropped (and counted in the log)
    k_core: int | None = None  # iterative k-core filter on users and items
    max_length: int = 50  # most recent events the model reads per history
    window_stride: int | None = None  # sliding-window stride for long training histories (None = max_length)


@dataclass
class EvaluationSection:
    ks: list[int] = field(default_factory=lambda: [1, 5, 10, 50, 200])  # cut-offs of hr@K / ndcg@K
    metric_for_best_model: str = "mrr"  # validation metric that picks the best checkpoint
    early_stopping_patience: int | None = 3  # evaluations without improvement before stopping; None = never
    exclude_history: bool = True  # never rank items the user already has in the history (HSTU protocol)
    num_examples: int = 3  # users whose recommendations are printed at the end


@dataclass
class Recipe:
    output_dir: str = "runs/genrec"
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    training: dict[str, Any] = field(default_factory=dict)
    evaluation: EvaluationSection = field(default_factory=EvaluationSection)
    seed: int = 0
    max_train_minutes: float | None = None  # stop training after this wall time (equal-CPU-time comparisons)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def build_section(cls: type, values: Any, where: str) -> Any:
    if values is None:
        return cls()
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(values).__name__} ({values!r}).")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed keys are {sorted(known)}.")
    return cls(**values)


def check_recipe_shape(raw: Any, recipe_cls: type, source: str) -> dict[str, Any]:
    """Shared checks of every recipe kind: a mapping, known top-level keys, real TrainingArguments fields that the
    runner does not set itself. Returns the `training:` section."""
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: a recipe must be a YAML mapping, got {type(raw).__name__}.")
    top = {f.name for f in dataclasses.fields(recipe_cls)}
    unknown = sorted(set(raw) - top)
    if unknown:
        raise ValueError(f"{source}: unknown top-level key(s) {unknown}; allowed keys are {sorted(top)}.")
    training = raw.get("training") or {}
    if not isinstance(training, dict):
        raise ValueError(f"{source}: training: expected a mapping of TrainingArguments fields.")
    bad = sorted(set(training) - TRAINING_ARGUMENT_FIELDS)
    if bad:
        raise ValueError(f"{source}: training: unknown TrainingArguments field(s) {bad}.")
    reserved = sorted(set(training) & RESERVED_TRAINING_KEYS)
    if reserved:
        raise ValueError(f"{source}: training: {reserved} are set by the recipe runner (use output_dir and seed at "
                         "the top level, evaluation.metric_for_best_model, and --overwrite_output_dir on the command "
                         "line).")
    return dict(training)


def recipe_from_dict(raw: dict[str, Any], source: str = "recipe") -> Recipe:
    """Validate a parsed recipe; every error names the section, the key and what is allowed."""
    training = check_recipe_shape(raw, Recipe, source)
    recipe = Recipe(
        output_dir=str(raw.get("output_dir", Recipe.output_dir)),
        model=build_section(ModelSection, raw.get("model"), f"{source}: model"),
        data=build_section(DataSection, raw.get("data"), f"{source}: data"),
        training=training,
        evaluation=build_section(EvaluationSection, raw.get("evaluation"), f"{source}: evaluation"),
        seed=int(raw.get("seed", 0)),
        max_train_minutes=raw.get("max_train_minutes"),
    )
    validate_recipe(recipe, source)
    return recipe


def validate_recipe(recipe: Recipe, source: str = "recipe") -> None:
    """Check values that are knowable before loading data: preset, config overrides, split, sizes."""
    if recipe.model.preset not in SIZE_PRESETS:
        raise ValueError(f"{source}: model.preset={recipe.model.preset!r} is unknown; expected one of "
                         f"{sorted(SIZE_PRESETS)}.")
    config_fields = set(GenRecConfig().to_dict())
    bad = sorted(set(recipe.model.overrides) - config_fields)
    if bad:
        raise ValueError(f"{source}: model.overrides: unknown GenRecConfig field(s) {bad}.")
    try:
        GenRecConfig.from_preset(recipe.model.preset, **recipe.model.overrides)
    except ValueError as error:
        raise ValueError(f"{source}: model: {error}") from None
    if recipe.data.split not in ("leave_one_out", "time"):
        raise ValueError(f"{source}: data.split={recipe.data.split!r}; expected 'leave_one_out' or 'time'.")
    if recipe.data.max_length < 1:
        raise ValueError(f"{source}: data.max_length={recipe.data.max_length}; expected a positive integer.")
    if not all(isinstance(k, int) and k > 0 for k in recipe.evaluation.ks):
        raise ValueError(f"{source}: evaluation.ks={recipe.evaluation.ks}; expected positive integers.")
    allowed_metrics = {"mrr"} | {f"{m}@{k}" for m in ("hr", "ndcg") for k in recipe.evaluation.ks}
    if recipe.evaluation.metric_for_best_model not in allowed_metrics:
        raise ValueError(f"{source}: evaluation.metric_for_best_model={recipe.evaluation.metric_for_best_model!r}; "
                         f"expected one of {sorted(allowed_metrics)}.")


def _coerce_numbers(value: Any) -> Any:
    """YAML 1.1 reads `1e-3` (no dot) as a string; turn such strings into floats, recursively."""
    if isinstance(value, dict):
        return {k: _coerce_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_coerce_numbers(v) for v in value]
    if isinstance(value, str):
        try:
            return float(value) if any(c in value.lower() for c in ".e") and value.strip() else value
        except ValueError:
            return value
    return value


def apply_overrides(raw: dict[str, Any], overrides: dict[str, str]) -> dict[str, Any]:
    """Apply `section.key=value` overrides (values parsed as YAML scalars) to a raw recipe dict."""
    raw = yaml.safe_load(yaml.safe_dump(raw)) or {}
    for dotted, text in overrides.items():
        value = yaml.safe_load(text) if isinstance(text, str) else text
        node = raw
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"Override --{dotted}: {part!r} is not a section.")
        node[leaf] = value
    return _coerce_numbers(raw)


def load_recipe(path: str | Path, overrides: dict[str, str] | None = None) -> Recipe:
    """Read a YAML recipe, apply command-line overrides and validate it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Recipe {path} does not exist (expected a YAML file, e.g. recipes/pretrain/"
                                "genrec-2m.yaml).")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML: {error}") from None
    return recipe_from_dict(apply_overrides(raw, overrides or {}), source=str(path))
