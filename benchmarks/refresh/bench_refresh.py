"""Repeated training: CPU cost of a full retrain vs a LoRA refresh on newly arrived events, and how stable what users
see is between two consecutive refreshes and across seeds (issue 16, "repeated-training cost vs score stability").

Per dataset, the time range is cut at `--new-fraction` from its end (default: the last 10% of the time range).
Events before the cut are the "old" log, events after it (minus each evaluated user's last event, held out) the
newly arrived ones. For each size and each history length:

* `previous`: a backbone trained on the old log only (what users were being served);
* `full` (per seed): a new backbone trained from scratch on old + new events, the same epochs;
* `lora` (per seed): a LoRA adapter on `previous`, trained only on positions whose target is a new event.

Each model scores a fixed sample of evaluated users (those whose last event is after the cut; their whole history
before it as context, seen items excluded). Reported per (size, length, method): CPU seconds of the training call
(`time.process_time`, one thread), test MRR of the held-out last event (mean and spread over seeds), overlap@10 of
the top-10 lists and Kendall τ of the scores on a fixed item sample against `previous` (what changes for a user at
a refresh) and between seeds of the same method (what changes for no reason but the seed). Then the Spearman
correlation between cost and stability across every (size, length, method) point.

    python benchmarks/refresh/bench_refresh.py --data path/to/ml-100k --sizes genrec-25k genrec-100k genrec-500k genrec-2m \
        --max-lengths 50 200 --seeds 0 1 --out benchmarks/results_refresh.md

More seeds later, without retraining the earlier ones: run only the new seeds with `--merge OLD.json` (the earlier
run's JSON). `previous` is seeded on its own (100), so it is retrained identically; the merge checks its MRR
matches, pools the per-seed MRR, CPU, overlap and τ vs previous, and keeps the earlier across-seed pairs (their
top-10 lists were not saved, so pairs between an old and a new seed are not measured; `across_seeds_pairs` says
which pairs each across-seed number averages). A JSON from before per-seed values were saved holds each method's
2-seed MRR as mean ± spread, which gives both values exactly (`--merge-seeds` names those 2 seeds).
"""

from __future__ import annotations

import argparse
import json
import platform
from datetime import date
from pathlib import Path

import numpy as np


def build_rows(data, cut: int, max_users: int, seed: int):
    """(old-only labelled rows, old+new labelled rows, new-only labelled rows, eval rows) in the task row format."""
    from datasets import Dataset

    from genrec_hf.data.tasks import EVAL_FEATURES, TRAIN_FEATURES

    old, full, new, evaluation = [], [], [], []
    for row in data.sequences:
        items, times = list(row["item_ids"]), list(row["timestamps"])
        actions = list(row.get("action_ids") or [0] * len(items))
        user = str(row["user_id"])
        held_out = len(items) - 1 if times[-1] >= cut and len(items) >= 4 else None
        stop = held_out if held_out is not None else len(items)
        context = {"user_id": user, "item_ids": items[:stop], "timestamps": times[:stop], "action_ids": actions[:stop]}

        def labelled(keep) -> dict | None:
            labels = [items[t + 1] if keep(t + 1) else -100 for t in range(stop - 1)] + [-100]
            return {**context, "labels": labels} if any(label != -100 for label in labels) else None

        for rows, keep in ((old, lambda i: times[i] < cut), (full, lambda i: True), (new, lambda i: times[i] >= cut)):
            made = labelled(keep)
            if made is not None:
                rows.append(made)
        if held_out is not None:
            evaluation.append({**context, "target_ids": [items[held_out]], "target_time": int(times[held_out])})
    rng = np.random.default_rng(seed)
    if len(evaluation) > max_users:
        evaluation = [evaluation[i] for i in sorted(rng.choice(len(evaluation), max_users, replace=False))]
    make = lambda rows, features: Dataset.from_list(rows, features=features)  # noqa: E731
    return (make(old, TRAIN_FEATURES), make(full, TRAIN_FEATURES), make(new, TRAIN_FEATURES),
            make(evaluation, EVAL_FEATURES))


