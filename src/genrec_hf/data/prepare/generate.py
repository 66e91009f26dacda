"""A synthetic event log of any size written as Parquet shards, one chunk at a time (never the log in memory).

The distributions are those of `data/synthetic.py` without its per-user simulation loop (too slow for 1e8 events):
Zipf item popularity over a random permutation of ranks, sessions of events minutes apart with days between
sessions, each user starting in the first 60% of the year, and an engagement level 1..5 (the action id, also the
rating) that rises with the item's quality and the user's taste. Users have 1 + Poisson(mean - 1) events. Each
file holds whole users, its rows in time order (as a log is written); user ids are scrambled so that file order
says nothing about user order.
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

_DAY = 86_400
_START = int(dt.datetime(2023, 1, 1, tzinfo=dt.timezone.utc).timestamp())
_USER_SCRAMBLE = 0x9E3779B97F4A7C15  # odd: i * c mod 2**40 is a bijection, so user ids stay distinct
EVENT_SCHEMA = pa.schema([("user_id", pa.int64()), ("item_id", pa.int64()), ("timestamp", pa.int64()),
                          ("action", pa.int8()), ("rating", pa.float32())])


def generate_event_log(output_dir: str | Path, num_events: int, num_items: int, *, events_per_file: int = 1_000_000,
                       mean_user_events: float = 50.0, mean_session_length: float = 4.0, zipf_exponent: float = 1.0,
                       days: int = 365, seed: int = 0) -> list[Path]:
    """Write `num_events` events over `num_items` items as `part-NNNNN.parquet` files; returns their paths.

    Memory is one file's events (about 40 bytes each) plus the popularity table (16 bytes per item).
    """
    if num_events < 1 or num_items < 2 or events_per_file < 1 or mean_user_events < 1:
        raise ValueError(f"generate_event_log: need num_events >= 1, num_items >= 2, events_per_file >= 1 and "
                         f"mean_user_events >= 1; got {num_events}, {num_items}, {events_per_file}, "
                         f"{mean_user_events}.")
    output = Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    popularity = 1.0 / (rng.permutation(num_items) + 1.0) ** zipf_exponent
    cumulative = np.cumsum(popularity)
    cumulative /= cumulative[-1]
    quality = rng.normal(0.0, 0.5, num_items)
    span = days * _DAY
    paths, first_user = [], 0
    for index in range(math.ceil(num_events / events_per_file)):
        target = min(events_per_file, num_events - index * events_per_file)
        lengths = _user_lengths(rng, target, mean_user_events)
        table = _chunk(rng, lengths, first_user, cumulative, quality, span, mean_session_length)
        first_user += len(lengths)
        path = output / f"part-{index:05d}.parquet"
        pq.write_table(table, path, compression="zstd")
        paths.append(path)
    return paths


def _user_lengths(rng: np.random.Generator, target: int, mean: float) -> np.ndarray:
    """Events per user, 1 + Poisson(mean - 1), the last user cut so the chunk has exactly `target` events."""
    lengths = 1 + rng.poisson(max(mean - 1.0, 0.0), size=max(1, int(target / mean * 1.2) + 8))
    while lengths.sum() < target:
        lengths = np.concatenate([lengths, 1 + rng.poisson(max(mean - 1.0, 0.0), size=len(lengths))])
    ends = np.cumsum(lengths)
    last = int(np.searchsorted(ends, target))
    lengths = lengths[:last + 1].copy()
    lengths[-1] -= int(ends[last] - target)
    return lengths[lengths > 0]


def _chunk(rng: np.random.Generator, lengths: np.ndarray, first_user: int, cumulative: np.ndarray,
           quality: np.ndarray, span: int, mean_session_length: float) -> pa.Table:
    n = int(lengths.sum())
    user_index = np.repeat(np.arange(first_user, first_user + len(lengths), dtype=np.uint64), lengths)
    users = ((user_index * np.uint64(_USER_SCRAMBLE)) & np.uint64((1 << 40) - 1)).astype(np.int64) + 1
    items = np.minimum(np.searchsorted(cumulative, rng.random(n)), len(cumulative) - 1)
    new_session = rng.random(n) < 1.0 / mean_session_length
    gaps = np.where(new_session, 3600 + rng.exponential(3.0, n) * _DAY, 60 + rng.exponential(15.0, n) * 60)
    first = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    gaps[first] = 0
    elapsed = np.cumsum(gaps.astype(np.int64))
    elapsed -= np.repeat(elapsed[first], lengths)
    starts = _START + (rng.uniform(0.0, 0.6, len(lengths)) * span).astype(np.int64)
    times = np.repeat(starts, lengths) + elapsed
    taste = np.repeat(rng.uniform(0.0, 1.0, len(lengths)), lengths)
    rating = np.clip(np.rint(1.5 + 3.0 * taste + quality[items] + rng.normal(0.0, 0.7, n)), 1, 5)
    order = np.argsort(times, kind="stable")
    return pa.table({"user_id": users[order], "item_id": items[order].astype(np.int64) + 1,
                     "timestamp": times[order], "action": rating[order].astype(np.int8),
                     "rating": rating[order].astype(np.float32)}, schema=EVENT_SCHEMA)
