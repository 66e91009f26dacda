"""Report a scaling ladder run with several seeds: MRR per size and seed, the per-seed and pooled fits, gains of
the largest size over the smallest, and whether the tasks' headroom ranking agrees across seeds.

Each ladder folder is one seed of the same ladder (`genrec-hf scaling run ... --seed S --output_dir DIR`): it holds
`results.csv` (and optionally `results_data_axis.csv`) with the per-user ranks they point at, and optionally
`bases/<preset>.json` (the ladder's `ladder_base.json` of each size: its next-event validation MRR).

    python benchmarks/scaling/scaling_report.py --ladders runs/scaling/ml100k-epochs-s0 \\
        runs/scaling/ml100k-epochs-s1 runs/scaling/ml100k-epochs-s2 \\
        --plot benchmarks/plots/scaling_ladder_ml100k_epochs_seeds.png --out benchmarks/scaling/ml100k-epochs.md
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
from pathlib import Path

import numpy as np


def _short(value: float) -> str:
    return f"{value:.4f}".replace("0.", ".", 1) if math.isfinite(value) else "n/a"


def _interval(value: float, interval: tuple[float, float] | None, digits: int = 3) -> str:
    text = f"{value:.{digits}f}"
    return f"{text} [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]" if interval else text


def _reason(fit) -> str:
    if fit.identified:
        return "yes"
    text = fit.reasons[0]
    for key, short in (("exceeds", "P0 > 1"), ("no rise", "no rise"), ("lower bound", "a at bound"),
                       ("unbounded", "P0 unbounded"), ("whole interval", "falls with size"), ("reaches", "CI > 1")):
        if key in text:
            return f"no: {short}"
    return "no: " + text[:40]


def _size_table(frames: list, bases: list[dict[str, float]], size_column: str) -> list[str]:
    sizes = sorted(frames[0][size_column].unique())
    events = {f: np.mean([frame[frame[size_column] == f]["train_events"].iloc[0] for frame in frames])
              for f in sizes} if size_column == "data_fraction" else {}
    label = {row[size_column]: row["preset"] if size_column == "backbone_params"
             else f"{row[size_column]:g} ({events[row[size_column]]:,.0f} events)" for _, row in frames[0].iterrows()}
    head = "| task (test users) | " + " | ".join(str(label[s]) for s in sizes) + " | largest vs smallest |"
    lines = [head, "|" + "---|" * (len(sizes) + 2)]
    if any(bases):
        presets = [label[s] for s in sizes]
        per_seed = [[b.get(p, float("nan")) for p in presets] for b in bases]
        lines.append(_row("pre-train, next event", per_seed))
    for task in dict.fromkeys(frames[0]["task"]):
        per_seed = []
        for frame in frames:
            rows = frame[frame["task"] == task].set_index(size_column)
            per_seed.append([float(rows.loc[s, "mrr"]) if s in rows.index else float("nan") for s in sizes])
        users = int(frames[0][frames[0]["task"] == task]["num_users"].iloc[0])
        lines.append(_row(f"{task} ({users})", per_seed))
    return lines


def _row(name: str, per_seed: list[list[float]]) -> str:
    values = np.array(per_seed, dtype=float)  # (seeds, sizes)
    cells = [" / ".join(_short(v) for v in column) for column in values.T]
    gains = 100 * (values[:, -1] / values[:, 0] - 1)
    gain = " / ".join(f"{g:+.1f}%" for g in gains)
    if len(values) > 1:
        cells = [f"{c} (**{_short(float(np.nanmean(col)))}**)" for c, col in zip(cells, values.T)]
        gain += f" (mean {100 * (np.nanmean(values[:, -1]) / np.nanmean(values[:, 0]) - 1):+.1f}%)"
    return f"| {name} | " + " | ".join(cells) + f" | {gain} |"


def _fit_table(csvs: list[Path], labels: list[str], size_column: str, bootstrap: int) -> tuple[list[str], dict]:
    from genrec_hf.scaling import fit_csv

    lines = ["| task | seeds | P0 [95% CI] | a | RMSE ×1e-3 offset vs log | AIC prefers (Δ) | headroom [CI] | "
             "P0 identified? |", "|---|---|---|---|---|---|---|---|"]
    per_seed = [fit_csv(path, size_column=size_column, n_bootstrap=bootstrap) for path in csvs]
    pooled = fit_csv(csvs, size_column=size_column, n_bootstrap=bootstrap) if len(csvs) > 1 else None
    for task in per_seed[0]:
        runs = [(label, fits[task]) for label, fits in zip(labels, per_seed)]
        if pooled is not None:
            runs.append((f"pooled ({pooled[task].bootstrap})", pooled[task]))
        for label, fit in runs:
            lines.append(f"| {task} | {label} | {_interval(fit.offset.p0, fit.offset.p0_interval)} | "
                         f"{fit.offset.a:.3g} | {fit.offset.rmse * 1e3:.2f} vs {fit.log.rmse * 1e3:.2f} | "
                         f"{fit.preferred} ({fit.delta:+.1f}) | {_interval(fit.headroom, fit.headroom_interval)} | "
                         f"{_reason(fit)} |")
    return lines, {"per_seed": per_seed, "pooled": pooled}


def _ranking(fits: dict, labels: list[str]) -> list[str]:
    from scipy.stats import kendalltau

    per_seed = fits["per_seed"]
    tasks = list(per_seed[0])
    lines = []
    headrooms = []
    for label, seed_fits in zip(labels, per_seed):
        values = [seed_fits[t].headroom for t in tasks]
        headrooms.append(values)
        order = sorted(tasks, key=lambda t: -seed_fits[t].headroom)
        identified = sum(seed_fits[t].identified for t in tasks)
        lines.append(f"- {label}: " + " > ".join(f"{t} ({seed_fits[t].headroom:+.3f}"
                                                 f"{'' if seed_fits[t].identified else ', not identified'})"
                                                 for t in order)
                     + f"; {identified} of {len(tasks)} ceilings identified")
    for (i, a), (j, b) in itertools.combinations(enumerate(headrooms), 2):
        tau = kendalltau(a, b).statistic
        lines.append(f"- Kendall τ of the headroom ranking, {labels[i]} vs {labels[j]}: {tau:+.2f}")
    # The paper's other view, which needs no identified ceiling: the gain of the largest size over the smallest.
    gains = [[seed_fits[t].values[-1] / seed_fits[t].values[0] - 1 for t in tasks] for seed_fits in per_seed]
    for label, values in zip(labels, gains):
        order = sorted(zip(tasks, values), key=lambda item: -item[1])
        lines.append(f"- {label}, gain of the largest size over the smallest: "
                     + " > ".join(f"{t} ({100 * g:+.1f}%)" for t, g in order))
    for (i, a), (j, b) in itertools.combinations(enumerate(gains), 2):
        lines.append(f"- Kendall τ of the gain ranking, {labels[i]} vs {labels[j]}: {kendalltau(a, b).statistic:+.2f}")
    return lines


def report(ladders: list[Path], *, bootstrap: int, plot: Path | None, name: str) -> str:
    """The markdown report of one or more seeds' ladder folders (module docstring)."""
    import pandas as pd

    labels, frames, bases, csvs = [], [], [], []
    for folder in ladders:
        csv = folder / "results.csv"
        if not csv.is_file():
            raise SystemExit(f"{folder}: no results.csv (expected a `genrec-hf scaling run` output folder).")
        frame = pd.read_csv(csv)
        seeds = frame["seed"].unique().tolist()
        labels.append(f"seed {seeds[0]}" if len(seeds) == 1 else folder.name)
        frames.append(frame)
        csvs.append(csv)
        bases.append({p.stem: json.loads(p.read_text()).get("validation_mrr", float("nan"))
                      for p in sorted((folder / "bases").glob("*.json"))})
    out = [f"# Scaling ladder report: {name}", "",
           f"{len(ladders)} seed(s): {', '.join(labels)}. Cells are seed by seed (the mean in bold). Intervals: "
           f"{bootstrap} bootstrap resamples of the test users (per seed) or of seeds and users (pooled).", "",
           "## Test MRR per size", ""]
    out += _size_table(frames, bases, "backbone_params")
    fit_lines, fits = _fit_table(csvs, labels, "backbone_params", bootstrap)
    out += ["", "## Fits (offset power law vs log-linear)", ""] + fit_lines
    out += ["", "## Ranking of the tasks by headroom and by gain, per seed", ""] + _ranking(fits, labels)
    axes = [folder / "results_data_axis.csv" for folder in ladders]
    if all(path.is_file() for path in axes):
        axis_frames = [pd.read_csv(path) for path in axes]
        # Fitted against the fraction of training users: each seed draws its own users, so the event counts
        # differ by seed while the fractions are shared (the law is the same up to N0's unit).
        out += ["", "## Data-size axis (one preset on nested fractions of the training users; fitted against the "
                "fraction, events are the mean over seeds)", ""]
        out += _size_table(axis_frames, [{} for _ in axes], "data_fraction")
        axis_lines, _ = _fit_table(axes, labels, "data_fraction", bootstrap)
        out += [""] + axis_lines
    if plot is not None:
        from genrec_hf.scaling.plot import plot_fits

        plot_fits(fits["pooled"] or fits["per_seed"][0], plot)
        out += ["", f"Plot: `{plot}`"]
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ladders", nargs="+", type=Path, required=True,
                        help="ladder output folders, one per seed of the same ladder")
    parser.add_argument("--name", default=None, help="title of the report (default: the first folder's name)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples per fit")
    parser.add_argument("--plot", type=Path, default=None, help="also plot the pooled fits here (.png)")
    parser.add_argument("--out", type=Path, default=None, help="write the markdown here (default: print it)")
    args = parser.parse_args()
    text = report(args.ladders, bootstrap=args.bootstrap, plot=args.plot, name=args.name or args.ladders[0].name)
    if args.out:
        args.out.write_text(text)
        print(f"written to {args.out}")
    else:
        print(text)


if __name__ == "__main__":
    main()
