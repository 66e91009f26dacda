"""Recipes: YAML hyperparameters → validated dataclasses, one schema for pre-training and fine-tuning.

Every recipe kind shares the top-level keys `output_dir`, `seed`, `max_train_minutes`, `budget_clock`, a `training:` section (any
`transformers.TrainingArguments` field) and the section bases `DataSection` / `EvaluationSection`; a kind adds its
own sections:

    pretrain (`Recipe`):          model, data (+ split, windows), training, evaluation (+ exclude_history, examples)
    finetune (`FinetuneRecipe`):  mode, keep_checkpoints, task, data, lora, training, evaluation (+ zero_shot)

Unknown keys are errors listing the allowed ones, and every value is type-checked (bools, ints, floats, strings,
lists) before any work starts. Command-line overrides use dotted keys: `--training.learning_rate 3e-4`.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
import yaml
from huggingface_hub.errors import StrictDataclassClassValidationError
from transformers import TrainingArguments

from ..data.collators import LENGTH_COLUMN
from ..evaluation import DEFAULT_KS
from ..models.genrec import SIZE_PRESETS, GenRecConfig
from .trainer import BUDGET_CLOCKS

TRAINING_ARGUMENT_FIELDS = {f.name for f in dataclasses.fields(TrainingArguments) if f.init}
# Set by the recipe runner itself (from other sections), so a recipe must not set them under `training:`.
RESERVED_TRAINING_KEYS = {"output_dir", "overwrite_output_dir", "remove_unused_columns", "metric_for_best_model",
                          "greater_is_better", "label_names", "seed"}

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
# Fine-tuning runs are shorter than pre-training: fewer epochs, one checkpoint kept, quiet progress.
DEFAULT_FINETUNE_ARGUMENTS: dict[str, Any] = {
    **DEFAULT_TRAINING_ARGUMENTS, "num_train_epochs": 10, "save_total_limit": 1, "disable_tqdm": True,
}
FINETUNE_MODES = ("lora", "full", "from_scratch")
SPLITS = ("leave_one_out", "time", "cold_items", "cold_time")
ITEM_FEATURE_OPTIONS = {"blocks", "text_encoder", "kg", "min_category_count", "serving_gap", "kg_dim", "hashing_dim",
                        "cache"}
# How training windows become batches: padded to the batch's longest row, grouped by length (Trainer's
# LengthGroupedSampler, less padding), or packed several per row (no padding, the same loss as padded).
BATCHING_MODES = ("padded", "grouped", "packed")
GROUPED_TRAINING_KEYS = ("train_sampling_strategy", "length_column_name")  # set by data.batching: grouped


# --- sections shared by every recipe kind ---------------------------------------------------------------------------


@dataclass
class DataSection:
    source: str = "synthetic"  # a path (file, folder or zip) or "synthetic[:key=value,...]"
    format: str | None = None  # loader name; None = detect from the file names
    column_map: dict[str, str] | None = None  # for generic csv/parquet: canonical name -> column name
    min_user_events: int = 2  # users with fewer events are dropped (and counted in the log)
    k_core: int | None = None  # iterative k-core filter on users and items
    max_length: int = 50  # most recent events the model reads per history

    def load(self) -> Any:
        """The section's event log as `InteractionData` (loader, column map and filters as configured)."""
        from ..data import load_interactions

        return load_interactions(self.source, format=self.format, column_map=self.column_map,
                                 min_user_events=self.min_user_events, k_core=self.k_core)


@dataclass
class EvaluationSection:
    ks: list[int] = field(default_factory=lambda: list(DEFAULT_KS))  # cut-offs of hr@K / ndcg@K (/ recall@K)
    metric_for_best_model: str = "mrr"  # validation metric that picks the best checkpoint
    early_stopping_patience: int | None = 3  # evaluations without improvement before stopping; None = never


