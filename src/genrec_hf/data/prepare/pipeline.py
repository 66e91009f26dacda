"""`prepare_events`: raw event log → prepared folder (`genrec_hf.data.prepared`), on any engine.

The driver makes every global decision once — shard count, id order, action numbering, the k-core rounds, the
vocabulary, the time-split cut, the cold items — from small per-shard summaries, and hands them to the shard tasks
of `shards.py`. The filters and the vocabulary are those of `build_interactions`, and the split those of
`data/splits.py` / `hold_out_items`, so a prepared folder reads back as the `InteractionData` of the raw log.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..._version import __version__
from .._parsing import parse_numbers
from ..cold_splits import choose_cold_items
from ..prepared import (COLD_ITEMS_FILE, FORMAT, INCOMPLETE_MARKER, MANIFEST_FILE, RUN_FILE, SCHEMA_VERSION,
                        PreparedData, bytes_sha256, open_prepared)
from ..vocab import VOCAB_FILE, ItemVocab, sort_raw_ids
from .engines import DuckDBEngine, MemoryEngine
from .shards import ShardJob, kcore_counts, summarize, survivors, write_shard
from .sources import EventSource, file_size, open_input, open_source
from .spark import SparkEngine

logger = logging.getLogger(__name__)

ENGINES = ("auto", "memory", "duckdb", "spark")
SPLITS = ("leave_one_out", "time", "cold_items")
EVENTS_PER_SHARD = 1_000_000
MEMORY_BYTES_PER_EVENT = 200  # the memory engine peaks at ~120 B/event at 1e8 (benchmarks/scale): a margin
_TIME_BUCKETS_BITS = 16  # the time histogram of a quantile cut has at most 2**16 buckets


def split_spec(kind: str = "leave_one_out", *, cut: int | None = None, quantile: float | None = None,
               fraction: float | None = None, seed: int = 0) -> dict[str, Any]:
    """A checked split description: leave_one_out; time (exactly one of cut / quantile); cold_items (fraction, seed)."""
    if kind not in SPLITS:
        raise ValueError(f"split={kind!r}; expected one of {list(SPLITS)}.")
    if kind == "time":
        if (cut is None) == (quantile is None):
            raise ValueError(f"a time split needs exactly one of cut= (unix seconds) or quantile= (0..1); got "
                             f"cut={cut}, quantile={quantile}.")
        if quantile is not None and not 0.0 < quantile < 1.0:
            raise ValueError(f"quantile={quantile}; expected a number strictly between 0 and 1.")
        return {"kind": "time", "cut": None if cut is None else int(cut), "quantile": quantile}
    if cut is not None or quantile is not None:
        raise ValueError(f"cut / quantile belong to split='time', not split={kind!r}.")
    if kind == "cold_items":
        fraction = 0.1 if fraction is None else fraction
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"fraction={fraction}; expected a share of items strictly between 0 and 1.")
        return {"kind": "cold_items", "fraction": float(fraction), "seed": int(seed)}
    if fraction is not None:
        raise ValueError(f"fraction belongs to split='cold_items', not split={kind!r}.")
    return {"kind": "leave_one_out"}


def quantile_positions(n: int, q: float) -> tuple[float, list[int]]:
    """(interpolation weight, 0-based order statistics) `np.quantile(x, q)` (method "linear") reads from n values,
    with numpy's own float steps."""
    virtual = np.float64(n - 1) * np.float64(q)  # numpy's "linear" virtual index
    if virtual >= n - 1:
        return 0.0, [n - 1]
    if virtual < 0:
        return 0.0, [0]
    previous = int(np.floor(virtual))
    return float(virtual - np.float64(previous)), [previous, previous + 1]


def numpy_quantile(values: list[int], gamma: float) -> float:
    """numpy's linear interpolation between the order statistics of `quantile_positions`."""
    if len(values) == 1:
        return float(values[0])
    a, b = np.int64(values[0]), np.int64(values[1])
    diff = b - a
    return float(b - diff * (1 - np.float64(gamma))) if gamma >= 0.5 else float(a + diff * np.float64(gamma))


def make_engine(name: str, *, threads: int | None = None, memory_limit: str | None = None,
                temp_dir: str | Path | None = None, spark_session: Any = None) -> Any:
    if name == "memory":
        return MemoryEngine(threads)
    if name == "duckdb":
        return DuckDBEngine(threads, memory_limit, temp_dir)
    if name == "spark":
        return SparkEngine(spark_session, threads)
    raise ValueError(f"engine={name!r}; expected one of {list(ENGINES)}.")


