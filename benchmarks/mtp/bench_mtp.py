"""Multi-token prediction vs next-token prediction under cached serving (staleness replay), paper §4.

Every model trains through `genrec_hf.training.train` from recipes/pretrain/genrec-500k-mtp.yaml (`--preset`,
default genrec-100k, so that a one-minute CPU budget buys several epochs) with the same wall-clock budget; NTP is
the same recipe with `objective: ntp`. Each is then replayed with `genrec_hf.evaluation.staleness`:

* `--anchor request` (default; leave-one-out training): each user's held-out last event is a request ranked from
  the user state Δ before it, the events of those Δ excluded as consumed (users with no event before T - Δ are
  counted out);
* `--anchor cut` (time-split training at `--quantile`): one cache refresh at the cut, lists shown Δ later, target
  = the first event at/after the show time.

`--tasks` picks what is replayed (request anchor): `short_horizon` (the next event, default) and/or `long_horizon`
(paper task A, order-insensitive: the set of new items engaged 7-30 days after the context, ranked as a set, MRR =
1 / best-ranked target; the request is at the context's end, so Δ cuts the last Δ of the context). With
`long_horizon`, every model trains on each user's events **before the long-horizon test window** (the test
context; users the task drops keep all their events), so no long-horizon target is a training event (on the whole
log an MTP model would learn exactly those events as targets); the short-horizon rows are then the leave-one-out
test of that cut log, so both tasks come from the same models.

Rows: "ntp", one MTP row per (K, beta) of `--ks` x `--half-lives`, and `--extra` rows named
`mtp-k{K}-b{beta}[-sum][-reward-{column}]` (`-sum`: `objective.weight_normalization: none`, the paper's plain sum;
`-reward-ratings`: w = rating * decay).

The table gives MRR per Δ and task, NTP's own staleness cost, and each MTP row's relative change vs NTP of the same
seeds, with a paired bootstrap 95% interval that resamples the users of those seeds (pooled), not training runs.

    python benchmarks/mtp/bench_mtp.py --out benchmarks/out/mtp
    python benchmarks/mtp/bench_mtp.py --datasets synthetic --ks 5 --half-lives 1h --minutes 0.5   # a quick look
    python benchmarks/mtp/bench_mtp.py --datasets synthetic --tasks short_horizon long_horizon --ks 5 \
        --half-lives 1h 24h --extra mtp-k5-b24h-sum --minutes 1 --clock cpu --out benchmarks/out/mtp-tasks
    python benchmarks/mtp/bench_mtp.py --render benchmarks/out/mtp-tasks/results.json ...   # table + plot only
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import re
import time
from datetime import date
from pathlib import Path

import torch

from genrec_hf.evaluation import metrics_from_ranks, paired_bootstrap
from genrec_hf.evaluation.staleness import cut_at_quantile, format_duration, parse_duration, staleness_ranks
from genrec_hf.training import train
from genrec_hf.training.throughput import machine_summary
from genrec_hf.training.recipes import load_recipe

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"
DATASETS = {"synthetic": "synthetic", "ml-100k": str(DATA / "ml-100k")}
RECIPE = ROOT / "recipes" / "pretrain" / "genrec-500k-mtp.yaml"
PAPER = ("paper (task B, short horizon): NTP staleness cost -31% MRR at 24 h, -41% at 48 h; MTP (5 events) vs NTP "
         "at 48 h: +22.1% / +27.8% / +27.9% (tasks A / B / C)")


TASKS = ("short_horizon", "long_horizon")
_VARIANT = re.compile(r"mtp-k(\d+)-b([0-9.]+[smhdw]?)(-sum)?(?:-reward-(\w+))?")


def variant_overrides(name: str) -> dict[str, str]:
    """Recipe overrides of a row name: `ntp`, or `mtp-k{K}-b{beta}[-sum][-reward-{column}]`."""
    if name == "ntp":
        return {"objective.type": "ntp"}
    match = _VARIANT.fullmatch(name)
    if not match:
        raise ValueError(f"row {name!r}: expected ntp or mtp-k<K>-b<half-life>[-sum][-reward-<column>], e.g. "
                         "mtp-k5-b24h-sum or mtp-k5-b24h-reward-ratings.")
    k, beta, plain, reward = match.groups()
    out = {"objective.type": "mtp", "objective.num_targets": k,
           "objective.half_life_seconds": str(parse_duration(beta)),
           "objective.weight_normalization": "none" if plain else "position"}
    if reward:
        out["objective.reward_column"] = reward
    return out


def variants(ks: list[int], half_lives: list[int], extra: list[str] = ()) -> dict[str, dict[str, str]]:
    """name: recipe overrides; "ntp" first, then one MTP row per (K, beta), then the `extra` rows."""
    names = ["ntp"] + [f"mtp-k{k}-b{format_duration(beta)}" for k in ks for beta in half_lives] + list(extra)
    return {name: variant_overrides(name) for name in dict.fromkeys(names)}


def best_ranks(ranks: torch.Tensor | None) -> list[int]:
    """Per user, the best (smallest non-zero) rank of a (users, T) rank matrix, users without a target dropped:
    1 / best rank is the user's MRR term for one target and for a target set (`metrics_from_ranks`)."""
    if ranks is None:
        return []
    ranks = torch.as_tensor(ranks).long()
    ranks = ranks[:, None] if ranks.dim() == 1 else ranks
    best = torch.where(ranks > 0, ranks, torch.full_like(ranks, torch.iinfo(torch.int64).max)).min(dim=1).values
    return best[(ranks > 0).any(dim=1)].tolist()


