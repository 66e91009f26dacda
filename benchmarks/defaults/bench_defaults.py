"""Choose the pre-training recipes' defaults by a protocol that generalises across data sets (issue 28).

Every run is the shipped recipe as a new user runs it — `genrec-hf train recipes/pretrain/PRESET.yaml` in its own
process, one thread, `--max_train_minutes M --budget_clock cpu` (equal compute whatever the load), only
`--data.source` and a per-data-set `--data.max_length` changed — plus the arm's knobs. An arm is a preset followed
by `+`-joined knobs (`KNOBS` below), e.g. `genrec-100k+drop0.2+wd0.1`. Runs already finished (their
`metrics.json` exists) are skipped, so a stage can be stopped and resumed.

The protocol: a knob is kept when it raises **validation** MRR (never test) on the worst of the data sets, relative
to the arm it modifies (`--select`: per arm, the ratio of its validation MRR to the reference arm's on every data
set, the worst-case ratio and the mean rank); the same recipe is used for every data set.

    python benchmarks/defaults/bench_defaults.py run --stage screen --minutes 6 \\
        --arms sasrec genrec-100k genrec-100k+drop0.2 genrec-100k+wd0.1
    python benchmarks/defaults/bench_defaults.py select --stage screen --reference genrec-100k
    python benchmarks/defaults/bench_defaults.py compare --stage confirm --reference sasrec --arms genrec-100k+drop0.2
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import mean

import yaml

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"
OUT = ROOT / "benchmarks" / "defaults" / "out"  # run folders (ignored by git)
RESULTS = ROOT / "benchmarks" / "defaults" / "results"  # one summary CSV per stage (tracked)
RECIPES = ROOT / "recipes" / "pretrain"
# name: (source relative to --data-dir, max_length). The one per-data-set setting: 200 for long histories (ML-100K,
# median 65 events), 50 where the 99th percentile is about 50 (Toys median 6 / p99 40, Yelp median 7 / p99 54).
DATASETS: dict[str, tuple[str, int]] = {
    "ml-100k": ("ml-100k", 200),
    "toys": ("amazon-toys/Toys_and_Games.txt", 50),
    "yelp": ("yelp/Yelp.txt", 50),
}
SUMMARY_FIELDS = ("stage", "dataset", "arm", "seed", "minutes", "val_mrr", "val_ndcg@10", "test_mrr", "test_hr@10",
                  "test_ndcg@10", "epochs", "best_epoch", "backbone_params", "cpu_s", "wall_s")

_TOWER = {  # the fused semantic item tower (docs/cold_start.md), no masking: warm next-item quality
    "model.item_tower.fusion": "sum", "model.item_tower.mask_prob": "0.0",
    "model.item_features.text_encoder": "hashing", "model.item_features.min_category_count": "2",
}
# Knobs: a name (optionally with a number, `{}` below) -> recipe overrides. Numbers are taken as written.
KNOBS: dict[str, dict[str, str]] = {
    "drop{}": {"model.overrides.hidden_dropout_prob": "{}", "model.overrides.attention_dropout": "{}"},
    "hdrop{}": {"model.overrides.hidden_dropout_prob": "{}"},
    "adrop{}": {"model.overrides.attention_dropout": "{}"},
    "wd{}": {"training.weight_decay": "{}"},
    "lr{}": {"training.learning_rate": "{}"},
    "bs{}": {"training.per_device_train_batch_size": "{}"},
    "ep{}": {"training.num_train_epochs": "{}"},
    "pat{}": {"evaluation.early_stopping_patience": "{}"},
    "cos": {"training.lr_scheduler_type": "cosine", "training.warmup_steps": "0.05"},  # over num_train_epochs
    "warm{}": {"training.lr_scheduler_type": "constant_with_warmup", "training.warmup_steps": "{}"},
    "l2t{}": {"model.overrides.l2_normalize_scores": "true", "model.overrides.score_temperature": "{}"},
    "neg{}": {"model.overrides.loss_type": "sampled", "model.overrides.num_negatives": "{}"},
    "pneg{}": {"model.overrides.loss_type": "sampled", "model.overrides.num_negatives": "{}",
               "model.overrides.negative_sharing": "position"},
    "tower": _TOWER,
    "towermask{}": {**_TOWER, "model.item_tower.mask_prob": "{}"},
    "notime": {"model.overrides.num_time_buckets": "0"},
    "noaction": {"model.overrides.num_action_types": "0"},
    "learnedpos": {"model.overrides.position_encoding": "learned"},
    "rope": {"model.overrides.position_encoding": "rope"},
    "len{}": {"data.max_length": "{}"},
}


def _knob_pattern(name: str) -> re.Pattern[str]:
    return re.compile(re.escape(name).replace(r"\{\}", r"([0-9.e-]+)") + "$")


def parse_arm(arm: str) -> tuple[str, dict[str, str]]:
    """(preset, recipe overrides) of `PRESET+knob+knob...`; a one-line error names an unknown preset or knob."""
    preset, *knobs = arm.split("+")
    if not (RECIPES / f"{preset}.yaml").is_file():
        raise ValueError(f"arm {arm!r}: no recipe {RECIPES.name}/{preset}.yaml; expected a pre-training preset.")
    overrides: dict[str, str] = {}
    for knob in knobs:
        for name, values in KNOBS.items():
            match = _knob_pattern(name).match(knob)
            if match:
                number = match.group(1) if match.groups() else ""
                overrides.update({key: value.replace("{}", number) for key, value in values.items()})
                break
        else:
            raise ValueError(f"arm {arm!r}: unknown knob {knob!r}; expected one of {sorted(KNOBS)} "
                             "({} = a number).")
    return preset, overrides


@dataclass(frozen=True)
class Run:
    stage: str
    dataset: str
    arm: str
    seed: int
    minutes: float

    def folder(self, out: Path) -> Path:
        return out / self.stage / self.dataset / self.arm / f"s{self.seed}"


def source_of(dataset: str, data_dir: Path) -> str:
    """The `data.source` of a data set: a path under `data_dir`, or a `synthetic[:...]` spec as it is."""
    source = DATASETS[dataset][0]
    return source if source.startswith("synthetic") else str(data_dir / source)


def command(run: Run, data_dir: Path, out: Path) -> list[str]:
    """The `genrec-hf train` command line of one run (the public CLI, nothing else)."""
    preset, overrides = parse_arm(run.arm)
    max_length = DATASETS[run.dataset][1]
    settings = {
        "data.source": source_of(run.dataset, data_dir), "data.max_length": str(max_length), "seed": str(run.seed),
        "max_train_minutes": str(run.minutes), "budget_clock": "cpu", "output_dir": str(run.folder(out)),
        "training.disable_tqdm": "true", "evaluation.num_examples": "0", **overrides,
    }
    cli = [sys.executable, "-m", "genrec_hf.cli", "train", str(RECIPES / f"{preset}.yaml")]
    for key, value in settings.items():
        cli += [f"--{key}", value]
    return cli + ["--overwrite_output_dir"]


def one_thread_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TQDM_DISABLE": "1",
            "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def execute(run: Run, data_dir: Path, out: Path) -> bool:
    """Train one run unless its metrics.json exists; the log goes to `<folder>.log`. True if it (now) has metrics."""
    folder = run.folder(out)
    if (folder / "metrics.json").is_file():
        return True
    folder.parent.mkdir(parents=True, exist_ok=True)
    cli = command(run, data_dir, out)
    start, before = time.perf_counter(), os.times()
    with open(f"{folder}.log", "w") as log:
        log.write(" ".join(cli) + "\n")
        log.flush()
        process = subprocess.run(cli, stdout=log, stderr=subprocess.STDOUT, env=one_thread_env(), cwd=ROOT)
    after = os.times()
    if process.returncode != 0:
        print(f"FAILED ({process.returncode}): {run} — see {folder}.log", flush=True)
        return False
    (folder / "bench_run.json").write_text(json.dumps({
        "wall_s": time.perf_counter() - start, "children_cpu_s": (after.children_user + after.children_system
                                                      - before.children_user - before.children_system),
        "command": cli}, indent=1))
    return True


def validation_curve(folder: Path) -> list[tuple[float, float]]:
    """(epoch, validation MRR) of every evaluation, from the newest checkpoint's trainer_state.json."""
    states = sorted(folder.glob("checkpoint-*/trainer_state.json"), key=lambda p: int(p.parent.name.split("-")[1]))
    if not states:
        return []
    history = json.loads(states[-1].read_text())["log_history"]
    return [(float(entry["epoch"]), float(entry["eval_mrr"])) for entry in history if "eval_mrr" in entry]


