"""Training windows and evaluation rows streamed from a prepared folder's Parquet shards, one rank's shards each.

Logs of 1e8+ events do not fit one process's memory, and under data parallelism every rank loading the whole log is
wasted work. A prepared folder (`genrec-hf prepare`) holds one row per user in shards; here each rank reads only its
shards (shards rank, rank + world_size, ..., the same every epoch) through `datasets` streaming
(`load_dataset("parquet", streaming=True)`), and turns each batch of user rows into training windows on the fly
with the same split rule (`splits.leave_one_out_bounds` / `time_split_bounds`) and window rule
(`collators.window_ranges`) as the in-memory path, so both give the same windows.

`TrainingWindowStream` repeats its shards epoch after epoch (ranks of one job must take the same number of steps;
the run is bounded by `max_steps`). Shuffling is seeded and replayable: every epoch reads the shards in an order drawn
from (seed, epoch), and each batch of `shuffle_users` users is permuted by a generator drawn from (seed, epoch, the
batch's first user id). Nothing is held in a buffer across batches, so `state_dict()` — the epoch and the
`datasets` stream position — resumes exactly where the stream stopped: the windows after a resume are the windows
an uninterrupted run would have read next (tested).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from datasets import Dataset, DatasetInfo, load_dataset
from datasets.table import InMemoryTable

from .collators import window_ranges
from .interactions import SEQUENCE_FEATURES, take_table_ranges
from .splits import leave_one_out_bounds, time_split_bounds

logger = logging.getLogger(__name__)
EVENT_COLUMNS = ("item_ids", "timestamps", "action_ids", "ratings")
STREAM_SPLITS = ("leave_one_out", "time")


def split_rows(table: pa.Table, split: dict[str, Any], name: str) -> pa.Table:
    """The rows of split `name` (train / validation / test) of a batch of user rows, each cut to the events the
    split keeps: the in-memory rule of `data/splits.py`, applied to one batch."""
    lengths = np.diff(table["item_ids"].combine_chunks().offsets.to_numpy()).astype(np.int64)
    if split["kind"] == "leave_one_out":
        bounds = leave_one_out_bounds(lengths)[name]
    elif split["kind"] == "time":
        times = table["timestamps"].combine_chunks()
        offsets = times.offsets.to_numpy()
        flat = times.values.to_numpy(zero_copy_only=False)
        before_cumulative = np.concatenate([[0], np.cumsum(flat < int(split["cut"]))])
        before = before_cumulative[offsets[1:]] - before_cumulative[offsets[:-1]]
        bounds = time_split_bounds(lengths, before)[name]
    else:
        raise ValueError(f"split {split.get('kind')!r} cannot be streamed; streamed splits are {list(STREAM_SPLITS)} "
                         "(read the folder into memory for a cold-start split: data.streaming: false).")
    rows = np.flatnonzero(bounds >= 0)
    return take_table_ranges(table, rows, np.zeros_like(rows), bounds[rows])


def _seed_of(*parts: Any) -> int:
    """A 64-bit seed from values (stable across processes and Python runs, unlike `hash`)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little")


