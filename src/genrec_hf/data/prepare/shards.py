"""Work on one shard's staged events, the same code under every engine (in-process, DuckDB, Spark executors).

An engine only moves events: it stages them and hands each shard's events (any row order) to these functions.
Everything that decides a value — event order, dedup, the k-core replay, the short-user filter, item indices, the
Parquet bytes — happens here, in numpy/pyarrow, so every engine writes byte-identical shards.

`ShardJob` carries the global decisions the driver has made so far (it is pickled to executors).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyarrow import fs

from ..prepared import METADATA_KEY, SCHEMA_VERSION, SHARD_SCHEMA, bytes_sha256, shard_name
from ..vocab import all_integer_ids

ROW_GROUP_USERS = 4096  # users per Parquet row group: small enough for a streaming reader, large enough to compress


@dataclass
class ShardJob:
    """Settings and global decisions every shard task needs."""

    num_shards: int
    user_kind: str  # "int" | "str"
    item_kind: str
    has_timestamps: bool
    dedup: bool
    k_core: int | None
    min_user_events: int
    star_actions: bool = False  # RecBole: action = ceil(rating), decided over the whole log
    user_ids_numeric: bool = True
    action_keys: pa.Array | None = None  # action texts → `action_values`
    action_values: np.ndarray | None = None
    kcore_items: Any = None  # sorted distinct items of the log: the code space of `kcore_masks`
    kcore_masks: list[np.ndarray] = field(default_factory=list)  # items kept after k-core rounds 1..t
    vocab_items: Any = None  # raw item values in vocabulary order (index i+1)
    vocab_sha256: str = ""
    time_origin: int = 0  # time-split quantile: histogram buckets are (t - origin) >> shift
    time_shift: int = 0
    time_histogram: bool = False  # a time split at a quantile: survivors() returns a histogram of times
    time_buckets: np.ndarray | None = None  # buckets whose distinct times the write pass returns
    folder: str = ""  # where write_shard writes
    rows_cache: dict[int, Any] | None = field(default=None, repr=False)  # in-process engines: ordered rows per shard


def _array(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def _numpy(values: pa.Array) -> np.ndarray:
    return values.to_numpy(zero_copy_only=False)


def _codes(values: pa.Array, kind: str, numeric: bool | None = None) -> tuple[pa.Array | np.ndarray, np.ndarray]:
    """(distinct values in output order, code of each value). Ints ascend; strings follow `sort_raw_ids`
    (numeric when `numeric`, else by code point = UTF-8 byte order)."""
    if kind == "int":
        distinct, codes = np.unique(_numpy(values), return_inverse=True)
        return distinct, codes.astype(np.int64)
    distinct = pc.unique(values)
    if numeric:
        raw = distinct.to_pylist()
        distinct = pa.array(sorted(raw, key=_numeric_key), pa.string())
    else:
        distinct = distinct.take(pc.sort_indices(distinct))
    return distinct, _numpy(pc.index_in(values, value_set=distinct)).astype(np.int64)


def _numeric_key(raw: str) -> tuple[int, int, str]:
    """`sort_raw_ids`' numeric key; an id that is not an integer (a user the filters drop) goes last."""
    try:
        return 0, int(raw), raw
    except ValueError:
        return 1, 0, raw


def _lookup(distinct: pa.Array, value_set: pa.Array) -> np.ndarray:
    """Position of each distinct string in `value_set`; -1 when absent."""
    return _numpy(pc.fill_null(pc.index_in(distinct, value_set=value_set), -1)).astype(np.int64)


@dataclass
class _Rows:
    """A shard's events in output order (user, time, file order) with the mask of events still kept."""

    users: Any  # distinct users, output order
    user: np.ndarray  # user code per event
    items: Any  # distinct items of the shard (text ids); None for integer ids
    item: np.ndarray  # item per event: the id itself (integer ids) or its code in `items`
    time: np.ndarray
    action: np.ndarray
    rating: np.ndarray
    keep: np.ndarray
    dropped_duplicates: int = 0


