"""`genrec-hf prepare`: a prepared folder reads back as the in-memory `InteractionData` of the raw log, and the
memory and DuckDB engines write byte-identical folders (the Spark engine: test_prepare_spark.py)."""

from __future__ import annotations

import filecmp
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from genrec_hf.data import InteractionData, load_interactions
from genrec_hf.data.prepare import choose_cold_items, generate_event_log, prepare_events
from genrec_hf.data.prepare import pipeline, sources
from genrec_hf.data.prepared import MANIFEST_FILE, RUN_FILE, open_prepared
from genrec_hf.data.synthetic import synthetic_events

from tests.helpers import require_shared_data

ENGINES = ["memory", pytest.param("duckdb", marks=pytest.mark.skipif(
    not __import__("importlib").util.find_spec("duckdb"), reason="duckdb is not installed"))]


def assert_same_data(expected: InteractionData, got: InteractionData) -> None:
    """Same users in the same order, same per-user events (items, times, actions, ratings), same vocabulary."""
    assert got.vocab == expected.vocab
    assert got.sequences.features == expected.sequences.features
    assert got.sequences.data.table.equals(expected.sequences.data.table)
    assert (got.name, got.has_timestamps, got.num_action_types) == \
        (expected.name, expected.has_timestamps, expected.num_action_types)
    assert got.item_info == json.loads(json.dumps(expected.item_info))


def same_folders(left, right) -> list[str]:
    """Files that differ between two prepared folders (the engine's run record aside)."""
    names = sorted(p.name for p in left.iterdir())
    assert names == sorted(p.name for p in right.iterdir())
    return [n for n in names if n != RUN_FILE and not filecmp.cmp(left / n, right / n, shallow=False)]


def messy_events(seed: int = 0) -> pd.DataFrame:
    """Synthetic events with what real logs have: repeated events, ties in time, ids in numeric and text form."""
    events = synthetic_events(num_users=120, num_items=60, seed=seed).events
    rng = np.random.default_rng(seed)
    repeats = events.sample(40, random_state=seed)  # exact repeats: dropped by dedup, kept without it
    ties = events.sample(60, random_state=seed + 1).copy()
    ties["item_id"] = rng.integers(1, 60, len(ties)).astype(str)  # same user and time, another item: a tie
    events = pd.concat([events, repeats, ties]).sample(frac=1.0, random_state=seed).reset_index(drop=True)
    events.loc[events.index % 17 == 0, "user_id"] = "0" + events["user_id"]  # '07' and '7': two users
    return events


@pytest.mark.parametrize("engine", ENGINES)
def test_ml100k_prepared_equals_in_memory(tmp_path, engine):
    source = require_shared_data("ml-100k")
    prepared = prepare_events(source, tmp_path / "out", engine=engine, num_shards=3)
    assert_same_data(load_interactions(source), load_interactions(tmp_path / "out"))
    assert prepared.manifest["num_events"] == 100_000 and prepared.num_shards == 3


@pytest.mark.parametrize("engine", ENGINES)
def test_ml100k_kcore_and_time_quantile(tmp_path, engine):
    source = require_shared_data("ml-100k")
    prepared = prepare_events(source, tmp_path / "out", engine=engine, num_shards=2, k_core=10,
                              split={"kind": "time", "quantile": 0.9})
    expected = load_interactions(source, k_core=10)
    assert_same_data(expected, load_interactions(tmp_path / "out", k_core=10))
    times = np.concatenate([np.asarray(t) for t in expected.sequences["timestamps"]])
    assert prepared.split["cut"] == int(np.quantile(times, 0.9))


def test_synthetic_source_equals_in_memory(tmp_path):
    prepare_events("synthetic:num_users=200,seed=4", tmp_path / "out", num_shards=2, min_user_events=3, k_core=2)
    expected = load_interactions("synthetic:num_users=200,seed=4", min_user_events=3, k_core=2)
    assert_same_data(expected, load_interactions(tmp_path / "out", min_user_events=3, k_core=2))


