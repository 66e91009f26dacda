"""The collator family (NextItemCollator / TaskCollator: train / eval, padding, truncation, exclusions) and the
training windows (sliding_windows, label_windows)."""

from __future__ import annotations

import torch

import pytest
from datasets import Dataset

from genrec_hf.data import IGNORE_INDEX, NextItemCollator, sliding_windows
from genrec_hf.data.collators import TaskCollator, label_windows
from genrec_hf.data.interactions import SEQUENCE_FEATURES, sequences_from_columns
from genrec_hf.data.tasks import TRAIN_FEATURES


def row(user: str, items: list[int]) -> dict:
    return {"user_id": user, "item_ids": items, "timestamps": [100 * i for i in range(len(items))],
            "action_ids": [i % 3 for i in range(len(items))], "ratings": [1.0] * len(items)}


def test_train_left_padding_and_label_alignment():
    """Catches labels shifted against their inputs, truncation keeping old events, or padding leaking into
    the loss."""
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
    """Catches right padding misaligning inputs and labels."""
    batch = NextItemCollator(max_length=4, mode="train", padding_side="right")([row("a", [5, 6, 7]),
                                                                               row("b", [1, 2, 3, 4, 8])])
    assert batch["input_ids"].tolist() == [[5, 6, 0, 0], [1, 2, 3, 4]]
    assert batch["labels"].tolist() == [[6, 7, IGNORE_INDEX, IGNORE_INDEX], [2, 3, 4, 8]]
    assert batch["attention_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]


def test_eval_targets_truncation_and_full_history_exclusion():
    """Catches the eval batch layout drifting: (B, 1) targets, target time, the eval-loss label at the last
    real position, and exclusions from the FULL history (not only the truncated window)."""
    rows = [row("a", [5, 6, 7]), row("b", [1, 2, 3, 2, 4, 8, 9])]
    for side in ("left", "right"):
        batch = NextItemCollator(max_length=3, mode="eval", padding_side=side)(rows)
        assert set(batch) == {"input_ids", "attention_mask", "timestamps", "action_ids", "labels", "target_ids",
                              "target_time", "exclude_ids"}
        assert all(t.dtype == torch.long for t in batch.values())
        assert batch["target_ids"].tolist() == [[7], [9]]  # (B, T) with T = 1
        assert batch["target_time"].tolist() == [200, 600]
        # history truncated to the most recent 3 events: 4 8 of b's window plus 2 before them
        expected = [[0, 5, 6], [2, 4, 8]] if side == "left" else [[5, 6, 0], [2, 4, 8]]
        assert batch["input_ids"].tolist() == expected
        labels = batch["labels"]
        last = [2, 2] if side == "left" else [1, 2]
        for i, position in enumerate(last):
            assert labels[i, position] == batch["target_ids"][i, 0]
            assert (labels[i] != IGNORE_INDEX).sum() == 1
        # distinct items of the FULL history (1 and 3 are outside the window), 0-padded
        assert batch["exclude_ids"].tolist() == [[5, 6, 0, 0, 0], [1, 2, 3, 4, 8]]
    no_exclusion = NextItemCollator(max_length=3, mode="eval", exclude_history=False)(rows)
    assert "exclude_ids" not in no_exclusion


def test_rows_from_a_dataset_and_missing_optional_columns():
    """Catches Arrow rows or hand-made rows without timestamps / actions failing to collate."""
    dataset = sequences_from_columns({k: [v] for k, v in row("a", [3, 4, 5]).items()}, SEQUENCE_FEATURES)
    batch = NextItemCollator(8, mode="train")([dataset[0]])
    assert batch["input_ids"].tolist() == [[3, 4]]
    bare = NextItemCollator(8, mode="eval")([{"item_ids": [3, 4, 5]}])
    assert bare["timestamps"].tolist() == [[0, 0]] and bare["target_ids"].tolist() == [[5]]
    assert bare["target_time"].tolist() == [0]


def test_sliding_windows_cover_every_event():
    """Catches training windows that skip targets, break column alignment or touch short rows."""
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


def _task_eval_row(user: str, items: list[int], targets: list[int], target_time: int) -> dict:
    base = row(user, items)
    return {k: base[k] for k in ("user_id", "item_ids", "timestamps", "action_ids")} | {
        "target_ids": targets, "target_time": target_time}


@pytest.mark.parametrize("side", ["left", "right"])
def test_task_and_next_item_collators_agree_on_the_same_rows(side):
    """Catches the two collators' padding / truncation / exclusion drifting apart (they share one `_pad` now):
    a leave-one-out row and the same row written as a task row must give the same batch."""
    events = [row("a", [5, 6, 7]), row("b", [1, 2, 3, 2, 4, 8, 9])]
    as_task = [_task_eval_row(r["user_id"], r["item_ids"][:-1], [r["item_ids"][-1]], r["timestamps"][-1])
               for r in events]
    loo = NextItemCollator(3, mode="eval", padding_side=side)(events)
    task = TaskCollator(3, mode="eval", padding_side=side)(as_task)
    assert set(loo) == set(task) and all(torch.equal(loo[k], task[k]) for k in loo)
    train_events = [row("a", [5, 6, 7]), row("b", [1, 2, 3])]
    train_task = [{**{k: v[:-1] for k, v in r.items() if k != "user_id"}, "user_id": r["user_id"],
                   "labels": r["item_ids"][1:]} for r in train_events]
    loo = NextItemCollator(4, padding_side=side)(train_events)
    task = TaskCollator(4, padding_side=side)(train_task)
    assert set(loo) == set(task) and all(torch.equal(loo[k], task[k]) for k in loo)


def test_task_eval_batches_carry_padded_target_sets():
    """Catches set-valued targets losing their 0 padding, `target_time`, or the full-context exclusion."""
    rows = [_task_eval_row("a", [5, 6, 5, 7], [8, 9, 10], 1000), _task_eval_row("b", [1], [4], 7)]
    batch = TaskCollator(2, mode="eval")(rows)
    assert batch["target_ids"].tolist() == [[8, 9, 10], [4, 0, 0]]
    assert batch["target_time"].tolist() == [1000, 7]
    assert batch["input_ids"].tolist() == [[5, 7], [0, 1]]
    assert batch["exclude_ids"].tolist() == [[5, 6, 7], [1, 0, 0]]  # distinct items of the whole context
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 8], [IGNORE_INDEX, 4]]
    with pytest.raises(ValueError, match="target"):
        TaskCollator(2, mode="eval")([_task_eval_row("c", [1], [], 0)])
    with pytest.raises(ValueError, match="labels"):
        TaskCollator(2)([{"user_id": "d", "item_ids": [1, 2], "labels": [3]}])


