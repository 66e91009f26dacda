"""One frozen backbone, one LoRA adapter per task, all tasks served from the same base.

    python examples/finetune_lora.py [--workdir runs/example_lora]

1. pre-train a tiny base on the synthetic log, 2. train a LoRA adapter for two downstream tasks,
3. load the base once with both adapters and score a batch whose rows use different adapters.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from genrec_hf.adapters import load_adapters, score_mixed_batch, trainable_parameters
from genrec_hf.training.finetune import run_finetune
from genrec_hf.training.recipes import load_recipe
from genrec_hf.data.collators import TaskCollator
from genrec_hf.training import train

TASKS = ("short_horizon", "high_engagement")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("runs/example_lora"))
    parser.add_argument("--data", default="synthetic:num_users=300,num_items=120,num_clusters=6")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    small = {"data.source": args.data, "training.num_train_epochs": str(args.epochs), "data.max_length": "20",
             "training.disable_tqdm": "true"}

    # 1. The shared base (normally a large pre-training run; here seconds on a CPU).
    base_dir = args.workdir / "base"
    train(load_recipe("recipes/pretrain/genrec-100k.yaml", {**small, "output_dir": str(base_dir),
                                                            "evaluation.num_examples": "0"}),
          overwrite_output_dir=True)

    # 2. One adapter per task: only adapter_model.safetensors + adapter_config.json (+ card) are written.
    adapters = {}
    for task in TASKS:
        out = args.workdir / task
        metrics = run_finetune(str(base_dir), f"recipes/finetune/{task}_lora.yaml",
                               overrides={**small, "output_dir": str(out)}, overwrite_output_dir=True)
        print(f"{task}: test MRR {metrics['test']['mrr']:.4f}")
        adapters[task] = out

    # 3. Serve every task from one base: switch per batch, or mix adapters row by row.
    model = load_adapters(base_dir, adapters)
    trainable, total = trainable_parameters(model)
    print(f"base + {len(adapters)} adapters loaded ({total:,} parameters)")
    from genrec_hf.data import load_interactions
    from genrec_hf.data.tasks import build_task

    data = load_interactions(args.data)
    rows = [build_task("short_horizon", data).test[i] for i in range(3)]
    batch = TaskCollator(20, mode="eval")(rows)
    top = score_mixed_batch(model, batch, adapter_names=["short_horizon", "high_engagement", "__base__"], k=5)
    for name, row in zip(["short_horizon", "high_engagement", "__base__"], top.items.tolist()):
        print(f"  {name:>16}: {[data.vocab.decode(i) for i in row]}")


if __name__ == "__main__":
    main()
