"""Quality benchmark: popularity, SASRec and GenRec presets on ML-100K and Amazon Toys, one protocol, one run.

Leave-one-out, full-catalog ranking, history items excluded, pessimistic ties (docs/evaluation.md). Every neural model
trains through `genrec_hf.training.train` from its shipped recipe with the same time budget — by default CPU time
of the training process (`--clock cpu`; with OMP_NUM_THREADS=1 one core-minute per minute), so the table compares
quality at equal compute even when other jobs share the cores. `--heads` adds the decoding head / loss as a third
axis (issue: efficient decoding): each named head below is a set of `GenRecConfig` overrides on top of the
model's recipe.

    python benchmarks/quality/bench_quality.py --minutes 6 --out benchmarks/out/quality
    python benchmarks/quality/bench_quality.py --datasets ml-100k --models genrec-100k --heads full uniform-1% uniform-128 \\
        popularity-128 popularity-128-proj4
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import date
from pathlib import Path


from genrec_hf.evaluation.baselines import popularity_metrics
from genrec_hf.data import NextItemCollator, leave_one_out, load_interactions
from genrec_hf.training.recipes import load_recipe
from genrec_hf.training import train
from genrec_hf.training.throughput import machine_summary

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"
DATASETS = {
    # name: (source, max_length): ML-100K histories are long (median ~65), Toys short (median ~6).
    "ml-100k": (DATA / "ml-100k", 200),
    "toys": (DATA / "amazon-toys" / "Toys_and_Games.txt", 50),
}
REFERENCE = {  # published / issue reference numbers under the same protocol, shown beside ours
    "toys": "TIGER (published): HR@10 .0712, NDCG@10 .0432",
}
METRICS = ("mrr", "hr@10", "ndcg@10")
SAMPLED = {"model.overrides.loss_type": "sampled"}
HEADS: dict[str, dict[str, str]] = {  # name: recipe overrides (the model's shipped recipe is the "full" head)
    "full": {},
    "uniform-1%": {**SAMPLED, "model.overrides.negatives_fraction": "0.01", "model.overrides.min_negatives": "1"},
    "uniform-128": {**SAMPLED, "model.overrides.num_negatives": "128"},
    "popularity-128": {**SAMPLED, "model.overrides.num_negatives": "128",
                       "model.overrides.negative_sampler": "popularity"},
    "popularity-128-sqrt": {**SAMPLED, "model.overrides.num_negatives": "128",
                            "model.overrides.negative_sampler": "popularity", "model.overrides.sampler_alpha": "0.5"},
    # negatives drawn per position: positions x K draws per step instead of K (16 per position: ~1,600x 128 shared)
    **{f"position-{k}": {**SAMPLED, "model.overrides.num_negatives": str(k),
                         "model.overrides.negative_sharing": "position"} for k in (16, 128, 512)},
    # the other positives of the batch as extra negatives (popularity-distributed, SASRec/two-tower style)
    "uniform-128-inbatch": {**SAMPLED, "model.overrides.num_negatives": "128",
                            "model.overrides.in_batch_negatives": "true"},
    **{f"position-16-proj{r}": {**SAMPLED, "model.overrides.num_negatives": "16",
                                "model.overrides.negative_sharing": "position",
                                "model.overrides.head_projection_ratio": str(r),
                                "model.overrides.tie_word_embeddings": "false"} for r in (2, 4)},
    "popularity-1%": {**SAMPLED, "model.overrides.negatives_fraction": "0.01", "model.overrides.min_negatives": "1",
                      "model.overrides.negative_sampler": "popularity"},
    # the paper's projected head: act -> Linear(d, d/r), untied d/r-wide item vectors
    **{f"popularity-128-proj{r}": {**SAMPLED, "model.overrides.num_negatives": "128",
                                   "model.overrides.negative_sampler": "popularity",
                                   "model.overrides.head_projection_ratio": str(r),
                                   "model.overrides.tie_word_embeddings": "false"} for r in (2, 4, 8)},
    "uniform-128-proj8": {**SAMPLED, "model.overrides.num_negatives": "128",
                          "model.overrides.head_projection_ratio": "8", "model.overrides.tie_word_embeddings": "false"},
    "hstu-128": {**SAMPLED, "model.overrides.num_negatives": "128", "model.overrides.l2_normalize_scores": "true",
                 "model.overrides.score_temperature": "0.05"},
}


def run_popularity(source: Path) -> dict:
    start = time.perf_counter()
    data = load_interactions(str(source))
    metrics = popularity_metrics(leave_one_out(data), len(data.vocab), NextItemCollator(50, mode="eval"))
    return {"test": metrics, "seconds": time.perf_counter() - start}


def run_model(preset: str, dataset: str, source: Path, max_length: int, minutes: float, out: Path,
              overrides: dict[str, str], name: str | None = None, clock: str = "cpu") -> dict:
    recipe = load_recipe(ROOT / "recipes" / "pretrain" / f"{preset}.yaml", {
        "data.source": str(source), "data.max_length": str(max_length),
        "output_dir": str(out / dataset / (name or preset)),
        "max_train_minutes": str(minutes), "budget_clock": clock, "training.num_train_epochs": "1000",
        "evaluation.num_examples": "0",
        **overrides,
    })
    start = time.perf_counter()
    outcome = train(recipe, overwrite_output_dir=True)
    return {**outcome.metrics, "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--models", nargs="+", default=["popularity", "sasrec", "genrec-2m", "genrec-8m"])
    parser.add_argument("--minutes", type=float, default=6.0, help="training budget per model, in --clock minutes")
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                        help="what the budget counts: the training process's CPU time (default) or wall time")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "quality")
    parser.add_argument("--heads", nargs="+", default=["full"], choices=list(HEADS),
                        help="decoding heads / losses to train each neural model with (default: its recipe's)")
    parser.add_argument("--override", nargs="*", default=[], metavar="KEY=VALUE",
                        help="recipe overrides applied to every neural model, e.g. training.learning_rate=1e-3")
    args = parser.parse_args()
    overrides = dict(item.split("=", 1) for item in args.override)
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, dict]] = {}
    for dataset in args.datasets:
        source, max_length = DATASETS[dataset]
        for model in args.models:
            for head in ["full"] if model == "popularity" else args.heads:
                name = model if head == "full" else f"{model}/{head}"
                print(f"=== {dataset} / {name}", flush=True)
                if model == "popularity":
                    result = run_popularity(source)
                else:
                    result = run_model(model, dataset, source, max_length, args.minutes, args.out,
                                       {**HEADS[head], **overrides}, name=name, clock=args.clock)
                results.setdefault(dataset, {})[name] = result
                (args.out / "results.json").write_text(json.dumps(results, indent=2, default=str))

    lines = [f"Date {date.today()}; machine: {machine_summary()}; budget {args.minutes} {args.clock} min training per model.",
             "", "| dataset | model | MRR | HR@10 | NDCG@10 | epochs | train+eval time (s) |",
             "|---|---|---|---|---|---|---|"]
    for dataset, by_model in results.items():
        for model, result in by_model.items():
            m = result["test"]
            epochs = result.get("train", {}).get("epochs")
            lines.append(f"| {dataset} | {model} | " + " | ".join(f"{m[k]:.4f}" for k in METRICS)
                         + f" | {'–' if epochs is None else f'{epochs:.1f}'} | {result['seconds']:.0f} |")
        if dataset in REFERENCE:
            lines.append(f"| {dataset} | reference | {REFERENCE[dataset]} | | | | |")
    table = "\n".join(lines)
    (args.out / "results.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
