"""Training: the one ranking-aware `Trainer`, recipes (one schema), pre-training and fine-tuning runners."""

from .finetune import FinetuneOutcome, finetune, run_finetune
from .pretrain import PreparedData, TrainOutcome, build_model, prepare_data, train
from .recipes import FinetuneRecipe, Recipe, apply_overrides, load_recipe, recipe_from_dict
from .trainer import GenRecTrainer, TimeBudgetCallback, check_output_dir

__all__ = [
    "FinetuneOutcome",
    "FinetuneRecipe",
    "GenRecTrainer",
    "PreparedData",
    "Recipe",
    "TimeBudgetCallback",
    "TrainOutcome",
    "apply_overrides",
    "build_model",
    "check_output_dir",
    "finetune",
    "load_recipe",
    "prepare_data",
    "recipe_from_dict",
    "run_finetune",
    "train",
]
