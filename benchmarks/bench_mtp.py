"""Multi-token prediction vs next-token prediction under cached serving (staleness replay), paper §4.

Every model trains through `genrec_hf.training.train` from recipes/pretrain/genrec-500k-mtp.yaml (`--preset`,
default genrec-100k, so that a one-minute CPU budget buys several epochs) with the same wall-clock budget; NTP is
the same recipe with `objective: ntp`. Each is then replayed with `genrec_hf.evaluation.staleness`:

* `--anchor request` (default; leave-one-out training): each user's held-out last event is a request ranked from
  the user state Δ before it, the events of those Δ excluded as consumed (users with no event before T - Δ are
  counted out);
* `--anchor cut` (time-split training at `--quantile`): one cache refresh at the cut, lists shown Δ later, target
  = the first event at/after the show time.

The table gives MRR per Δ, NTP's own staleness cost, and each MTP row's relative change vs NTP (with a paired
bootstrap 95% interval over the same users for the rows trained with every headline seed).

    python benchmarks/bench_mtp.py --out benchmarks/out/mtp
    python benchmarks/bench_mtp.py --datasets synthetic --ks 5 --half-lives 1h --minutes 0.5   # a quick look
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import subprocess
import time
from datetime import date
from pathlib import Path

import torch

from genrec_hf.evaluation import metrics_from_ranks, paired_bootstrap
from genrec_hf.evaluation.staleness import cut_at_quantile, format_duration, parse_duration, staleness_ranks
from genrec_hf.training import train
from genrec_hf.training.recipes import load_recipe

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
DATASETS = {"synthetic": "synthetic", "ml-100k": str(DATA / "ml-100k")}
RECIPE = ROOT / "recipes" / "pretrain" / "genrec-500k-mtp.yaml"
PAPER = ("paper (task B, short horizon): NTP staleness cost -31% MRR at 24 h, -41% at 48 h; MTP (5 events) vs NTP "
         "at 48 h: +22.1% / +27.8% / +27.9% (tasks A / B / C)")


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    cores = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    return f"{cpu}, {cores} cores, torch {torch.__version__}, {torch.get_num_threads()} thread(s)"


def variants(ks: list[int], half_lives: list[int]) -> dict[str, dict[str, str]]:
    """name: recipe overrides; "ntp" first, then one MTP row per (K, beta)."""
    out = {"ntp": {"model.overrides.objective": "ntp"}}
    for k in ks:
        for beta in half_lives:
            out[f"mtp-k{k}-b{format_duration(beta)}"] = {
                "model.overrides.objective": "mtp", "model.overrides.mtp_num_targets": str(k),
                "model.overrides.mtp_half_life_seconds": str(beta)}
    return out


def run(dataset: str, name: str, overrides: dict[str, str], seed: int, args: argparse.Namespace,
        deltas: list[int]) -> dict:
    split = {"data.split": "time", "data.time_split_quantile": str(args.quantile)} if args.anchor == "cut" else {}
    recipe = load_recipe(RECIPE, {
        "data.source": DATASETS[dataset], "data.max_length": str(args.max_length), **split,
        "model.preset": args.preset,
        "output_dir": str(args.out / dataset / f"{name}-s{seed}"), "seed": str(seed),
        "max_train_minutes": str(args.minutes), "budget_clock": args.clock, "training.num_train_epochs": "1000",
        "training.disable_tqdm": "true", "evaluation.num_examples": "0", **overrides,
    })
    start = time.perf_counter()
    outcome = train(recipe, overwrite_output_dir=True)
    trained = time.perf_counter() - start
    cut = cut_at_quantile(outcome.data, args.quantile) if args.anchor == "cut" else None
    per_delta, ranks = {}, {}
    for delta in deltas:
        delta_ranks, replay = staleness_ranks(outcome.model, outcome.data, delta, anchor=args.anchor, cut=cut,
                                              max_length=args.max_length)
        label = format_duration(delta)
        ranks[label] = delta_ranks[:, 0].tolist()
        per_delta[label] = {**metrics_from_ranks(delta_ranks, (10,)), **replay.stats}
    return {"dataset": dataset, "variant": name, "seed": seed, "cut": cut, "staleness": per_delta, "ranks": ranks,
            "train": outcome.metrics["train"], "seconds": time.perf_counter() - start, "train_seconds": trained}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def table(results: list[dict], deltas: list[str], headline_seeds: list[int]) -> str:
    lines = ["| dataset | model | seeds | " + " | ".join(f"MRR Δ={d}" for d in deltas)
             + f" | users (Δ={deltas[0]} / {deltas[-1]}) | epochs | NTP cost or MTP vs NTP, " + " / ".join(deltas)
             + " |", "|---|---|---|" + "---|" * len(deltas) + "---|---|---|"]
    for dataset in dict.fromkeys(r["dataset"] for r in results):
        rows = [r for r in results if r["dataset"] == dataset]
        ntp = [r for r in rows if r["variant"] == "ntp"]
        for name in dict.fromkeys(r["variant"] for r in rows):
            runs = [r for r in rows if r["variant"] == name]
            mrr = {d: _mean([r["staleness"][d]["mrr"] for r in runs]) for d in deltas}
            users = f"{runs[0]['staleness'][deltas[0]]['num_users']} / {runs[0]['staleness'][deltas[-1]]['num_users']}"
            if name == "ntp":
                change = " / ".join(f"{mrr[d] / mrr[deltas[0]] - 1:+.1%}" for d in deltas) + " (vs its Δ=0)"
            else:
                parts = []
                seeds = sorted(r["seed"] for r in runs)
                for d in deltas:
                    ntp_mrr = _mean([r["staleness"][d]["mrr"] for r in ntp if r["seed"] in seeds])
                    text = f"{mrr[d] / ntp_mrr - 1:+.1%}"
                    if seeds == sorted(headline_seeds) and len(seeds) > 1:
                        a = torch.tensor([x for r in sorted(ntp, key=lambda r: r["seed"]) if r["seed"] in seeds
                                          for x in r["ranks"][d]])
                        b = torch.tensor([x for r in sorted(runs, key=lambda r: r["seed"]) for x in r["ranks"][d]])
                        ci = paired_bootstrap(a, b, num_samples=1000)
                        text += f" [{ci['relative_low']:+.0%}, {ci['relative_high']:+.0%}]"
                    parts.append(text)
                change = " / ".join(parts)
            lines.append(f"| {dataset} | {name} | {','.join(str(r['seed']) for r in runs)} | "
                         + " | ".join(f"{mrr[d]:.4f}" for d in deltas) + f" | {users} | "
                         + ", ".join(f"{r['train']['epochs']:.1f}" for r in runs) + f" | {change} |")
    return "\n".join(lines)


def plot(results: list[dict], deltas: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(r["dataset"] for r in results))
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4), squeeze=False)
    positions = list(range(len(deltas)))  # evenly spaced: 0 and 1 h would overlap on a linear hour axis
    for ax, dataset in zip(axes[0], datasets):
        rows = [r for r in results if r["dataset"] == dataset]
        for name in dict.fromkeys(r["variant"] for r in rows):
            runs = [r for r in rows if r["variant"] == name]
            mrr = [_mean([r["staleness"][d]["mrr"] for r in runs]) for d in deltas]
            ax.plot(positions, mrr, marker="o", linewidth=2.5 if name == "ntp" else 1.2,
                    color="black" if name == "ntp" else None, label=name)
        ax.set_title(f"{dataset}: MRR vs staleness")
        ax.set_xlabel("staleness Δ: age of the user state when the list is shown")
        ax.set_ylabel("MRR")
        ax.set_xticks(positions, deltas)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--ks", nargs="+", type=int, default=[1, 3, 5, 10], help="MTP target counts K")
    parser.add_argument("--half-lives", nargs="+", type=parse_duration, default=[3600, 86400],
                        help="MTP half-lives beta (durations: 1h, 24h, ...)")
    parser.add_argument("--staleness", nargs="+", type=parse_duration, default=[0, 3600, 86400, 172800])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="seeds of every row")
    parser.add_argument("--headline", nargs="*", default=["ntp", "mtp-k5-b1h", "mtp-k5-b24h"],
                        help="rows also trained with --headline-seeds")
    parser.add_argument("--headline-seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--minutes", type=float, default=1.0, help="training budget per model, in --clock minutes")
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                        help="what the budget counts: the process's CPU time (default; equal compute on shared "
                             "cores) or wall time")
    parser.add_argument("--preset", default="genrec-100k", help="backbone preset (a recipe model.preset)")
    parser.add_argument("--max-length", type=int, default=50)
    parser.add_argument("--anchor", choices=["request", "cut"], default="request",
                        help="staleness replay anchor (genrec_hf.evaluation.staleness)")
    parser.add_argument("--quantile", type=float, default=0.9, help="--anchor cut: time-split cut = cache time")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "mtp")
    parser.add_argument("--plot", type=Path, default=ROOT / "benchmarks" / "plots" / "mtp_staleness.png")
    args = parser.parse_args()
    logging.getLogger("genrec_hf").setLevel(logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    deltas = sorted(set(args.staleness))
    grid = variants(args.ks, args.half_lives)
    # Every row's first seed on every dataset first, then the headline rows' other seeds: a run cut short still has
    # the whole grid once.
    jobs = [(dataset, name, seed) for dataset in args.datasets for name in grid for seed in args.seeds]
    jobs += [(dataset, name, seed) for seed in args.headline_seeds for dataset in args.datasets for name in grid
             if name in args.headline and (dataset, name, seed) not in jobs]
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else []
    done = {(r["dataset"], r["variant"], r["seed"]) for r in results}
    started = time.perf_counter()
    for index, (dataset, name, seed) in enumerate(jobs, 1):
        if (dataset, name, seed) in done:
            print(f"[{index}/{len(jobs)}] {dataset} / {name} / seed {seed}: already in {results_path}", flush=True)
            continue
        print(f"[{index}/{len(jobs)}] {dataset} / {name} / seed {seed} "
              f"({(time.perf_counter() - started) / 60:.1f} min so far)", flush=True)
        result = run(dataset, name, grid[name], seed, args, deltas)
        print("    MRR " + ", ".join(f"Δ={d} {m['mrr']:.4f}" for d, m in result["staleness"].items())
              + f" ({result['train']['epochs']:.1f} epochs, {result['seconds']:.0f} s)", flush=True)
        results.append(result)
        results_path.write_text(json.dumps(results, indent=1, default=str))
    labels = [format_duration(d) for d in deltas]
    results = [r for r in results if (r["dataset"], r["variant"], r["seed"]) in set(jobs)]
    how = (f"time split at the {args.quantile} quantile, one cache refresh at the cut" if args.anchor == "cut"
           else "leave-one-out, each test target ranked from the state Δ before it")
    header = (f"Date {date.today()}; machine: {machine()}; {args.preset}, {args.minutes} min training per model, "
              f"{how}; {PAPER}.")
    text = header + "\n\n" + table(results, labels, args.headline_seeds) + "\n"
    (args.out / "results.md").write_text(text)
    plot(results, labels, args.plot)
    print(text)
    print(f"plot written to {args.plot}")


if __name__ == "__main__":
    main()
