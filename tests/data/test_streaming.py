"""Training windows streamed from Parquet shards, per rank: the same windows as the in-memory path, disjoint ranks,
seeded shuffling, exact resume."""

from __future__ import annotations

import itertools

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from genrec_hf.data import generate_synthetic, leave_one_out, sliding_windows, time_split
from genrec_hf.data.streaming import TrainingWindowStream, read_split_rows

MAX_LENGTH = 8


@pytest.fixture(scope="module")
def log():
    return generate_synthetic(num_users=90, num_items=50, num_clusters=3)


@pytest.fixture(scope="module")
def shards(log, tmp_path_factory):
    """The log's user rows in 4 Parquet shards (large lists, as a prepared folder holds them)."""
    folder = tmp_path_factory.mktemp("shards")
    table = log.sequences.with_format("arrow")[:]
    schema = pa.schema([(name, pa.large_list(table.schema.field(name).type.value_type)
                         if pa.types.is_list(table.schema.field(name).type) else table.schema.field(name).type)
                        for name in table.column_names])
    table = table.cast(schema)
    files = []
    for index in range(4):
        path = folder / f"shard-{index}.parquet"
        pq.write_table(table.take(list(range(index, table.num_rows, 4))), path)
        files.append(str(path))
    return files


def _key(row) -> tuple:
    return (str(row["user_id"]), tuple(row["item_ids"]), tuple(row["timestamps"]), tuple(row["action_ids"]))


def _epoch(stream: TrainingWindowStream, size: int) -> list:
    return list(itertools.islice(iter(stream), size))


@pytest.mark.parametrize("split", [{"kind": "leave_one_out"}, {"kind": "time"}])
def test_streamed_windows_are_the_in_memory_windows(log, shards, split):
    """Catches a streamed split or window rule drifting from `leave_one_out` / `time_split` + `sliding_windows`:
    a stream would then train on other events than the same recipe in memory."""
    if split["kind"] == "time":
        import numpy as np

        times = np.concatenate([np.asarray(t) for t in log.sequences["timestamps"]])
        split = {"kind": "time", "cut": int(np.quantile(times, 0.8))}
        train = time_split(log, cut=split["cut"])["train"]
    else:
        train = leave_one_out(log)["train"]
    expected = sorted(_key(row) for row in sliding_windows(train, MAX_LENGTH, stride=3))
    stream = TrainingWindowStream(shards, split, max_length=MAX_LENGTH, stride=3, shuffle_users=0)
    assert sorted(_key(row) for row in _epoch(stream, len(expected))) == expected


def test_ranks_read_disjoint_shards_that_cover_every_window_once(log, shards):
    """Catches every rank reading the whole log (each window trained world_size times per epoch) or a shard
    read by no rank."""
    expected = sorted(_key(row) for row in sliding_windows(leave_one_out(log)["train"], MAX_LENGTH))
    per_rank = []
    for rank in range(2):
        stream = TrainingWindowStream(shards, {"kind": "leave_one_out"}, max_length=MAX_LENGTH, seed=3,
                                      rank=rank, world_size=2)
        windows = [_key(row) for row in _epoch(stream, 2 * len(expected))]  # well past a rank's epoch: it repeats
        users = {key[0] for key in windows}
        per_rank.append((users, windows))
    assert not per_rank[0][0] & per_rank[1][0]  # no user on both ranks, in any epoch
    first_epochs = []
    for users, windows in per_rank:
        count = sum(1 for key in expected if key[0] in users)
        first_epochs += windows[:count]
        assert sorted(windows[:count]) == sorted(key for key in expected if key[0] in users)
    assert sorted(first_epochs) == expected
    with pytest.raises(ValueError, match="4 shards cannot be split evenly over 3 processes"):
        TrainingWindowStream(shards, {"kind": "leave_one_out"}, max_length=MAX_LENGTH, rank=0, world_size=3)


def test_shuffling_is_seeded_and_changes_with_the_epoch(log, shards):
    """Catches an unshuffled stream (windows in user order, batches of one user's windows), a shuffle that is not
    reproducible from the seed, and the same order every epoch."""
    size = len(sliding_windows(leave_one_out(log)["train"], MAX_LENGTH))
    make = lambda seed: TrainingWindowStream(shards, {"kind": "leave_one_out"}, max_length=MAX_LENGTH,  # noqa: E731
                                             seed=seed, shuffle_users=16)
    first = [_key(row) for row in _epoch(make(0), 2 * size)]
    again = [_key(row) for row in _epoch(make(0), 2 * size)]
    other = [_key(row) for row in _epoch(make(1), 2 * size)]
    plain = [_key(row) for row in _epoch(TrainingWindowStream(shards, {"kind": "leave_one_out"},
                                                              max_length=MAX_LENGTH, shuffle_users=0), size)]
    assert first == again and first != other
    assert first[:size] != plain and sorted(first[:size]) == sorted(plain)  # a permutation of the same windows
    assert first[:size] != first[size:] and sorted(first[:size]) == sorted(first[size:])  # each epoch its own order


def test_resume_continues_where_the_stream_stopped(log, shards):
    """Catches a resume that restarts the epoch (windows trained twice) or drops what a shuffle buffer held: the
    windows after `load_state_dict` are exactly those an uninterrupted stream reads next, across an epoch end."""
    size = len(sliding_windows(leave_one_out(log)["train"], MAX_LENGTH))
    make = lambda: TrainingWindowStream(shards, {"kind": "leave_one_out"}, max_length=MAX_LENGTH,  # noqa: E731
                                        seed=5, shuffle_users=16)
    for stop in (7, size + 5):
        reference = make()
        iterator = iter(reference)
        consumed = [_key(next(iterator)) for _ in range(stop)]
        state = reference.state_dict()
        following = [_key(next(iterator)) for _ in range(20)]
        resumed = make()
        resumed.load_state_dict(state)
        assert [_key(row) for row in itertools.islice(iter(resumed), 20)] == following
        assert len(consumed) == stop
    wrong = TrainingWindowStream(shards, {"kind": "leave_one_out"}, max_length=MAX_LENGTH, rank=1, world_size=2)
    with pytest.raises(ValueError, match="cannot resume a stream of 4 shards on rank 1 of 2"):
        wrong.load_state_dict(state)


def test_split_rows_of_a_shard_are_the_in_memory_rows(log, shards):
    """Catches streamed validation / test rows (history + target last) differing from the in-memory split."""
    splits = leave_one_out(log)
    for name in ("validation", "test"):
        got = sorted(_key(row) for batch in read_split_rows(shards, {"kind": "leave_one_out"}, name)
                     for row in batch.to_pylist())
        assert got == sorted(_key(row) for row in splits[name])
    sample = [row for batch in read_split_rows(shards, {"kind": "leave_one_out"}, "test", limit_per_shard=5)
              for row in batch.to_pylist()]
    assert len(sample) == 20  # the first 5 users of each of the 4 shards
    with pytest.raises(ValueError, match="cannot be streamed"):
        next(read_split_rows(shards, {"kind": "cold_items"}, "test"))
