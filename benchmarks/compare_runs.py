"""Is model B really better than model A? Paired bootstrap over the same test users.

Ranks every test user's held-out item under each saved model (the one protocol: leave-one-out, full catalog,
history excluded), then reports each model's MRR ± standard error and the relative MRR difference against the
first model with a 95% paired-bootstrap interval. A single run on ML-100K (943 users) has an MRR standard error of
about ±7%, so "+5%" from one run means nothing until its interval excludes 0.

    python benchmarks/compare_runs.py --data path/to/ml-100k \\
        benchmarks/out/quality/ml-100k/sasrec benchmarks/out/quality/ml-100k/genrec-100k
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from genrec_hf.evaluation import paired_bootstrap
from genrec_hf.evaluation.saved_models import saved_model_ranks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+", type=Path, help="saved model folders; the first is the reference")
    parser.add_argument("--data", required=True, help="the dataset they were trained on (any genrec_hf source)")
    parser.add_argument("--split", default="test", choices=["validation", "test"])
    parser.add_argument("--samples", type=int, default=2000, help="bootstrap resamples of the users")
    parser.add_argument("--out", type=Path, default=None, help="also write the table as JSON here")
    args = parser.parse_args()
    if len(args.models) < 2:
        parser.error("give at least two model folders: the reference first, then the models compared with it")

    ranks = {}
    for model_dir in args.models:
        _, ranks[str(model_dir)] = saved_model_ranks(model_dir, args.data, split=args.split)
    reference, *others = ranks
    rows = []
    lines = ["| model | MRR ± s.e. | Δ MRR vs first | 95% interval |", "|---|---|---|---|"]
    first = paired_bootstrap(ranks[reference], ranks[reference], num_samples=10)
    lines.append(f"| {reference} | {first['a']:.4f} ± {first['a_stderr']:.4f} | – | – |")
    for name in others:
        result = paired_bootstrap(ranks[reference], ranks[name], num_samples=args.samples)
        rows.append({"reference": reference, "model": name, **result})
        lines.append(f"| {name} | {result['b']:.4f} ± {result['b_stderr']:.4f} | {result['relative']:+.1%} | "
                     f"[{result['relative_low']:+.1%}, {result['relative_high']:+.1%}] |")
    print("\n".join(lines))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