def _reference_windows(rows: list[dict], max_length: int) -> list[dict]:
    """The former `tasks.windows` Python loop: consecutive windows ending at the row's end, newest first, kept
    only if they hold a label."""
    out = []
    for r in rows:
        n = len(r["item_ids"])
        for stop in range(n, 0, -max_length):
            start = max(0, stop - max_length)
            if all(label == -100 for label in r["labels"][start:stop]):
                continue
            out.append({k: (v[start:stop] if k != "user_id" else v) for k, v in r.items()})
    return out


def test_label_windows_equal_the_former_python_windows():
    """Catches the vectorised task-row windows differing from the loop they replace (which labels each window
    keeps, its order, dropped label-free windows, rows shorter than a window)."""
    g = torch.Generator().manual_seed(0)
    rows = []
    for u, n in enumerate([1, 3, 4, 5, 9, 13, 0]):
        labels = [int(x) if x > 40 else -100 for x in torch.randint(1, 60, (n,), generator=g)]
        if u == 3:
            labels = [-100] * n  # no label at all: dropped
        rows.append({"user_id": str(u), "item_ids": list(range(100 * u + 1, 100 * u + n + 1)),
                     "timestamps": [10 * i for i in range(n)], "action_ids": [i % 2 for i in range(n)],
                     "labels": labels})
    dataset = Dataset.from_list(rows, features=TRAIN_FEATURES)
    for max_length in (1, 2, 4, 20):
        got = label_windows(dataset, max_length)
        assert got.features == TRAIN_FEATURES
        assert got.to_list() == _reference_windows(rows, max_length)


@pytest.mark.parametrize(("max_length", "stride"), [(1, None), (2, 1), (5, 3), (5, None), (10, 10)])
def test_window_ranges_match_a_plain_loop(max_length, stride):
    """The vectorised window rule (shared by in-memory windows and windows streamed from a prepared folder)
    against the loop it replaced: catches a last window that does not end at the row's end, a skipped target, or
    a short row cut."""
    import numpy as np

    from genrec_hf.data.collators import window_ranges

    lengths = np.random.default_rng(max_length).integers(0, 40, 300)
    step = max_length if stride is None else stride
    window = max_length + 1
    rows, starts, stops = [], [], []
    for row, length in enumerate(lengths.tolist()):
        row_starts = [0] if length <= window else list(range(0, length - window, step)) + [length - window]
        rows += [row] * len(row_starts)
        starts += row_starts
        stops += [length] if length <= window else [s + window for s in row_starts]
    got = window_ranges(lengths, max_length, stride)
    assert [a.tolist() for a in got] == [rows, starts, stops]