def prepare_events(
    source: str | Path,
    output_dir: str | Path,
    *,
    format: str | None = None,
    column_map: dict[str, str] | None = None,
    min_user_events: int = 2,
    k_core: int | None = None,
    dedup: bool = True,
    split: dict[str, Any] | str = "leave_one_out",
    num_shards: int | None = None,
    events_per_shard: int = EVENTS_PER_SHARD,
    engine: str = "auto",
    threads: int | None = None,
    memory_limit: str | None = None,
    temp_dir: str | Path | None = None,
    overwrite: bool = False,
    spark_session: Any = None,
) -> PreparedData:
    """Prepare a raw event log into `output_dir` (a prepared folder) and return it opened.

    Args:
        source, format, column_map: as for `load_interactions` (csv / tsv / Parquet: one file, a glob or a folder
            of shards; RecBole `.inter`; MovieLens, sequence text and `synthetic` are parsed in memory first).
        min_user_events, k_core, dedup: the filters of `build_interactions`, decided here once.
        split: "leave_one_out", or `split_spec(...)` (a time cut or quantile; cold items: fraction + seed).
        num_shards: sequence shards to write (users are spread by a hash of their id); default one per
            `events_per_shard` staged events.
        engine: "memory" (the log in RAM), "duckdb" (out-of-core: spills under `memory_limit`), "spark" (a
            cluster, `spark_session` or a new local one), or "auto" (memory when the log's estimated size fits
            in `memory_limit` / a quarter of RAM, else duckdb).
        threads: engine threads (None: the engine's default).
        overwrite: replace a non-empty `output_dir`; otherwise it is an error.
    """
    if min_user_events < 1:
        raise ValueError(f"min_user_events={min_user_events}; expected an integer >= 1.")
    if k_core is not None and k_core < 1:
        raise ValueError(f"k_core={k_core}; expected None or an integer >= 1.")
    if num_shards is not None and num_shards < 1:
        raise ValueError(f"num_shards={num_shards}; expected an integer >= 1.")
    if events_per_shard < 1:
        raise ValueError(f"events_per_shard={events_per_shard}; expected an integer >= 1.")
    spec = split_spec(split) if isinstance(split, str) else split_spec(**split)
    output = Path(output_dir)
    staging = _start_output(output, overwrite)
    started = time.time()
    try:
        src = open_source(source, format, column_map=column_map)
        engine_name = _pick_engine(engine, src, memory_limit)
        if spec["kind"] == "time" and not src.has_timestamps:
            raise ValueError(f"{src.name} has no timestamps (only event order), so a global time split means "
                             "nothing; use leave_one_out.")
        runner = make_engine(engine_name, threads=threads, memory_limit=memory_limit, temp_dir=temp_dir,
                             spark_session=spark_session)
        try:
            manifest, vocab = _run(runner, src, staging, spec, num_shards=num_shards,
                                   events_per_shard=events_per_shard, min_user_events=min_user_events,
                                   k_core=k_core, dedup=dedup)
        finally:
            runner.close()
    except BaseException:  # our own staging folder only: `output` is untouched until the rename
        shutil.rmtree(staging, ignore_errors=True)
        raise
    run_info = {"engine": engine_name, "engine_version": getattr(runner, "version", None),
                "genrec_hf_version": __version__, "pyarrow_version": pa.__version__,
                "threads": threads, "memory_limit": memory_limit,
                "created_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "seconds": round(time.time() - started, 3)}
    (staging / RUN_FILE).write_text(json.dumps(run_info, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    (staging / MANIFEST_FILE).write_text(manifest_text(manifest), encoding="utf-8")
    (staging / INCOMPLETE_MARKER).unlink()
    _publish(staging, output)
    logger.info("prepared %s: %d users, %d items, %d events in %d shards → %s (%s engine, %.1f s)", src.name,
                manifest["num_users"], vocab.num_items, manifest["num_events"], len(manifest["shards"]), output,
                engine_name, run_info["seconds"])
    return open_prepared(output)


def manifest_text(manifest: dict[str, Any]) -> str:
    """The manifest's bytes: sorted keys, so equal content gives equal files."""
    return json.dumps(manifest, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def _run(runner: Any, src: EventSource, staging: Path, spec: dict[str, Any], *, num_shards: int | None,
         events_per_shard: int, min_user_events: int, k_core: int | None,
         dedup: bool) -> tuple[dict[str, Any], ItemVocab]:
    staged = runner.stage(src)
    if staged == 0:
        raise ValueError(f"{src.text}: no events to build sequences from.")
    shards = num_shards or max(1, math.ceil(staged / events_per_shard))
    runner.partition(shards)
    job = ShardJob(num_shards=shards, user_kind=src.user_kind, item_kind=src.item_kind,
                   has_timestamps=src.has_timestamps, dedup=dedup, k_core=k_core, min_user_events=min_user_events,
                   folder=str(staging))
    all_items = ItemUnion(src.item_kind)
    summaries = []
    for summary in runner.map(summarize, job):
        if summary["events"]:
            all_items.add(summary.pop("items", None))
            summaries.append(summary)
    job.user_ids_numeric = src.user_kind == "int" or all(s["user_ids_numeric"] for s in summaries)
    if src.action_text:
        job.action_keys, job.action_values = _action_codes(summaries, src)
    job.star_actions = src.star_actions and min(s["rating_min"] for s in summaries) >= 0.5 and \
        max(s["rating_max"] for s in summaries) <= 10
    if getattr(runner, "keeps_rows", False):  # decisions that order rows are final from here on
        job.rows_cache = {}
    if k_core:
        job.kcore_items = all_items.result()
        _kcore_rounds(runner, job, sum(s["events"] for s in summaries), src)
    del all_items
    if spec["kind"] == "time" and spec["cut"] is None:
        low, high = min(s["time_min"] for s in summaries), max(s["time_max"] for s in summaries)
        job.time_histogram, job.time_origin = True, low
        job.time_shift = max(0, (high - low).bit_length() - _TIME_BUCKETS_BITS)
    kept, kept_items = [], ItemUnion(src.item_kind)
    for result in runner.map(survivors, job):  # folded as they come: per-shard item lists are not all kept
        kept_items.add(result.pop("items"))
        kept.append(result)
    events = sum(r["events"] for r in kept)
    dropped = {"duplicates": sum(r["duplicates"] for r in kept), "k_core": sum(r["kcore_dropped"] for r in kept),
               "short_users": sum(r["short_users"] for r in kept),
               "short_user_events": sum(r["short_dropped"] for r in kept)}
    if dropped["duplicates"]:
        logger.info("%s: dropped %d repeated (user, item, timestamp) events", src.name, dropped["duplicates"])
    if dropped["short_users"]:
        logger.warning("%s: dropped %d users with fewer than %d events (%d events)", src.name,
                       dropped["short_users"], min_user_events, dropped["short_user_events"])
    if events == 0:
        raise ValueError(f"{src.name}: no user has at least min_user_events={min_user_events} events.")
    numeric = src.user_kind == "int" or all(r["user_ids_numeric"] for r in kept if r["users"])
    if numeric != job.user_ids_numeric:  # the users that broke numeric order were filtered out: order again
        job.user_ids_numeric = numeric
        job.rows_cache = {} if job.rows_cache is not None else None
    vocab, job.vocab_items = _vocabulary(kept_items.result(), src)
    vocab_path = vocab.save(staging)
    job.vocab_sha256 = bytes_sha256(vocab_path.read_bytes())
    if job.time_histogram:
        job.time_buckets = _quantile_buckets(kept, events, spec["quantile"])
    entries = list(runner.map(write_shard, job))
    max_action = max(e.pop("max_action") for e in entries)
    times = [(e.pop("times"), e.pop("time_counts")) for e in entries if "times" in e]
    split = dict(spec)
    if spec["kind"] == "time" and spec["cut"] is None:
        split["cut"] = _time_cut(times, kept, job, events, spec["quantile"])
    if spec["kind"] == "cold_items":
        cold = choose_cold_items(vocab.raw_ids, spec["fraction"], spec["seed"])
        data = json.dumps({"items": cold}, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        (staging / COLD_ITEMS_FILE).write_bytes(data)
        split.update(num_cold=len(cold), cold_items_file=COLD_ITEMS_FILE, cold_items_sha256=bytes_sha256(data))
    manifest = {
        "format": FORMAT, "schema_version": SCHEMA_VERSION, "genrec_hf_version": __version__,
        "name": src.name, "has_timestamps": src.has_timestamps,
        "num_action_types": max_action + 1 if max_action > 0 else 0,
        "num_users": sum(e["num_users"] for e in entries), "num_items": vocab.num_items, "num_events": events,
        "user_ids_numeric": job.user_ids_numeric,
        "vocab": {"file": VOCAB_FILE, "sha256": job.vocab_sha256, "num_items": vocab.num_items},
        "filters": {"dedup": dedup, "k_core": k_core, "min_user_events": min_user_events},
        "dropped": dropped, "split": split, "source": {**src.describe(), "events_read": staged},
        "sharding": {"num_shards": shards, "user_shard": "fnv1a_64(utf8(user_id)) & (2**63 - 1) mod num_shards",
                     "row_order": "users in sort_raw_ids order; events by timestamp, then file order"},
        "shards": entries,
    }
    return manifest, vocab


def _action_codes(summaries: list[dict[str, Any]], src: EventSource) -> tuple[pa.Array, np.ndarray]:
    """Action texts → ids over the whole log, as `tabular._actions` numbers them in one file: integers when every
    value is a number, else names → 1..K in sorted order (empty → 0)."""
    first: dict[str, int] = {}
    for summary in summaries:
        for text, seq in summary["action_texts"].items():
            first[text] = min(seq, first.get(text, seq))
    texts = sorted(first, key=lambda t: first[t])
    values = pd.Series(texts, dtype=object)
    if not pd.to_numeric(values, errors="coerce").isna().any():
        try:
            codes = parse_numbers(values, label="", column="", first_line=0, integer=True)
        except ValueError:  # the first bad value in file order, named at its row
            bad = next(t for t in texts if _not_integer(t))
            column = src.files[first[bad] >> 40].columns["action"] if src.files else "action"
            raise ValueError(f"{src.label(first[bad])}: column {column!r} has {bad!r}; expected an integer.") from None
        negative = [t for t, c in zip(texts, codes) if c < 0]
        if negative:
            raise ValueError(f"{src.label(first[negative[0]])}: action {negative[0]!r}; expected an action id >= 0 "
                             "(0 = unknown).")
    else:
        names = sorted(set(texts) - {""})
        numbering = {name: i + 1 for i, name in enumerate(names)}
        logger.info("%s: action names mapped to ids %s", src.name, numbering)
        codes = np.array([numbering.get(t, 0) for t in texts], dtype=np.int64)
    return pa.array(texts, pa.string()), np.asarray(codes, dtype=np.int64)


def _not_integer(text: str) -> bool:
    try:
        parse_numbers(pd.Series([text], dtype=object), label="", column="", first_line=0, integer=True)
    except ValueError:
        return True
    return False


def _kcore_rounds(runner: Any, job: ShardJob, start: int, src: EventSource) -> None:
    """`_k_core` of `build_interactions` over shards: each round counts every item over all shards."""
    while True:
        counts = np.zeros(len(job.kcore_items), dtype=np.int64)
        users_ok = True
        for result in runner.map(kcore_counts, job):
            np.add.at(counts, result["item_codes"], result["item_counts"])
            users_ok &= result["users_ok"]
        present = counts > 0
        if users_ok and (counts[present] >= job.k_core).all():
            break
        job.kcore_masks.append(counts >= job.k_core)
    kept = int(counts.sum())
    logger.info("%s: %d-core filter kept %d of %d events", src.name, job.k_core, kept, start)
    if kept == 0:
        raise ValueError(f"{src.name}: no events survive the {job.k_core}-core filter; lower k_core.")


class ItemUnion:
    """Distinct items over shards, folded as shard results arrive (memory ~ a few times the catalog, not the
    sum of every shard's list); `result()` is sorted (ints) or in code-point order (text)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.parts: list[Any] = []
        self.size = self.distinct = 0

    def add(self, items: Any) -> None:
        if items is None or not len(items):
            return
        self.parts.append(items)
        self.size += len(items)
        if self.size > 4 * max(self.distinct, 1 << 16):
            self.parts = [self._unique()]
            self.size = self.distinct = len(self.parts[0])

    def _unique(self) -> Any:
        if self.kind == "int":
            return np.unique(np.concatenate([np.asarray(p, dtype=np.int64) for p in self.parts]))
        distinct = pc.unique(pa.concat_arrays([pa.array(p, pa.string()) for p in self.parts]))
        return distinct.take(pc.sort_indices(distinct))

    def result(self) -> Any:
        if not self.parts:
            return np.zeros(0, dtype=np.int64) if self.kind == "int" else pa.array([], pa.string())
        return self._unique()


def _vocabulary(items: Any, src: EventSource) -> tuple[ItemVocab, Any]:
    """The vocabulary of the surviving items (`ItemVocab.from_raw_ids` order) and its raw values for lookups."""
    if src.item_kind == "int":
        raw = [str(v) for v in items.tolist()]
        lookup: Any = items
    else:
        raw = sort_raw_ids(items.to_pylist())
        lookup = pa.array(raw, pa.string())
    info = {r: src.item_info[r] for r in raw if r in src.item_info}
    return ItemVocab(raw, info), lookup


def _time_histogram(kept: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
    return _merge_counts([(r["time_buckets"], r["time_counts"]) for r in kept if "time_buckets" in r])


def _quantile_buckets(kept: list[dict[str, Any]], events: int, quantile: float) -> np.ndarray:
    """The histogram buckets holding the order statistics the quantile interpolates."""
    buckets, counts = _time_histogram(kept)
    _, positions = quantile_positions(events, quantile)
    return np.unique(buckets[np.searchsorted(np.cumsum(counts), positions, side="right")])


def _time_cut(times: list[tuple[np.ndarray, np.ndarray]], kept: list[dict[str, Any]], job: ShardJob,
              events: int, quantile: float) -> int:
    """`int(np.quantile(all surviving times, quantile))` from the histogram and the needed buckets' times."""
    buckets, counts = _time_histogram(kept)
    assert job.time_buckets is not None
    before = int(counts[buckets < job.time_buckets[0]].sum())
    values, value_counts = _merge_counts(times)
    gamma, positions = quantile_positions(events, quantile)
    found = values[np.searchsorted(np.cumsum(value_counts), np.asarray(positions) - before, side="right")]
    return int(numpy_quantile(found.tolist(), gamma))


def _merge_counts(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    keys = np.concatenate([np.asarray(k, np.int64) for k, _ in parts]) if parts else np.zeros(0, np.int64)
    counts = np.concatenate([np.asarray(c, np.int64) for _, c in parts]) if parts else np.zeros(0, np.int64)
    unique, inverse = np.unique(keys, return_inverse=True)
    return unique, np.bincount(inverse, weights=counts, minlength=len(unique)).astype(np.int64)


def _pick_engine(engine: str, src: EventSource, memory_limit: str | None) -> str:
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r}; expected one of {list(ENGINES)}.")
    if engine != "auto":
        return engine
    if src.loaded is not None:
        return "memory"
    budget = _parse_bytes(memory_limit) if memory_limit else _physical_memory() // 4
    estimate = _estimated_events(src) * MEMORY_BYTES_PER_EVENT
    if estimate <= budget:
        return "memory"
    try:
        import duckdb  # noqa: F401
    except ImportError:
        raise ImportError(f"{src.text}: about {estimate / 2**30:.1f} GiB in memory, over the "
                          f"{budget / 2**30:.1f} GiB budget, and the out-of-core engine needs DuckDB: "
                          'pip install "genrec-hf[prepare]".') from None
    return "duckdb"


def _estimated_events(src: EventSource) -> int:
    total = 0
    for plan in src.files:
        if plan.path.lower().endswith((".parquet", ".pq")):
            total += pq.ParquetFile(open_input(plan.path)).metadata.num_rows
        else:
            total += max(1, file_size(plan.path) // 16)  # a short csv line is ~16+ bytes
    return total


def _physical_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def _parse_bytes(text: str) -> int:
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20,
             "GIB": 2**30, "TIB": 2**40}
    number = text.strip().upper().rstrip()
    digits = number.rstrip("KMGTIB ")
    unit = number[len(digits):].strip()
    try:
        return int(float(digits) * units[unit])
    except (ValueError, KeyError):
        raise ValueError(f"memory_limit={text!r}; expected a size such as '4GB' or '512MiB'.") from None


def _start_output(output: Path, overwrite: bool) -> Path:
    """A fresh staging folder beside `output`, marked incomplete; refuses a non-empty `output` without overwrite."""
    if output.exists() and not output.is_dir():
        raise NotADirectoryError(f"--output_dir {output} is a file; expected a folder to write the prepared log into.")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise FileExistsError(f"{output} is not empty; pass --overwrite (overwrite=True) to replace it, or choose "
                              "another --output_dir.")
    staging = output.parent / f".{output.name}.prepare-staging"
    if staging.exists():
        if not (staging / INCOMPLETE_MARKER).is_file():
            raise FileExistsError(f"{staging} exists and is not an interrupted prepare job (no {INCOMPLETE_MARKER} "
                                  "marker); remove it by hand.")
        logger.warning("clearing %s, left by an interrupted prepare job", staging)
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    (staging / INCOMPLETE_MARKER).write_text(json.dumps({"pid": os.getpid(), "started": time.time()}),
                                             encoding="utf-8")
    return staging


def _publish(staging: Path, output: Path) -> None:
    """Move the finished staging folder to `output` (a rename: readers see the old folder or the new one)."""
    old = output.parent / f".{output.name}.prepare-old"
    if old.exists():
        shutil.rmtree(old)
    if output.exists():
        output.rename(old)
    staging.rename(output)
    if old.exists():
        shutil.rmtree(old)
