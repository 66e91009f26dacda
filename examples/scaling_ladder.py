"""A (tiny) scaling ladder end to end: train four backbone sizes, evaluate a task on the same users, fit the law.

    python examples/scaling_ladder.py [--workdir runs/scaling_ladder] [--users 300] [--epochs 2]

The same as `genrec-hf scaling run recipes/scaling/ladder.yaml` followed by `genrec-hf scaling fit`, shrunk so it
runs in well under a minute on one CPU core: a small synthetic log, the four bottom presets (10k to 100k backbone
parameters), a couple of epochs each and one task evaluated zero-shot. Four points from so short a training say
little about a real ceiling; the point is the workflow: the recipe, the resumable CSV with per-user ranks, the fit
with intervals over users. Run it twice: the second run finds every row in the CSV and trains nothing.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import datasets

from genrec_hf.scaling import fit_csv, format_table
from genrec_hf.scaling.ladder import LadderRecipe, run_ladder
from genrec_hf.training.recipes import recipe_from_dict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/scaling_ladder", help="where the ladder and its CSV are written")
    parser.add_argument("--users", type=int, default=300, help="synthetic users")
    parser.add_argument("--epochs", type=int, default=2, help="pre-training epochs per size")
    parser.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples of the fit")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    datasets.disable_progress_bars()
    for noisy in ("transformers", "datasets", "genrec_hf.data", "genrec_hf.training"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    # The same keys as recipes/scaling/ladder.yaml (a dict here, so the example is self-contained).
    recipe = recipe_from_dict({
        "output_dir": str(Path(args.workdir)),
        "presets": ["genrec-10k", "genrec-25k", "genrec-50k", "genrec-100k"],
        "item_embedding_size": 16,  # item vectors 16-wide at every size: only the blocks grow
        "pretrain": {  # a pre-training recipe, the same at every size
            "max_train_minutes": 1.0,  # time box per size
            "data": {"source": f"synthetic:num_users={args.users},num_items=200,num_clusters=8", "max_length": 30},
            "training": {"num_train_epochs": args.epochs, "learning_rate": 0.005, "use_cpu": True,
                         "disable_tqdm": True, "per_device_train_batch_size": 64},
            "evaluation": {"early_stopping_patience": None},
        },
        "tasks": {"names": ["short_horizon"], "mode": "zero_shot"},  # the pre-trained base, as it is
        "evaluation": {"ks": [10]},
    }, source="examples/scaling_ladder.py", kind=LadderRecipe)

    outcome = run_ladder(recipe)
    print(f"\n{outcome.rows_written} rows written, {outcome.rows_skipped} already there: {outcome.csv_path}")
    for row in outcome.rows:
        print(f"  {row['preset']:>12}  N = {int(row['backbone_params']):>7,}  {row['task']}  "
              f"mrr {float(row['mrr']):.4f}  ({row['num_users']} users, ranks in {row['ranks_path']})")
    fits = fit_csv(outcome.csv_path, n_bootstrap=args.bootstrap)
    print()
    print(format_table(fits))
    print(f"\nThe same fit from the command line:  genrec-hf scaling fit {outcome.csv_path} --plot scaling.png")


if __name__ == "__main__":
    main()