@dataclass
class RecipeBase:
    """Top-level keys of every recipe kind. Subclasses add sections (dataclass-typed fields)."""

    output_dir: str = "runs/genrec"
    seed: int = 0  # seeds model init, data order, dropout and negative sampling
    max_train_minutes: float | None = None  # stop training after this many minutes of `budget_clock` time
    budget_clock: str = "wall"  # "wall" (elapsed) or "cpu" (this process's CPU time: equal compute under shared cores)
    training: dict[str, Any] = field(default_factory=dict)  # any TrainingArguments field

    default_training_arguments: ClassVar[dict[str, Any]] = DEFAULT_TRAINING_ARGUMENTS
    metric_prefixes: ClassVar[tuple[str, ...]] = ("hr", "ndcg")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def training_arguments(self, **fixed: Any) -> TrainingArguments:
        """`TrainingArguments` from the `training:` section on top of this kind's defaults; the runner's own
        settings (`fixed`, e.g. `label_names`) cannot be set by the recipe."""
        values = {**self.default_training_arguments, **self.training}
        if not torch.cuda.is_available():
            values.setdefault("use_cpu", True)
        evaluation: EvaluationSection = getattr(self, "evaluation")
        return TrainingArguments(
            output_dir=self.output_dir, remove_unused_columns=False, seed=self.seed, greater_is_better=True,
            metric_for_best_model=f"eval_{evaluation.metric_for_best_model}", **fixed, **values,
        )

    def validate(self, source: str) -> None:
        """Checks every kind shares; subclasses extend it with their own."""
        if self.data.max_length < 1:  # type: ignore[attr-defined]
            raise ValueError(f"{source}: data.max_length={self.data.max_length}; "  # type: ignore[attr-defined]
                             "expected a positive integer.")
        evaluation: EvaluationSection = getattr(self, "evaluation")
        if not evaluation.ks or not all(k > 0 for k in evaluation.ks):
            raise ValueError(f"{source}: evaluation.ks={evaluation.ks}; expected positive integers.")
        allowed = {"mrr"} | {f"{m}@{k}" for m in self.metric_prefixes for k in evaluation.ks}
        if evaluation.metric_for_best_model not in allowed:
            raise ValueError(f"{source}: evaluation.metric_for_best_model={evaluation.metric_for_best_model!r}; "
                             f"expected one of {sorted(allowed)}.")
        if self.max_train_minutes is not None and self.max_train_minutes <= 0:
            raise ValueError(f"{source}: max_train_minutes={self.max_train_minutes}; expected a positive number "
                             "of minutes (or leave it out).")
        if self.budget_clock not in BUDGET_CLOCKS:
            raise ValueError(f"{source}: budget_clock={self.budget_clock!r}; expected one of {sorted(BUDGET_CLOCKS)}.")


# --- pre-training ---------------------------------------------------------------------------------------------------


def validate_item_tower(item_tower: dict[str, Any] | None, item_features: dict[str, Any],
                        overrides: dict[str, Any], source: str) -> None:
    """Check a `model.item_tower` / `model.item_features` pair (the tower's schema comes from the data later)."""
    if item_tower is not None:
        from ..models.genrec.configuration_item_tower import GenRecItemTowerConfig

        options = {k: v for k, v in item_tower.items() if not (k == "mask_prob" and v == "auto")}
        if "feature_schema" in options:
            raise ValueError(f"{source}: model.item_tower.feature_schema comes from the data (model.item_features).")
        options["feature_schema"] = [{"name": "placeholder", "kind": "dense", "dim": 1}]  # built from the data
        try:
            GenRecItemTowerConfig(**options)
        except (ValueError, TypeError) as error:
            raise ValueError(f"{source}: model.item_tower: {error}") from None
        if "item_tower_config" in overrides:
            raise ValueError(f"{source}: set the tower in model.item_tower, not model.overrides.item_tower_config.")
    unknown = sorted(set(item_features) - ITEM_FEATURE_OPTIONS)
    if unknown:
        raise ValueError(f"{source}: model.item_features: unknown option(s) {unknown}; expected some of "
                         f"{sorted(ITEM_FEATURE_OPTIONS)}.")


