"""Scaling-law fit on ILLUSTRATIVE points: offset power law vs log-linear, ceiling P0, headroom, intervals.

    python examples/scaling_fit.py [--workdir runs/scaling_fit] [--bootstrap 300] [--plot]

Nothing here is a measured result. Two made-up tasks are drawn from known laws with noise, so the fit can be checked
against the truth: "bends" from an offset power law (P0 = 0.30), "straight" from a log-linear law (no ceiling in
sight). For "bends" the example also writes per-user ranks (paired across sizes, as when every size is evaluated on
the same users), so its intervals resample users; "straight" falls back to resampling residuals. It writes the CSV
the `genrec-hf scaling fit` command reads, fits it, and prints the table; it runs in a few seconds.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import optimize

from genrec_hf.scaling import fit_csv, format_table

SIZES = np.round(np.geomspace(2e5, 5e7, 6))  # backbone parameters, transformer blocks only
BENDS = dict(p0=0.30, a=0.4, n0=5e3)  # illustrative truth of the offset law
STRAIGHT = dict(slope=0.012, intercept=0.02)  # illustrative truth of the log-linear law


def geometric_p(mrr: float) -> float:
    """Success probability p of a geometric rank on {1, 2, ...} whose mean reciprocal rank is `mrr`."""
    return optimize.brentq(lambda p: -p * np.log(p) / (1 - p) - mrr, 1e-9, 1 - 1e-9)


def illustrative_csv(workdir: Path, num_users: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    rows = []
    uniforms = rng.uniform(size=num_users)  # one draw per user, shared by every size: the same users, paired
    ranks_dir = workdir / "ranks"
    ranks_dir.mkdir(parents=True, exist_ok=True)
    for size in SIZES:
        target = BENDS["p0"] - (size / BENDS["n0"]) ** -BENDS["a"]
        ranks = np.ceil(np.log1p(-uniforms) / np.log1p(-geometric_p(target))).astype(np.int64).clip(min=1)
        path = ranks_dir / f"bends_{size:.0f}.npy"
        np.save(path, ranks)
        rows.append(dict(task="bends", backbone_params=int(size), mrr=float(np.mean(1.0 / ranks)),
                         ranks_path=str(path.relative_to(workdir))))
    for size in SIZES:
        value = STRAIGHT["slope"] * np.log(size) + STRAIGHT["intercept"] + rng.normal(0, 0.002)
        rows.append(dict(task="straight", backbone_params=int(size), mrr=float(value), ranks_path=""))
    path = workdir / "illustrative_scaling.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="runs/scaling_fit", help="where the CSV, ranks and plot are written")
    parser.add_argument("--bootstrap", type=int, default=300, help="bootstrap resamples per task")
    parser.add_argument("--users", type=int, default=2000, help="illustrative evaluation users per size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot", action="store_true", help="also draw scaling.png (needs matplotlib)")
    args = parser.parse_args()

    workdir = Path(args.workdir)
    csv = illustrative_csv(workdir, args.users, args.seed)
    print(f"ILLUSTRATIVE points (drawn from known laws, not measurements) written to {csv}\n")
    fits = fit_csv(csv, n_bootstrap=args.bootstrap, seed=args.seed, extrapolate_sizes={"1B": 1e9})
    print(format_table(fits))
    print(f"\ntruth: bends P0 = {BENDS['p0']}, a = {BENDS['a']}, N0 = {BENDS['n0']:g}; straight has no ceiling")
    print(f"same fit from the command line: genrec-hf scaling fit {csv} --bootstrap {args.bootstrap}")
    if args.plot:
        from genrec_hf.scaling.plot import plot_fits

        print(f"plot written to {plot_fits(fits, workdir / 'scaling.png')}")


if __name__ == "__main__":
    main()
