"""Is model B really better than model A? Paired bootstrap over the same test users.

Ranks every test user's held-out item under each saved model (the one protocol: leave-one-out, full catalog,
history excluded), then reports each model's MRR and NDCG@10 (`--metrics`) ± standard error and the relative
difference against the first model with a 95% paired-bootstrap interval (users resampled with replacement, the same
users for both models). A single run on ML-100K (943 users) has an MRR standard error of about ±7%, so "+5%" from
one run means nothing until its interval excludes 0.

    python benchmarks/quality/compare_runs.py --data path/to/ml-100k \\
        benchmarks/out/quality/ml-100k/sasrec benchmarks/out/quality/ml-100k/genrec-100k

Several seeds: give each model as a comma-separated list of its runs' folders, one per seed in the same order; the
users of all seeds are pooled (seed 0's users, then seed 1's), so the interval resamples users of every seed, each
paired with the same user and seed of the other model (the seeds themselves are not resampled).

    python benchmarks/quality/compare_runs.py --data path/to/ml-100k out/s0/sasrec,out/s1/sasrec out/s0/genrec-100k,out/s1/genrec-100k
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from genrec_hf.evaluation import paired_bootstrap, per_user_metric
from genrec_hf.evaluation.saved_models import saved_model_ranks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+",
                        help="saved model folders, the first is the reference; FOLDER,FOLDER,... pools seeds")
    parser.add_argument("--data", required=True, help="the dataset they were trained on (any genrec_hf source)")
    parser.add_argument("--split", default="test", choices=["validation", "test"])
    parser.add_argument("--samples", type=int, default=2000, help="bootstrap resamples of the users")
    parser.add_argument("--metrics", nargs="+", default=["mrr", "ndcg@10"],
                        help="per-user metrics to compare: mrr, hr@K, ndcg@K (default: mrr ndcg@10)")
    parser.add_argument("--out", type=Path, default=None, help="also write the table as JSON here")
    args = parser.parse_args()
    if len(args.models) < 2:
        parser.error("give at least two model folders: the reference first, then the models compared with it")

    runs = {model: [Path(folder) for folder in model.split(",")] for model in args.models}
    if len({len(folders) for folders in runs.values()}) > 1:
        parser.error("every model needs the same number of comma-separated run folders (one per seed, same order); "
                     f"got {', '.join(f'{len(folders)} for {model}' for model, folders in runs.items())}")
    ranks = {model: torch.cat([saved_model_ranks(folder, args.data, split=args.split)[1] for folder in folders])
             for model, folders in runs.items()}
    reference, *others = ranks
    try:
        metrics = {name: per_user_metric(name) for name in args.metrics}
    except ValueError as error:
        parser.error(f"--metrics: {error}")
    rows = []
    header = " | ".join(f"{name.upper()} ± s.e. | Δ vs first | 95% interval" for name in metrics)
    lines = [f"| model | {header} |", "|---|" + "---|---|---|" * len(metrics)]
    cells = []
    for name, metric in metrics.items():
        first = paired_bootstrap(ranks[reference], ranks[reference], metric=metric, num_samples=10)
        cells.append(f"{first['a']:.4f} ± {first['a_stderr']:.4f} | – | –")
    lines.append(f"| {reference} | {' | '.join(cells)} |")
    for model in others:
        cells = []
        for name, metric in metrics.items():
            result = paired_bootstrap(ranks[reference], ranks[model], metric=metric, num_samples=args.samples)
            rows.append({"reference": reference, "model": model, "metric": name, **result})
            cells.append(f"{result['b']:.4f} ± {result['b_stderr']:.4f} | {result['relative']:+.1%} | "
                         f"[{result['relative_low']:+.1%}, {result['relative_high']:+.1%}]")
        lines.append(f"| {model} | {' | '.join(cells)} |")
    print("\n".join(lines))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
