"""Training: the one run pipeline (`pipeline`), the one ranking-aware `Trainer`, recipes (one schema family),
fine-tuning on downstream tasks, and the run folder's safety rules."""

from .finetune import FinetuneOutcome, finetune, run_finetune
from .item_tower import ItemTowerSetup
from .pipeline import (RunData, TrainOutcome, TrainRecord, build_model, build_trainer, prepare_run, run_training,
                       save_run, train)
from .recipes import FinetuneRecipe, Recipe, apply_overrides, load_recipe, parse_override_args, recipe_from_dict
from .run_folder import check_output_dir
from .trainer import GenRecTrainer, TimeBudgetCallback

__all__ = [
    "FinetuneOutcome",
    "FinetuneRecipe",
    "GenRecTrainer",
    "ItemTowerSetup",
    "Recipe",
    "RunData",
    "TimeBudgetCallback",
    "TrainOutcome",
    "TrainRecord",
    "apply_overrides",
    "build_model",
    "build_trainer",
    "check_output_dir",
    "finetune",
    "load_recipe",
    "parse_override_args",
    "prepare_run",
    "recipe_from_dict",
    "run_finetune",
    "run_training",
    "save_run",
    "train",
]
