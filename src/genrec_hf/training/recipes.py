"""Recipes: YAML hyperparameters → typed, validated dataclasses, one schema family for every kind of run.

Every recipe kind shares the top-level keys `output_dir`, `seed`, `max_train_minutes`, `budget_clock`, a `training:`
section (any `transformers.TrainingArguments` field) and the section bases `DataSection` / `EvaluationSection`; a
kind adds its own sections:

    pretrain (`Recipe`):          model (+ item_tower, item_features), data (+ split, windows), objective,
                                  training, evaluation (+ exclude_history, examples)
    finetune (`FinetuneRecipe`):  mode, keep_checkpoints, task, data, lora, training, evaluation (+ zero_shot)
    ladder (`scaling.ladder.LadderRecipe`): a pretrain recipe and a finetune recipe as templates

How a recipe is read, and by which library:

* PyYAML reads the file with YAML 1.2 scalars (`1e-3` is a float and `no` a string, as in every YAML 1.2 tool
  and JSON), after a size bound that an alias "bomb" cannot pass.
* Command-line overrides `--section.key value` set one key of the mapping each (values parsed as YAML scalars).
* pydantic validates the mapping into the dataclasses below (`TypeAdapter`): nested sections from mappings,
  unknown keys, values of the wrong type and values outside a `Literal` are errors, reported here as one line per
  recipe naming the key (`data.max_length='fifty' has the wrong type: expected int`). The sections stay plain
  dataclasses (`dataclasses.asdict` / `replace` work); pydantic only parses and checks them. Checks that span keys
  (a preset name, GenRecConfig overrides, the TrainingArguments section) are each kind's `validate`.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import torch
import yaml
from huggingface_hub.errors import StrictDataclassClassValidationError
from pydantic import ConfigDict, Strict, TypeAdapter, ValidationError, with_config
from transformers import TrainingArguments
from transformers.integrations import is_tensorboard_available

from ..adapters import lora_config
from ..data import InteractionData, load_interactions
from ..data.collators import LENGTH_COLUMN
from ..data.item_features import FEATURE_BLOCKS
from ..data.mtp import MultiTokenTargets
from ..data.tasks import TASKS, check_task_params
from ..evaluation import DEFAULT_KS
from ..models.genrec import SIZE_PRESETS, GenRecConfig
from ..models.genrec.configuration_item_tower import FUSIONS, GenRecItemTowerConfig
from .trainer import BUDGET_CLOCKS

# Scalars as a recipe means them: no bool for an int, no string for a number (YAML 1.2 reads 1e-3 as a float).
Int = Annotated[int, Strict()]
Float = Int | Annotated[float, Strict()]  # a number as written (lr 1, minutes 2), never a bool or a string
Bool = Annotated[bool, Strict()]
Str = Annotated[str, Strict()]

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
    dataloader_num_workers=0,
    disable_tqdm=False,
)
# Fine-tuning runs are shorter than pre-training: fewer epochs, one checkpoint kept, quiet progress.
DEFAULT_FINETUNE_ARGUMENTS: dict[str, Any] = {
    **DEFAULT_TRAINING_ARGUMENTS, "num_train_epochs": 10, "save_total_limit": 1, "disable_tqdm": True,
}
FinetuneMode = Literal["lora", "full", "from_scratch"]
FINETUNE_MODES: tuple[str, ...] = typing.get_args(FinetuneMode)
Split = Literal["leave_one_out", "time", "cold_items", "cold_time"]
# How training windows become batches: padded to the batch's longest row, grouped by length (Trainer's
# LengthGroupedSampler, less padding), or packed several per row (no padding, the same loss as padded).
Batching = Literal["padded", "grouped", "packed"]
BATCHING_MODES: tuple[str, ...] = typing.get_args(Batching)
GROUPED_TRAINING_KEYS = ("train_sampling_strategy", "length_column_name")  # set by data.batching: grouped
BudgetClock = Literal["wall", "cpu"]
# GenRecConfig fields that were training-only and moved into recipe sections (old recipes get a pointer).
MOVED_CONFIG_FIELDS = {"objective": "objective.type", "mtp_num_targets": "objective.num_targets",
                       "mtp_horizon_seconds": "objective.horizon_seconds",
                       "mtp_half_life_seconds": "objective.half_life_seconds",
                       "mtp_reward_column": "objective.reward_column", "mtp_min_reward": "objective.min_reward",
                       "mtp_weight_normalization": "objective.weight_normalization"}
MAX_RECIPE_NODES = 100_000  # values in a recipe after YAML aliases are expanded; a real recipe has a few hundred
MAX_RECIPE_BYTES = 1 << 20

section = with_config(ConfigDict(extra="forbid"))  # every section: unknown keys are errors


def default_report_to() -> list[str]:
    """`training.report_to` when a recipe does not set it: TensorBoard when it is installed (offline, event files in
    OUTPUT_DIR/runs; `pip install "genrec-hf[tracking]"`), else no tracking. A recipe turns on trackio or W&B with
    `report_to: trackio` / `wandb` (or several: `[tensorboard, wandb]`), and off with `none`."""
    return ["tensorboard"] if is_tensorboard_available() else []


# --- sections shared by every recipe kind ---------------------------------------------------------------------------


@section
@dataclass
class DataSection:
    source: Str = "synthetic"  # a path (file, folder or zip) or "synthetic[:key=value,...]"
    format: Str | None = None  # loader name; None = detect from the file names
    column_map: dict[Str, Str] | None = None  # for generic csv/parquet: canonical name -> column name
    min_user_events: Int = 2  # users with fewer events are dropped (and counted in the log)
    k_core: Int | None = None  # iterative k-core filter on users and items
    max_length: Int = 50  # most recent events the model reads per history

    def load(self) -> InteractionData:
        """The section's event log as `InteractionData` (loader, column map and filters as configured)."""
        return load_interactions(self.source, format=self.format, column_map=self.column_map,
                                 min_user_events=self.min_user_events, k_core=self.k_core)