def order_rows(table: pa.Table, job: ShardJob, shard: int | None = None) -> _Rows:
    """Sort a shard's staged events by (user, time, file order) and mark repeated (user, item, time) events.

    With `job.rows_cache` (the memory engine, where every shard is in RAM anyway) the result is kept per shard, so
    the k-core, survivor and write passes order each shard once.
    """
    if job.rows_cache is not None and shard in job.rows_cache:
        return job.rows_cache[shard]
    rows = _order_rows(table, job)
    if job.rows_cache is not None and shard is not None:
        job.rows_cache[shard] = rows
    return rows


def _order_rows(table: pa.Table, job: ShardJob) -> _Rows:
    seq = _numpy(_array(table["seq"]))
    if len(seq) > 1 and not (np.diff(seq) > 0).all():
        order = np.argsort(seq, kind="stable")
        table, seq = table.take(order), seq[order]
    if job.user_kind == "int" and job.has_timestamps:  # integer ids sort as themselves: no codes needed to order
        user = _numpy(_array(table["user_id"])).astype(np.int64)
        users = None
    else:
        users, user = _codes(_array(table["user_id"]), job.user_kind, job.user_ids_numeric)
    if job.item_kind == "int":
        items, item = None, _numpy(_array(table["item_id"])).astype(np.int64)
    else:
        items, item = _codes(_array(table["item_id"]), job.item_kind)
    if job.has_timestamps:
        time = _numpy(_array(table["timestamp"])).astype(np.int64)
    else:  # event order per user in the log stands in for time
        by_user = np.argsort(user, kind="stable")
        counts = np.bincount(user, minlength=len(users))
        time = np.empty(len(user), dtype=np.int64)
        time[by_user] = np.arange(len(user)) - np.repeat(np.cumsum(counts) - counts, counts)
    rating = _numpy(_array(table["rating"])).astype(np.float64)
    if job.action_keys is not None:
        action = np.asarray(job.action_values)[_lookup(_array(table["action_text"]), job.action_keys)]
    elif job.star_actions:
        action = np.ceil(rating).astype(np.int64)
    else:
        action = _numpy(_array(table["action"])).astype(np.int64)
    order = np.lexsort((time, user))  # stable: file order within equal (user, time)
    user, item, time, action, rating = (a[order] for a in (user, item, time, action, rating))
    if users is None:  # integer ids, now sorted: code = rank of the id
        starts = np.concatenate([[True], user[1:] != user[:-1]]) if len(user) else np.zeros(0, dtype=bool)
        users, user = user[starts], np.cumsum(starts) - 1
    keep = np.ones(len(user), dtype=bool)
    if job.dedup and len(user) > 1:
        same = (user[1:] == user[:-1]) & (time[1:] == time[:-1])
        if same.any():
            run = np.concatenate([[0], np.cumsum(~same)])
            in_run = np.zeros(len(user), dtype=bool)
            in_run[1:] |= same
            in_run[:-1] |= same
            rows = np.flatnonzero(in_run)
            rows = rows[np.lexsort((rows, item[rows], run[rows]))]
            repeat = (run[rows[1:]] == run[rows[:-1]]) & (item[rows[1:]] == item[rows[:-1]])
            keep[rows[1:][repeat]] = False
    return _Rows(users=users, user=user, items=items, item=item, time=time, action=action, rating=rating, keep=keep,
                 dropped_duplicates=int((~keep).sum()))


def _item_positions(rows: _Rows, job: ShardJob, value_set: Any, keep: np.ndarray | None = None) -> np.ndarray:
    """Position of each (kept) event's item in `value_set` (sorted ints, or strings in any order)."""
    item = rows.item if keep is None else rows.item[keep]
    if job.item_kind == "int":
        values = np.asarray(value_set)
        if len(values) and values[-1] - values[0] < 8 * len(values) + (1 << 20):  # dense ids: a direct table
            table = np.zeros(int(values[-1] - values[0]) + 1, dtype=np.int64)
            table[values - values[0]] = np.arange(len(values))
            return table[item - values[0]]
        return np.searchsorted(values, item)
    return _lookup(rows.items, value_set)[item]


