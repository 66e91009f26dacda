"""The canonical form every loader produces: `InteractionData` (one time-ordered row per user) and its builder.

Loaders only parse their file format into an events DataFrame (`user_id`, `item_id` as str, `timestamp` int64,
`rating` float, optional `action` int) plus item metadata; `build_interactions` does everything else once: dedup,
k-core and short-user filters, the item vocabulary and the per-user sequences.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from datasets import Dataset, DatasetInfo, Features, Sequence, Value
from datasets.table import InMemoryTable

from ._parsing import MAX_UNIX_SECONDS, MIN_UNIX_SECONDS, exact_ids, parse_numbers, unix_seconds
from .vocab import ItemVocab, sort_raw_ids

logger = logging.getLogger(__name__)

SEQUENCE_FEATURES = Features({
    "user_id": Value("string"),
    "item_ids": Sequence(Value("int64")),  # vocab indices 1..V-1, oldest first
    "timestamps": Sequence(Value("int64")),  # unix seconds, or 0,1,2,... event order when has_timestamps=False
    "action_ids": Sequence(Value("int64")),  # action type, 0 = unknown
    "ratings": Sequence(Value("float32")),  # raw rating / engagement, 0.0 where absent
})
SEQUENCE_COLUMNS = list(SEQUENCE_FEATURES)
EVENT_COLUMNS = ("user_id", "item_id", "timestamp", "rating")


@dataclass
class InteractionData:
    """Interaction log in canonical form: `sequences` (one row per user, `SEQUENCE_FEATURES`) + vocabulary.

    `has_timestamps=False` means `timestamps` are only the event order (0, 1, 2, ...), so time splits and time-gap
    features carry no meaning. `num_action_types` is max action id + 1 (0 when the source has no action signal) and
    is what a model's `config.num_action_types` must be.
    """

    sequences: Dataset
    vocab: ItemVocab
    item_info: dict[str, dict[str, Any]] = field(default_factory=dict)
    has_timestamps: bool = True
    num_action_types: int = 0
    name: str = "interactions"

    @property
    def num_users(self) -> int:
        return len(self.sequences)

    @property
    def num_items(self) -> int:
        return self.vocab.num_items

    @property
    def num_events(self) -> int:
        return int(sum(len(items) for items in self.sequences["item_ids"]))

    def __repr__(self) -> str:
        return (f"InteractionData(name={self.name!r}, users={self.num_users}, items={self.num_items}, "
                f"has_timestamps={self.has_timestamps}, num_action_types={self.num_action_types})")


def sequences_from_columns(columns: dict[str, list], features: Features = SEQUENCE_FEATURES) -> Dataset:
    """A sequences Dataset from Python lists (used by splits and windows, which stay in canonical columns)."""
    return Dataset.from_dict(columns, features=features)


def build_interactions(
    events: pd.DataFrame,
    *,
    item_info: dict[str, dict[str, Any]] | None = None,
    name: str = "interactions",
    has_timestamps: bool = True,
    min_user_events: int = 2,
    k_core: int | None = None,
    dedup: bool = True,
) -> InteractionData:
    """Events → `InteractionData`: dedup, k-core, short-user filter, vocabulary, per-user time-ordered rows.

    Args:
        events: columns `user_id`, `item_id` (str; a float column must hold integers, 12.0 → "12"), `timestamp`
            (unix seconds within years 1..9999), `rating` (float, NaN = absent) and optionally `action` (int >= 0).
            Rows in file order; ties in time keep that order.
        dedup: drop repeated (user, item, timestamp) events, keeping the first.
        k_core: iteratively keep only users and items with at least `k_core` events each.
        min_user_events: users with fewer events (after dedup and k-core) are dropped and counted in the log.
    """
    missing = [c for c in ("user_id", "item_id", "timestamp") if c not in events.columns]
    if missing:
        raise ValueError(f"{name}: events lack columns {missing}; they have {list(events.columns)}.")
    if min_user_events < 1:
        raise ValueError(f"min_user_events={min_user_events}; expected an integer >= 1.")
    if k_core is not None and k_core < 1:
        raise ValueError(f"k_core={k_core}; expected None or an integer >= 1.")
    if len(events) == 0:
        raise ValueError(f"{name}: no events to build sequences from.")

    frame = canonical_events(events, name)

    if dedup:
        before = len(frame)
        frame = frame.drop_duplicates(subset=["user_id", "item_id", "timestamp"], keep="first")
        if len(frame) < before:
            logger.info("%s: dropped %d repeated (user, item, timestamp) events", name, before - len(frame))
    if k_core:
        frame = _k_core(frame, k_core, name)
    frame = _drop_short_users(frame, min_user_events, name)

    vocab = ItemVocab.from_raw_ids(frame["item_id"].unique(), None)
    info = {raw: item_info[raw] for raw in vocab.raw_ids if item_info and raw in item_info}
    vocab.item_info = info
    sequences = _to_sequences(frame, vocab)
    max_action = int(frame["action"].max())
    logger.info("%s: %d users, %d items, %d events", name, len(sequences), vocab.num_items, len(frame))
    return InteractionData(sequences=sequences, vocab=vocab, item_info=info, has_timestamps=has_timestamps,
                           num_action_types=max_action + 1 if max_action > 0 else 0, name=name)


def canonical_events(events: pd.DataFrame, name: str = "interactions") -> pd.DataFrame:
    """A loader's events as the builder's frame: str ids, int64 unix seconds, rating (0.0 where absent), action.

    The first step of `build_interactions`, before any filter; `genrec_hf.data.prepare` stages events of loaders
    that only parse in memory (MovieLens, sequence text, synthetic) through it too, so both paths see the same rows.
    """
    where: dict[str, Any] = {"label": f"{name} events", "first_line": 0, "unit": "row"}
    ids = {column: (exact_ids(events[column], column=column, **where) if events[column].dtype.kind == "f"
                    else events[column].astype(str)).to_numpy(dtype=object) for column in ("user_id", "item_id")}
    times = events["timestamp"]
    in_range = times.dtype.kind == "i" and not times.isna().any() and bool(
        MIN_UNIX_SECONDS <= times.min() and times.max() <= MAX_UNIX_SECONDS)
    if not in_range:  # floats, text or out-of-range seconds: the first bad value is reported with its row
        numbers = parse_numbers(times, column="timestamp", integer=False, **where)
        times = pd.Series(unix_seconds(numbers, times, column="timestamp", **where))
    frame = pd.DataFrame({
        "user_id": ids["user_id"],
        "item_id": ids["item_id"],
        "timestamp": times.to_numpy(dtype=np.int64),
        "rating": (events["rating"].to_numpy(dtype=np.float64) if "rating" in events.columns
                   else np.zeros(len(events))),
        "action": (events["action"].to_numpy(dtype=np.int64) if "action" in events.columns
                   else np.zeros(len(events), dtype=np.int64)),
    })
    if (frame["action"] < 0).any():
        raise ValueError(f"{name}: action ids must be >= 0 (0 = unknown); found {int(frame['action'].min())}.")
    frame["rating"] = frame["rating"].fillna(0.0)
    return frame


def _k_core(frame: pd.DataFrame, k: int, name: str) -> pd.DataFrame:
    """Repeat until stable: drop users and items with fewer than k events."""
    start = len(frame)
    while True:
        user_ok = frame.groupby("user_id")["item_id"].transform("size") >= k
        item_ok = frame.groupby("item_id")["user_id"].transform("size") >= k
        keep = user_ok & item_ok
        if keep.all():
            break
        frame = frame[keep]
    logger.info("%s: %d-core filter kept %d of %d events", name, k, len(frame), start)
    if len(frame) == 0:
        raise ValueError(f"{name}: no events survive the {k}-core filter; lower k_core.")
    return frame


def _drop_short_users(frame: pd.DataFrame, min_events: int, name: str) -> pd.DataFrame:
    counts = frame.groupby("user_id")["item_id"].transform("size")
    short = counts < min_events
    if short.any():
        num_users = frame.loc[short, "user_id"].nunique()
        logger.warning("%s: dropped %d users with fewer than %d events (%d events)", name, num_users, min_events,
                       int(short.sum()))
        frame = frame[~short]
    if len(frame) == 0:
        raise ValueError(f"{name}: no user has at least min_user_events={min_events} events.")
    return frame


def _to_sequences(frame: pd.DataFrame, vocab: ItemVocab) -> Dataset:
    """One row per user (users in `sort_raw_ids` order), events by time then file order; built in Arrow directly."""
    users = sort_raw_ids(frame["user_id"].unique())
    user_codes = pd.Categorical(frame["user_id"], categories=users).codes.astype(np.int64)
    item_index = pd.Categorical(frame["item_id"], categories=vocab.raw_ids).codes.astype(np.int64) + 1
    timestamps = frame["timestamp"].to_numpy(np.int64)
    order = np.lexsort((np.arange(len(frame)), timestamps, user_codes))
    counts = np.bincount(user_codes, minlength=len(users))
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]), pa.int32())

    def lists(values: np.ndarray, arrow_type: pa.DataType) -> pa.Array:
        return pa.ListArray.from_arrays(offsets, pa.array(values[order], arrow_type))

    table = pa.table({
        "user_id": pa.array(users, pa.string()),
        "item_ids": lists(item_index, pa.int64()),
        "timestamps": lists(timestamps, pa.int64()),
        "action_ids": lists(frame["action"].to_numpy(np.int64), pa.int64()),
        "ratings": lists(frame["rating"].to_numpy(np.float32), pa.float32()),
    })
    table = table.cast(SEQUENCE_FEATURES.arrow_schema)
    return Dataset(InMemoryTable(table), info=DatasetInfo(features=SEQUENCE_FEATURES))


def take_event_ranges(sequences: Dataset, rows: np.ndarray, starts: np.ndarray, stops: np.ndarray) -> Dataset:
    """Output row j = input row `rows[j]` with its list columns cut to events `starts[j]:stops[j]`.

    Done in Arrow with one vectorised gather per column, so splits and windows of million-event logs take
    seconds; scalar columns (`user_id`) are repeated as they are.
    """
    out = take_table_ranges(sequences.with_format("arrow")[:], rows, starts, stops).cast(
        sequences.features.arrow_schema)
    return Dataset(InMemoryTable(out), info=DatasetInfo(features=sequences.features))


def take_table_ranges(table: pa.Table, rows: np.ndarray, starts: np.ndarray, stops: np.ndarray) -> pa.Table:
    """`take_event_ranges` on an Arrow table (list columns keep their list type: a prepared shard's large lists
    stay large)."""
    rows, starts, stops = (np.asarray(a, dtype=np.int64) for a in (rows, starts, stops))
    lengths = stops - starts
    if len(rows) and (lengths < 0).any():
        raise ValueError("take_event_ranges: every stop must be >= its start.")
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    columns = {}
    for name in table.column_names:
        column = table[name].combine_chunks()
        if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
            source_offsets = column.offsets.to_numpy()
            gather = np.repeat(source_offsets[rows] + starts - offsets[:-1], lengths) + np.arange(offsets[-1])
            values = column.values.take(pa.array(gather, pa.int64()))
            array = pa.LargeListArray if pa.types.is_large_list(column.type) else pa.ListArray
            width = pa.int64() if pa.types.is_large_list(column.type) else pa.int32()
            columns[name] = array.from_arrays(pa.array(offsets, width), values)
        else:
            columns[name] = column.take(pa.array(rows, pa.int64()))
    return pa.table(columns)


def row_lengths(sequences: Dataset) -> np.ndarray:
    """(N,) number of events of each row, read from Arrow offsets."""
    column = sequences.with_format("arrow")[:]["item_ids"].combine_chunks()
    return np.diff(column.offsets.to_numpy()).astype(np.int64)


def flat_column(sequences: Dataset, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(values of every event, row index of every event) of a list column, without Python lists."""
    column = sequences.with_format("arrow")[:][name].combine_chunks()
    offsets = column.offsets.to_numpy()
    values = column.values.to_numpy(zero_copy_only=False)[offsets[0]:offsets[-1]]
    return values, np.repeat(np.arange(len(column)), np.diff(offsets))