@pytest.mark.parametrize("dedup", [True, False])
@pytest.mark.parametrize("suffix", ["csv", "parquet"])
def test_messy_table_equals_in_memory_and_engines_agree(tmp_path, suffix, dedup):
    path = tmp_path / f"events.{suffix}"
    events = messy_events()
    events.to_csv(path, index=False) if suffix == "csv" else events.to_parquet(path)
    folders = {}
    for engine in ("memory", "duckdb"):
        if engine == "duckdb" and not __import__("importlib").util.find_spec("duckdb"):
            continue
        folders[engine] = tmp_path / engine
        prepare_events(path, folders[engine], engine=engine, num_shards=3, dedup=dedup, min_user_events=3)
    expected = load_interactions(path, dedup=dedup, min_user_events=3)
    assert_same_data(expected, load_interactions(folders["memory"], dedup=dedup, min_user_events=3))
    if "duckdb" in folders:
        assert same_folders(folders["memory"], folders["duckdb"]) == []


def test_folder_of_shards_is_the_concatenated_log(tmp_path):
    """Several files are one log in file-name order: ties in time keep that order across files."""
    events = messy_events(1)
    whole = tmp_path / "whole.parquet"
    events.to_parquet(whole)
    (tmp_path / "parts").mkdir()
    for i, part in enumerate(np.array_split(np.arange(len(events)), 3)):
        events.iloc[part].to_parquet(tmp_path / "parts" / f"part-{i}.parquet")
    (tmp_path / "parts" / "_SUCCESS").write_text("")  # Spark's marker files are not events
    prepare_events(tmp_path / "parts", tmp_path / "from_folder", num_shards=2)
    prepare_events(str(tmp_path / "parts" / "part-*.parquet"), tmp_path / "from_glob", num_shards=2)
    prepare_events(f"file://{tmp_path}/parts/part-*.parquet", tmp_path / "from_uri", num_shards=2)  # as s3://...
    expected = load_interactions(whole)
    for name in ("from_folder", "from_glob", "from_uri"):
        got = load_interactions(tmp_path / name)
        assert got.sequences.data.table.equals(expected.sequences.data.table) and got.vocab == expected.vocab