@section
@dataclass
class EvaluationSection:
    ks: list[Int] = field(default_factory=lambda: list(DEFAULT_KS))  # cut-offs of hr@K / ndcg@K (/ recall@K)
    metric_for_best_model: Str = "mrr"  # validation metric that picks the best checkpoint
    early_stopping_patience: Int | None = 3  # evaluations without improvement before stopping; None = never
    # Validation (checkpoint selection, early stopping, the `validation` metrics) on this many users drawn once with
    # the recipe's seed; None = every validation user. The test set is always ranked whole, once, at the end.
    validation_users: Int | None = None
    # The final test on this many users drawn once with the seed (streamed: the first test_users / shards users of
    # each shard); None = every test user. A sample is for a quick look at a huge log; report on the whole set.
    test_users: Int | None = None


@section
@dataclass
class RecipeBase:
    """Top-level keys of every recipe kind. Subclasses add sections (dataclass-typed fields)."""

    output_dir: Str = "runs/genrec"
    seed: Int = 0  # seeds model init, data order, dropout and negative sampling
    max_train_minutes: Float | None = None  # stop training after this many minutes of `budget_clock` time
    budget_clock: BudgetClock = "wall"  # "wall" (elapsed) or "cpu" (this process's CPU time: fair on shared cores)
    training: dict[Str, Any] = field(default_factory=dict)  # any TrainingArguments field

    default_training_arguments: ClassVar[dict[str, Any]] = DEFAULT_TRAINING_ARGUMENTS
    metric_prefixes: ClassVar[tuple[str, ...]] = ("hr", "ndcg")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def training_arguments(self, **fixed: Any) -> TrainingArguments:
        """`TrainingArguments` from the `training:` section on top of this kind's defaults; the runner's own
        settings (`fixed`, e.g. `label_names`) cannot be set by the recipe."""
        values = {**self.default_training_arguments, **self.training}
        values.setdefault("report_to", default_report_to())
        if not torch.cuda.is_available():
            values.setdefault("use_cpu", True)
        evaluation: EvaluationSection = getattr(self, "evaluation")
        return TrainingArguments(
            output_dir=self.output_dir, remove_unused_columns=False, seed=self.seed, greater_is_better=True,
            metric_for_best_model=f"eval_{evaluation.metric_for_best_model}", **fixed, **values,
        )

    def validate(self, source: str) -> None:
        """Checks that span keys, shared by every kind; subclasses extend it with their own."""
        self.training = check_training_section(self.training, source)
        values = {**self.default_training_arguments, **self.training}
        if not (values.get("max_steps") or 0) > 0 and not (values.get("num_train_epochs") or 0) > 0:
            raise ValueError(f"{source}: training.num_train_epochs={values.get('num_train_epochs')!r} trains nothing "
                             "(the run would save an untrained model with metrics and a card); expected a number "
                             "> 0, or training.max_steps > 0.")
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
        for key in ("validation_users", "test_users"):
            count = getattr(evaluation, key)
            if count is not None and count < 1:
                raise ValueError(f"{source}: evaluation.{key}={count}; expected a positive integer or null (every "
                                 f"{key.split('_')[0]} user).")
        if self.max_train_minutes is not None and self.max_train_minutes <= 0:
            raise ValueError(f"{source}: max_train_minutes={self.max_train_minutes}; expected a positive number "
                             "of minutes (or leave it out).")
        if self.budget_clock not in BUDGET_CLOCKS:  # the Literal and the clocks must not drift apart
            raise ValueError(f"{source}: budget_clock={self.budget_clock!r}; expected one of {sorted(BUDGET_CLOCKS)}.")