def before_long_horizon_windows(data):
    """(`data` with each user's events cut at the long-horizon test context's end, the task built on the whole
    log): the model then never trains on a long-horizon test target. Users the task drops keep every event."""
    from genrec_hf.data.tasks import build_task

    task = build_task("long_horizon", data)
    stop = {str(row["user_id"]): len(row["item_ids"]) for row in task.test}
    columns = [c for c in ("item_ids", "timestamps", "action_ids", "ratings") if c in data.sequences.column_names]

    def cut(row):
        end = stop.get(str(row["user_id"]), len(row["item_ids"]))
        return {c: row[c][:end] for c in columns}

    sequences = data.sequences.map(cut).filter(lambda row: len(row["item_ids"]) >= 3)
    events = sum(len(items) for items in sequences["item_ids"])
    info = {"long_horizon_users": len(task.test), "users": len(sequences), "events": events,
            "events_full": data.num_events, "users_full": data.num_users}
    return dataclasses.replace(data, sequences=sequences, name=f"{data.name} (cut before long-horizon windows)"), info


_LOGS: dict[str, tuple] = {}


def training_log(dataset: str, recipe, tasks: list[str]) -> tuple:
    """(log to train on or None for the recipe's source, whole log, info), loaded once per dataset."""
    if dataset not in _LOGS:
        if "long_horizon" in tasks:
            full = recipe.data.load()
            cut, info = before_long_horizon_windows(full)
            _LOGS[dataset] = (cut, full, info)
        else:
            _LOGS[dataset] = (None, None, {})
    return _LOGS[dataset]


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
    given, full, log_info = training_log(dataset, recipe, args.tasks)
    load_before = os.getloadavg()
    start, cpu_start = time.perf_counter(), time.process_time()
    outcome = train(recipe, overwrite_output_dir=True, data=given)
    trained, cpu_trained = time.perf_counter() - start, time.process_time() - cpu_start
    cut = cut_at_quantile(outcome.data, args.quantile) if args.anchor == "cut" else None
    per_task = {}
    for task in args.tasks:
        # short_horizon: the leave-one-out test of the log the model trained on; long_horizon: the task's test rows
        # of the whole log (their contexts are the cut log's rows, their targets come after them)
        source = full if task == "long_horizon" else outcome.data
        per_delta, ranks = {}, {}
        for delta in deltas:
            delta_ranks, replay = staleness_ranks(outcome.model, source, delta, anchor=args.anchor, cut=cut,
                                                  task=task, max_length=args.max_length)
            label = format_duration(delta)
            ranks[label] = best_ranks(delta_ranks)
            per_delta[label] = {**(metrics_from_ranks(delta_ranks, (10,)) if delta_ranks is not None
                                   else {"num_users": 0}), **replay.stats}
        per_task[task] = {"staleness": per_delta, "ranks": ranks}
    return {"dataset": dataset, "variant": name, "seed": seed, "cut": cut, "tasks": per_task,
            "training_log": outcome.data.name, "training_log_info": log_info,
            "train": outcome.metrics["train"], "seconds": time.perf_counter() - start, "train_seconds": trained,
            "train_cpu_seconds": cpu_trained, "load_average": [list(load_before), list(os.getloadavg())]}