def train(base_dir: Path, rows, evaluation, mode: str, *, max_length: int, epochs: float, lr: float, seed: int,
          out: Path, lora_rank: int = 8):
    """One training call through the package's fine-tuning pipeline on labelled rows (`mode`: from_scratch on
    `base_dir`'s config, or a LoRA adapter on `base_dir`): (model, CPU seconds, wall seconds) of its training loop.
    No evaluation or checkpoint during training, so the CPU time is training alone."""
    from genrec_hf.data.protocol import RankingProtocol
    from genrec_hf.data.tasks import TaskData
    from genrec_hf.training import FinetuneRecipe, finetune, recipe_from_dict

    recipe = recipe_from_dict({
        "output_dir": str(out), "mode": mode, "seed": seed, "data": {"max_length": max_length},
        "lora": {"r": lora_rank, "alpha": 2 * lora_rank},
        "training": {"num_train_epochs": epochs, "learning_rate": lr, "eval_strategy": "no", "save_strategy": "no",
                     "load_best_model_at_end": False, "logging_strategy": "no"},
        "evaluation": {"early_stopping_patience": None, "zero_shot": False},
    }, source="bench_refresh", kind=FinetuneRecipe)
    task = TaskData(name="refresh", train=rows, validation=evaluation, test=evaluation,
                    protocol=RankingProtocol(exclude_history=True))
    outcome = finetune(recipe, base_dir, overwrite_output_dir=True, task=task, data_name="refresh")
    return outcome.model, outcome.metrics["train"]["cpu_s"], outcome.metrics["train"]["runtime_s"]


def initial_base(config, vocab, out: Path) -> Path:
    """A folder holding an untrained model of `config` (the shape `from_scratch` runs start from) and its vocab."""
    from genrec_hf import GenRecForNextItemPrediction
    from genrec_hf.integrity import write_manifest

    GenRecForNextItemPrediction(config).save_pretrained(out)
    vocab.save(out)
    write_manifest(out)  # last: it covers the vocabulary too
    return out


def scores_and_mrr(model, evaluation, max_length: int, item_sample: np.ndarray):
    """(top-10 item lists (U, 10), scores on the item sample (U, S), test MRR) with seen items excluded."""
    import torch
    from torch.utils.data import DataLoader

    from genrec_hf.data.collators import TaskCollator
    from genrec_hf.evaluation import RankingProtocol
    from genrec_hf.evaluation.metrics import metrics_from_ranks
    from genrec_hf.evaluation.protocols import MODEL_INPUTS, rank_batches

    loader = DataLoader(evaluation, batch_size=256, collate_fn=TaskCollator(max_length, mode="eval"))
    mrr = metrics_from_ranks(rank_batches(model, loader, RankingProtocol(exclude_history=True)), [10])["mrr"]
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    tops, sampled = [], []
    model.eval()
    with torch.no_grad():
        for batch in loader:
            inputs = {k: batch[k] for k in MODEL_INPUTS if batch.get(k) is not None}
            scores = base.score(model(**inputs).user_embeddings)
            sampled.append(scores[:, torch.as_tensor(item_sample)].numpy())
            seen = batch["exclude_ids"]
            scores.scatter_(1, seen, float("-inf"))  # index 0 (padding) is -inf already
            tops.append(scores.topk(10, dim=1).indices.numpy())
    return np.concatenate(tops), np.concatenate(sampled), float(mrr)


def overlap(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([len(set(x) & set(y)) / len(x) for x, y in zip(a, b)]))