def _kept_items(rows: _Rows, job: ShardJob, keep: np.ndarray) -> Any:
    """Distinct items of the kept events (ids for integer ids, sorted; else their text)."""
    item = rows.item[keep]
    if job.item_kind == "int" and len(item):
        low, high = int(item.min()), int(item.max())
        if high - low < 8 * len(item) + (1 << 20):  # dense ids: presence flags instead of a sort
            seen = np.zeros(high - low + 1, dtype=bool)
            seen[item - low] = True
            return np.flatnonzero(seen) + low
    used = np.unique(item)
    return used if job.item_kind == "int" else rows.items.take(pa.array(used))


def _user_counts(rows: _Rows, keep: np.ndarray) -> np.ndarray:
    return np.bincount(rows.user[keep], minlength=len(rows.users))


def replay_kcore(rows: _Rows, job: ShardJob) -> np.ndarray:
    """The k-core rounds decided so far, applied to this shard: round s keeps users with >= k events in the
    events kept after round s-1 and items of `kcore_masks[s]` (the items with >= k events over all shards)."""
    keep = rows.keep.copy()
    if not job.k_core or not job.kcore_masks:
        return keep
    codes = _item_positions(rows, job, job.kcore_items)
    for items_ok in job.kcore_masks:
        counts = np.bincount(rows.user[keep], minlength=len(rows.users))
        keep &= (counts >= job.k_core)[rows.user] & items_ok[codes]
    return keep


def final_keep(rows: _Rows, job: ShardJob) -> np.ndarray:
    """Events kept after dedup, the k-core rounds and the short-user filter."""
    keep = replay_kcore(rows, job)
    counts = np.bincount(rows.user[keep], minlength=len(rows.users))
    return keep & (counts >= job.min_user_events)[rows.user]


# --- per-shard tasks: each takes the shard's staged events and returns a small picklable result ---------------


def summarize(table: pa.Table, job: ShardJob, shard: int) -> dict[str, Any]:
    """What the driver needs before ordering: counts, rating range, action texts, id kinds, time range."""
    out: dict[str, Any] = {"events": table.num_rows}
    if table.num_rows == 0:
        return out
    rating = _numpy(_array(table["rating"]))
    out["rating_min"], out["rating_max"] = float(rating.min()), float(rating.max())
    if "action_text" in table.column_names:
        grouped = table.select(["action_text", "seq"]).group_by("action_text").aggregate([("seq", "min")])
        out["action_texts"] = dict(zip(grouped["action_text"].to_pylist(), grouped["seq_min"].to_pylist()))
    if job.user_kind == "str":  # provisional (all staged users): order_rows needs a mode before filtering
        out["user_ids_numeric"] = _all_integers(_array(table["user_id"]))
    if job.has_timestamps:
        time = _numpy(_array(table["timestamp"]))
        out["time_min"], out["time_max"] = int(time.min()), int(time.max())
    if job.k_core:
        out["items"] = pc.unique(_array(table["item_id"]))
    return out


def kcore_counts(table: pa.Table, job: ShardJob, shard: int) -> dict[str, Any]:
    """Item counts (over `kcore_items` codes) and whether every user has >= k events, after the rounds so far."""
    rows = order_rows(table, job, shard)
    keep = replay_kcore(rows, job)
    codes = _item_positions(rows, job, job.kcore_items, keep)
    item_codes, item_counts = np.unique(codes, return_counts=True)
    user_counts = _user_counts(rows, keep)
    present = user_counts > 0
    return {"item_codes": item_codes, "item_counts": item_counts,
            "users_ok": bool((user_counts[present] >= job.k_core).all()), "events": int(keep.sum())}


def survivors(table: pa.Table, job: ShardJob, shard: int) -> dict[str, Any]:
    """Distinct items, counts and a time histogram of the events that end up in the shard."""
    rows = order_rows(table, job, shard)
    kcore = replay_kcore(rows, job)
    keep = final_keep(rows, job)
    counts = _user_counts(rows, keep)
    users = np.count_nonzero(counts)
    out = {"items": _kept_items(rows, job, keep), "events": int(keep.sum()), "users": users,
           "duplicates": rows.dropped_duplicates, "kcore_dropped": int(rows.keep.sum() - kcore.sum()),
           "short_dropped": int(kcore.sum() - keep.sum()),
           "short_users": int(np.count_nonzero(_user_counts(rows, kcore)) - users)}
    if job.user_kind == "str":  # the id order is decided over the users that remain, as `sort_raw_ids` does
        out["user_ids_numeric"] = _all_integers(rows.users.take(pa.array(np.flatnonzero(counts))))
    if job.time_histogram and keep.any():
        buckets, counts = np.unique((rows.time[keep] - job.time_origin) >> job.time_shift, return_counts=True)
        out["time_buckets"], out["time_counts"] = buckets, counts
    return out


