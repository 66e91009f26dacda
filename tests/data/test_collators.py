"""NextItemCollator (train / eval, left / right padding, truncation, exclusions) and sliding_windows."""

from __future__ import annotations

import torch

from genrec_hf.data import IGNORE_INDEX, NextItemCollator, sliding_windows
from genrec_hf.data.interactions import SEQUENCE_FEATURES, sequences_from_columns


def row(user: str, items: list[int]) -> dict:
    return {"user_id": user, "item_ids": items, "timestamps": [100 * i for i in range(len(items))],
            "action_ids": [i % 3 for i in range(len(items))], "ratings": [1.0] * len(items)}


def test_train_left_padding_and_label_alignment():
    batch = NextItemCollator(max_length=4, mode="train")([row("a", [5, 6, 7]), row("b", [1, 2, 3, 4, 8, 9, 10])])
    assert set(batch) == {"input_ids", "attention_mask", "timestamps", "action_ids", "labels"}
    assert all(t.dtype == torch.long and t.shape == (2, 4) for t in batch.values())
    assert batch["input_ids"].tolist() == [[0, 0, 5, 6], [3, 4, 8, 9]]
    # the most recent max_length+1 events are kept: 3 4 8 9 10 → inputs 3 4 8 9, labels 4 8 9 10
    assert batch["labels"].tolist() == [[IGNORE_INDEX, IGNORE_INDEX, 6, 7], [4, 8, 9, 10]]
    assert batch["attention_mask"].tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]
    assert batch["timestamps"].tolist() == [[0, 0, 0, 100], [200, 300, 400, 500]]
    assert batch["action_ids"].tolist() == [[0, 0, 0, 1], [2, 0, 1, 2]]
    # labels[:, t] is the event after input t
    mask = batch["attention_mask"].bool()
    assert (batch["labels"][mask] != IGNORE_INDEX).all() and (batch["labels"][~mask] == IGNORE_INDEX).all()


def test_train_right_padding():
    batch = NextItemCollator(max_length=4, mode="train", padding_side="right")([row("a", [5, 6, 7]),
                                                                               row("b", [1, 2, 3, 4, 8])])
    assert batch["input_ids"].tolist() == [[5, 6, 0, 0], [1, 2, 3, 4]]
    assert batch["labels"].tolist() == [[6, 7, IGNORE_INDEX, IGNORE_INDEX], [2, 3, 4, 8]]
    assert batch["attention_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]


def test_eval_targets_truncation_and_full_history_exclusion():
    rows = [row("a", [5, 6, 7]), row("b", [1, 2, 3, 2, 4, 8, 9])]
    for side in ("left", "right"):
        batch = NextItemCollator(max_length=3, mode="eval", padding_side=side)(rows)
        assert set(batch) == {"input_ids", "attention_mask", "timestamps", "action_ids", "labels", "target_ids",
                              "exclude_ids"}
        assert all(t.dtype == torch.long for t in batch.values())
        assert batch["target_ids"].tolist() == [7, 9]
        # history truncated to the most recent 3 events: 4 8 of b's window plus 2 before them
        expected = [[0, 5, 6], [2, 4, 8]] if side == "left" else [[5, 6, 0], [2, 4, 8]]
        assert batch["input_ids"].tolist() == expected
        labels = batch["labels"]
        last = [2, 2] if side == "left" else [1, 2]
        for i, position in enumerate(last):
            assert labels[i, position] == batch["target_ids"][i]
            assert (labels[i] != IGNORE_INDEX).sum() == 1
        # distinct items of the FULL history (1 and 3 are outside the window), 0-padded
        assert batch["exclude_ids"].tolist() == [[5, 6, 0, 0, 0], [1, 2, 3, 4, 8]]
    no_exclusion = NextItemCollator(max_length=3, mode="eval", exclude_history=False)(rows)
    assert "exclude_ids" not in no_exclusion


def test_rows_from_a_dataset_and_missing_optional_columns():
    dataset = sequences_from_columns({k: [v] for k, v in row("a", [3, 4, 5]).items()}, SEQUENCE_FEATURES)
    batch = NextItemCollator(8, mode="train")([dataset[0]])
    assert batch["input_ids"].tolist() == [[3, 4]]
    bare = NextItemCollator(8, mode="eval")([{"item_ids": [3, 4, 5]}])
    assert bare["timestamps"].tolist() == [[0, 0]] and bare["target_ids"].tolist() == [5]


def test_sliding_windows_cover_every_event():
    lengths = [1, 3, 6, 7, 20, 23]
    columns = {k: [] for k in SEQUENCE_FEATURES}
    for u, n in enumerate(lengths):
        for k, v in row(str(u), list(range(1000 * u + 1, 1000 * u + n + 1))).items():
            columns[k].append(v)
    dataset = sequences_from_columns(columns, SEQUENCE_FEATURES)
    for max_length, stride in ((5, None), (5, 2), (4, 1), (1, None)):
        windows = sliding_windows(dataset, max_length, stride=stride)
        assert windows.features == SEQUENCE_FEATURES
        collator = NextItemCollator(max_length, mode="train")
        for u, n in enumerate(lengths):
            mine = [w for w in windows if w["user_id"] == str(u)]
            if n <= max_length + 1:
                assert len(mine) == 1 and mine[0]["item_ids"] == dataset[u]["item_ids"]  # untouched
            assert all(len(w["item_ids"]) <= max_length + 1 for w in mine)
            for w in mine:  # windows are contiguous slices with aligned columns
                start = w["item_ids"][0] - (1000 * u + 1)
                assert w["timestamps"] == dataset[u]["timestamps"][start:start + len(w["item_ids"])]
            supervised = set()
            for w in mine:
                labels = collator([w])["labels"]
                supervised |= set(labels[labels != IGNORE_INDEX].tolist())
            assert supervised == set(dataset[u]["item_ids"][1:])  # every event after the first is a target
    assert len(sliding_windows(dataset, 5)) == 1 + 1 + 1 + 2 + 4 + 5