def task_result(result: dict, task: str) -> dict | None:
    """{"staleness", "ranks"} of one task of a result (results written before `--tasks` hold short_horizon only)."""
    if "tasks" in result:
        return result["tasks"].get(task)
    return {"staleness": result["staleness"], "ranks": result["ranks"]} if task == "short_horizon" else None


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def table(results: list[dict], deltas: list[str], tasks: list[str] = ("short_horizon",)) -> str:
    """One row per (dataset, task, variant): mean MRR per Δ over the row's seeds, and NTP's own cost or the row's
    change vs NTP of the same seeds, with a paired bootstrap interval over the users of those seeds (pooled)."""
    lines = ["| dataset | task | model | seeds | " + " | ".join(f"MRR Δ={d}" for d in deltas)
             + f" | users (Δ={deltas[0]} / {deltas[-1]}) | epochs | NTP cost or MTP vs NTP, " + " / ".join(deltas)
             + " |", "|---|---|---|---|" + "---|" * len(deltas) + "---|---|---|"]
    for dataset in dict.fromkeys(r["dataset"] for r in results):
        for task in tasks:
            rows = [r for r in results if r["dataset"] == dataset and task_result(r, task) is not None]
            ntp = sorted((r for r in rows if r["variant"] == "ntp"), key=lambda r: r["seed"])
            for name in dict.fromkeys(r["variant"] for r in rows):
                runs = sorted((r for r in rows if r["variant"] == name), key=lambda r: r["seed"])
                stale = [task_result(r, task)["staleness"] for r in runs]
                mrr = {d: _mean([s[d].get("mrr", 0.0) for s in stale]) for d in deltas}
                users = f"{stale[0][deltas[0]]['num_users']} / {stale[0][deltas[-1]]['num_users']}"
                if name == "ntp":
                    change = " / ".join(f"{mrr[d] / mrr[deltas[0]] - 1:+.1%}" for d in deltas) + " (vs its Δ=0)"
                else:
                    parts = []
                    seeds = [r["seed"] for r in runs]
                    paired = [r for r in ntp if r["seed"] in seeds]
                    for d in deltas:
                        if len(paired) != len(seeds):
                            parts.append("no NTP of these seeds")
                            continue
                        ntp_mrr = _mean([task_result(r, task)["staleness"][d]["mrr"] for r in paired])
                        text = f"{mrr[d] / ntp_mrr - 1:+.1%}"
                        a = torch.tensor([x for r in paired for x in task_result(r, task)["ranks"][d]])
                        b = torch.tensor([x for r in runs for x in task_result(r, task)["ranks"][d]])
                        if a.numel() and a.shape == b.shape:
                            ci = paired_bootstrap(a, b, num_samples=1000)
                            text += f" [{ci['relative_low']:+.0%}, {ci['relative_high']:+.0%}]"
                        parts.append(text)
                    change = " / ".join(parts)
                lines.append(f"| {dataset} | {task} | {name} | {','.join(str(r['seed']) for r in runs)} | "
                             + " | ".join(f"{mrr[d]:.4f}" for d in deltas) + f" | {users} | "
                             + ", ".join(f"{r['train']['epochs']:.1f}" for r in runs) + f" | {change} |")
    return "\n".join(lines)


