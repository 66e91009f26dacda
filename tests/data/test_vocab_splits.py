"""ItemVocab round-trip and the leave-one-out / time splits."""

from __future__ import annotations

import json

import numpy as np

from genrec_hf.data import ItemVocab, build_interactions, generate_synthetic, leave_one_out, time_split
from genrec_hf.data.interactions import SEQUENCE_FEATURES


def test_vocab_round_trip(tmp_path):
    vocab = ItemVocab.from_raw_ids(["10", "9", "100", "9"], {"9": {"title": "Nine", "year": np.int64(1999),
                                                              "genres": ("A", "B")}})
    assert vocab.raw_ids == ["9", "10", "100"]  # integer ids sort numerically, duplicates collapse
    assert len(vocab) == 4 and vocab.num_items == 3
    assert vocab.encode("9") == 1 and vocab.encode(100) == 3 and vocab.encode_many(["10", "9"]) == [2, 1]
    assert vocab.decode(3) == "100" and vocab.decode_many([1, 2]) == ["9", "10"]
    path = vocab.save(tmp_path)
    assert path.name == "item_vocab.json"
    assert json.loads(path.read_text())["items"] == ["9", "10", "100"]
    loaded = ItemVocab.load(tmp_path)
    assert loaded == vocab and len(loaded) == 4
    assert loaded.item_info == {"9": {"title": "Nine", "year": 1999, "genres": ["A", "B"]}}
    strings = ItemVocab.from_raw_ids(["b", "a", "10"])
    assert strings.raw_ids == ["10", "a", "b"]  # mixed ids sort as strings


def test_synthetic_vocab_saves_with_item_info(tmp_path):
    data = generate_synthetic(num_users=30, num_items=40, num_clusters=4)
    data.vocab.save(tmp_path)
    loaded = ItemVocab.load(tmp_path)
    assert loaded == data.vocab
    assert loaded.item_info == data.item_info and set(loaded.item_info) == set(loaded.raw_ids)


def _data(rows: dict[str, list[tuple[str, int]]]):
    import pandas as pd

    events = pd.DataFrame([(u, i, t, 1.0) for u, evs in rows.items() for i, t in evs],
                          columns=["user_id", "item_id", "timestamp", "rating"])
    return build_interactions(events, name="toy")


def test_leave_one_out_lengths_and_targets():
    data = _data({"a": [("1", 1), ("2", 2), ("3", 3), ("4", 4), ("5", 5)],
                  "b": [("1", 1), ("2", 2), ("3", 3)],
                  "c": [("1", 1), ("2", 2)]})
    splits = leave_one_out(data)
    assert all(split.features == SEQUENCE_FEATURES for split in splits.values())
    decode = data.vocab.decode_many
    assert splits["train"]["user_id"] == ["a"]  # b would train on one event, c on none
    assert decode(splits["train"][0]["item_ids"]) == ["1", "2", "3"]
    assert splits["validation"]["user_id"] == ["a", "b"]
    assert [decode(r)[-1] for r in splits["validation"]["item_ids"]] == ["4", "2"]  # targets
    assert splits["test"]["user_id"] == ["a", "b", "c"]
    assert [decode(r) for r in splits["test"]["item_ids"]] == [["1", "2", "3", "4", "5"], ["1", "2", "3"],
                                                               ["1", "2"]]
    assert splits["test"][0]["timestamps"] == [1, 2, 3, 4, 5]


def test_leave_one_out_on_synthetic_keeps_everything_aligned():
    data = generate_synthetic(num_users=50, num_items=60, num_clusters=5)
    splits = leave_one_out(data)
    full = {r["user_id"]: r for r in data.sequences}
    for name, drop in (("train", 2), ("validation", 1), ("test", 0)):
        for row in splits[name]:
            whole = full[row["user_id"]]
            n = len(whole["item_ids"]) - drop
            assert n >= 2
            for column in ("item_ids", "timestamps", "action_ids", "ratings"):
                assert row[column] == whole[column][:n]


def test_time_split_has_no_event_after_the_cut_in_train():
    data = _data({"a": [("1", 10), ("2", 20), ("3", 30), ("4", 40)],
                  "b": [("1", 5), ("3", 25), ("5", 50)],
                  "c": [("2", 35), ("4", 45)],
                  "d": [("2", 1), ("4", 2)]})
    splits = time_split(data, cut=30)
    decode = data.vocab.decode_many
    assert splits["train"]["user_id"] == ["a", "b", "d"]
    assert max(t for row in splits["train"]["timestamps"] for t in row) < 30
    assert decode(splits["train"][0]["item_ids"]) == ["1", "2"]
    # validation: pre-cut history, last pre-cut event as target
    assert [decode(r)[-1] for r in splits["validation"]["item_ids"]] == ["2", "3", "4"]
    # test: pre-cut history + first event at/after the cut; c has no pre-cut history, d no post-cut event
    assert splits["test"]["user_id"] == ["a", "b"]
    assert [decode(r) for r in splits["test"]["item_ids"]] == [["1", "2", "3"], ["1", "3", "5"]]

    synthetic = generate_synthetic(num_users=80, num_items=60, num_clusters=5)
    by_quantile = time_split(synthetic, quantile=0.8)
    all_times = np.concatenate([np.asarray(t) for t in synthetic.sequences["timestamps"]])
    cut = int(np.quantile(all_times, 0.8))
    assert max(t for row in by_quantile["train"]["timestamps"] for t in row) < cut
    for row in by_quantile["test"]:
        assert row["timestamps"][-1] >= cut and all(t < cut for t in row["timestamps"][:-1])
    assert len(by_quantile["test"]) > 0
