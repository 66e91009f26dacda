"""Every kind of bad input fails with a ValueError / FileNotFoundError that names file, line, column and value."""

from __future__ import annotations

import logging
import re

import pandas as pd
import pytest

from genrec_hf.data import (ItemVocab, NextItemCollator, build_interactions, generate_synthetic, leave_one_out,
                            load_interactions, sliding_windows, time_split)


def write(path, text: str):
    path.write_text(text)
    return path


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nope.csv"))):
        load_interactions(tmp_path / "nope.csv")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_interactions(tmp_path / "no_folder")
    empty_folder = tmp_path / "empty"
    empty_folder.mkdir()
    with pytest.raises(ValueError, match="Cannot tell the format of folder"):
        load_interactions(empty_folder)


def test_unknown_format(tmp_path):
    path = write(tmp_path / "events.csv", "user_id,item_id\n1,2\n")
    with pytest.raises(ValueError, match=r"Unknown format 'excel'; expected one of \['synthetic', 'recbole'"):
        load_interactions(path, format="excel")
    with pytest.raises(ValueError, match="Cannot tell the format of .*events.xlsx"):
        load_interactions(write(tmp_path / "events.xlsx", "x"))


def test_header_without_required_columns(tmp_path):
    path = write(tmp_path / "events.csv", "customer,when\n1,2\n")
    with pytest.raises(ValueError, match=r"missing required column\(s\) \['user_id', 'item_id'\].*"
                                         r"the file has columns \['customer', 'when'\]"):
        load_interactions(path)
    with pytest.raises(ValueError, match=r"column_map names column\(s\) \['sku'\] .*the file has columns"):
        load_interactions(path, column_map={"user_id": "customer", "item_id": "sku"})
    with pytest.raises(ValueError, match=r"column_map keys \['product'\] are not canonical"):
        load_interactions(path, column_map={"product": "customer"})
    inter = write(tmp_path / "x.inter", "user_id:token\trating:float\n1\t3\n")
    with pytest.raises(ValueError, match=r"x.inter: missing required column\(s\) \['item_id'\]; the file has "
                                         r"columns \['user_id', 'rating'\]"):
        load_interactions(inter)
    with pytest.raises(ValueError, match=r"header field 'user_id' has no type"):
        load_interactions(write(tmp_path / "y.inter", "user_id\titem_id\n1\t2\n"))
    ml = tmp_path / "ml"
    ml.mkdir()
    write(ml / "ratings.csv", "userId,movieId,score,timestamp\n1,2,3,4\n")
    with pytest.raises(ValueError, match=r"ratings.csv: missing required column\(s\) \['rating'\]"):
        load_interactions(ml, format="movielens")


def test_non_numeric_ids_and_timestamps_name_the_line(tmp_path):
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    write(folder / "u.data", "1\t10\t5\t100\nabc\t20\t3\t200\n")
    with pytest.raises(ValueError, match=r"u.data, line 2: column 'user id' has 'abc'; expected an integer"):
        load_interactions(folder)
    write(folder / "u.data", "1\t10\t5\t100\n1\t20\t3\tlater\n")
    with pytest.raises(ValueError, match=r"u.data, line 2: column 'timestamp' has 'later'; expected an integer"):
        load_interactions(folder)
    write(folder / "u.data", "1\t10\t5\t100\n1\t20\n")
    with pytest.raises(ValueError, match=r"u.data, line 2: column 'rating' has an empty value; expected a number"):
        load_interactions(folder)
    dat = tmp_path / "ml-1m"
    dat.mkdir()
    write(dat / "ratings.dat", "1::10::5::100\n1::2.5::3::200\n")
    with pytest.raises(ValueError, match=r"ratings.dat, line 2: column 'item id' has '2.5'; expected an integer"):
        load_interactions(dat)
    csv = write(tmp_path / "log.csv", "u,i,t\n1,2,2024-01-01\n1,3,yesterday\n")
    with pytest.raises(ValueError, match=r"log.csv, line 3: column 't' has 'yesterday'; expected unix seconds or a "
                                         r"date/time"):
        load_interactions(csv, column_map={"user_id": "u", "item_id": "i", "timestamp": "t"})
    inter = write(tmp_path / "z.inter", "user_id:token\titem_id:token\trating:float\n1\t2\t4\n1\t3\tgood\n")
    with pytest.raises(ValueError, match=r"z.inter, line 3: column 'rating' has 'good'; expected a number"):
        load_interactions(inter)