# --- pre-training ---------------------------------------------------------------------------------------------------


@section
@dataclass
class ItemTowerSection:
    """The cold-start semantic item tower (docs/cold_start.md); the feature schema comes from the data."""

    fusion: Literal[FUSIONS] = "sum"  # how ID and semantic vectors combine: sum | gate | semantic (features only)
    mask_prob: Float | Literal["auto"] = 0.0  # collaborative-embedding masking rate; "auto" = the data's cold rate
    tower_hidden_size: Int = 128  # width of the tower's MLP
    num_tower_layers: Int = 2  # layers of the tower's MLP
    tower_dropout: Float = 0.1  # dropout inside the tower

    def config_options(self, mask_prob: float | None = None) -> dict[str, Any]:
        """`GenRecItemTowerConfig` keyword arguments (with `mask_prob` resolved when it is "auto")."""
        options = dataclasses.asdict(self)
        if mask_prob is not None:
            options["mask_prob"] = mask_prob
        return options


@section
@dataclass
class ItemFeaturesSection:
    """Options of the item feature store the tower reads (`genrec_hf.data.item_features.ItemFeatureStore`)."""

    blocks: list[Literal[FEATURE_BLOCKS]] | None = None  # blocks to build; None = every block the metadata has
    text_encoder: Str | None = None  # titles: an encoder folder, "minilm" or "hashing"; None = hashing if asked
    kg: Str | None = "auto"  # knowledge graph: a .kg path, "auto" (the .kg beside the data) or None
    min_category_count: Int = 1  # categories held by fewer items get no column
    serving_gap: Float = 7 * 24 * 3600  # seconds from training to serving, for mask_prob "auto"
    kg_dim: Int = 64  # width of the knowledge-graph block
    hashing_dim: Int = 256  # width of the hashed TF-IDF title block
    cache: Str | None = None  # folder for the built store, shared across runs; None = output_dir/item_feature_store


# The decoding loss a catalog above `model.sampled_softmax_above_items` items gets unless `model.overrides` set
# `loss_type`: uniform negatives drawn per position (the setting that cost least quality in benchmarks/heads), so
# training memory is O(positions x negatives) instead of O(positions x catalog) (docs/scale.md).
SAMPLED_HEAD = {"loss_type": "sampled", "num_negatives": 128, "negative_sharing": "position",
                "negative_sampler": "uniform"}


@section
@dataclass
class ModelSection:
    preset: Str = "genrec-2m"  # a name of genrec_hf.SIZE_PRESETS
    overrides: dict[Str, Any] = field(default_factory=dict)  # GenRecConfig fields on top of the preset
    init_from: Str | None = None  # start from a saved model folder instead of random weights
    # Catalogs larger than this train with sampled softmax (`SAMPLED_HEAD`) unless overrides set loss_type; a full
    # softmax materialises positions x catalog logits (~55 GB at 1e6 items for a 128 x 50 batch). None = never.
    sampled_softmax_above_items: Int | None = 50_000
    item_tower: ItemTowerSection | None = None  # the cold-start item tower; None = ID embeddings only
    item_features: ItemFeaturesSection = field(default_factory=ItemFeaturesSection)  # what the tower reads


