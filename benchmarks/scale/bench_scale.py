"""Scale benchmark: each stage of the data → model chain at 1e6 / 1e7 / 1e8 events, beside a minimal baseline.

    python benchmarks/scale/bench_scale.py --sizes 1e6,1e7,1e8 --stages prepare --threads 1

Synthetic logs (`generate_event_log`: Zipf items, ~50 events per user, Parquet shards written out-of-core) are
generated once under --out and reused. Every measurement runs in a fresh child process (one thread for the
engine and the baseline alike: OMP / MKL / pyarrow / DuckDB), and the parent reads the child's CPU time and peak
RSS from `os.wait4` (plus the wall time), so figures are per process, not per machine. `uptime`'s load is
recorded beside each figure: other work on the machine slows the wall time, not the CPU time.

Stages are entries of `STAGES` (name → function run in the child, returning a dict of extra fields):

  prepare     raw log → prepared folder (engines `memory`, `duckdb`), beside the in-memory `baseline`
  train       `genrec-hf train` streamed from the prepared folder (`data.streaming`): the first step (max_steps 1)
              and `--train_steps` steps, each its own child: startup, seconds per step, peak RSS
  validation  one ranking pass of `--validation_users` users of the folder against the whole catalog with the
              trained model (`rank_batches`), beside a plain torch pass (`q @ items.T`, 8,192 items a chunk) over
              the same queries: ns per (user, item) pair of both
  predict     `genrec-hf predict` for every user of the folder (`--predict_index`, default a faiss IVF index with
              `--nprobe` lists probed: exact top-k of 2e6 users x 1e6 items would take hours on 2 cores)
  kernel      the ranking kernel alone at 1e4 x 1e5 and 1e5 x 1e5 (users x items) random pairs, beside plain torch

`baseline` is the 40-line
pyarrow/numpy script that builds the same per-user sequences in memory (dedup, short-user filter, vocabulary,
sorted lists, one Parquet file); `--check` compares its rows with the prepared folder's at the smallest size.
`import` is a child that only imports `genrec_hf.data.prepare` (torch, transformers, datasets come with it): the
package's fixed cost, included in every package row.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "ARROW_NUM_THREADS": "1",
              "RAYON_NUM_THREADS": "1"}


def log_folder(out: Path, events: int, items: int) -> Path:
    return out / "logs" / f"events{events:.0e}-items{items:.0e}".replace("+", "")


def ensure_log(out: Path, events: int, items: int) -> Path:
    """The synthetic log of this size (generated once; a `_DONE` file marks a complete one)."""
    from genrec_hf.data.prepare import generate_event_log

    folder = log_folder(out, events, items)
    if not (folder / "_DONE").is_file():
        started = time.time()
        generate_event_log(folder, events, items, events_per_file=1_000_000, seed=0)
        (folder / "_DONE").write_text(json.dumps({"seconds": round(time.time() - started, 1)}))
    return folder


# --- stages (run in the child process) ------------------------------------------------------------------------


def stage_prepare(log: Path, work: Path, engine: str, args: argparse.Namespace) -> dict[str, Any]:
    from genrec_hf.data.prepare import prepare_events

    prepared = prepare_events(log, work / f"prepared-{engine}", engine=engine, threads=1, overwrite=True,
                              memory_limit=args.memory_limit if engine == "duckdb" else None, temp_dir=work)
    return {"users": prepared.manifest["num_users"], "kept_events": prepared.manifest["num_events"],
            "shards": prepared.num_shards}


def stage_baseline(log: Path, work: Path, engine: str, args: argparse.Namespace) -> dict[str, Any]:
    """Per-user sequences in memory with pyarrow/numpy only: the floor a preparation step is measured against."""
    table = pa.concat_tables(pq.read_table(p) for p in sorted(log.glob("*.parquet")))
    user, item, time_, action = (table[c].to_numpy().astype(np.int64) for c in ("user_id", "item_id", "timestamp",
                                                                                "action"))
    rating = table["rating"].to_numpy()
    del table
    order = np.lexsort((time_, user))  # stable: file order within equal (user, time)
    user, item, time_, action, rating = (a[order] for a in (user, item, time_, action, rating))
    del order
    keep = np.ones(len(user), dtype=bool)  # dedup (user, item, time): only runs of equal (user, time) can repeat
    same = (user[1:] == user[:-1]) & (time_[1:] == time_[:-1])
    rows = np.flatnonzero(np.concatenate([[False], same]) | np.concatenate([same, [False]]))
    run = np.cumsum(np.concatenate([[True], ~same]))[rows]
    rows = rows[np.lexsort((rows, item[rows], run))]
    run = np.cumsum(np.concatenate([[True], ~same]))[rows]
    keep[rows[1:][(run[1:] == run[:-1]) & (item[rows[1:]] == item[rows[:-1]])]] = False
    users, starts, counts = np.unique(user[keep], return_index=True, return_counts=True)
    long_users = np.repeat(counts >= 2, counts)
    user, item, time_, action, rating = (a[keep][long_users] for a in (user, item, time_, action, rating))
    users, counts = users[counts >= 2], counts[counts >= 2]
    vocab = np.unique(item)
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]), pa.int64())
    out = pa.table({"user_id": pc.cast(pa.array(users), pa.string()),
                    "item_ids": pa.LargeListArray.from_arrays(offsets, np.searchsorted(vocab, item) + 1),
                    "timestamps": pa.LargeListArray.from_arrays(offsets, time_),
                    "action_ids": pa.LargeListArray.from_arrays(offsets, action),
                    "ratings": pa.LargeListArray.from_arrays(offsets, rating.astype(np.float32))})
    pq.write_table(out, work / "baseline.parquet", compression="zstd")
    return {"users": len(users), "kept_events": int(counts.sum())}


def prepared_folder(work: Path) -> Path:
    """The prepared folder of a size (the memory engine's, or DuckDB's: the two are byte-identical)."""
    for name in ("prepared-memory", "prepared-duckdb"):
        if (work / name / "manifest.json").is_file():
            return work / name
    raise SystemExit(f"{work}: no prepared folder; run the prepare stage first.")


def _streamed_recipe(work: Path, args: argparse.Namespace, output: str, max_steps: int) -> Any:
    from genrec_hf.training import load_recipe

    return load_recipe(HERE.parents[1] / "recipes" / "pretrain" / f"{args.preset}.yaml", {
        "output_dir": str(work / output), "data.source": str(prepared_folder(work)), "data.streaming": "true",
        "data.max_length": str(args.max_length), "training.max_steps": str(max_steps),
        "training.per_device_train_batch_size": str(args.batch_size), "training.eval_strategy": "no",
        "training.save_strategy": "no", "training.load_best_model_at_end": "false", "training.disable_tqdm": "true",
        "training.logging_strategy": "no", "evaluation.validation_users": "256", "evaluation.test_users": "256",
        "evaluation.num_examples": "0", "max_train_minutes": None})


def stage_train(log: Path, work: Path, engine: str, args: argparse.Namespace) -> dict[str, Any]:
    """Streamed training: `train_first` is one step (everything up to the first update), `train` N steps."""
    from transformers import TrainerCallback

    from genrec_hf.training import build_model, build_trainer, prepare_run, run_training

    steps = 1 if engine == "first" else args.train_steps
    recipe = _streamed_recipe(work, args, "model" if engine == "steps" else "model-first", steps)
    marks: dict[str, float] = {}

    class FirstStep(TrainerCallback):
        def on_step_end(self, *a: Any, **k: Any) -> None:
            marks.setdefault("first_step_cpu_s", time.process_time())

    started = time.process_time()
    run = prepare_run(recipe)
    prepared_at = time.process_time()
    trainer = build_trainer(recipe, build_model(recipe, run), run)
    trainer.add_callback(FirstStep())
    record = run_training(trainer, recipe)
    trainer.save_model(str(work / ("model" if engine == "steps" else "model-first")))
    run.data.vocab.save(work / ("model" if engine == "steps" else "model-first"))
    from genrec_hf.integrity import write_manifest

    write_manifest(work / ("model" if engine == "steps" else "model-first"))
    return {"steps": record.steps, "setup_cpu_s": round(prepared_at - started, 2),
            "to_first_step_cpu_s": round(marks.get("first_step_cpu_s", 0.0) - started, 2),
            "train_cpu_s": round(record.cpu_s, 2), "cpu_s_per_step": round(record.cpu_s / max(1, record.steps), 3),
            "windows_per_step": args.batch_size}


def stage_validation(log: Path, work: Path, engine: str, args: argparse.Namespace) -> dict[str, Any]:
    """One ranking pass of `--validation_users` users against the whole catalog: the package's path (model
    forward + `rank_batches`) or a plain torch pass over the same queries (the kernel's floor)."""
    import torch
    from torch.utils.data import DataLoader

    from genrec_hf.data import NextItemCollator
    from genrec_hf.data.prepared import open_prepared
    from genrec_hf.data.streaming import split_dataset
    from genrec_hf.evaluation.protocols import MODEL_INPUTS, rank_batches
    from genrec_hf.loading import load_model

    torch.set_num_threads(1)
    model, _ = load_model(work / "model")
    prepared = open_prepared(prepared_folder(work))
    rows = split_dataset(prepared.shard_paths(), prepared.split, "validation",
                         limit_per_shard=-(-args.validation_users // prepared.num_shards))
    rows = rows.select(range(min(len(rows), args.validation_users)))
    loader = DataLoader(rows, batch_size=256, collate_fn=NextItemCollator(args.max_length, mode="eval"))
    pairs = len(rows) * (model.config.vocab_size - 1)
    started = time.process_time()
    if engine == "package":
        rank_batches(model, loader)
        seconds = time.process_time() - started
    else:
        items = model.item_vectors.detach()
        with torch.no_grad():
            for batch in loader:
                queries = model(**{k: batch[k] for k in MODEL_INPUTS if batch.get(k) is not None}).user_embeddings
                target = (queries * items[batch["target_ids"][:, 0]]).sum(1, keepdim=True)
                count = torch.zeros(len(queries), dtype=torch.long)
                for start in range(0, items.shape[0], 8192):
                    count += (queries @ items[start:start + 8192].T >= target).sum(1)
        seconds = time.process_time() - started
    return {"users": len(rows), "catalog": model.config.vocab_size - 1, "pass_cpu_s": round(seconds, 2),
            "ns_per_pair": round(seconds * 1e9 / pairs, 2)}


def stage_predict(log: Path, work: Path, engine: str, args: argparse.Namespace) -> dict[str, Any]:
    from genrec_hf.serving.predict import predict

    index = None if args.predict_index == "exact" else {"nprobe": args.nprobe}
    shutil.rmtree(work / "predictions", ignore_errors=True)  # the same job would resume from an earlier run's parts
    outcome = predict(work / "model", prepared_folder(work), work / "predictions", k=100,
                      index=args.predict_index, index_options=index, overwrite=True, progress=False)
    return {"users": outcome.users, "parts": outcome.parts_written, "index": args.predict_index,
            "nprobe": args.nprobe if index else None}


def stage_kernel(log: Path, work: Path, engine: str, args: argparse.Namespace) -> dict[str, Any]:
    """The ranking kernel (`rank_targets`, 50 exclusions a user) or plain torch at users x items random pairs."""
    import torch

    from genrec_hf.evaluation.ranking import rank_targets

    torch.set_num_threads(1)
    out = {}
    for users, items in ((10_000, 100_000), (100_000, 100_000)):
        g = torch.Generator().manual_seed(0)
        vectors = torch.randn(items, 64, generator=g)
        seconds = 0.0
        for start in range(0, users, 1024):  # users in batches, as an evaluation pass sees them
            queries = torch.randn(min(1024, users - start), 64, generator=g)
            targets = torch.randint(1, items, (len(queries),), generator=g)
            exclude = torch.randint(1, items, (len(queries), 50), generator=g)
            begin = time.process_time()
            if engine == "package":
                rank_targets(queries, vectors, targets, exclude_ids=exclude)
            else:
                target = (queries * vectors[targets]).sum(1, keepdim=True)
                count = torch.zeros(len(queries), dtype=torch.long)
                for chunk in range(0, items, 8192):
                    count += (queries @ vectors[chunk:chunk + 8192].T >= target).sum(1)
            seconds += time.process_time() - begin
        out[f"ns_per_pair_{users:.0e}x{items:.0e}".replace("+", "")] = round(seconds * 1e9 / (users * items), 2)
    return out


STAGES: dict[str, Callable[[Path, Path, str, argparse.Namespace], dict[str, Any]]] = {
    "prepare": stage_prepare,
    "train": stage_train,
    "validation": stage_validation,
    "predict": stage_predict,
    "kernel": stage_kernel,
}
# The engines each stage runs under (prepare takes --engines): the package's path and, where one exists, the floor.
STAGE_ENGINES = {"train": ("first", "steps"), "validation": ("package", "plain"), "predict": ("package",),
                 "kernel": ("package", "plain")}


# --- parent: run children, measure, report --------------------------------------------------------------------


def load_average() -> float:
    return os.getloadavg()[0]


def run_child(stage: str, engine: str, log: Path, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Run one (stage, engine) in a child; wall, CPU and peak RSS of that child from `os.wait4`."""
    env = {**os.environ, **ONE_THREAD}
    result_file = work / f"result-{stage}-{engine}.json"
    result_file.unlink(missing_ok=True)
    command = [sys.executable, __file__, "--_child", stage, engine, str(log), str(work), str(result_file),
               "--memory_limit", args.memory_limit, "--preset", args.preset, "--max_length", str(args.max_length),
               "--batch_size", str(args.batch_size), "--train_steps", str(args.train_steps),
               "--validation_users", str(args.validation_users), "--predict_index", args.predict_index,
               "--nprobe", str(args.nprobe)]
    load_before = load_average()
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    record: dict[str, Any] = {"stage": stage, "engine": engine, "wall_s": round(wall, 2),
                              "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
                              "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
                              "load_before": round(load_before, 2), "load_after": round(load_average(), 2),
                              "exit": os.waitstatus_to_exitcode(status)}
    if record["exit"] == 0 and result_file.is_file():
        record.update(json.loads(result_file.read_text()))
    return record


def child(stage: str, engine: str, log: str, work: str, result_file: str, args: argparse.Namespace) -> None:
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    if engine == "import":  # the package's fixed cost (torch, transformers, datasets), to read the rows above it
        import genrec_hf.data.prepare  # noqa: F401

        extra: dict[str, Any] = {}
    else:
        function = stage_baseline if (stage, engine) == ("prepare", "baseline") else STAGES[stage]
        extra = function(Path(log), Path(work), engine, args)
    Path(result_file).write_text(json.dumps(extra))


def check_same_rows(work: Path) -> bool:
    """The baseline's rows equal the prepared folder's (users in numeric order, same lists)."""
    from genrec_hf.data.prepared import open_prepared

    prepared = open_prepared(work / "prepared-memory").to_interactions().sequences.data.table
    baseline = pq.read_table(work / "baseline.parquet")
    return all(prepared[c].to_pylist() == baseline[c].to_pylist() for c in baseline.column_names)


MEASURED = ("users", "shards", "steps", "to_first_step_cpu_s", "cpu_s_per_step", "pass_cpu_s", "ns_per_pair",
            "ns_per_pair_1e4x1e5", "ns_per_pair_1e5x1e5", "parts", "nprobe")


def markdown(records: list[dict[str, Any]]) -> str:
    lines = ["| events | items | stage | engine | wall s | CPU s | CPU × baseline | peak RSS MB | B/event | load | "
             "measured |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        base = next((b for b in records if (b["events"], b["items"], b["stage"]) == (r["events"], r["items"],
                                                                                      r["stage"])
                     and b["engine"] in ("baseline", "plain")), None)
        ratio = f"{r['cpu_s'] / base['cpu_s']:.2f}" if base and base.get("exit") == 0 and r.get("exit") == 0 \
            and r["engine"] != "import" else "-"
        failed = "" if r.get("exit") == 0 else f" (exit {r.get('exit')})"
        measured = ", ".join(f"{key} {r[key]}" for key in MEASURED if r.get(key) is not None)
        lines.append(f"| {r['events']:.0e} | {r['items']:.0e} | {r['stage']} | {r['engine']}{failed} | {r['wall_s']} | "
                     f"{r['cpu_s']} | {ratio} | {r['peak_rss_mb']:.0f} | "
                     f"{r['peak_rss_mb'] * 2**20 / r['events']:.0f} | {r['load_before']}–{r['load_after']} | "
                     f"{measured} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1e6,1e7", help="event counts, comma-separated (default 1e6,1e7)")
    parser.add_argument("--items", default=None,
                        help="catalog size per size, comma-separated (default 1e5 up to 1e7 events, then 1e6)")
    parser.add_argument("--stages", default="prepare", help=f"stages to run, of {list(STAGES)} (default prepare)")
    parser.add_argument("--engines", default="memory,duckdb", help="prepare engines (default memory,duckdb)")
    parser.add_argument("--memory_limit", default="1GB", help="DuckDB's memory limit (default 1GB)")
    parser.add_argument("--no_baseline", action="store_true", help="skip the in-memory baseline")
    parser.add_argument("--check", action="store_true",
                        help="check that baseline and prepare rows agree at the smallest size")
    parser.add_argument("--preset", default="genrec-500k", help="model of the train / validation / predict stages")
    parser.add_argument("--max_length", type=int, default=50, help="history length of the model (default 50)")
    parser.add_argument("--batch_size", type=int, default=128, help="training windows per step (default 128)")
    parser.add_argument("--train_steps", type=int, default=20, help="steps of the train stage (default 20)")
    parser.add_argument("--validation_users", type=int, default=10_000, help="users of the validation pass")
    parser.add_argument("--predict_index", default="ivf", choices=["exact", "ivf", "hnsw"],
                        help="top-k of the predict stage (default ivf)")
    parser.add_argument("--nprobe", type=int, default=16, help="IVF lists probed by the predict stage (default 16)")
    parser.add_argument("--out", default=str(HERE / "out"), help="logs, work folders and results (git-ignored)")
    parser.add_argument("--_child", nargs=5, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args._child:
        child(*args._child, args=args)
        return 0
    out = Path(args.out)
    sizes = [int(float(s)) for s in args.sizes.split(",")]
    items = [int(float(s)) for s in args.items.split(",")] if args.items else \
        [100_000 if n <= 10_000_000 else 1_000_000 for n in sizes]
    stages = [s for s in args.stages.split(",") if s]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise SystemExit(f"unknown stage(s) {unknown}; expected some of {list(STAGES)}")
    records: list[dict[str, Any]] = []
    for events, catalog in zip(sizes, items):
        log = ensure_log(out, events, catalog)
        work = out / "work" / log.name
        work.mkdir(parents=True, exist_ok=True)
        runs = [("prepare", "import")] + ([] if args.no_baseline or "prepare" not in stages
                                          else [("prepare", "baseline")])
        for stage in stages:
            if stage == "kernel" and events != min(sizes):
                continue  # the kernel does not depend on the log: measured once
            runs += [(stage, engine) for engine in STAGE_ENGINES.get(stage, args.engines.split(","))]
        for stage, engine in runs:
            record = {"events": events, "items": catalog, **run_child(stage, engine, log, work, args)}
            records.append(record)
            print(json.dumps(record), flush=True)
        if args.check and events == min(sizes) and not args.no_baseline:
            print(f"baseline rows == prepared rows at {events:.0e}: {check_same_rows(work)}", flush=True)
    (out / "results.json").write_text(json.dumps(records, indent=1))
    print(markdown(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