def test_empty_files(tmp_path):
    with pytest.raises(ValueError, match=r"events.csv is empty"):
        load_interactions(write(tmp_path / "events.csv", ""))
    with pytest.raises(ValueError, match=r"header \(user_id, item_id\) but no events"):
        load_interactions(write(tmp_path / "header.csv", "user_id,item_id\n"))
    with pytest.raises(ValueError, match=r"seq.txt is empty"):
        load_interactions(write(tmp_path / "seq.txt", "\n\n"))
    with pytest.raises(ValueError, match=r"e.inter has a header .* but no events"):
        load_interactions(write(tmp_path / "e.inter", "user_id:token\titem_id:token\n"))
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    write(folder / "u.data", "")
    with pytest.raises(ValueError, match=r"u.data is empty"):
        load_interactions(folder)


def test_users_with_one_event_are_dropped_and_counted(tmp_path, caplog):
    path = write(tmp_path / "seq.txt", "u1 a b c\nu2 a\nu3 b\nu4 c a\nu5\n")
    with caplog.at_level(logging.WARNING, logger="genrec_hf"):
        data = load_interactions(path)
    assert data.sequences["user_id"] == ["u1", "u4"]
    assert "dropped 2 users with fewer than 2 events" in caplog.text
    assert "1 users have no items" in caplog.text
    with pytest.raises(ValueError, match="no user has at least min_user_events=5 events"):
        load_interactions(path, min_user_events=5)
    with pytest.raises(ValueError, match="no events survive the 9-core filter"):
        load_interactions(path, k_core=9)


def test_sequence_text_repeated_user(tmp_path):
    with pytest.raises(ValueError, match=r"seq.txt, line 3: user 'u1' already has a sequence on line 1"):
        load_interactions(write(tmp_path / "seq.txt", "u1 a b\nu2 a b\nu1 c d\n"))


def test_bad_synthetic_options():
    with pytest.raises(ValueError, match=r"Bad synthetic option 'users=5'.*KEY one of \['num_users'"):
        load_interactions("synthetic:users=5")
    with pytest.raises(ValueError, match=r"'many' is not a number"):
        load_interactions("synthetic:num_users=many")
    with pytest.raises(ValueError, match="sum to at most 1"):
        generate_synthetic(num_users=5, sequential_strength=0.9, exploration=0.3)


def test_vocab_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no item_vocab.json in .*; was this model trained with genrec_hf\?"):
        ItemVocab.load(tmp_path)
    vocab = ItemVocab.from_raw_ids(["b", "a"])
    with pytest.raises(ValueError, match=r"Unknown item id 'zzz'"):
        vocab.encode("zzz")
    with pytest.raises(ValueError, match=r"Item index 0 is outside 1..2 \(0 is padding\)"):
        vocab.decode(0)
    write(tmp_path / "item_vocab.json", "{not json")
    with pytest.raises(ValueError, match="is not a genrec_hf item vocabulary"):
        ItemVocab.load(tmp_path)


def test_split_and_collator_misuse(tmp_path):
    data = load_interactions(write(tmp_path / "seq.txt", "u1 a b c\nu2 a b\n"))
    with pytest.raises(ValueError, match="has no timestamps"):
        time_split(data, quantile=0.5)
    synthetic = generate_synthetic(num_users=20, num_items=30, num_clusters=3)
    with pytest.raises(ValueError, match="exactly one of cut= .* or quantile="):
        time_split(synthetic)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        time_split(synthetic, quantile=1.5)
    with pytest.raises(ValueError, match=r"stride=9; expected 1..max_length=4"):
        sliding_windows(data.sequences, 4, stride=9)
    with pytest.raises(ValueError, match=r"Eval row 0 \(user 'x'\) has 1 event\(s\)"):
        NextItemCollator(4, mode="eval")([{"user_id": "x", "item_ids": [3]}])
    with pytest.raises(ValueError, match="mode='test'"):
        NextItemCollator(4, mode="test")