def plot(results: list[dict], deltas: list[str], path: Path, tasks: list[str] = ("short_horizon",)) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [(dataset, task) for dataset in dict.fromkeys(r["dataset"] for r in results) for task in tasks
              if any(r["dataset"] == dataset and task_result(r, task) is not None for r in results)]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    positions = list(range(len(deltas)))  # evenly spaced: 0 and 1 h would overlap on a linear hour axis
    for ax, (dataset, task) in zip(axes[0], panels):
        rows = [r for r in results if r["dataset"] == dataset and task_result(r, task) is not None]
        for name in dict.fromkeys(r["variant"] for r in rows):
            runs = [r for r in rows if r["variant"] == name]
            mrr = [_mean([task_result(r, task)["staleness"][d].get("mrr", 0.0) for r in runs]) for d in deltas]
            seeds = ",".join(str(r["seed"]) for r in sorted(runs, key=lambda r: r["seed"]))
            ax.plot(positions, mrr, marker="o", linewidth=2.5 if name == "ntp" else 1.2,
                    color="black" if name == "ntp" else None, label=f"{name} (seeds {seeds})")
        ax.set_title(f"{dataset}, {task}: MRR vs staleness" if len(tasks) > 1 else f"{dataset}: MRR vs staleness",
                     fontsize=10)
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
    parser.add_argument("--tasks", nargs="+", default=["short_horizon"], choices=list(TASKS),
                        help="replayed tasks (long_horizon trains every model on the log cut before its windows)")
    parser.add_argument("--ks", nargs="*", type=int, default=[1, 3, 5, 10],
                        help="MTP target counts K (none: only ntp and the --extra rows, in their order)")
    parser.add_argument("--half-lives", nargs="+", type=parse_duration, default=[3600, 86400],
                        help="MTP half-lives beta (durations: 1h, 24h, ...)")
    parser.add_argument("--extra", nargs="*", default=[],
                        help="more rows: mtp-k<K>-b<beta>[-sum][-reward-<column>] (e.g. mtp-k5-b24h-sum)")
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
    parser.add_argument("--render", nargs="+", type=Path, default=None, metavar="RESULTS_JSON",
                        help="train nothing: table (printed) and plot of these results files together")
    args = parser.parse_args()
    deltas = sorted(set(args.staleness))
    labels = [format_duration(d) for d in deltas]
    if args.render:
        results = [r for path in args.render for r in json.loads(path.read_text())]
        print(table(results, labels, args.tasks))
        plot(results, labels, args.plot, args.tasks)
        print(f"plot written to {args.plot}")
        return
    if args.anchor == "cut" and "long_horizon" in args.tasks:
        parser.error("--tasks long_horizon replays with the request anchor (the cut anchor needs a time split)")
    logging.getLogger("genrec_hf").setLevel(logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    grid = variants(args.ks, args.half_lives, args.extra)
    # Every row's first seed on every dataset first, then the headline rows' other seeds: a run cut short still has
    # the whole grid once.
    jobs = [(dataset, name, seed) for dataset in args.datasets for name in grid for seed in args.seeds]
    jobs += [(dataset, name, seed) for seed in args.headline_seeds for dataset in args.datasets for name in grid
             if name in args.headline and (dataset, name, seed) not in jobs]
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else []
    budget = f"{args.minutes} {args.clock}-min"
    # a result is reused only when it has every asked task and the same budget; others are trained again
    results = [r for r in results if r.get("budget") == budget and all(task_result(r, t) for t in args.tasks)]
    done = {(r["dataset"], r["variant"], r["seed"]) for r in results}
    started = time.perf_counter()
    for index, (dataset, name, seed) in enumerate(jobs, 1):
        if (dataset, name, seed) in done:
            print(f"[{index}/{len(jobs)}] {dataset} / {name} / seed {seed}: already in {results_path}", flush=True)
            continue
        print(f"[{index}/{len(jobs)}] {dataset} / {name} / seed {seed} "
              f"({(time.perf_counter() - started) / 60:.1f} min so far, load {os.getloadavg()[0]:.1f})", flush=True)
        result = {**run(dataset, name, grid[name], seed, args, deltas), "budget": budget}
        for task, measured in result["tasks"].items():
            print(f"    {task} MRR " + ", ".join(f"Δ={d} {m.get('mrr', 0.0):.4f}"
                                                for d, m in measured["staleness"].items()), flush=True)
        print(f"    {result['train']['epochs']:.1f} epochs, {result['train_cpu_seconds']:.0f} CPU-s training, "
              f"{result['seconds']:.0f} s wall in all", flush=True)
        results.append(result)
        results_path.write_text(json.dumps(results, indent=1, default=str))
    results = [r for r in results if (r["dataset"], r["variant"], r["seed"]) in set(jobs)]
    how = (f"time split at the {args.quantile} quantile, one cache refresh at the cut" if args.anchor == "cut"
           else "leave-one-out, each test request ranked from the state Δ before it")
    if "long_horizon" in args.tasks:
        how += "; trained on each user's events before the long-horizon test window"
    header = (f"Date {date.today()}; machine: {machine_summary()}; {args.preset}, {budget} training per model, "
              f"{how}; {PAPER}.")
    text = header + "\n\n" + table(results, labels, args.tasks) + "\n"
    (args.out / "results.md").write_text(text)
    plot(results, labels, args.plot, args.tasks)
    print(text)
    print(f"plot written to {args.plot}")


if __name__ == "__main__":
    main()