def shard_table(rows: _Rows, keep: np.ndarray, job: ShardJob) -> pa.Table:
    """The shard's rows (`SHARD_SCHEMA`): one per user, item indices of `job.vocab_items`."""
    index = _item_positions(rows, job, job.vocab_items, keep) + 1
    counts = _user_counts(rows, keep)
    present = np.flatnonzero(counts)
    counts = counts[present]
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]), pa.int64())
    users = rows.users[present] if job.user_kind == "int" else rows.users.take(pa.array(present))
    user_ids = pc.cast(pa.array(users, pa.int64()), pa.string()) if job.user_kind == "int" else users

    def lists(values: np.ndarray, arrow_type: pa.DataType) -> pa.Array:
        return pa.LargeListArray.from_arrays(offsets, pa.array(values, arrow_type))

    metadata = {METADATA_KEY: json.dumps({"schema_version": SCHEMA_VERSION, "vocab_sha256": job.vocab_sha256,
                                          "num_shards": job.num_shards}, sort_keys=True).encode()}
    return pa.table([user_ids, lists(index, pa.int64()), lists(rows.time[keep], pa.int64()),
                     lists(rows.action[keep], pa.int64()), lists(rows.rating[keep].astype(np.float32), pa.float32())],
                    schema=SHARD_SCHEMA.with_metadata(metadata))


def parquet_bytes(table: pa.Table) -> bytes:
    """The one Parquet writer of shards: fixed options, so equal tables give equal bytes."""
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd", use_dictionary=False, row_group_size=ROW_GROUP_USERS,
                   write_statistics=True, store_schema=True)
    return sink.getvalue()


def write_shard(table: pa.Table, job: ShardJob, shard: int) -> dict[str, Any]:
    """Order, filter and index one shard's events and write its Parquet file into `job.folder` (a local path or a
    pyarrow filesystem URI); returns its manifest entry (+ max action and the distinct times the quantile needs)."""
    rows = order_rows(table, job, shard)
    if job.rows_cache is not None:
        job.rows_cache.pop(shard, None)  # the last pass: free the shard's rows as soon as it is written
    keep = final_keep(rows, job)
    data = parquet_bytes(shard_table(rows, keep, job))
    name = shard_name(shard, job.num_shards)
    write_bytes(job.folder, name, data)
    entry: dict[str, Any] = {"file": name, "num_users": int(np.count_nonzero(_user_counts(rows, keep))),
                             "num_events": int(keep.sum()), "bytes": len(data), "sha256": bytes_sha256(data),
                             "max_action": int(rows.action[keep].max()) if keep.any() else 0}
    if job.time_buckets is not None and keep.any():
        time = rows.time[keep]
        inside = np.isin((time - job.time_origin) >> job.time_shift, job.time_buckets)
        entry["times"], entry["time_counts"] = np.unique(time[inside], return_counts=True)
    return entry


def write_bytes(folder: str, name: str, data: bytes) -> None:
    """Write `data` to folder/name; folder is a local path or a URI pyarrow.fs understands (s3://, gs://, hdfs://)."""
    filesystem, root = fs.FileSystem.from_uri(folder) if "://" in folder else (fs.LocalFileSystem(), folder)
    with filesystem.open_output_stream(f"{root.rstrip('/')}/{name}") as stream:
        stream.write(data)


def _all_integers(values: pa.Array) -> bool:
    """`all_integer_ids` of a string column: plain digit strings pass in Arrow; the rest go through Python's int()."""
    distinct = pc.unique(values)
    plain = _numpy(pc.match_substring_regex(distinct, r"^[+-]?[0-9]+$"))
    return all_integer_ids(distinct.filter(pa.array(~plain)).to_pylist())
