"""Every kind of bad input fails with a ValueError / FileNotFoundError that names file, line, column and value."""

from __future__ import annotations

import logging
import re

import pytest

from genrec_hf.data import (ItemVocab, NextItemCollator, generate_synthetic, load_interactions, sliding_windows,
                            time_split)


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