def test_no_timestamps_and_action_names(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("user,item,event_type\n"
                    "b,x,view\na,y,buy\nb,y, view\na,x,\nb,z,cart\na,y,buy\nc,x,view\n")
    prepared = prepare_events(path, tmp_path / "out", num_shards=2)
    expected = load_interactions(path)
    assert_same_data(expected, load_interactions(tmp_path / "out"))
    assert not prepared.manifest["has_timestamps"] and prepared.manifest["num_action_types"] == 4


def test_user_order_is_decided_over_the_users_that_remain(tmp_path):
    """'abc' has one event and is dropped: the rest are integers, so users sort numerically (9 before 10)."""
    path = tmp_path / "events.csv"
    path.write_text("user_id,item_id,timestamp\n10,1,5\n10,2,6\n9,1,7\n9,3,8\nabc,1,9\n100,2,1\n100,3,2\n")
    prepare_events(path, tmp_path / "out", num_shards=1)
    expected = load_interactions(path)
    assert expected.sequences["user_id"] == ["9", "10", "100"]
    assert_same_data(expected, load_interactions(tmp_path / "out"))


def test_batches_report_their_own_lines(tmp_path, monkeypatch):
    """A bad value in a later read batch is reported at its line in the file, not in the batch."""
    monkeypatch.setattr(sources, "BATCH_ROWS", 4)
    rows = [f"{u},{i},{1_600_000_000 + i}" for u in range(3) for i in range(5)]
    rows[9] = "1,3,yesterday"
    path = tmp_path / "events.csv"
    path.write_text("user_id,item_id,timestamp\n" + "\n".join(rows) + "\n")
    table = pa.table({"user_id": np.arange(10), "item_id": [1.0] * 9 + [2.5], "timestamp": np.arange(10)})
    pq.write_table(table, tmp_path / "events.parquet", row_group_size=4)
    for source, where in ((path, "line 11"), (tmp_path / "events.parquet", "row 9")):
        with pytest.raises(ValueError) as error:
            prepare_events(source, tmp_path / "out", engine="memory")
        assert str(source) in str(error.value) and where in str(error.value), error.value


def test_user_hash_is_fnv1a_of_the_id_text():
    """The shard of a user is fixed by its id alone (any engine, any reader): 63-bit FNV-1a of the UTF-8 text."""
    def fnv1a(text: str) -> int:
        value = 0xCBF29CE484222325
        for byte in text.encode("utf-8"):
            value = ((value ^ byte) * 0x100000001B3) % 2**64
        return value & (2**63 - 1)

    text = ["", "a", "ab", "é", "12345", "0", "u-77", "日本", "abc", "x" * 40]
    assert sources.user_hash(pa.array(text)).tolist() == [fnv1a(t) for t in text]
    numbers = np.array([7, -3, 10**12, 42, 7, 0, -(2**63), 2**63 - 1])
    assert sources.user_hash(pa.array(numbers)).tolist() == [fnv1a(str(n)) for n in numbers]


def test_time_quantile_reads_numpy_order_statistics():
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 10, 1001, 54_321):
        values = np.sort(rng.integers(0, 50, n))  # many ties
        for q in (0.001, 0.1, 0.25, 0.5, 0.9, 0.9999, 1 / 3):
            gamma, positions = pipeline.quantile_positions(n, q)
            got = pipeline.numpy_quantile(values[positions].tolist(), gamma)
            assert got == np.quantile(values, q), (n, q)


def test_cold_items_are_hold_out_items(tmp_path):
    from genrec_hf.data.cold_splits import hold_out_items

    prepared = prepare_events("synthetic:num_users=150,seed=2", tmp_path / "out",
                              split={"kind": "cold_items", "fraction": 0.2, "seed": 5})
    data = load_interactions(tmp_path / "out")
    assert prepared.cold_items() == hold_out_items(data, 0.2, 5).cold_raw_ids
    assert choose_cold_items(data.vocab.raw_ids, 0.2, 5) == prepared.cold_items()


def test_generated_log_is_exact_and_reproducible(tmp_path):
    first = generate_event_log(tmp_path / "a", 2_500, 300, events_per_file=1_000, seed=3)
    again = generate_event_log(tmp_path / "b", 2_500, 300, events_per_file=1_000, seed=3)
    assert [p.name for p in first] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    tables = [pq.read_table(p) for p in first]
    assert [t.num_rows for t in tables] == [1000, 1000, 500]
    assert all(pq.read_table(a).equals(pq.read_table(b)) for a, b in zip(first, again))
    users = [set(t["user_id"].to_pylist()) for t in tables]
    assert not (users[0] & users[1]) and not (users[1] & users[2])  # a file holds whole users
    assert all((np.diff(t["timestamp"].to_numpy()) >= 0).all() for t in tables)  # written in time order
    items = pa.concat_tables(tables)["item_id"].to_numpy()
    assert items.min() >= 1 and items.max() <= 300
    prepared = prepare_events(tmp_path / "a", tmp_path / "prepared", num_shards=2)
    assert prepared.manifest["num_events"] <= 2_500


def test_train_reads_a_prepared_folder_through_its_manifest(tmp_path):
    prepare_events("synthetic:num_users=100,seed=1", tmp_path / "out")
    manifest = json.loads((tmp_path / "out" / MANIFEST_FILE).read_text())
    data = open_prepared(tmp_path / "out").to_interactions()
    assert manifest["num_users"] == data.num_users and manifest["num_events"] == data.num_events
    assert manifest["vocab"]["num_items"] == data.num_items