@dataclass
class ModelSection:
    preset: str = "genrec-2m"  # a name of genrec_hf.SIZE_PRESETS
    overrides: dict[str, Any] = field(default_factory=dict)  # GenRecConfig fields on top of the preset
    init_from: str | None = None  # start from a saved model folder instead of random weights
    # Cold start (docs/cold_start.md): GenRecItemTowerConfig options (fusion, mask_prob: a number or "auto" = the
    # data's cold-start rate, tower_hidden_size, ...); None = ID embeddings only.
    item_tower: dict[str, Any] | None = None
    # Item feature store options: blocks (genres, attributes, year, title_text, kg), text_encoder (a folder,
    # "minilm" or "hashing"), kg (a path or "auto": the .kg beside the data), min_category_count, serving_gap,
    # cache (a folder for the built store, shared across runs; default output_dir/item_feature_store).
    item_features: dict[str, Any] = field(default_factory=dict)


@dataclass
class PretrainDataSection(DataSection):
    split: str = "leave_one_out"  # leave_one_out | time | cold_items (hold out items) | cold_time (cold-start)
    cold_item_fraction: float = 0.1  # for split: cold_items, the share of items held out of training entirely
    time_split_quantile: float = 0.9  # for split: time, when no time_split_cut is given
    time_split_cut: int | None = None  # for split: time, a unix timestamp
    window_stride: int | None = None  # sliding-window stride for long training histories (None = max_length)
    batching: str = "padded"  # padded | grouped | packed (BATCHING_MODES)


@dataclass
class PretrainEvaluationSection(EvaluationSection):
    exclude_history: bool = True  # never rank items the user already has in the history (HSTU protocol)
    num_examples: int = 3  # users whose recommendations are printed at the end


@dataclass
class Recipe(RecipeBase):
    """A pre-training recipe (`genrec-hf train`)."""

    model: ModelSection = field(default_factory=ModelSection)
    data: PretrainDataSection = field(default_factory=PretrainDataSection)
    evaluation: PretrainEvaluationSection = field(default_factory=PretrainEvaluationSection)

    def validate(self, source: str) -> None:
        super().validate(source)
        if self.model.preset not in SIZE_PRESETS:
            raise ValueError(f"{source}: model.preset={self.model.preset!r} is unknown; expected one of "
                             f"{sorted(SIZE_PRESETS)}.")
        config_fields = set(GenRecConfig().to_dict())
        bad = sorted(set(self.model.overrides) - config_fields)
        if bad:
            raise ValueError(f"{source}: model.overrides: unknown GenRecConfig field(s) {bad}.")
        hints = typing.get_type_hints(GenRecConfig.__init__)
        for key, value in self.model.overrides.items():
            if key in hints and not _matches(value, hints[key]):
                raise ValueError(f"{source}: model.overrides.{key}={value!r} has the wrong type: expected "
                                 f"{_type_name(hints[key])}.")
        try:
            GenRecConfig.from_preset(self.model.preset, **self.model.overrides)
        except (ValueError, TypeError, StrictDataclassClassValidationError) as error:
            raise ValueError(f"{source}: model: {error}") from None
        if self.data.split not in SPLITS:
            raise ValueError(f"{source}: data.split={self.data.split!r}; expected one of {SPLITS}.")
        validate_item_tower(self.model.item_tower, self.model.item_features, self.model.overrides, source)
        if self.data.batching not in BATCHING_MODES:
            raise ValueError(f"{source}: data.batching={self.data.batching!r}; expected one of {BATCHING_MODES}.")
        clash = sorted(set(GROUPED_TRAINING_KEYS) & set(self.training))
        if self.data.batching == "grouped" and clash:
            raise ValueError(f"{source}: training: {clash} are set by data.batching: grouped; leave them out.")

    def training_arguments(self, **fixed: Any) -> TrainingArguments:
        """`RecipeBase.training_arguments`, with Trainer's length-grouped sampler for `data.batching: grouped`
        (over the `length` column `prepare_data` adds to the training windows)."""
        if self.data.batching == "grouped":
            fixed = {"train_sampling_strategy": "group_by_length", "length_column_name": LENGTH_COLUMN,
                     **fixed}
        return super().training_arguments(**fixed)