@section
@dataclass
class ObjectiveSection:
    """The training targets (docs/method.md): the next event, or a weighted set of future events (paper §4).
    The decoding head, the checkpoint and serving are the same either way, so none of this is in the model config."""

    type: Literal["ntp", "mtp"] = "ntp"  # ntp: next-token prediction | mtp: multi-token prediction
    num_targets: Int | None = 5  # mtp K: at most this many future events per position (None: all within horizon)
    horizon_seconds: Float | None = None  # mtp H: only events at most H seconds after the context
    half_life_seconds: Float | None = 3600.0  # mtp beta: weights halve every beta seconds (None: no decay)
    reward_column: Str | None = None  # mtp r: a per-event numeric column of the data (None: r = 1)
    min_reward: Float | None = None  # mtp: only events whose reward is at least this are targets
    weight_normalization: Literal["position", "none"] = "position"  # position: K = 1 is exactly NTP | none: plain sum

    def multi_token(self) -> MultiTokenTargets:
        """The section's multi-token targets (built, so checked, whatever `type` is)."""
        return MultiTokenTargets(num_targets=self.num_targets, horizon_seconds=self.horizon_seconds,
                                 half_life_seconds=self.half_life_seconds, reward_column=self.reward_column,
                                 min_reward=self.min_reward, weight_normalization=self.weight_normalization)

    def targets(self) -> MultiTokenTargets | None:
        """The multi-token targets the collator builds (None for next-token prediction)."""
        return self.multi_token() if self.type == "mtp" else None


@section
@dataclass
class PretrainDataSection(DataSection):
    split: Split = "leave_one_out"  # leave_one_out | time | cold_items (hold out items) | cold_time (cold-start)
    cold_item_fraction: Float = 0.1  # for split: cold_items, the share of items held out of training entirely
    time_split_quantile: Float = 0.9  # for split: time, when no time_split_cut is given
    time_split_cut: Int | None = None  # for split: time, a unix timestamp
    window_stride: Int | None = None  # sliding-window stride for long training histories (None = max_length)
    batching: Batching = "padded"  # padded | grouped | packed
    # Stream a prepared folder (`genrec-hf prepare`) shard by shard instead of loading it: each process reads its
    # own shards, memory does not grow with the log (docs/scale.md). Needs a prepared `source`.
    streaming: Bool = False
    shuffle_users: Int = 4096  # streaming: users whose windows are shuffled together (0 = shard order)


@section
@dataclass
class PretrainEvaluationSection(EvaluationSection):
    exclude_history: Bool = True  # never rank items the user already has in the history (HSTU protocol)
    num_examples: Int = 3  # users whose recommendations are printed at the end


@section
@dataclass
class Recipe(RecipeBase):
    """A pre-training recipe (`genrec-hf train`)."""

    keep_checkpoints: Bool = True  # keep Trainer's checkpoint-* folders beside the final model (resumable)
    model: ModelSection = field(default_factory=ModelSection)
    data: PretrainDataSection = field(default_factory=PretrainDataSection)
    objective: ObjectiveSection = field(default_factory=ObjectiveSection)
    evaluation: PretrainEvaluationSection = field(default_factory=PretrainEvaluationSection)

    def validate(self, source: str) -> None:
        super().validate(source)
        model = self.model
        if model.preset not in SIZE_PRESETS:
            raise ValueError(f"{source}: model.preset={model.preset!r} is unknown; expected one of "
                             f"{sorted(SIZE_PRESETS)}.")
        check_config_overrides(model.overrides, source)
        try:
            GenRecConfig.from_preset(model.preset, **model.overrides)
        except (ValueError, TypeError, StrictDataclassClassValidationError) as error:
            raise ValueError(f"{source}: model: {error}") from None
        if model.item_tower is not None:
            check_item_tower(model.item_tower, source)
        try:
            self.objective.multi_token()  # a bad K waits for nobody to switch the type to mtp
        except ValueError as error:
            raise ValueError(f"{source}: objective: {error}") from None
        limit = model.sampled_softmax_above_items
        if limit is not None and limit < 1:
            raise ValueError(f"{source}: model.sampled_softmax_above_items={limit}; expected a positive integer or "
                             "null.")
        if self.data.streaming:
            self._validate_streaming(source)
        clash = sorted(set(GROUPED_TRAINING_KEYS) & set(self.training))
        if self.data.batching == "grouped" and clash:
            raise ValueError(f"{source}: training: {clash} are set by data.batching: grouped; leave them out.")

    def _validate_streaming(self, source: str) -> None:
        data = self.data
        problems = []
        if data.split not in ("leave_one_out", "time"):
            problems.append(f"data.split={data.split!r} (a streamed folder splits leave_one_out or time)")
        if data.batching == "grouped":
            problems.append("data.batching='grouped' (length grouping samples a dataset with a length; use packed)")
        if self.training.get("dataloader_num_workers", 0):
            problems.append("training.dataloader_num_workers > 0 (the stream position a resume needs is kept by the "
                            "main process)")
        if self.model.item_tower is not None and self.model.item_tower.mask_prob == "auto":
            problems.append('model.item_tower.mask_prob="auto" (give a number)')
        if data.shuffle_users < 0:
            problems.append(f"data.shuffle_users={data.shuffle_users} (0 or more)")
        if problems:
            raise ValueError(f"{source}: data.streaming: true cannot go with {'; '.join(problems)}.")

    def training_arguments(self, **fixed: Any) -> TrainingArguments:
        """`RecipeBase.training_arguments`, with Trainer's length-grouped sampler for `data.batching: grouped`
        (over the `length` column the run pipeline adds to the training windows)."""
        if self.data.batching == "grouped":
            fixed = {"train_sampling_strategy": "group_by_length", "length_column_name": LENGTH_COLUMN, **fixed}
        return super().training_arguments(**fixed)