def kendall(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import kendalltau

    return float(np.nanmean([kendalltau(x, y).statistic for x, y in zip(a, b)]))


def run(args: argparse.Namespace) -> list[dict]:
    import torch

    from genrec_hf import GenRecConfig, count_backbone_parameters
    from genrec_hf.data import load_interactions

    torch.set_num_threads(1)
    data = load_interactions(args.data)
    times = np.concatenate([np.asarray(t) for t in data.sequences["timestamps"]])
    cut = int(times.min() + (1.0 - args.new_fraction) * (times.max() - times.min()))
    old_rows, full_rows, new_rows, evaluation = build_rows(data, cut, args.max_users, 0)
    new_events = int(np.sum(times >= cut))
    print(f"{data.name}: cut at {cut} (last {args.new_fraction:.0%} of the time range): {new_events} new events of "
          f"{len(times)}; {len(evaluation)} evaluated users", flush=True)
    rng = np.random.default_rng(0)
    item_sample = rng.choice(np.arange(1, len(data.vocab)), size=min(args.tau_items, len(data.vocab) - 1),
                             replace=False)
    results = []
    for max_length in args.max_lengths:
        for preset in args.sizes:
            config = GenRecConfig.from_preset(preset, vocab_size=len(data.vocab), max_position_embeddings=max_length,
                                              num_action_types=data.num_action_types)
            folder = args.workdir / f"{preset}-len{max_length}"
            init = initial_base(config, data.vocab, folder / "init")
            common = dict(max_length=max_length, lora_rank=args.lora_rank)
            previous, cost, _ = train(init, old_rows, evaluation, "from_scratch", epochs=args.epochs, lr=args.lr,
                                      seed=100, out=folder / "previous", **common)
            prev_top, prev_scores, prev_mrr = scores_and_mrr(previous, evaluation, max_length, item_sample)
            point = {"dataset": data.name, "preset": preset, "backbone_params": count_backbone_parameters(config),
                     "max_length": max_length, "previous_mrr": prev_mrr, "previous_cpu_s": cost}
            outputs = {}
            for method in ("full", "lora"):
                outputs[method] = []
                for seed in args.seeds:
                    if method == "full":  # a new backbone from scratch on old + new events
                        model, cpu, wall = train(init, full_rows, evaluation, "from_scratch", epochs=args.epochs,
                                                 lr=args.lr, seed=seed, out=folder / f"full-s{seed}", **common)
                    else:  # a LoRA adapter on `previous`, supervised only where the target is a new event
                        model, cpu, wall = train(folder / "previous", new_rows, evaluation, "lora",
                                                 epochs=args.lora_epochs, lr=args.lora_lr, seed=seed,
                                                 out=folder / f"lora-s{seed}", **common)
                    top, scores, mrr = scores_and_mrr(model, evaluation, max_length, item_sample)
                    outputs[method].append(dict(top=top, scores=scores, mrr=mrr, cpu=cpu, wall=wall))
                runs = outputs[method]
                pairs = [(i, j) for i in range(len(runs)) for j in range(i + 1, len(runs))]
                results.append({
                    **point, "method": method, "seeds": list(args.seeds),
                    "mrr_by_seed": [r["mrr"] for r in runs], "cpu_s_by_seed": [r["cpu"] for r in runs],
                    "overlap_vs_previous_by_seed": [overlap(r["top"], prev_top) for r in runs],
                    "tau_vs_previous_by_seed": [kendall(r["scores"], prev_scores) for r in runs],
                    "across_seeds_pairs": [[args.seeds[i], args.seeds[j]] for i, j in pairs],
                    "cpu_s": float(np.mean([r["cpu"] for r in runs])),
                    "mrr_mean": float(np.mean([r["mrr"] for r in runs])),
                    "mrr_spread": float(np.ptp([r["mrr"] for r in runs])),
                    "overlap_vs_previous": float(np.mean([overlap(r["top"], prev_top) for r in runs])),
                    "tau_vs_previous": float(np.mean([kendall(r["scores"], prev_scores) for r in runs])),
                    "overlap_across_seeds": (float(np.mean([overlap(runs[i]["top"], runs[j]["top"])
                                                            for i, j in pairs])) if pairs else None),
                    "tau_across_seeds": (float(np.mean([kendall(runs[i]["scores"], runs[j]["scores"])
                                                        for i, j in pairs])) if pairs else None),
                })
                print(json.dumps({k: v for k, v in results[-1].items() if k != "dataset"}), flush=True)
    return results


def _per_seed(point: dict, key: str, seeds: list[int]) -> list[float] | None:
    """A point's per-seed values of `key` ('mrr', 'cpu_s', ...), or None where only their mean was saved."""
    if f"{key}_by_seed" in point:
        return list(point[f"{key}_by_seed"])
    if key == "mrr" and len(seeds) == 2:  # two values are mean ± spread/2 exactly (which seed is which is lost)
        return [point["mrr_mean"] - point["mrr_spread"] / 2, point["mrr_mean"] + point["mrr_spread"] / 2]
    return None


def merge(old: list[dict], new: list[dict], old_seeds: list[int] | None) -> list[dict]:
    """Pool the seeds of two runs of the same points (same sizes, lengths, methods and `previous`)."""
    def key(point: dict) -> tuple:
        return point["dataset"], point["preset"], point["max_length"], point["method"]

    index = {key(p): p for p in old}
    merged = []
    for point in new:
        before = index.get(key(point))
        if before is None:
            raise SystemExit(f"--merge: the earlier run has no point {key(point)}; run the same sizes and lengths.")
        if abs(before["previous_mrr"] - point["previous_mrr"]) > 1e-6:
            raise SystemExit(f"--merge: `previous` differs at {key(point)} (MRR {before['previous_mrr']:.6f} vs "
                             f"{point['previous_mrr']:.6f}): the runs are not the same setup.")
        seeds_before = before.get("seeds") or old_seeds
        if not seeds_before:
            raise SystemExit("--merge: the earlier JSON does not record its seeds; name them with --merge-seeds.")
        if set(seeds_before) & set(point["seeds"]):
            raise SystemExit(f"--merge: seeds {sorted(set(seeds_before) & set(point['seeds']))} are in both runs.")
        n_old, n_new = len(seeds_before), len(point["seeds"])
        out = {**point, "seeds": list(seeds_before) + list(point["seeds"])}
        for name in ("mrr", "cpu_s", "overlap_vs_previous", "tau_vs_previous"):
            old_values = _per_seed(before, name, seeds_before)
            mean_key = "mrr_mean" if name == "mrr" else name
            if old_values is not None:
                out[f"{name}_by_seed"] = old_values + list(point[f"{name}_by_seed"])
                out[mean_key] = float(np.mean(out[f"{name}_by_seed"]))
            else:  # only the earlier mean is known: weight it by its seeds
                out.pop(f"{name}_by_seed", None)
                out[mean_key] = float((before[mean_key] * n_old + np.sum(point[f"{name}_by_seed"])) / (n_old + n_new))
        if "mrr_by_seed" in out:
            out["mrr_spread"] = float(np.ptp(out["mrr_by_seed"]))
        old_pairs = before.get("across_seeds_pairs") or [[a, b] for i, a in enumerate(seeds_before)
                                                         for b in seeds_before[i + 1:]]
        new_pairs = point["across_seeds_pairs"]
        for name in ("overlap_across_seeds", "tau_across_seeds"):
            parts = [(before[name], len(old_pairs)), (point[name], len(new_pairs))]
            parts = [(v, n) for v, n in parts if v is not None and n]
            out[name] = (float(sum(v * n for v, n in parts) / sum(n for _, n in parts))) if parts else None
        out["across_seeds_pairs"] = old_pairs + new_pairs
        merged.append(out)
    return merged


def write_report(results: list[dict], args: argparse.Namespace, path: Path) -> None:
    from scipy.stats import spearmanr

    lines = [f"# Full retrain vs LoRA refresh: cost and stability ({date.today()}, {platform.machine()})", "",
             f"Command: `python benchmarks/refresh/bench_refresh.py --data {args.data} --sizes {' '.join(args.sizes)} "
             f"--max-lengths {' '.join(map(str, args.max_lengths))} --seeds {' '.join(map(str, args.seeds))} "
             f"--epochs {args.epochs:g} --lora-epochs {args.lora_epochs:g}`", "",
             "| size | N | max len | method | CPU s | MRR (mean, spread over seeds) | previous MRR | overlap@10 vs "
             "previous | τ vs previous | overlap@10 across seeds | τ across seeds |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    if args.merge:
        seeds = sorted({s for r in results for s in r.get("seeds", [])})
        pairs = sorted({tuple(p) for r in results for p in r.get("across_seeds_pairs", [])})
        lines[2] += (f" with the seeds of `{args.merge}` merged in: MRR spread and the vs-previous columns over "
                     f"seeds {seeds}, across-seed columns over the pairs {[list(p) for p in pairs]}")
    fmt = lambda v: "–" if v is None else f"{v:.3f}"  # noqa: E731
    for r in results:
        lines.append(f"| {r['preset']} | {r['backbone_params']:,} | {r['max_length']} | {r['method']} | "
                     f"{r['cpu_s']:.1f} | {r['mrr_mean']:.4f} ± {r['mrr_spread']:.4f} | {r['previous_mrr']:.4f} | "
                     f"{fmt(r['overlap_vs_previous'])} | {fmt(r['tau_vs_previous'])} | "
                     f"{fmt(r['overlap_across_seeds'])} | {fmt(r['tau_across_seeds'])} |")
    cost = [r["cpu_s"] for r in results]
    for key in ("overlap_vs_previous", "tau_vs_previous", "overlap_across_seeds"):
        values = [r[key] for r in results]
        if len(results) >= 3 and all(v is not None for v in values):
            rho = spearmanr(cost, values).statistic
            lines.append(f"\nSpearman ρ(CPU cost, {key}) over the {len(results)} points: {rho:+.2f}")
    path.write_text("\n".join(lines) + "\n")
    (path.with_suffix(".json")).write_text(json.dumps(results, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="synthetic", help="events: a path or 'synthetic[:key=value,...]'")
    parser.add_argument("--sizes", nargs="+", default=["genrec-25k", "genrec-100k", "genrec-500k", "genrec-2m"])
    parser.add_argument("--max-lengths", nargs="+", type=int, default=[50, 200])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--new-fraction", type=float, default=0.1, help="share of the time range that is new")
    parser.add_argument("--epochs", type=float, default=5.0, help="epochs of `previous` and of a full retrain")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--lora-epochs", type=float, default=5.0, help="epochs of a LoRA refresh over the new events")
    parser.add_argument("--lora-lr", type=float, default=5e-3)
    parser.add_argument("--lora-rank", type=int, default=8)
    parser.add_argument("--max-users", type=int, default=500, help="evaluated users (a fixed sample)")
    parser.add_argument("--tau-items", type=int, default=200, help="items in the fixed sample Kendall τ reads")
    parser.add_argument("--workdir", type=Path, default=Path("runs/bench_refresh"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results_refresh.md"))
    parser.add_argument("--merge", type=Path, default=None, metavar="OLD.json",
                        help="pool this run's seeds with an earlier run's JSON of the same points")
    parser.add_argument("--merge-seeds", nargs="+", type=int, default=None,
                        help="the seeds of --merge's run, when its JSON does not record them")
    args = parser.parse_args()
    old = json.loads(args.merge.read_text()) if args.merge else None  # read first: --out may be the same file
    args.workdir.mkdir(parents=True, exist_ok=True)
    results = run(args)
    if old is not None:
        (args.out.with_name(args.out.stem + "_unmerged.json")).write_text(json.dumps(results, indent=2))
        results = merge(old, results, args.merge_seeds)
    write_report(results, args, args.out)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