# --- fine-tuning ----------------------------------------------------------------------------------------------------


@dataclass
class TaskSection:
    name: str = "short_horizon"  # a genrec_hf.data.tasks.TASKS name
    params: dict[str, Any] = field(default_factory=dict)  # keyword arguments of the task builder


@dataclass
class LoraSection:
    r: int = 8  # LoRA rank
    alpha: int = 16  # LoRA scaling numerator (scale = alpha / r)
    dropout: float = 0.0  # dropout on the LoRA input
    target_modules: list[str] | None = None  # projection names to adapt (None = all of adapters.DEFAULT_TARGET_MODULES)
    layers: list[int] | None = None  # decoder layers to adapt (None = all)
    train_head: Any = True  # True | False | "projection" | "item_vectors" | "all" | list
    item_tower: str = "frozen"  # cold-start item tower: frozen (not adapted) | lora (LoRA on its Linear layers too)


@dataclass
class FinetuneEvaluationSection(EvaluationSection):
    zero_shot: bool = True  # also evaluate the untouched base on the task's test rows


@dataclass
class FinetuneRecipe(RecipeBase):
    """A fine-tuning recipe (`genrec-hf finetune`): one downstream task on a pre-trained base."""

    output_dir: str = "runs/finetune"
    mode: str = "lora"  # lora | full | from_scratch
    keep_checkpoints: bool = False  # keep Trainer's checkpoint-* folders (default: the output holds the result only)
    task: TaskSection = field(default_factory=TaskSection)
    data: DataSection = field(default_factory=DataSection)
    lora: LoraSection = field(default_factory=LoraSection)
    evaluation: FinetuneEvaluationSection = field(default_factory=FinetuneEvaluationSection)

    default_training_arguments: ClassVar[dict[str, Any]] = DEFAULT_FINETUNE_ARGUMENTS
    metric_prefixes: ClassVar[tuple[str, ...]] = ("hr", "ndcg", "recall")

    def validate(self, source: str) -> None:
        from ..adapters import lora_config
        from ..data.tasks import TASKS

        super().validate(source)
        if self.mode not in FINETUNE_MODES:
            raise ValueError(f"{source}: mode={self.mode!r}; expected one of {FINETUNE_MODES}.")
        if self.task.name not in TASKS:
            raise ValueError(f"{source}: task.name={self.task.name!r}; registered tasks are {sorted(TASKS)}.")
        parameters = list(inspect.signature(TASKS[self.task.name]).parameters.values())[1:]  # after `data`
        allowed = [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        unknown = sorted(set(self.task.params) - set(allowed))
        if unknown and not any(p.kind is p.VAR_KEYWORD for p in parameters):
            raise ValueError(f"{source}: task.params: task {self.task.name!r} has no parameter(s) {unknown}; its "
                             f"parameters are {allowed}.")
        lora = self.lora
        try:
            lora_config(r=lora.r, alpha=lora.alpha, dropout=lora.dropout, target_modules=lora.target_modules,
                        layers=lora.layers, train_head=lora.train_head, item_tower=lora.item_tower)
        except (ValueError, TypeError) as error:
            raise ValueError(f"{source}: lora: {error}") from None


# --- parsing --------------------------------------------------------------------------------------------------------

RecipeT = TypeVar("RecipeT", bound=RecipeBase)


def _type_name(hint: Any) -> str:
    if hint is type(None):
        return "null"
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(hint))
    if origin is not None:
        return f"a {origin.__name__} of {', '.join(_type_name(a) for a in typing.get_args(hint))}"
    return getattr(hint, "__name__", str(hint))