def check_config_overrides(overrides: Mapping[str, Any], source: str, where: str = "model.overrides") -> None:
    """Every key a `GenRecConfig` field, of its declared type (the values' own rules are the config's)."""
    moved = sorted(set(overrides) & set(MOVED_CONFIG_FIELDS))
    if moved:
        raise ValueError(f"{source}: {where}: {moved} are not model fields any more (the training objective is a "
                         f"recipe section): use {[MOVED_CONFIG_FIELDS[k] for k in moved]}.")
    hints = typing.get_type_hints(GenRecConfig.__init__)
    unknown = sorted(set(overrides) - set(GenRecConfig().to_dict()))
    if unknown:
        raise ValueError(f"{source}: {where}: unknown GenRecConfig field(s) {unknown}.")
    for key, value in overrides.items():
        if key in hints:
            problem = type_problem(hints[key], value)
            if problem:
                raise ValueError(f"{source}: {where}.{key}={value!r} has the wrong type: expected {problem}.")


def check_item_tower(tower: ItemTowerSection, source: str, where: str = "model.item_tower") -> None:
    """The tower options as `GenRecItemTowerConfig` sees them (its schema comes from the data later)."""
    options = tower.config_options(mask_prob=0.0 if tower.mask_prob == "auto" else None)
    try:
        GenRecItemTowerConfig(feature_schema=[{"name": "placeholder", "kind": "dense", "dim": 1}], **options)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{source}: {where}: {error}") from None


# --- fine-tuning ----------------------------------------------------------------------------------------------------


@section
@dataclass
class TaskSection:
    name: Str = "short_horizon"  # a genrec_hf.data.tasks.TASKS name
    params: dict[Str, Any] = field(default_factory=dict)  # keyword arguments of the task builder


@section
@dataclass
class LoraSection:
    r: Int = 8  # LoRA rank
    alpha: Int = 16  # LoRA scaling numerator (scale = alpha / r)
    dropout: Float = 0.0  # dropout on the LoRA input
    target_modules: list[Str] | None = None  # projection names to adapt (None = adapters.DEFAULT_TARGET_MODULES)
    layers: list[Int] | None = None  # decoder layers to adapt (None = all)
    train_head: Any = True  # True | False | "projection" | "item_vectors" | "all" | list
    item_tower: Literal["frozen", "lora"] = "frozen"  # cold-start item tower: not adapted | LoRA on its Linears

    def config(self) -> Any:
        """The `peft.LoraConfig` of this section."""
        return lora_config(r=self.r, alpha=self.alpha, dropout=self.dropout, target_modules=self.target_modules,
                           layers=self.layers, train_head=self.train_head, item_tower=self.item_tower)


@section
@dataclass
class FinetuneEvaluationSection(EvaluationSection):
    zero_shot: Bool = True  # also evaluate the untouched base on the task's test rows