def remap_to_vocab(data: InteractionData, vocab: ItemVocab) -> InteractionData:
    """Re-index `data` into a model's vocabulary; events of items the model does not know are dropped (and counted)."""
    if data.vocab == vocab:
        return data
    lookup = np.array([0] + [vocab.encode(raw) if raw in vocab else 0 for raw in data.vocab.raw_ids], dtype=np.int64)
    unknown = int((lookup[1:] == 0).sum())
    if unknown == data.vocab.num_items:
        raise ValueError(f"None of the {unknown} items of {data.name} is in the model's item_vocab.json: "
                         "the data and the model use different item ids.")

    def remap(row: dict[str, Any]) -> dict[str, Any]:
        items = lookup[np.asarray(row["item_ids"], dtype=np.int64)]
        keep = items > 0
        return {"item_ids": items[keep], **{c: np.asarray(row[c])[keep] for c in ("timestamps", "action_ids",
                                                                                   "ratings")}}

    sequences = data.sequences.map(remap, features=data.sequences.features, desc="mapping items to the model vocab")
    sequences = sequences.filter(lambda row: len(row["item_ids"]) >= 2)
    if unknown:
        logger.warning("%d of %d items of %s are unknown to the model: their events are dropped (%d users kept)",
                       unknown, data.vocab.num_items, data.name, len(sequences))
    return dataclasses.replace(data, sequences=sequences, vocab=vocab)
