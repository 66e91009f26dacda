"""Cold-start ablation: ID-only vs semantic item tower, with and without collaborative-embedding masking.

Protocol (a) of docs/cold_start.md on ML-100K (genres, year, title text, knowledge graph) and Amazon Toys
(category/brand attribute ids): a random 10% of the items is held out of training entirely; after training they
join the catalog through `add_items` (no retraining) and the test (each user's last event, full-catalog ranking
with every item rankable, history excluded, pessimistic ties) is reported separately for users whose target is a
cold item and users whose target is a warm one. Every run goes through `genrec_hf.training.train` (the recipe runner
behind `genrec-hf train`) with the same preset, data and wall-clock budget.

Variants (how a new item is scored):
    id_mean        ID-only model; a new item gets the mean trained ID embedding (transformers' mean resizing idea)
    id_knn         the same ID-only model; a new item gets the mean ID embedding of the 10 warm items whose feature
                   rows are most similar (cosine): a strong training-free way to borrow collaborative signal
    id_oov         item tower without features, masking p: a new item gets the learned OOV vector
    semantic       features only (fusion "semantic": no ID embeddings)
    fused          ID + features, weighted sum, no masking
    fused_mask_p   ID + features, weighted sum, masking with probability p (two values)
    gate_mask_p    the gate fusion instead of the weighted sum, masking p (the ablated alternative)

Every run keeps its per-user test ranks (`cold_start_ranks.json`, the id_knn arm's too), so the table carries, per
seed, a 95% paired bootstrap interval over test users (`genrec_hf.evaluation.paired_bootstrap`, the one behind
benchmarks/quality/compare_runs.py) for the relative cold-slice MRR difference of each tower arm against the best ID-only
arm of that seed, and for the warm-slice difference against id_mean and against fused (no masking). The users
resampled are the ones whose target is in the slice; both arms are ranked on the same users, same split.

    python benchmarks/cold_start/bench_cold_start.py --minutes 1.5 --seeds 0 --out benchmarks/out/cold_start
    python benchmarks/cold_start/bench_cold_start.py --table out1/results.json out2/results.json   # one table of several runs
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from datetime import date
from pathlib import Path

import torch

from genrec_hf import GenRecForNextItemPrediction
from genrec_hf.data import ItemVocab, NextItemCollator
from genrec_hf.data.item_features import ItemFeatureStore, estimate_cold_start_rate, find_kg
from genrec_hf.evaluation import paired_bootstrap
from genrec_hf.data.cold_splits import hold_out_items
from genrec_hf.evaluation.cold_slices import (COLD_START_RANKS, cold_warm_ranks, cold_warm_slices,
                                              load_cold_start_ranks, save_cold_start_ranks)
from genrec_hf.training import train
from genrec_hf.training.throughput import machine_summary
from genrec_hf.training.recipes import recipe_from_dict

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"
DATASETS = {
    "ml-100k": dict(source=DATA / "ml-100k", max_length=50, eval_batch=256),
    "toys": dict(source=DATA / "amazon-toys" / "Toys_and_Games.txt", max_length=50, eval_batch=512),
}
VARIANTS = ("id_mean", "id_knn", "id_oov", "semantic", "fused", "fused_mask_a", "fused_mask_b", "gate_mask_a")
METRICS = ("mrr", "hr@10")


def recipe_for(dataset: str, variant: str, seed: int, minutes: float, out: Path, p: dict[str, float],
               text_encoder: str, clock: str = "cpu") -> dict:
    spec = DATASETS[dataset]
    model: dict = {"preset": "genrec-100k", "overrides": {}}
    tower = None
    features: dict = {"text_encoder": text_encoder, "kg": "auto", "min_category_count": 2}
    if variant == "id_oov":
        tower, features = {"mask_prob": p["a"]}, {"blocks": []}
    elif variant == "semantic":
        tower = {"fusion": "semantic"}
    elif variant == "fused":
        tower = {"fusion": "sum", "mask_prob": 0.0}
    elif variant.startswith("fused_mask_"):
        tower = {"fusion": "sum", "mask_prob": p[variant[-1]]}
    elif variant.startswith("gate_mask_"):
        tower = {"fusion": "gate", "mask_prob": p[variant[-1]]}
    if tower is not None:
        model["item_tower"] = tower
        model["item_features"] = features
    return {
        "output_dir": str(out), "seed": seed, "max_train_minutes": minutes, "budget_clock": clock, "model": model,
        "data": {"source": str(spec["source"]), "split": "cold_items", "cold_item_fraction": 0.1,
                 "max_length": spec["max_length"], "batching": "packed"},
        "training": {"num_train_epochs": 40, "per_device_train_batch_size": 128,
                     "per_device_eval_batch_size": spec["eval_batch"], "learning_rate": 0.002,
                     "lr_scheduler_type": "constant", "use_cpu": True, "disable_tqdm": True, "save_total_limit": 1},
        "evaluation": {"ks": [10], "early_stopping_patience": 3, "num_examples": 0},
    }


@torch.no_grad()
def knn_rows(run: Path, store: ItemFeatureStore, num_warm: int, k: int = 10) -> dict:
    """Re-score the ID-only run with new items' rows = mean ID row of their k most feature-similar warm items."""
    model = GenRecForNextItemPrediction.from_pretrained(run).eval()
    vocab = ItemVocab.load(run)
    feats = torch.nn.functional.normalize(store.matrix_for(vocab), dim=1)
    similarity = feats[num_warm + 1:] @ feats[1:num_warm + 1].T
    neighbours = similarity.topk(min(k, num_warm), dim=1).indices + 1
    tables = {id(t): t for t in (model.get_input_embeddings().weight, model.get_output_embeddings().weight)}
    for table in tables.values():
        table[num_warm + 1:] = table[neighbours].mean(dim=1)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--minutes", type=float, default=1.5, help="training budget per run, in --clock minutes")
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                        help="what the budget counts: the process's CPU time (default; equal compute on shared "
                             "cores) or wall time")
    parser.add_argument("--mask", nargs=2, type=float, default=None, metavar=("P_A", "P_B"),
                        help="the two masking probabilities (default: 0.1 and 0.3)")
    parser.add_argument("--text_encoder", default="hashing", help='"hashing", "minilm" or an encoder folder')
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "cold_start")
    parser.add_argument("--table", nargs="+", type=Path, default=None, metavar="RESULTS_JSON",
                        help="only print the table of these results.json files together (runs of several calls)")
    args = parser.parse_args()
    if args.table:
        merged = {"runs": [{**row, "base": str(path.parent)} for path in args.table
                           for row in json.loads(path.read_text())["runs"]]}
        print(table(merged))
        print(interval_table(merged))
        return
    torch.set_num_threads(1)
    p = {"a": 0.1, "b": 0.3} if args.mask is None else {"a": args.mask[0], "b": args.mask[1]}
    results: dict = {"date": str(date.today()), "machine": machine_summary(), "minutes_per_run": args.minutes,
                     "mask_prob": p, "text_encoder": args.text_encoder, "runs": []}
    args.out.mkdir(parents=True, exist_ok=True)
    for dataset in args.datasets:
        for seed in args.seeds:
            data = recipe_from_dict(recipe_for(dataset, "fused", seed, 1, args.out, p, args.text_encoder)).data.load()
            split = hold_out_items(data, 0.1, seed=seed)
            rate = (estimate_cold_start_rate(split.splits["train"]["item_ids"], split.splits["train"]["timestamps"])
                    if data.has_timestamps else None)
            store_dir = args.out / f"{dataset}-seed{seed}-features"
            if not (store_dir / "item_features.json").is_file():
                ItemFeatureStore.build(split.vocab.raw_ids, data.item_info, text_encoder=args.text_encoder,
                                       kg_path=find_kg(DATASETS[dataset]["source"]), min_category_count=2
                                       ).save(store_dir)
            store = ItemFeatureStore.load(store_dir)
            results.setdefault("splits", {})[f"{dataset}-seed{seed}"] = {**split.summary(), "cold_start_rate_7d": rate,
                                                                        "features": [f"{b['name']}[{b['dim']}]"
                                                                                     for b in store.schema]}
            for variant in args.variants:
                if variant == "id_knn":
                    continue  # scored from the id_mean run below
                run = args.out / f"{dataset}-seed{seed}-{variant}"
                if run.exists():
                    shutil.rmtree(run)
                raw = recipe_for(dataset, variant, seed, args.minutes, run, p, args.text_encoder, args.clock)
                if variant not in ("id_mean", "id_oov"):
                    raw["model"]["item_features"]["cache"] = str(store_dir)  # built once above
                recipe = recipe_from_dict(raw)
                start, cpu_start, load_start = time.time(), time.process_time(), os.getloadavg()[0]
                outcome = train(recipe)
                cold = outcome.metrics["cold_start"]
                row = {"dataset": dataset, "seed": seed, "variant": variant, "minutes": (time.time() - start) / 60,
                       "cpu_minutes": (time.process_time() - cpu_start) / 60, "clock": args.clock,
                       "load_avg_1min": [load_start, os.getloadavg()[0]],
                       "epochs": outcome.metrics["train"]["epochs"],
                       "cold": {m: cold["cold"].get(m) for m in METRICS}, "warm": {m: cold["warm"].get(m) for m in METRICS},
                       "cold_users": cold["cold"].get("num_users"), "warm_users": cold["warm"].get("num_users"),
                       "ranks": str((run / COLD_START_RANKS).relative_to(args.out))}
                results["runs"].append(row)
                print(json.dumps(row), flush=True)
                if variant == "id_mean" and "id_knn" in args.variants:
                    model = knn_rows(run, store, split.num_warm)
                    collator = NextItemCollator(DATASETS[dataset]["max_length"], mode="eval")
                    rows = split.splits["test"]
                    batches = [collator([rows[i] for i in range(s, min(s + 512, len(rows)))])
                               for s in range(0, len(rows), 512)]
                    ranks = cold_warm_ranks(model, batches)
                    sliced = cold_warm_slices(*ranks, split.cold_mask(), ks=(10,))
                    knn_dir = args.out / f"{dataset}-seed{seed}-id_knn"
                    knn_dir.mkdir(exist_ok=True)
                    save_cold_start_ranks(knn_dir / COLD_START_RANKS, *ranks, split.num_warm)
                    knn = {**row, "variant": "id_knn", "minutes": 0.0, "cpu_minutes": 0.0,
                           "cold": {m: sliced["cold"].get(m) for m in METRICS},
                           "warm": {m: sliced["warm"].get(m) for m in METRICS},
                           "ranks": str((knn_dir / COLD_START_RANKS).relative_to(args.out))}
                    results["runs"].append(knn)
                    print(json.dumps(knn), flush=True)
                (args.out / "results.json").write_text(json.dumps(results, indent=2))
                for checkpoint in run.glob("checkpoint-*"):
                    shutil.rmtree(checkpoint, ignore_errors=True)
    for row in results["runs"]:
        row["base"] = str(args.out)
    text = table(results) + "\n" + interval_table(results)
    print(text)
    (args.out / "results.md").write_text(text)