def summarize(run: Run, out: Path) -> dict[str, object] | None:
    folder = run.folder(out)
    if not (folder / "metrics.json").is_file():
        return None
    metrics = json.loads((folder / "metrics.json").read_text())
    curve = validation_curve(folder)
    bench = json.loads((folder / "bench_run.json").read_text()) if (folder / "bench_run.json").is_file() else {}
    return {
        "stage": run.stage, "dataset": run.dataset, "arm": run.arm, "seed": run.seed, "minutes": run.minutes,
        "val_mrr": metrics["validation"]["mrr"], "val_ndcg@10": metrics["validation"]["ndcg@10"],
        "test_mrr": metrics["test"]["mrr"], "test_hr@10": metrics["test"]["hr@10"],
        "test_ndcg@10": metrics["test"]["ndcg@10"], "epochs": metrics["train"]["epochs"],
        "best_epoch": max(curve, key=lambda point: point[1])[0] if curve else None,
        "backbone_params": metrics.get("parameters", {}).get("backbone"),
        "cpu_s": bench.get("children_cpu_s"), "wall_s": bench.get("wall_s"),
    }


def merge_rows(stored: list[dict], fresh: list[dict], fields: tuple[str, ...]) -> list[dict]:
    """`stored` without the rows that a row of `fresh` replaces (the same values of `fields`), then `fresh`: results
    files are merged, so rows made elsewhere (another `--out`, a deleted run folder) are never dropped."""
    def key(row: dict) -> tuple[str, ...]:
        return tuple(str(row.get(field)) for field in fields)

    replaced = {key(row) for row in fresh}
    return [*(row for row in stored if key(row) not in replaced), *fresh]