class TrainingWindowStream(torch.utils.data.IterableDataset):
    """Training windows (module docstring) of this rank's shards, epoch after epoch, seeded and resumable.

    Args:
        shard_files: Every shard of the prepared folder, in manifest order; rank r reads shards r, r + world_size,
            ... (their count must be a multiple of `world_size`, so ranks read disjoint whole shards and take the
            same number of epochs' worth of data).
        split: The folder's split (`{"kind": "leave_one_out"}` or `{"kind": "time", "cut": unix_seconds}`).
        max_length, stride: The window rule of `collators.sliding_windows`.
        seed: Seeds the shard order and the permutations (with the epoch).
        shuffle_users: Users whose windows are permuted together (0: no shuffling, shards in manifest order).
        rank, world_size: This process and the job's size.
    """

    def __init__(self, shard_files: Sequence[str | Path], split: dict[str, Any], *, max_length: int,
                 stride: int | None = None, seed: int = 0, shuffle_users: int = 4096, rank: int = 0,
                 world_size: int = 1) -> None:
        super().__init__()
        if not shard_files:
            raise ValueError("a stream needs at least one shard file.")
        if len(shard_files) % world_size:
            raise ValueError(f"{len(shard_files)} shards cannot be split evenly over {world_size} processes: each "
                             "rank must read whole shards. Prepare the folder with --num_shards a multiple of the "
                             "number of processes.")
        if split.get("kind") not in STREAM_SPLITS:
            split_rows(pa.table({"item_ids": pa.array([], pa.large_list(pa.int64()))}), split, "train")
        window_ranges(np.zeros(0, dtype=np.int64), max_length, stride)  # checks max_length and stride
        self.shard_files = [str(f) for f in shard_files]
        self.split = dict(split)
        self.max_length, self.stride = max_length, stride
        self.seed, self.shuffle_users = seed, shuffle_users
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self._stream: Any = None
        self._resume: dict[str, Any] | None = None

    @property
    def rank_files(self) -> list[str]:
        """The shards this rank reads."""
        return self.shard_files[self.rank::self.world_size]

    def _epoch_stream(self) -> Any:
        """This rank's windows of the current epoch, as a `datasets` IterableDataset."""
        files = self.rank_files
        if self.shuffle_users:
            order = np.random.default_rng(_seed_of(self.seed, self.epoch, self.rank)).permutation(len(files))
            files = [files[i] for i in order]
        stream = load_dataset("parquet", data_files=files, split="train", streaming=True).with_format("arrow")
        return stream.map(self._windows, batched=True, batch_size=max(1, self.shuffle_users or 1024),
                          fn_kwargs={"epoch": self.epoch}).with_format(None)

    def _windows(self, users: pa.Table, epoch: int) -> pa.Table:
        """One batch of user rows → their training windows (permuted when shuffling)."""
        train = split_rows(users.select([c for c in users.column_names if c == "user_id" or c in EVENT_COLUMNS]),
                           self.split, "train")
        lengths = np.diff(train["item_ids"].combine_chunks().offsets.to_numpy()).astype(np.int64)
        windows = take_table_ranges(train, *window_ranges(lengths, self.max_length, self.stride))
        if self.shuffle_users and windows.num_rows:
            first_user = users["user_id"][0].as_py() if users.num_rows else ""
            order = np.random.default_rng(_seed_of(self.seed, epoch, first_user)).permutation(windows.num_rows)
            windows = windows.take(pa.array(order))
        return windows

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if torch.utils.data.get_worker_info() is not None:
            raise RuntimeError("TrainingWindowStream is read by the main process (dataloader_num_workers=0): a "
                               "worker's copy would not keep the stream position a resume needs.")
        while True:
            self._stream = self._epoch_stream()
            if self._resume is not None:
                self._stream.load_state_dict(self._resume)
                self._resume = None
            yield from self._stream  # the object whose state_dict() tracks the position
            self.epoch += 1

    def state_dict(self) -> dict[str, Any]:
        """Where the stream stands: the epoch and the `datasets` position within it (after the last window read)."""
        return {"epoch": self.epoch, "stream": None if self._stream is None else self._stream.state_dict(),
                "shards": len(self.shard_files), "rank": self.rank, "world_size": self.world_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state_dict()`'s position (checked to come from the same shards and process layout)."""
        layout = (state.get("shards"), state.get("rank"), state.get("world_size"))
        if layout != (len(self.shard_files), self.rank, self.world_size):
            raise ValueError(f"stream state of {layout[0]} shards for rank {layout[1]} of {layout[2]} cannot resume "
                             f"a stream of {len(self.shard_files)} shards on rank {self.rank} of {self.world_size}; "
                             "resume with the same prepared folder and number of processes.")
        self.epoch = int(state["epoch"])
        self._resume = state["stream"]


def read_split_rows(shard_files: Sequence[str | Path], split: dict[str, Any], name: str, *,
                    limit_per_shard: int | None = None, rank: int = 0, world_size: int = 1) -> Iterator[pa.Table]:
    """Batches of split `name`'s rows (validation / test: each user's history with its target last) from this
    rank's shards (shards `rank`, `rank + world_size`, ...), in shard order; `limit_per_shard` keeps the first that
    many users of each shard (a deterministic sample: users are hash-partitioned into shards)."""
    for index in range(rank, len(shard_files), world_size):
        stream = load_dataset("parquet", data_files=[str(shard_files[index])], split="train",
                              streaming=True).with_format("arrow")
        taken = 0
        for users in stream.iter(batch_size=4096):
            if limit_per_shard is not None:
                users = users.slice(0, max(0, limit_per_shard - taken))
                taken += users.num_rows
            rows = split_rows(users.select([c for c in users.column_names if c == "user_id" or c in EVENT_COLUMNS]),
                              split, name)
            if rows.num_rows:
                yield rows
            if limit_per_shard is not None and taken >= limit_per_shard:
                break


def split_dataset(shard_files: Sequence[str | Path], split: dict[str, Any], name: str, *,
                  limit_per_shard: int | None = None, rank: int = 0, world_size: int = 1) -> Dataset:
    """`read_split_rows` gathered into one in-memory `datasets.Dataset` of `SEQUENCE_FEATURES` rows (what the
    collators read): a validation sample, or one rank's test batch."""
    tables = list(read_split_rows(shard_files, split, name, limit_per_shard=limit_per_shard, rank=rank,
                                  world_size=world_size))
    return sequences_from_table(pa.concat_tables(tables) if tables else None)


def sequences_from_table(table: pa.Table | None) -> Dataset:
    """User rows of an Arrow table (a prepared shard's large lists) as a `SEQUENCE_FEATURES` dataset."""
    if table is None or table.num_rows == 0:
        return Dataset.from_dict({name: [] for name in SEQUENCE_FEATURES}, features=SEQUENCE_FEATURES)
    table = table.select([name for name in SEQUENCE_FEATURES]).cast(SEQUENCE_FEATURES.arrow_schema)
    return Dataset(InMemoryTable(table), info=DatasetInfo(features=SEQUENCE_FEATURES))


def train_item_counts(shard_files: Sequence[str | Path], split: dict[str, Any], vocab_size: int, *, rank: int = 0,
                      world_size: int = 1) -> np.ndarray:
    """(V,) events per item in the training rows of this rank's shards (sum over ranks for the whole log): what the
    popularity sampler, the item tower's known items and the most-popular baseline read."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for rows in read_split_rows(shard_files, split, "train", rank=rank, world_size=world_size):
        items = rows["item_ids"].combine_chunks().values.to_numpy(zero_copy_only=False)
        counts += np.bincount(items, minlength=vocab_size)[:vocab_size]
    return counts


def estimated_windows(manifest_shards: Sequence[dict[str, Any]], max_length: int, stride: int | None = None) -> int:
    """About how many training windows a folder's shards hold, from the manifest's per-shard users and events
    (no pass over the data): each user gives at least one window, and every `stride` training events past the
    first window one more. Used to turn `num_train_epochs` into steps of a stream, which has no length."""
    stride = stride or max_length
    total = 0
    for entry in manifest_shards:
        users, events = int(entry["num_users"]), int(entry["num_events"])
        train_events = max(0, events - 2 * users)  # leave-one-out keeps n - 2 events per user for training
        total += users + max(0, train_events - users * (max_length + 1)) // stride
    return max(1, total)