def _matches(value: Any, hint: Any) -> bool:
    """Whether a parsed YAML value fits a (simple) type hint; `Any` and unknown hints always match."""
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in typing.get_args(hint))
    if origin is list:
        (item,) = typing.get_args(hint) or (Any,)
        return isinstance(value, list) and all(_matches(v, item) for v in value)
    if origin is dict:
        key, item = typing.get_args(hint) or (Any, Any)
        return isinstance(value, dict) and all(_matches(k, key) and _matches(v, item) for k, v in value.items())
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def build_section(cls: type, values: Any, where: str) -> Any:
    """A section dataclass from a mapping: unknown keys and wrongly typed values are errors naming them."""
    if values is None:
        return cls()
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(values).__name__} ({values!r}).")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed keys are {sorted(known)}.")
    for key, value in values.items():
        if not _matches(value, hints[key]):
            raise ValueError(f"{where}.{key}={value!r} has the wrong type: expected {_type_name(hints[key])}.")
    return cls(**values)


def _check_training(training: Any, source: str) -> dict[str, Any]:
    if not isinstance(training, dict):
        raise ValueError(f"{source}: training: expected a mapping of TrainingArguments fields, got "
                         f"{type(training).__name__}.")
    bad = sorted(set(training) - TRAINING_ARGUMENT_FIELDS)
    if bad:
        raise ValueError(f"{source}: training: unknown TrainingArguments field(s) {bad}.")
    reserved = sorted(set(training) & RESERVED_TRAINING_KEYS)
    if reserved:
        raise ValueError(f"{source}: training: {reserved} are set by the recipe runner (use output_dir and seed at "
                         "the top level, evaluation.metric_for_best_model, and --overwrite_output_dir on the command "
                         "line).")
    hints = typing.get_type_hints(TrainingArguments)
    for key, value in training.items():
        hint = hints.get(key, Any)
        if typing.get_origin(hint) in (typing.Union, types.UnionType) or hint in (bool, int, float):
            # Only simple scalar fields are checked; TrainingArguments accepts strings for its enum fields.
            simple = [a for a in typing.get_args(hint) or (hint,) if a in (bool, int, float, type(None))]
            if simple and len(simple) == len(typing.get_args(hint) or (hint,)) and not _matches(value, hint):
                raise ValueError(f"{source}: training.{key}={value!r} has the wrong type: expected "
                                 f"{_type_name(hint)}.")
    return dict(training)


def recipe_from_dict(raw: Any, source: str = "recipe", kind: type[RecipeT] = Recipe) -> RecipeT:  # type: ignore[assignment]
    """Validate a parsed recipe of `kind`; every error names the section, the key and what is allowed."""
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: a recipe must be a YAML mapping, got {type(raw).__name__}.")
    hints = typing.get_type_hints(kind)
    fields = {f.name: f for f in dataclasses.fields(kind)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ValueError(f"{source}: unknown top-level key(s) {unknown}; allowed keys are {sorted(fields)}.")
    values: dict[str, Any] = {}
    for name, value in raw.items():
        hint = hints[name]
        if name == "training":
            values[name] = _check_training(value or {}, source)
        elif dataclasses.is_dataclass(hint):
            values[name] = build_section(hint, value, f"{source}: {name}")
        elif not _matches(value, hint):
            raise ValueError(f"{source}: {name}={value!r} has the wrong type: expected {_type_name(hint)}.")
        else:
            values[name] = value
    recipe = kind(**values)
    recipe.validate(source)
    return recipe


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


def load_recipe(path: str | Path, overrides: dict[str, str] | None = None,
                kind: type[RecipeT] = Recipe) -> RecipeT:  # type: ignore[assignment]
    """Read a YAML recipe of `kind` (`Recipe` or `FinetuneRecipe`), apply command-line overrides, validate it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Recipe {path} does not exist (expected a YAML file, e.g. recipes/pretrain/"
                                "genrec-2m.yaml or recipes/finetune/short_horizon_lora.yaml).")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not a valid YAML recipe: {error}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a recipe must be a YAML mapping of sections, got {type(raw).__name__}.")
    return recipe_from_dict(apply_overrides(raw, overrides or {}), source=str(path), kind=kind)