def write_summary(rows: list[dict[str, object]], path: Path) -> None:
    """Merge `rows` into the summary at `path`: a run summarised again replaces its own row (`merge_rows`)."""
    fresh = [{name: (f"{value:.5f}" if isinstance(value, float) else value) for name, value in row.items()}
             for row in rows]
    merged = merge_rows(read_summary(path) if path.exists() else [], fresh, ("stage", "dataset", "arm", "seed"))
    merged.sort(key=lambda row: (row["stage"], row["dataset"], row["arm"], int(row["seed"])))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=SUMMARY_FIELDS)
        writer.writeheader()
        writer.writerows(merged)


def read_summary(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


def select(rows: list[dict[str, str]], reference: str, metric: str = "val_mrr",
           seeds: list[int] | None = None) -> list[dict[str, object]]:
    """Per arm: its `metric` (mean over seeds) on each data set relative to `reference`'s, the worst-case ratio and
    the mean rank over the data sets; sorted best worst-case first. Only the rows of `seeds` (default: all) count,
    and only arms that ran the reference's data sets with the reference's seeds (a one-seed arm is not compared
    with a two-seed mean)."""
    runs: dict[str, dict[str, dict[int, float]]] = {}
    for row in rows:
        if seeds is None or int(row["seed"]) in seeds:
            runs.setdefault(row["arm"], {}).setdefault(row["dataset"], {})[int(row["seed"])] = float(row[metric])
    if reference not in runs:
        raise ValueError(f"reference arm {reference!r} has no runs; arms with runs: {sorted(runs)}.")
    datasets = [d for d in DATASETS if d in runs[reference]]
    arms = {arm: {d: mean(v[d].values()) for d in datasets} for arm, v in runs.items()
            if all(d in v and set(v[d]) == set(runs[reference][d]) for d in datasets)}
    ranks = {arm: 0.0 for arm in arms}
    for dataset in datasets:
        order = sorted(arms, key=lambda arm: -arms[arm][dataset])
        for position, arm in enumerate(order, start=1):
            ranks[arm] += position / len(datasets)
    table = []
    for arm, by_dataset in arms.items():
        ratios = {d: by_dataset[d] / arms[reference][d] - 1.0 for d in datasets}
        table.append({"arm": arm, **{f"{d}": by_dataset[d] for d in datasets},
                      **{f"{d} Δ": ratios[d] for d in datasets}, "worst Δ": min(ratios.values()),
                      "mean Δ": mean(ratios.values()), "mean rank": ranks[arm]})
    return sorted(table, key=lambda row: -row["worst Δ"])


def markdown(table: list[dict[str, object]]) -> str:
    if not table:
        return "(no rows)"
    columns = list(table[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in table:
        cells = []
        for column in columns:
            value = row[column]
            if isinstance(value, float):
                cells.append(f"{value:+.1%}" if column.endswith(("Δ", "low", "high")) else f"{value:.4f}" if value < 1 else f"{value:.2f}")
            else:
                cells.append(str(value))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compare(stage: str, reference: str, arms: list[str], seeds: list[int], data_dir: Path, out: Path,
            metrics: tuple[str, ...] = ("mrr", "ndcg@10"), samples: int = 2000,
            split: str = "test") -> list[dict[str, object]]:
    """Paired bootstrap over the users of `split` of each arm against `reference`, per data set, per seed and
    pooled. `split="validation"` is what a selection may look at; `"test"` is for reporting only."""
    import torch

    from genrec_hf.evaluation import paired_bootstrap, per_user_metric
    from genrec_hf.evaluation.saved_models import saved_model_ranks

    rows = []
    for dataset in DATASETS:
        source = source_of(dataset, data_dir)
        folders = {arm: [Run(stage, dataset, arm, seed, 0).folder(out) for seed in seeds] for arm in [reference, *arms]}
        if not all((f / "metrics.json").is_file() for fs in folders.values() for f in fs):
            continue
        ranks = {arm: [_cached_ranks(f, source, split, saved_model_ranks, torch) for f in fs]
                 for arm, fs in folders.items()}
        for arm in arms:
            pooled = [("pooled", range(len(seeds)))] if len(seeds) > 1 else []
            for label, pick in [*((f"seed {s}", [i]) for i, s in enumerate(seeds)), *pooled]:
                a = torch.cat([ranks[reference][i] for i in pick])
                b = torch.cat([ranks[arm][i] for i in pick])
                row: dict[str, object] = {"dataset": dataset, "split": split, "reference": reference, "arm": arm,
                                          "seeds": label}
                for name in metrics:
                    result = paired_bootstrap(a, b, metric=per_user_metric(name), num_samples=samples)
                    row.update({f"{name} ref": result["a"], f"{name}": result["b"], f"{name} Δ": result["relative"],
                                f"{name} low": result["relative_low"], f"{name} high": result["relative_high"]})
                rows.append(row)
    return rows


def write_comparison(rows: list[dict[str, object]], path: Path) -> None:
    """Merge `rows` into the comparison file at `path`: a pair compared again (same data set, split, reference, arm
    and seeds) replaces its row; every other comparison already there is kept (`merge_rows`)."""
    stored = json.loads(path.read_text()) if path.exists() else []
    merged = merge_rows(stored, rows, ("dataset", "split", "reference", "arm", "seeds"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(merged, indent=1))


def _cached_ranks(folder: Path, source: str, split: str, saved_model_ranks, torch):  # noqa: ANN001, ANN202
    cache = folder / f"{split}_ranks.pt"
    if cache.is_file():
        return torch.load(cache)
    ranks = saved_model_ranks(folder, source, split=split)[1]
    torch.save(ranks, cache)
    return ranks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["run", "summary", "select", "compare", "commands"],
                        help="run: train the missing runs; summary: write out/STAGE/summary.csv; select: the "
                             "protocol's table on validation MRR; compare: test intervals; commands: print them")
    parser.add_argument("--stage", required=True, help="a name for this set of runs (a folder under --out)")
    parser.add_argument("--arms", nargs="+", default=[], help="PRESET[+KNOB...], e.g. genrec-100k+drop0.2")
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=None,
                        help="run / compare: the seeds (default 0); select: the seeds whose rows count (default all)")
    parser.add_argument("--minutes", type=float, default=6.0, help="CPU-minutes of training per run")
    parser.add_argument("--reference", default=None, help="select/compare: the arm the others are measured against")
    parser.add_argument("--data-dir", type=Path, default=DATA, help="folder holding the data sets (docs/data.md)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--split", choices=["validation", "test"], default="test",
                        help="compare: the users whose ranks are paired (selection may only look at validation)")
    args = parser.parse_args()
    for arm in args.arms:
        try:
            parse_arm(arm)
        except ValueError as error:
            parser.error(str(error))
    run_seeds = args.seeds or [0]  # what run / compare train and pair; select reads args.seeds (None: every seed)
    runs = [Run(args.stage, dataset, arm, seed, args.minutes)
            for seed in run_seeds for arm in args.arms for dataset in args.datasets]
    summary_path = RESULTS / f"{args.stage}.csv"
    if args.action == "commands":
        print("\n".join(" ".join(command(run, args.data_dir, args.out)) for run in runs))
    elif args.action == "run":
        for number, run in enumerate(runs, start=1):
            print(f"[{time.strftime('%H:%M:%S')}] {number}/{len(runs)} {run.dataset} {run.arm} seed {run.seed}",
                  flush=True)
            execute(run, args.data_dir, args.out)
    if args.action in ("run", "summary"):
        found = sorted(args.out.glob(f"{args.stage}/*/*/s*/metrics.json"))
        rows = []
        for path in found:
            dataset, arm, seed = path.parts[-4], path.parts[-3], int(path.parts[-2][1:])
            minutes = yaml.safe_load((path.parent / "training_recipe.yaml").read_text()).get("max_train_minutes")
            rows.append(summarize(Run(args.stage, dataset, arm, seed, minutes), args.out))
        write_summary([row for row in rows if row], summary_path)
        print(f"{len(rows)} runs of {args.out} summarised into {summary_path} (rows of other runs kept)")
    elif args.action == "select":
        if not args.reference:
            parser.error("select needs --reference ARM")
        print(markdown(select(read_summary(summary_path), args.reference, seeds=args.seeds)))
    elif args.action == "compare":
        if not args.reference or not args.arms:
            parser.error("compare needs --reference ARM and --arms ARM ...")
        table = compare(args.stage, args.reference, args.arms, run_seeds, args.data_dir, args.out, split=args.split)
        write_comparison(table, RESULTS / f"{args.stage}-compare-{args.split}.json")
        print(markdown(table))


if __name__ == "__main__":
    main()
