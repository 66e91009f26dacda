"""Re-run the task stage of a finished scaling ladder under another task setting, reusing its pre-trained bases.

Does a task's curve over sizes depend on how the task is adapted? The ladder's rows use one adapter setting (e.g.
a one-epoch LoRA). This script evaluates the same bases with the tasks zero-shot (the base as it is) or with a
longer fine-tune, on the same users, and writes a results CSV of the ladder's columns (with its own ladder_id) that
`genrec-hf scaling fit` reads; the cold-slice rows follow the ladder recipe. No base is trained again.

    python benchmarks/scaling/bench_ladder_tasks.py --ladder runs/scaling/ladder-epochs-s0 --mode zero_shot \\
        --out runs/scaling/ladder-epochs-s0-zero-shot
    python benchmarks/scaling/bench_ladder_tasks.py --ladder runs/scaling/ladder-epochs-s0 --mode lora --epochs 3 \\
        --out runs/scaling/ladder-epochs-s0-lora3
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

logger = logging.getLogger("bench_ladder_tasks")


def task_recipe(ladder: Path, out: Path, mode: str, epochs: float | None):
    """The ladder's own `LadderRecipe` with the task stage changed (and its outputs under `out`)."""
    from genrec_hf.scaling.ladder import LadderRecipe
    from genrec_hf.training.recipes import recipe_from_dict

    saved = ladder / "ladder_recipe.json"
    if not saved.is_file():
        raise SystemExit(f"{ladder}: no ladder_recipe.json (expected the output_dir of `genrec-hf scaling run`).")
    raw = json.loads(saved.read_text())
    raw.update(output_dir=str(out), results_csv=None, data_axis={"preset": None, "fractions": []})
    raw.pop("bases_from", None)
    raw["tasks"].update(mode=mode, modes={})
    finetune = raw["tasks"]["finetune"]
    if epochs is not None:
        finetune["training"] = {**finetune.get("training", {}), "num_train_epochs": epochs}
    return recipe_from_dict(raw, source=str(saved), kind=LadderRecipe)


def run(ladder: Path, out: Path, mode: str, epochs: float | None) -> Path:
    """Evaluate (or fine-tune and evaluate) every task on every finished base of `ladder`; returns the CSV path."""
    from genrec_hf.scaling.ladder import rerun_tasks

    return rerun_tasks(task_recipe(ladder, out, mode, epochs), bases_from=ladder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ladder", type=Path, required=True, help="a finished ladder's output_dir (its bases)")
    parser.add_argument("--mode", choices=["zero_shot", "lora", "full"], required=True,
                        help="how every task is adapted to each base")
    parser.add_argument("--epochs", type=float, default=None,
                        help="fine-tune epochs per (size, task) (default: the ladder's own)")
    parser.add_argument("--out", type=Path, required=True, help="folder of the new task runs, ranks and CSV")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print(f"written to {run(args.ladder, args.out, args.mode, args.epochs)}")


if __name__ == "__main__":
    main()