@pytest.mark.parametrize("value", ["inf", "-inf", "1e30", "253402300800"])
def test_infinite_or_huge_timestamp_in_csv_is_refused(tmp_path, value):
    """Bug: `inf` / `1e30` timestamps became INT64_MIN (numpy cast warning only); now an error names line and value."""
    path = write(tmp_path / "log.csv", f"user_id,item_id,timestamp\n1,10,100\n1,11,{value}\n1,12,300\n")
    with pytest.raises(ValueError, match=rf"log.csv, line 3: column 'timestamp' has '{re.escape(value)}'; expected "
                                         r"unix seconds of a date between years 1 and 9999"):
        load_interactions(path)


def test_millisecond_timestamps_get_a_hint(tmp_path):
    """Bug: millisecond times (year ~55000 as seconds) passed silently; the error now suggests converting them."""
    path = write(tmp_path / "log.csv", "user_id,item_id,timestamp\n1,10,1700000000000\n1,11,1700000001000\n")
    with pytest.raises(ValueError, match=r"line 2: .*'1700000000000'.*milliseconds or microseconds\?"):
        load_interactions(path)


def test_infinite_or_huge_timestamp_in_parquet_is_refused(tmp_path):
    """Bug: float Parquet timestamps inf / 1e30 became INT64_MIN; now the row and the value are named."""
    path = tmp_path / "log.parquet"
    frame = pd.DataFrame({"user_id": [1, 1, 1], "item_id": [10, 11, 12], "timestamp": [1.0, 2.0, float("inf")]})
    frame.to_parquet(path)
    with pytest.raises(ValueError, match=r"log.parquet, row 2: column 'timestamp' has 'inf'; expected unix seconds"):
        load_interactions(path)
    pd.DataFrame({"user_id": [1, 1], "item_id": [10, 11], "timestamp": [1e30, 2.0]}).to_parquet(path)
    with pytest.raises(ValueError, match=r"log.parquet, row 0: column 'timestamp' has '1e\+30'; expected unix"):
        load_interactions(path)


def test_infinite_or_huge_timestamp_in_recbole_and_movielens_is_refused(tmp_path):
    """Bug: RecBole `timestamp:float` 1e30 and u.data 1e30 overflowed to INT64_MIN; now errors name the line."""
    inter = write(tmp_path / "x.inter", "user_id:token\titem_id:token\ttimestamp:float\n1\t2\t5\n1\t3\t1e30\n")
    with pytest.raises(ValueError, match=r"x.inter, line 3: column 'timestamp' has '1e30'; expected unix seconds"):
        load_interactions(inter)
    write(inter, "user_id:token\titem_id:token\ttimestamp:float\n1\t2\t5\n1\t3\tinf\n")
    with pytest.raises(ValueError, match=r"x.inter, line 3: column 'timestamp' has 'inf'; expected a number"):
        load_interactions(inter)
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    write(folder / "u.data", "1\t10\t5\t100\n1\t20\t3\t9000000000000\n")
    with pytest.raises(ValueError, match=r"u.data, line 2: column 'timestamp' has '9000000000000'; expected unix"):
        load_interactions(folder)
    write(folder / "u.data", "1\t10\t5\t100\n1\t20\t3\t1e30\n")
    with pytest.raises(ValueError, match=r"u.data, line 2: column 'timestamp' has '1e\+30'; expected an integer"):
        load_interactions(folder)


def test_timestamp_error_names_the_bad_line_not_line_2(tmp_path):
    """Bug: a bad timestamp on line 10 was reported as line 2 with that line's valid value ('100')."""
    rows = "".join(f"1,{i},{100 + i}\n" for i in range(8))  # lines 2..9
    path = write(tmp_path / "log.csv", f"user_id,item_id,timestamp\n{rows}1,9,abc\n")
    with pytest.raises(ValueError, match=r"log.csv, line 10: column 'timestamp' has 'abc'; expected unix seconds "
                                         r"\(a number, as on line 2: '100'\)"):
        load_interactions(path)
    dates = write(tmp_path / "dates.csv", "user_id,item_id,timestamp\n1,1,2024-01-01\n1,2,2024-01-02\n1,3,1700000000\n")
    with pytest.raises(ValueError, match=r"dates.csv, line 4: column 'timestamp' has '1700000000'; expected a "
                                         r"date/time as on line 2 \('2024-01-01'\), not unix seconds"):
        load_interactions(dates)
    empty = write(tmp_path / "empty.csv", "user_id,item_id,timestamp\n1,1,100\n1,2,\n")
    with pytest.raises(ValueError, match=r"empty.csv, line 3: column 'timestamp' is empty; expected a timestamp"):
        load_interactions(empty)