@section
@dataclass
class FinetuneRecipe(RecipeBase):
    """A fine-tuning recipe (`genrec-hf finetune`): one downstream task on a pre-trained base."""

    output_dir: Str = "runs/finetune"
    mode: FinetuneMode = "lora"  # lora | full | from_scratch
    keep_checkpoints: Bool = False  # keep Trainer's checkpoint-* folders (default: the output holds the result only)
    task: TaskSection = field(default_factory=TaskSection)
    data: DataSection = field(default_factory=DataSection)
    lora: LoraSection = field(default_factory=LoraSection)
    evaluation: FinetuneEvaluationSection = field(default_factory=FinetuneEvaluationSection)

    default_training_arguments: ClassVar[dict[str, Any]] = DEFAULT_FINETUNE_ARGUMENTS
    metric_prefixes: ClassVar[tuple[str, ...]] = ("hr", "ndcg", "recall")

    def validate(self, source: str) -> None:
        super().validate(source)
        check_task(self.task, source)
        try:
            self.lora.config()
        except (ValueError, TypeError) as error:
            raise ValueError(f"{source}: lora: {error}") from None


def check_task(task: TaskSection, source: str, where: str = "task") -> None:
    """A registered task name and parameters its builder takes."""
    if task.name not in TASKS:
        raise ValueError(f"{source}: {where}.name={task.name!r}; registered tasks are {sorted(TASKS)}.")
    parameters = list(inspect.signature(TASKS[task.name]).parameters.values())[1:]  # after `data`
    allowed = [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = sorted(set(task.params) - set(allowed))
    if unknown and not any(p.kind is p.VAR_KEYWORD for p in parameters):
        raise ValueError(f"{source}: {where}.params: task {task.name!r} has no parameter(s) {unknown}; its "
                         f"parameters are {allowed}.")
    try:
        check_task_params(task.name, task.params)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{source}: {where}.params: {error}") from None


# --- the training: section ------------------------------------------------------------------------------------------

_SIMPLE = (bool, int, float, type(None))


def check_training_section(training: Mapping[str, Any], source: str, where: str = "training") -> dict[str, Any]:
    """Known `TrainingArguments` fields that the runner does not set itself, with simple scalar fields of their
    declared type (TrainingArguments accepts strings for its enum fields, which it checks itself)."""
    bad = sorted(set(training) - TRAINING_ARGUMENT_FIELDS)
    if bad:
        raise ValueError(f"{source}: {where}: unknown TrainingArguments field(s) {bad}.")
    reserved = sorted(set(training) & RESERVED_TRAINING_KEYS)
    if reserved:
        raise ValueError(f"{source}: {where}: {reserved} are set by the recipe runner (use output_dir and seed at "
                         "the top level, evaluation.metric_for_best_model, and --overwrite_output_dir on the command "
                         "line).")
    hints = typing.get_type_hints(TrainingArguments)
    for key, value in training.items():
        members = typing.get_args(hints.get(key)) or (hints.get(key),)
        if all(member in _SIMPLE for member in members):
            problem = type_problem(hints[key], value)
            if problem:
                raise ValueError(f"{source}: {where}.{key}={value!r} has the wrong type: expected {problem}.")
    return dict(training)


# --- parsing --------------------------------------------------------------------------------------------------------

RecipeT = TypeVar("RecipeT", bound=RecipeBase)


class RecipeLoader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2 scalars: `1e-3` and `5E+4` are numbers (YAML 1.1 wants a dot), and only
    true / false are booleans (YAML 1.1 also reads yes / no / on / off, so `eval_strategy: no` became False)."""


RecipeLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                                 |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                                 |\.[0-9_]+(?:[eE][-+][0-9]+)?
                                 |[-+]?\.(?:inf|Inf|INF)
                                 |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def parse_yaml(text: str) -> Any:
    """A YAML document (or scalar) as recipes read it (`RecipeLoader`)."""
    return yaml.load(text, Loader=RecipeLoader)  # noqa: S506 - a SafeLoader subclass


def _bounded(raw: Any, source: str) -> None:
    """Refuse a document that expands past `MAX_RECIPE_NODES` values (nested YAML aliases: a few lines can stand
    for billions of values, which validation or printing would then walk)."""
    budget = MAX_RECIPE_NODES
    stack = [raw]
    while stack:
        node = stack.pop()
        budget -= 1
        if budget < 0:
            raise ValueError(f"{source}: the recipe expands to more than {MAX_RECIPE_NODES:,} values (nested YAML "
                             "aliases?); a recipe is a few hundred.")
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


def parse_override_args(tokens: list[str]) -> dict[str, str]:
    """`--section.key value` / `--section.key=value` command-line tokens → {"section.key": "value"}."""
    overrides: dict[str, str] = {}
    tokens = list(tokens)
    while tokens:
        token = tokens.pop(0)
        if not token.startswith("--") or len(token) == 2:
            raise ValueError(f"Unexpected argument {token!r}: overrides look like --training.learning_rate 1e-3.")
        key, sep, value = token[2:].partition("=")
        if not sep:
            if not tokens:
                raise ValueError(f"Override {token} needs a value.")
            value = tokens.pop(0)
        overrides[key] = value
    return overrides


def apply_overrides(raw: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `raw` with `section.key` overrides set (string values parsed as YAML scalars, as in a recipe)."""
    raw = copy.deepcopy(raw)  # keeps aliases shared: no expansion
    for dotted, text in overrides.items():
        value = parse_yaml(text) if isinstance(text, str) else text
        node = raw
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ValueError(f"Override --{dotted}: {part!r} is not a section.")
        node[leaf] = value
    return raw


def recipe_from_dict(raw: Any, source: str = "recipe", kind: type[RecipeT] = Recipe) -> RecipeT:  # type: ignore[assignment]
    """Validate a parsed recipe of `kind`; every error names the section, the key and what is allowed."""
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: a recipe must be a YAML mapping, got {type(raw).__name__}.")
    _bounded(raw, source)
    if hasattr(kind, "check_raw"):  # checks that need the mapping as written (which keys were set at all)
        kind.check_raw(raw, source)
    try:
        recipe = TypeAdapter(kind).validate_python(raw)
    except ValidationError as error:
        raise ValueError(f"{source}: {describe_validation_error(error, kind, raw)}") from None
    recipe.validate(source)
    return recipe


def read_recipe_file(path: str | Path, what: str = "Recipe",
                     example: str = "recipes/pretrain/genrec-2m.yaml or recipes/finetune/short_horizon_lora.yaml"
                     ) -> dict[str, Any]:
    """The mapping of a YAML recipe file; a missing, oversized, non-YAML or non-mapping file is a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist (expected a YAML file, e.g. {example}).")
    if path.stat().st_size > MAX_RECIPE_BYTES:
        raise ValueError(f"{path}: {path.stat().st_size:,} bytes is not a recipe (at most {MAX_RECIPE_BYTES:,}).")
    try:
        raw = parse_yaml(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not a valid YAML recipe: {' '.join(str(error).split())}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a recipe must be a YAML mapping of sections, got {type(raw).__name__}.")
    _bounded(raw, str(path))
    return raw


def load_recipe(path: str | Path, overrides: Mapping[str, Any] | None = None,
                kind: type[RecipeT] = Recipe) -> RecipeT:  # type: ignore[assignment]
    """Read a YAML recipe of `kind` (`Recipe`, `FinetuneRecipe`, ...), apply command-line overrides, validate it."""
    raw = read_recipe_file(path)
    return recipe_from_dict(apply_overrides(raw, overrides or {}), source=str(path), kind=kind)


# --- error messages -------------------------------------------------------------------------------------------------


def type_name(hint: Any) -> str:
    """How an error message names a declared type: int, float or null, a list of int, one of [...]."""
    if hint is type(None):
        return "null"
    origin = typing.get_origin(hint)
    if origin is Annotated:
        return type_name(typing.get_args(hint)[0])
    if origin is Literal:
        return f"one of {sorted(map(str, typing.get_args(hint)))}"
    if origin in (typing.Union, types.UnionType):
        members = tuple(_strip(m) for m in typing.get_args(hint))
        if int in members and float in members:  # `Float`: an int is a float as far as a recipe is concerned
            members = tuple(m for m in members if m is not int)
        return " or ".join(type_name(a) for a in members)
    if origin is not None:
        return f"a {origin.__name__} of {', '.join(type_name(a) for a in typing.get_args(hint))}"
    return getattr(hint, "__name__", str(hint))


def type_problem(hint: Any, value: Any) -> str | None:
    """None when `value` fits the declared `hint` strictly (bools are not ints, ints are floats) or the hint is not
    a plain scalar / list / dict type (such fields check themselves), else the expected type's name."""
    if not _plain(hint):
        return None
    try:
        TypeAdapter(hint).validate_python(value, strict=True)
    except ValidationError:
        return type_name(hint)
    return None


def _plain(hint: Any) -> bool:
    hint = _strip(hint)
    if hint in (bool, int, float, str, type(None), Any) or typing.get_origin(hint) is Literal:
        return True
    origin = typing.get_origin(hint)
    return origin in (typing.Union, types.UnionType, list, dict) and all(_plain(a) for a in typing.get_args(hint))


def _members(hint: Any) -> tuple[Any, ...]:
    return typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)