def table(results: dict) -> str:
    """Markdown: mean over seeds per (dataset, variant), + the goal columns against the best ID-only way."""
    lines = ["| dataset | variant | seeds | epochs | cold MRR | cold HR@10 | warm MRR | cold MRR vs best ID-only | "
             "warm MRR vs id_mean |", "|---|---|---|---|---|---|---|---|---|"]
    by: dict = {}
    for row in results["runs"]:
        by.setdefault((row["dataset"], row["variant"]), []).append(row)

    def mean(rows, side, metric):
        values = [r[side][metric] for r in rows if r[side].get(metric) is not None]
        return sum(values) / len(values) if values else float("nan")

    for dataset in dict.fromkeys(d for d, _ in by):
        id_rows = [v for (d, v) in by if d == dataset and v.startswith("id_")]
        best_id = max((mean(by[(dataset, v)], "cold", "mrr") for v in id_rows), default=float("nan"))
        warm_ref = mean(by.get((dataset, "id_mean"), []), "warm", "mrr")
        for (d, variant), rows in by.items():
            if d != dataset:
                continue
            cold_mrr, warm_mrr = mean(rows, "cold", "mrr"), mean(rows, "warm", "mrr")
            epochs = " / ".join(f"{r['epochs']:.1f}" for r in rows)
            lines.append(f"| {dataset} | {variant} | {len(rows)} | {epochs} | {cold_mrr:.4f} | "
                         f"{mean(rows, 'cold', 'hr@10'):.4f} "
                         f"| {warm_mrr:.4f} | {100 * (cold_mrr / best_id - 1):+.0f}% | "
                         f"{100 * (warm_mrr / warm_ref - 1):+.1f}% |")
    return "\n".join(lines) + "\n"