def test_float_ids_are_never_truncated_or_merged(tmp_path):
    """Bug: float ids could be truncated or merged ('12.7' → 12, '12.0' = '12'). CSV ids stay exactly as written;
    MovieLens ids (integers by definition) and float Parquet columns refuse non-integers."""
    csv = write(tmp_path / "log.csv", "user_id,item_id,timestamp\n1,12.7,100\n1,12,101\n1,12.0,102\n")
    assert sorted(load_interactions(csv).vocab.raw_ids) == ["12", "12.0", "12.7"]
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    write(folder / "u.data", "1\t12\t5\t100\n1\t12.7\t3\t200\n")
    with pytest.raises(ValueError, match=r"u.data, line 2: column 'item id' has '12.7'; expected an integer id"):
        load_interactions(folder)
    write(folder / "u.data", "1\t12\t5\t100\n1\t13\t3\t200\n2\t12.0\t3\t300\n")
    with pytest.raises(ValueError, match=r"u.data, line 3: column 'item id' has '12.0'; expected an integer id"):
        load_interactions(folder)
    parquet = tmp_path / "log.parquet"
    pd.DataFrame({"user_id": [1, 1, 1], "item_id": [12.0, 13.0, 12.7], "timestamp": [1, 2, 3]}).to_parquet(parquet)
    with pytest.raises(ValueError, match=r"log.parquet, row 2: column 'item_id' has '12.7' in a float column; "
                                         r"expected integer or string ids"):
        load_interactions(parquet)
    frame = pd.DataFrame({"user_id": [1.0, 1.0, 1.0], "item_id": [12.0, 13.0, 14.0], "timestamp": [1, 2, 3]})
    frame.to_parquet(parquet)
    data = load_interactions(parquet)  # integral floats (a nullable int column saved by pandas) print as integers
    assert data.vocab.raw_ids == ["12", "13", "14"] and data.sequences["user_id"] == ["1"]


def test_leave_one_out_with_short_users_says_what_it_needs():
    """Bug: users with only 2–3 events gave an empty train split and `num_samples=0` deep in training."""
    events = pd.DataFrame([(u, str(i), i) for u, n in (("a", 2), ("b", 3), ("c", 3)) for i in range(n)],
                          columns=["user_id", "item_id", "timestamp"])
    data = build_interactions(events, name="short")
    with pytest.raises(ValueError, match=r"leave-one-out of short: the train split is empty\. Leave-one-out needs "
                                         r"users with >= 4 events for train .* no user has >= 4: of 3 users, 1 user "
                                         r"has 2 events, 2 users have 3 events"):
        leave_one_out(data)


def test_time_split_with_an_empty_side_names_the_cut():
    """Bug: a time split with no test (or train) users was only found after training; now it fails up front."""
    events = pd.DataFrame([("a", "1", 10), ("a", "2", 20), ("a", "3", 30), ("b", "1", 10), ("b", "2", 20)],
                          columns=["user_id", "item_id", "timestamp"])
    data = build_interactions(events, name="toy")
    with pytest.raises(ValueError, match=r"time split of toy at cut 100 \(given cut; event times span 10\.\.30\): "
                                         r"the test split is empty\..* of 2 users, 2 have >= 2 events before the cut "
                                         r"and 0 have events on both sides \(5 events before, 0 at/after\)"):
        time_split(data, cut=100)
    with pytest.raises(ValueError, match=r"at cut 10 \(given cut.*the train and validation splits are empty"):
        time_split(data, cut=10)
    with pytest.raises(ValueError, match=r"\(quantile 0\.1 of event times;"):
        time_split(data, quantile=0.1)