def _field_at(kind: type, loc: tuple[Any, ...]) -> tuple[tuple[Any, ...], Any]:
    """(the part of a pydantic error location that names a recipe key, that key's declared type): the rest of the
    location is pydantic's own (a union member it tried, a list index)."""
    hint: Any = kind
    consumed: list[Any] = []
    for part in loc:
        plain = hint
        while typing.get_origin(plain) is Annotated:
            plain = typing.get_args(plain)[0]
        dataclass_members = [m for m in _members(plain) if dataclasses.is_dataclass(m)]
        if dataclass_members and isinstance(part, str):
            hints = typing.get_type_hints(dataclass_members[0], include_extras=True)
            if part not in hints:
                break
            hint = hints[part]
            consumed.append(part)
            continue
        break
    return tuple(consumed), hint


def describe_validation_error(error: ValidationError, kind: type, raw: Any) -> str:
    """pydantic's errors as the one line a recipe error is: unknown keys with the allowed ones, or the first key
    with a wrong value, what it holds and what was expected."""
    unknown: dict[tuple[Any, ...], list[str]] = {}
    for item in error.errors():
        if item["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
            parent, _ = _field_at(kind, item["loc"][:-1])
            unknown.setdefault(parent, []).append(str(item["loc"][-1]))
    if unknown:
        parent, names = next(iter(unknown.items()))
        _, hint = _field_at(kind, parent)
        allowed = sorted(f.name for f in dataclasses.fields(_dataclass_of(hint)))
        where = f"{'.'.join(map(str, parent))}: unknown key(s)" if parent else "unknown top-level key(s)"
        return f"{where} {sorted(names)}; allowed keys are {allowed}."
    item = error.errors()[0]
    path, hint = _field_at(kind, item["loc"])
    value = _value_at(raw, path)
    name = ".".join(map(str, path))
    if item["type"] == "missing":
        return f"{name}: a required key is missing."
    if all(typing.get_origin(m) is Literal or m is type(None) for m in _members(_strip(hint))):
        return f"{name}={value!r}; expected {type_name(hint)}."
    mapping = _dataclass_of(hint) is not None or any(typing.get_origin(m) is dict for m in _members(_strip(hint)))
    if mapping and not isinstance(value, dict) and value is not None:
        return f"{name}: expected a mapping, got {type(value).__name__} ({value!r})."
    return f"{name}={value!r} has the wrong type: expected {type_name(hint)}."


def _strip(hint: Any) -> Any:
    while typing.get_origin(hint) is Annotated:
        hint = typing.get_args(hint)[0]
    return hint


def _dataclass_of(hint: Any) -> Any:
    return next((m for m in _members(_strip(hint)) if dataclasses.is_dataclass(m)), None)


def _value_at(raw: Any, path: tuple[Any, ...]) -> Any:
    """The recipe's value at a key path (pydantic reports the innermost input, e.g. one element of a list)."""
    for part in path:
        raw = raw.get(part) if isinstance(raw, dict) else None
    return raw


__all__ = [
    "BATCHING_MODES", "DEFAULT_FINETUNE_ARGUMENTS", "DEFAULT_TRAINING_ARGUMENTS", "FINETUNE_MODES", "DataSection",
    "EvaluationSection", "FinetuneEvaluationSection", "FinetuneRecipe", "ItemFeaturesSection", "ItemTowerSection",
    "LoraSection", "ModelSection", "ObjectiveSection", "PretrainDataSection", "PretrainEvaluationSection", "Recipe",
    "RecipeBase", "TaskSection", "apply_overrides", "check_config_overrides", "check_item_tower", "check_task",
    "check_training_section", "load_recipe", "parse_override_args", "parse_yaml", "read_recipe_file",
    "recipe_from_dict",
]