def paired_intervals(results: dict, samples: int = 2000) -> list[dict]:
    """Per (dataset, seed): each tower arm's relative MRR difference with a 95% paired bootstrap interval over the
    test users of the slice (`paired_bootstrap`): cold slice vs the seed's best ID-only arm (by cold MRR), warm
    slice vs id_mean and vs fused (no masking). Rows need `ranks` (a cold_start_ranks.json relative to `base`)."""
    by: dict = {}
    for row in results["runs"]:
        if row.get("ranks"):
            by.setdefault((row["dataset"], row["seed"]), {})[row["variant"]] = row
    out = []
    for (dataset, seed), arms in by.items():
        ranks = {v: load_cold_start_ranks(Path(r.get("base", ".")) / r["ranks"]) for v, r in arms.items()}
        reference = next(iter(ranks.values()))
        for variant, loaded in ranks.items():
            if not torch.equal(loaded["targets"], reference["targets"]):
                raise ValueError(f"{dataset} seed {seed}: {variant} was ranked on other test rows than "
                                 f"{next(iter(ranks))}; paired intervals need the same split.")
            if loaded["targets"].shape[1] != 1:
                raise ValueError(f"{dataset} seed {seed}: {variant} has several targets per row; expected one.")
        cold = reference["cold"]
        id_arms = [v for v in ranks if v.startswith("id_")]
        if not id_arms:
            continue
        best_id = max(id_arms, key=lambda v: arms[v]["cold"]["mrr"])
        for variant in ranks:
            if variant.startswith("id_"):
                continue
            entry = {"dataset": dataset, "seed": seed, "variant": variant, "best_id": best_id,
                     "epochs": arms[variant]["epochs"], "cold_users": int(cold.sum()),
                     "warm_users": int((~cold).sum())}
            entry["cold_vs_best_id"] = paired_bootstrap(ranks[best_id]["ranks"][cold, 0],
                                                        ranks[variant]["ranks"][cold, 0], num_samples=samples)
            for name in ("id_mean", "fused"):
                if name in ranks and name != variant:
                    entry[f"warm_vs_{name}"] = paired_bootstrap(ranks[name]["ranks"][~cold, 0],
                                                                ranks[variant]["ranks"][~cold, 0], num_samples=samples)
            out.append(entry)
    return out


def interval_table(results: dict, samples: int = 2000) -> str:
    """Markdown: one row per (dataset, seed, tower arm) with the paired bootstrap intervals of `paired_intervals`."""
    def cell(result: dict | None, digits: int = 0) -> str:
        if result is None:
            return "–"
        return (f"{result['b']:.4f} vs {result['a']:.4f}: {result['relative']:+.{digits}%} "
                f"[{result['relative_low']:+.{digits}%}, {result['relative_high']:+.{digits}%}]")

    lines = ["| dataset | seed | variant | epochs | cold users | cold MRR vs best ID-only [95% CI] | warm users | "
             "warm MRR vs id_mean [95% CI] | warm MRR vs fused [95% CI] |", "|---|---|---|---|---|---|---|---|---|"]
    for e in paired_intervals(results, samples):
        lines.append(f"| {e['dataset']} | {e['seed']} | {e['variant']} | {e['epochs']:.1f} | {e['cold_users']} | "
                     f"{cell(e['cold_vs_best_id'])} ({e['best_id']}) | {e['warm_users']} | "
                     f"{cell(e.get('warm_vs_id_mean'), 1)} | {cell(e.get('warm_vs_fused'), 1)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