def test_leave_one_out_required_splits():
    """Evaluating only the test split of short histories still works when the caller asks for it alone."""
    events = pd.DataFrame([(u, str(i), i) for u in ("a", "b") for i in range(2)],
                          columns=["user_id", "item_id", "timestamp"])
    data = build_interactions(events, name="pairs")
    with pytest.raises(ValueError, match=r"the train split is empty.* of 2 users, 2 users have 2 events"):
        leave_one_out(data)
    splits = leave_one_out(data, required=("test",))
    assert splits["test"]["user_id"] == ["a", "b"] and len(splits["train"]) == 0
    with pytest.raises(ValueError, match=r"unknown split\(s\) \['tset'\]"):
        leave_one_out(data, required=("tset",))


def test_build_interactions_refuses_infinite_times_and_float_ids():
    """Bug: `build_interactions` cast inf timestamps to INT64_MIN and kept float ids as '12.0' / '12.7'."""
    events = pd.DataFrame({"user_id": ["a", "a"], "item_id": ["1", "2"], "timestamp": [1.0, float("inf")]})
    with pytest.raises(ValueError, match=r"toy events, row 1: column 'timestamp' has 'inf'; expected a number"):
        build_interactions(events, name="toy")
    events["timestamp"] = [1, 10 ** 15]
    with pytest.raises(ValueError, match=r"toy events, row 1: column 'timestamp' has '1000000000000000'; expected "
                                         r"unix seconds"):
        build_interactions(events, name="toy")
    events = pd.DataFrame({"user_id": ["a", "a"], "item_id": [12.0, 12.7], "timestamp": [1, 2]})
    with pytest.raises(ValueError, match=r"toy events, row 1: column 'item_id' has '12.7' in a float column"):
        build_interactions(events, name="toy")
    events["item_id"] = [12.0, 13.0]
    assert build_interactions(events, name="toy").vocab.raw_ids == ["12", "13"]


@pytest.mark.parametrize(("values", "message"), [
    ([True, False, True, False], "column 'item_id' has Parquet type bool \\(row 0: True\\); expected integer"),
    ([[1, 2], [3], [1, 2], [4]], "column 'item_id' has Parquet type list<element: int64>"),
    ([{"a": 1}, {"a": 2}, {"a": 1}, {"a": 3}], "column 'item_id' has Parquet type struct<a: int64>"),
    ([b"\xff\xfe", b"ab", b"\xff\xfe", b"cd"], "row 0: column 'item_id' holds bytes b'\\\\xff\\\\xfe' that are not "
                                               "UTF-8 text"),
])
def test_parquet_ids_of_the_wrong_type_are_refused(tmp_path, values, message):
    """Issue 27 D11/D12: bool / list / struct item ids were accepted as 'True', '[1 2]', "{'a': 1}"; binary ids
    failed with "'utf-8' codec can't decode" naming neither file nor column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "log.parquet"
    pq.write_table(pa.table({"user_id": ["u1", "u1", "u2", "u2"], "item_id": pa.array(values),
                             "timestamp": [1, 2, 3, 4]}), path)
    with pytest.raises(ValueError, match=f"log.parquet.*{message}"):
        load_interactions(path, min_user_events=1)


def test_parquet_binary_ids_that_are_utf8_text_are_read_as_text(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "log.parquet"
    pq.write_table(pa.table({"user_id": pa.array([b"u1", b"u1"]), "item_id": pa.array([b"caf\xc3\xa9", b"b"]),
                             "timestamp": [1, 2]}), path)
    assert load_interactions(path, min_user_events=1).vocab.raw_ids == ["b", "café"]


def test_recbole_item_file_with_a_duplicate_id_is_refused(tmp_path):
    """Issue 27 D13: a RecBole .item file listing an id twice kept the last row silently."""
    write(tmp_path / "d.inter", "user_id:token\titem_id:token\n1\t10\n1\t11\n")
    write(tmp_path / "d.item", "item_id:token\tmovie_title:token_seq\n10\tFirst\n11\tOther\n10\tSecond\n")
    with pytest.raises(ValueError, match=r"d.item, line 4: item_id '10' is listed again \(first on line 2\)"):
        load_interactions(tmp_path / "d.inter")
