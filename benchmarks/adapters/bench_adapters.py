"""What a LoRA adapter saves vs full fine-tuning and training from scratch, per downstream task (issue 6).

For each dataset: pre-train one base (`--preset`) on every user's events before the earliest validation anchor of
any task (so no task's validation/test targets are seen in pre-training), then per task run, each in its own
process (for a clean peak RSS): frozen base zero-shot, LoRA r ∈ `--ranks`, full fine-tune, from scratch. Writes
a markdown table (MRR, HR@10, trainable params, wall time, peak RSS, checkpoint size) and the serving cost of N
tasks (N adapters + 1 base vs N full models).

    python benchmarks/adapters/bench_adapters.py --datasets synthetic path/to/ml-100k --out benchmarks/results_adapters.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[2]
TASK_NAMES = ("short_horizon", "long_horizon", "availability", "high_engagement")


def pretrain_base(source: str, out: Path, preset: str, epochs: int, max_length: int, minutes: float) -> Path:
    """Pre-train a base (the preset's shipped recipe, through the package's run pipeline) on every user's events
    before the earliest validation anchor of any task, so no task target is seen in pre-training."""
    from genrec_hf.data import load_interactions
    from genrec_hf.data.tasks import build_task, events_before, validation_cut
    from genrec_hf.training import load_recipe, train

    if (out / "model.safetensors").is_file():
        return out
    data = load_interactions(source)
    cut = validation_cut(build_task(name, data) for name in TASK_NAMES)
    recipe = load_recipe(REPO / "recipes" / "pretrain" / f"{preset}.yaml", {
        "output_dir": str(out), "max_train_minutes": minutes, "data.max_length": max_length,
        "training.num_train_epochs": epochs, "training.disable_tqdm": True, "keep_checkpoints": False,
        "evaluation.num_examples": 0})
    outcome = train(recipe, overwrite_output_dir=True, data=events_before(data, cut))
    (out / "pretrain.json").write_text(json.dumps({"preset": preset, "seconds": outcome.record.runtime_s,
                                                   "windows": len(outcome.run.train_windows)}))
    return out


def run_one(base: Path, task: str, mode: str, rank: int | None, out: Path, source: str, epochs: int,
            max_length: int, minutes: float) -> dict:
    recipe = yaml.safe_load((REPO / "recipes" / "finetune" / f"{task}_{'lora' if mode == 'lora' else 'full'}.yaml")
                            .read_text())
    recipe.update(output_dir=str(out), mode=mode, max_train_minutes=minutes)
    recipe["data"].update(source=source, max_length=max_length)
    recipe["training"].update(num_train_epochs=epochs)
    recipe["evaluation"].update(ks=[10], early_stopping_patience=2, zero_shot=(mode == "full"))
    if mode == "from_scratch":
        recipe["training"]["learning_rate"] = 2e-3
    if rank is not None:
        recipe["lora"].update(r=rank, alpha=2 * rank)
    out.mkdir(parents=True, exist_ok=True)
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    code = ("import json,sys; from genrec_hf.training.finetune import run_finetune; "
            f"run_finetune({str(base)!r}, {str(path)!r}, overwrite_output_dir=True)")
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if proc.returncode:
        raise RuntimeError(f"{task} {mode} failed:\n{proc.stderr[-3000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    metrics["process_s"] = time.monotonic() - start
    return metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["synthetic", str(REPO.parent / "shared/data/ml-100k")])
    parser.add_argument("--tasks", nargs="+", default=list(TASK_NAMES))
    parser.add_argument("--preset", default="genrec-500k")
    parser.add_argument("--ranks", nargs="+", type=int, default=[4, 16])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--pretrain_epochs", type=int, default=8)
    parser.add_argument("--max_length", type=int, default=50)
    parser.add_argument("--minutes", type=float, default=1.0, help="per fine-tune run wall-time cap")
    parser.add_argument("--workdir", default=str(REPO / "runs" / "bench_adapters"))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results_adapters.md"))
    args = parser.parse_args()

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [f"# Adapters vs full fine-tune vs scratch ({date.today()}, {platform.machine()}, "
             f"{os.cpu_count()} CPUs, load average {load} at start, torch {torch.__version__})", "",
             f"Command: `python benchmarks/adapters/bench_adapters.py {' '.join(sys.argv[1:])}`", "",
             f"Base: `{args.preset}` pre-trained by its shipped recipe, {args.pretrain_epochs} epochs (cap 3 min), on events before every "
             f"task's validation anchor; fine-tune: ≤{args.epochs} epochs, early stopping 2, ≤{args.minutes} min, "
             "best validation MRR kept. Test metrics under each task's protocol (`genrec_hf.data.tasks`).", ""]
    for source in args.datasets:
        name = Path(source).name
        workdir = Path(args.workdir) / name
        base = pretrain_base(source, workdir / "base", args.preset, args.pretrain_epochs, args.max_length, 3.0)
        base_bytes = (base / "model.safetensors").stat().st_size
        lines += [f"## {name}", "", f"Base checkpoint: {base_bytes / 1e6:.2f} MB "
                  f"({json.loads((base / 'pretrain.json').read_text())['seconds']:.0f} s pre-training).", "",
                  "| task | method | test MRR | HR@10 | % of full MRR | trainable params | % trainable | "
                  "fine-tune s | peak RSS MB | checkpoint MB |", "|---|---|---|---|---|---|---|---|---|---|"]
        adapter_sizes, full_sizes = [], []
        for task in args.tasks:
            runs = {"full": run_one(base, task, "full", None, workdir / f"{task}-full", source, args.epochs,
                                    args.max_length, args.minutes)}
            for r in args.ranks:
                runs[f"lora r={r}"] = run_one(base, task, "lora", r, workdir / f"{task}-lora{r}", source,
                                              args.epochs, args.max_length, args.minutes)
            runs["from scratch"] = run_one(base, task, "from_scratch", None, workdir / f"{task}-scratch", source,
                                           args.epochs, args.max_length, args.minutes)
            full_mrr = runs["full"]["test"]["mrr"]
            zero = runs["full"]["zero_shot_test"]
            lines.append(f"| {task} | frozen base (zero-shot) | {zero['mrr']:.4f} | {zero.get('hr@10', 0):.4f} | "
                         f"{100 * zero['mrr'] / full_mrr:.0f}% | 0 | 0 | 0 | – | – |")
            for label, m in runs.items():
                p = m["parameters"]
                lines.append(f"| {task} | {label} | {m['test']['mrr']:.4f} | {m['test'].get('hr@10', 0):.4f} | "
                             f"{100 * m['test']['mrr'] / full_mrr:.0f}% | {p['trainable']:,} | "
                             f"{100 * p['trainable_fraction']:.2f}% | {m['train']['runtime_s']:.1f} | "
                             f"{m['peak_rss_mb']:.0f} | {m['checkpoint_bytes'] / 1e6:.3f} |")
            adapter_sizes.append(runs[f"lora r={args.ranks[0]}"]["checkpoint_bytes"])
            full_sizes.append(runs["full"]["checkpoint_bytes"])
        n = len(args.tasks)
        lines += ["", f"Serving {n} tasks: 1 base + {n} adapters (r={args.ranks[0]}) = "
                  f"{(base_bytes + sum(adapter_sizes)) / 1e6:.2f} MB vs {n} full models = {sum(full_sizes) / 1e6:.2f} MB "
                  f"({sum(full_sizes) / (base_bytes + sum(adapter_sizes)):.1f}× less); adapter/base size = "
                  f"{100 * max(adapter_sizes) / base_bytes:.1f}%.", ""]
        Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
