"""The ladder recipe: a pre-training recipe and a fine-tune recipe as templates, and what varies between sizes.

    output_dir, results_csv, presets, seed, budget_clock, item_embedding_size
    pretrain:  the keys of a pre-training recipe (recipes/pretrain/*.yaml), the same at every size
    tasks:     names, params, mode / modes, and finetune: the keys of a fine-tune recipe for every (size, task)
    data_axis: one preset also trained on nested fractions of the training users
    evaluation: ks, fit_split, batch_size, cold_slice_max_events

The ladder sets per run what its protocol fixes: each size's `model.preset` and output folder, the one seed and
budget clock, the item-vector width (`item_embedding_size`) and the evaluation cut-offs; a template that sets one of
those is an error naming it. A fine-tune reads the pre-training data section.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ...models.genrec import PRESET_NOMINAL_SIZES, SIZE_PRESETS, GenRecConfig
from ...training.recipes import (DEFAULT_FINETUNE_ARGUMENTS, DEFAULT_TRAINING_ARGUMENTS, BudgetClock, DataSection,
                                 Float, FinetuneRecipe, Int, Recipe, Str, apply_overrides, check_task,
                                 read_recipe_file, recipe_from_dict, section)

LadderMode = Literal["zero_shot", "lora", "full"]
FitSplit = Literal["validation", "test"]
SHAPE_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
# Set by the ladder itself: the data decides these, or item_embedding_size does.
LADDER_SET_FIELDS = ("vocab_size", "max_position_embeddings", "num_action_types")
HEAD_FIELDS = ("head_projection_ratio", "tie_word_embeddings")
# Keys of the templates that the ladder sets (for every run alike, or per size / task).
SET_BY_LADDER = {
    "pretrain": {"output_dir": "one folder per size", "seed": "from the top-level seed",
                 "budget_clock": "from the top-level budget_clock", "keep_checkpoints": "bases keep the final model"},
    "pretrain.model": {"preset": "one per size, from presets", "init_from": "every base starts from scratch"},
    "pretrain.evaluation": {"ks": "from evaluation.ks"},
    "tasks.finetune": {"output_dir": "one folder per (size, task)", "seed": "from the top-level seed",
                       "budget_clock": "from the top-level budget_clock", "mode": "from tasks.mode / tasks.modes",
                       "task": "from tasks.names / tasks.params", "data": "from pretrain.data",
                       "keep_checkpoints": "fine-tunes keep the final adapter"},
    "tasks.finetune.evaluation": {"ks": "from evaluation.ks", "zero_shot": "a zero-shot row is a mode of its own"},
}


@section
@dataclass
class LadderTasksSection:
    names: list[Str] = field(default_factory=lambda: ["short_horizon", "long_horizon", "availability"])
    params: dict[Str, dict[Str, Any]] = field(default_factory=dict)  # per task: keyword arguments of its builder
    mode: LadderMode = "lora"  # zero_shot | lora | full, for every task ...
    modes: dict[Str, LadderMode] = field(default_factory=dict)  # ... unless named here: {task: mode}
    finetune: FinetuneRecipe = field(default_factory=FinetuneRecipe)  # a fine-tune recipe for every (size, task)


@section
@dataclass
class DataAxisSection:
    preset: Str | None = None  # the size also trained on fractions of the training users (None = no data axis)
    fractions: list[Float] = field(default_factory=list)  # e.g. [0.125, 0.25, 0.5]; 1.0 is the size-axis run


@section
@dataclass
class LadderEvaluationSection:
    ks: list[Int] = field(default_factory=lambda: [10])  # cut-offs of every evaluation and of the CSV's columns
    fit_split: FitSplit = "test"  # split whose MRR is the `mrr` column and whose per-user ranks are saved
    batch_size: Int = 256  # users per ranking batch
    # Also a `<task>/cold` row per (size, task): the test targets whose item had at most this many events in the
    # pre-training data (0 = never seen); None = no cold slice.
    cold_slice_max_events: Int | None = None


@section
@dataclass
class LadderRecipe:
    """A scaling-ladder recipe (`genrec-hf scaling run`); module docstring."""

    output_dir: Str = "runs/scaling/ladder"
    results_csv: Str | None = None  # None = <output_dir>/results.csv
    presets: list[Str] = field(default_factory=lambda: ["genrec-10k", "genrec-25k", "genrec-50k", "genrec-100k",
                                                        "genrec-500k", "genrec-2m"])
    seed: Int = 0  # every pre-training and fine-tune: model init, data order, negative sampling
    budget_clock: BudgetClock = "wall"  # what the templates' max_train_minutes count: wall or this process's CPU
    item_embedding_size: Int | None = 32  # item-vector width at every size (projected head); None = tied, d-wide
    pretrain: Recipe = field(default_factory=Recipe)  # a pre-training recipe, the same at every size
    tasks: LadderTasksSection = field(default_factory=LadderTasksSection)
    data_axis: DataAxisSection = field(default_factory=DataAxisSection)
    evaluation: LadderEvaluationSection = field(default_factory=LadderEvaluationSection)

    @classmethod
    def check_raw(cls, raw: dict[str, Any], source: str) -> None:
        """Before parsing: a template key the ladder sets itself is an error naming what sets it."""
        for where in ("pretrain", "tasks.finetune"):
            node: Any = raw
            for part in where.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            if isinstance(node, dict):
                _refuse_set_keys(where, node, source)

    def validate(self, source: str) -> None:
        if not self.presets:
            raise ValueError(f"{source}: presets is empty; list at least one genrec_hf.SIZE_PRESETS name.")
        unknown = [p for p in self.presets if p not in SIZE_PRESETS]
        if unknown:
            raise ValueError(f"{source}: presets: unknown preset(s) {unknown}; expected names of "
                             f"{sorted(PRESET_NOMINAL_SIZES, key=PRESET_NOMINAL_SIZES.get)}.")
        duplicates = sorted({p for p in self.presets if self.presets.count(p) > 1})
        if duplicates:
            raise ValueError(f"{source}: presets lists {duplicates} more than once.")
        shapes: dict[str, tuple] = {}
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
        template = self.pretrain
        if template.data.split != "leave_one_out":
            raise ValueError(f"{source}: pretrain.data.split={template.data.split!r}; the ladder pre-trains on each "
                             "user's events before the tasks' anchors, split leave-one-out.")
        overrides = template.model.overrides
        bad = sorted(set(overrides) & set(SHAPE_FIELDS))
        if bad:
            raise ValueError(f"{source}: pretrain.model.overrides sets {bad}: the block shape is what the presets "
                             "vary; list other presets instead.")
        bad = sorted(set(overrides) & set(LADDER_SET_FIELDS))
        if bad:
            raise ValueError(f"{source}: pretrain.model.overrides sets {bad}, which the ladder takes from the data "
                             "(vocab_size, num_action_types) and pretrain.data.max_length.")
        width = self.item_embedding_size
        if width is not None:
            bad = sorted(set(overrides) & set(HEAD_FIELDS))
            if bad:
                raise ValueError(f"{source}: pretrain.model.overrides sets {bad}, which item_embedding_size={width} "
                                 "decides; leave them out or set item_embedding_size: null.")
            if width < 1:
                raise ValueError(f"{source}: item_embedding_size={width}; expected a positive integer or null.")
            for preset in self.presets:
                hidden = SIZE_PRESETS[preset]["hidden_size"]
                if hidden % width:
                    raise ValueError(f"{source}: item_embedding_size={width} does not divide the hidden_size {hidden}"
                                     f" of {preset!r}; choose a width that divides every preset's hidden_size "
                                     "(e.g. 32).")
        for preset in self.presets:
            try:
                GenRecConfig(**self.config_fields(preset, vocab_size=2, num_action_types=0))
            except (ValueError, TypeError) as error:
                raise ValueError(f"{source}: pretrain.model (preset {preset}): {error}") from None
        self.pretrain_recipe(self.presets[0], Path("."), source=source)  # the template's own checks
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
        for name in tasks.names:  # task names, task params, lora, fine-tune TrainingArguments: checked before work
            self.finetune_recipe(name, Path("."), source=source)
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
        return {**SIZE_PRESETS[preset], **self.pretrain.model.overrides, **self.head_fields(preset),
                "vocab_size": vocab_size, "num_action_types": num_action_types,
                "max_position_embeddings": self.pretrain.data.max_length}

    def head_fields(self, preset: str) -> dict[str, Any]:
        """The decoding head of `preset` with `item_embedding_size`-wide item vectors (empty: the preset's own)."""
        width = self.item_embedding_size
        if width is None:
            return {}
        return {"head_projection_ratio": SIZE_PRESETS[preset]["hidden_size"] // width, "tie_word_embeddings": False}

    def pretrain_recipe(self, preset: str, output_dir: Path, source: str = "ladder") -> Recipe:
        """The pre-training `Recipe` of one size: the template, with what the ladder sets."""
        raw = self.pretrain.to_dict()
        raw.update(output_dir=str(output_dir), seed=self.seed, budget_clock=self.budget_clock, keep_checkpoints=False)
        raw["model"].update(preset=preset, overrides={**raw["model"]["overrides"], **self.head_fields(preset)})
        raw["evaluation"]["ks"] = list(self.evaluation.ks)
        return recipe_from_dict(raw, source=f"{source}: pretrain (size {preset})", kind=Recipe)

    def task_mode(self, task: str) -> str:
        return self.tasks.modes.get(task, self.tasks.mode)

    def finetune_recipe(self, task: str, output_dir: Path, source: str = "ladder") -> FinetuneRecipe:
        """The `FinetuneRecipe` of one (size, task): the template, with the ladder's data, task, seed and clock."""
        mode = self.task_mode(task)
        raw = self.tasks.finetune.to_dict()
        data = {f.name: getattr(self.pretrain.data, f.name) for f in dataclasses.fields(DataSection)}
        raw.update(output_dir=str(output_dir), mode="lora" if mode == "zero_shot" else mode, seed=self.seed,
                   budget_clock=self.budget_clock, keep_checkpoints=False, data=data,
                   task={"name": task, "params": dict(self.tasks.params.get(task, {}))})
        raw["evaluation"].update(ks=list(self.evaluation.ks), zero_shot=False)
        recipe = recipe_from_dict(raw, source=f"{source}: tasks.finetune (task {task})", kind=FinetuneRecipe)
        check_task(recipe.task, source, where=f"tasks ({task})")
        return recipe

    def to_dict(self) -> dict[str, Any]:
        """The recipe as a mapping that loads again: the templates without the keys the ladder sets."""
        raw = dataclasses.asdict(self)
        templates = {"pretrain": raw["pretrain"], "tasks.finetune": raw["tasks"]["finetune"]}
        for path, keys in SET_BY_LADDER.items():
            where = next(w for w in templates if path.startswith(w))
            node = templates[where]
            for part in path[len(where):].strip(".").split(".") if path != where else []:
                node = node[part]
            for key in keys:
                node.pop(key, None)
        return raw

    def fixed_settings(self) -> dict[str, Any]:
        """Everything that must be equal across the rows of one CSV (what `ladder_id` hashes): the templates as the
        runs see them (defaults filled in), not as written."""
        settings = self.to_dict()
        for key in ("output_dir", "results_csv", "presets", "data_axis"):
            settings.pop(key)
        settings["tasks"].pop("names")
        pretrain = self.pretrain_recipe(self.presets[0], Path(".")).to_dict()
        pretrain.pop("output_dir")
        pretrain["model"].pop("preset")
        pretrain["model"]["overrides"] = {k: v for k, v in pretrain["model"]["overrides"].items()
                                          if k not in HEAD_FIELDS}
        if pretrain["model"]["item_tower"] is None:  # off (ID embeddings only): the id of a ladder without it
            pretrain["model"].pop("item_tower")
            pretrain["model"].pop("item_features")
        settings["pretrain"] = pretrain
        settings["tasks"]["finetune"] = self.finetune_recipe(self.tasks.names[0], Path(".")).to_dict()
        for key in ("output_dir", "task", "mode"):
            settings["tasks"]["finetune"].pop(key)
        settings["tasks"]["params"] = {k: v for k, v in sorted(settings["tasks"]["params"].items())}
        settings["tasks"]["modes"] = {k: v for k, v in sorted(settings["tasks"]["modes"].items())}
        settings["training_defaults"] = {**DEFAULT_TRAINING_ARGUMENTS, **pretrain["training"]}
        settings["finetune_defaults"] = {**DEFAULT_FINETUNE_ARGUMENTS, **settings["tasks"]["finetune"]["training"]}
        return settings

    def ladder_id(self) -> str:
        text = json.dumps(self.fixed_settings(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def csv_path(self) -> Path:
        return Path(self.results_csv) if self.results_csv else Path(self.output_dir) / "results.csv"

    def data_axis_csv_path(self) -> Path:
        path = self.csv_path()
        return path.with_name(f"{path.stem}_data_axis{path.suffix or '.csv'}")


def _refuse_set_keys(where: str, template: dict[str, Any], source: str) -> None:
    """A template key the ladder sets itself is an error naming what sets it."""
    for path, keys in SET_BY_LADDER.items():
        if not path.startswith(where):
            continue
        node: Any = template
        for part in path[len(where):].strip(".").split(".") if path != where else []:
            node = node.get(part) if isinstance(node, dict) else None
        for key, setter in keys.items():
            if isinstance(node, dict) and key in node:
                raise ValueError(f"{source}: {path}.{key} is set by the ladder ({setter}); leave it out of the "
                                 "template.")


def load_ladder_recipe(path: str | Path, overrides: dict[str, str] | None = None) -> LadderRecipe:
    """Read and validate a ladder recipe (unknown keys and wrongly typed values are errors naming them)."""
    raw = read_recipe_file(path, what="Ladder recipe", example="recipes/scaling/ladder.yaml")
    return recipe_from_dict(apply_overrides(raw, overrides or {}), source=str(path), kind=LadderRecipe)
