"""Training windows and the one collator family that turns rows into model inputs.

Two row formats, one padding code:

* event rows (`item_ids`, `timestamps`, `action_ids`; pre-training and leave-one-out splits) → `NextItemCollator`:
  the labels of a training row are its next events, the target of an eval row its last event;
* task rows (`genrec_hf.data.tasks`: training rows carry `labels` with -100, eval rows `target_ids` + `target_time`)
  → `TaskCollator`, the same class reading the targets from the row.

Eval batches of both carry `target_ids` (B, T) 0-padded (T = 1 for leave-one-out), `target_time` (B,) and, with
`exclude_history`, `exclude_ids` (B, H): what `genrec_hf.evaluation.rank_batches` ranks. Histories longer than
`max_length` keep their most recent events (the collator never reads further back); `sliding_windows` /
`label_windows` cut long training rows beforehand so every target is still supervised.

Training batches are padded to their longest row, or with `packing=True` packed: the batch's examples are laid end to
end into as few rows of `max_length` as first-fit decreasing finds, with `position_ids` restarting at 0 at each
example's start (the `transformers.DataCollatorWithFlattening` convention), which the model reads as block-diagonal
causal attention. Same users, same supervised positions, same loss; only the padding goes. `with_lengths` adds the
`length` column `TrainingArguments(train_sampling_strategy="group_by_length")` sorts by, the cheaper alternative.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from datasets import Dataset

from .interactions import flat_column, row_lengths, take_event_ranges

IGNORE_INDEX = -100
LENGTH_COLUMN = "length"  # `TrainingArguments.length_column_name`'s default


def first_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices of `lengths` grouped into bins of total length at most `capacity`: longest first (ties in index
    order), each into the first bin it fits. Zero lengths are left out; a length above `capacity` is an error."""
    if any(n > capacity for n in lengths):
        raise ValueError(f"a sequence of {max(lengths)} events does not fit a packed row of {capacity}.")
    bins: list[list[int]] = []
    room: list[int] = []
    for index in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        n = lengths[index]
        if n == 0:
            break
        for b, free in enumerate(room):
            if n <= free:
                bins[b].append(index)
                room[b] -= n
                break
        else:
            bins.append([index])
            room.append(capacity - n)
    return bins


def with_lengths(dataset: Dataset, max_length: int, labelled: bool = False) -> Dataset:
    """`dataset` plus a `length` column: the input events a training row gives the collator (`max_length` + 1
    events → `max_length` inputs for event rows, the most recent `max_length` for `labelled` task rows)."""
    lengths = row_lengths(dataset)
    lengths = np.minimum(lengths, max_length) if labelled else np.clip(lengths - 1, 0, max_length)
    if LENGTH_COLUMN in dataset.column_names:
        dataset = dataset.remove_columns(LENGTH_COLUMN)
    return dataset.add_column(LENGTH_COLUMN, lengths.astype(np.int64).tolist())


def sliding_windows(dataset: Dataset, max_length: int, stride: int | None = None) -> Dataset:
    """Split rows longer than `max_length + 1` events into overlapping windows of `max_length + 1` events.

    A window of L+1 events gives L (input, next-item) pairs; windows start every `stride` events (default
    `max_length`) and the last one ends at the row's end, so every event after a row's first is a target at least
    once. `stride` above `max_length` would skip targets and is refused. Shorter rows pass unchanged.
    """
    return take_event_ranges(dataset, *window_ranges(row_lengths(dataset), max_length, stride))


def window_ranges(lengths: np.ndarray, max_length: int, stride: int | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, starts, stops) of `sliding_windows` over rows of `lengths` events: the one window rule, shared with
    the training windows streamed from a prepared folder."""
    if max_length < 1:
        raise ValueError(f"max_length={max_length}; expected a positive integer.")
    stride = max_length if stride is None else stride
    if not 1 <= stride <= max_length:
        raise ValueError(f"stride={stride}; expected 1..max_length={max_length} (a larger stride leaves events "
                         "that are never a training target).")
    window = max_length + 1
    lengths = np.asarray(lengths, dtype=np.int64)
    # windows start every `stride` events, and the last one ends at the row's end: ceil((n - window) / stride) + 1
    counts = np.where(lengths <= window, 1, -(-(lengths - window) // stride) + 1)
    rows = np.repeat(np.arange(len(lengths)), counts)
    index = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)  # window number within its row
    last = index == counts[rows] - 1
    starts = np.where(lengths[rows] <= window, 0, np.where(last, lengths[rows] - window, index * stride))
    stops = np.where(lengths[rows] <= window, lengths[rows], starts + window)
    return rows, starts, stops


def label_windows(dataset: Dataset, max_length: int) -> Dataset:
    """Cut labelled rows (`labels[t]` = the target after event t, -100 = none) into windows of `max_length` events.

    Windows are consecutive and end at the row's end (events `[n - L, n)`, `[n - 2L, n - L)`, ..., in that order),
    so every label is supervised exactly once and each window keeps the context right before its labels; windows
    without a label are dropped. Rows of at most `max_length` events pass unchanged. Vectorised in Arrow like
    `sliding_windows` (whose windows of `max_length + 1` events serve rows labelled by their own next events).
    """
    if max_length < 1:
        raise ValueError(f"max_length={max_length}; expected a positive integer.")
    lengths = row_lengths(dataset)
    counts = np.maximum(1, -(-lengths // max_length))  # ceil(n / L) windows per row (one for an empty row)
    rows = np.repeat(np.arange(len(lengths)), counts)
    back = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)  # 0 = the row's last window
    stops = lengths[rows] - back * max_length
    starts = np.maximum(0, stops - max_length)
    labels, _ = flat_column(dataset, "labels")
    supervised = np.zeros(len(labels) + 1, dtype=np.int64)
    np.cumsum(labels != IGNORE_INDEX, out=supervised[1:])
    row_offsets = np.concatenate([[0], np.cumsum(lengths)])[rows]
    keep = supervised[row_offsets + stops] > supervised[row_offsets + starts]
    return take_event_ranges(dataset, rows[keep], starts[keep], stops[keep])


class NextItemCollator:
    """Event rows (`item_ids`, `timestamps`, `action_ids`) → padded int64 model inputs.

    mode="train": the most recent `max_length + 1` events; `input_ids` = events[:-1], `labels` = events[1:]
        (aligned: `labels[:, t]` is the item after input event t; -100 at padding).
    mode="eval": history = events[:-1] truncated to its most recent `max_length`, target = events[-1]:
        `target_ids` (B, 1), `target_time` (B,) (the target's timestamp, 0 without timestamps), `labels` -100 except
        the last real position (= the first target, so a Trainer eval loss works), and with `exclude_history` an
        `exclude_ids` (B, H) of the distinct items of the FULL history (not only the truncated window), 0-padded on
        the right (it is a set), for ranking with seen items removed.
    Both return `input_ids`, `attention_mask`, `timestamps`, `action_ids` of the input events, padded on
    `padding_side` ("left" by default, so the last real event sits at position -1).
    packing=True (train only): the examples are packed into rows of at most `max_length` events
        (`first_fit_decreasing`), with `position_ids` (0, 1, ... per history, 0 at padding) telling the model where
        each history starts. Labels, supervised positions and so `num_items_in_batch` are those of the padded batch.
    targets (train only): a `genrec_hf.data.mtp.MultiTokenTargets` for multi-token prediction: each position
        also gets `mtp_labels` / `mtp_weights` (B, T, K) (0 / 0.0 at empty slots and padding), built per example
        before any packing (targets never cross users), and `labels` becomes each position's first target (-100
        where it has none), so `num_items_in_batch` counts the positions the multi-token loss supervises.
    """

    def __init__(self, max_length: int, mode: str = "train", padding_side: str = "left",
                 exclude_history: bool = True, packing: bool = False, targets: Any = None) -> None:
        if max_length < 1:
            raise ValueError(f"max_length={max_length}; expected a positive integer.")
        if mode not in ("train", "eval"):
            raise ValueError(f"mode={mode!r}; expected 'train' or 'eval'.")
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side={padding_side!r}; expected 'left' or 'right'.")
        if packing and mode != "train":
            raise ValueError("packing=True applies to training batches only: an eval row's user embedding is read "
                             "at its last event, which a packed row shares among several users.")
        if targets is not None and mode != "train":
            raise ValueError("targets (multi-token prediction) apply to training batches only: evaluation ranks the "
                             "held-out targets of each row.")
        self.max_length = max_length
        self.targets = targets
        self.mode = mode
        self.padding_side = padding_side
        self.exclude_history = exclude_history
        self.packing = packing

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(max_length={self.max_length}, mode={self.mode!r}, "
                f"padding_side={self.padding_side!r}, exclude_history={self.exclude_history}, "
                f"packing={self.packing}" + (f", targets={self.targets}" if self.targets is not None else "") + ")")

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not rows:
            raise ValueError(f"{type(self).__name__} got an empty batch.")
        if self.mode == "train":
            return self._collate_train([self._train_example(row) for row in rows])
        return self._collate_eval([self._eval_example(index, row) for index, row in enumerate(rows)])

    # One example = (items, timestamps, actions) of the input events, plus labels (train) or
    # (targets, target_time, history items) (eval); subclasses change only how a row becomes an example.
    def _train_example(self, row: dict[str, Any]) -> tuple[list[int], list[int], list[int], list[int]]:
        keep = self.max_length + 1
        items = list(row["item_ids"])
        times, actions = (_field(row, name, len(items))[-keep:][:-1] for name in ("timestamps", "action_ids"))
        if self.targets is None:
            return items[-keep:][:-1], times, actions, items[-keep:][1:]
        return self._with_multi_targets(row, items[-keep:][:-1], times, actions, keep)

    def _with_multi_targets(self, row: dict[str, Any], inputs: list[int], times: list[int], actions: list[int],
                            keep: int) -> tuple:
        """A train example plus its (P, K) multi-token targets and weights; labels = each position's first target."""
        items = list(row["item_ids"])[-keep:]
        column = self.targets.reward_column
        if column is not None and row.get(column) is None:
            raise ValueError(f"objective.reward_column={column!r} is not a column of the training rows (they have "
                             f"{sorted(row)}).")
        rewards = None if column is None else _field(row, column, len(row["item_ids"]))[-keep:]
        all_times = _field(row, "timestamps", len(row["item_ids"]))[-keep:]
        ids, weights = self.targets(items, all_times, rewards, num_positions=len(inputs))
        labels = np.where(ids[:, 0] > 0, ids[:, 0], IGNORE_INDEX).tolist() if len(inputs) else []
        return inputs, times, actions, labels, ids, weights

    def _eval_example(self, index: int, row: dict[str, Any]) -> tuple[list[int], list[int], list[int], list[int],
                                                                       int, list[int]]:
        items = list(row["item_ids"])
        if len(items) < 2:
            raise ValueError(f"Eval row {index} (user {row.get('user_id')!r}) has {len(items)} event(s); "
                             "expected a history of at least one event plus the target.")
        times, actions = (_field(row, name, len(items)) for name in ("timestamps", "action_ids"))
        history = items[:-1]
        return (history[-self.max_length:], times[:-1][-self.max_length:], actions[:-1][-self.max_length:],
                [items[-1]], int(times[-1]), history)

    def _collate_train(self, examples: list[tuple]) -> dict[str, torch.Tensor]:
        positions = None
        if self.targets is not None:  # one slot count for the batch (with only a horizon it varies per example)
            slots = max([1] + [np.shape(example[4])[1] for example in examples if len(example[0])])
            examples = [(*example[:4], *(np.pad(np.reshape(a, (len(example[0]), -1)),
                                                ((0, 0), (0, slots - np.reshape(a, (len(example[0]), -1)).shape[1])))
                                         for a in example[4:])) for example in examples]
        if self.packing:
            lengths = [len(example[0]) for example in examples]
            bins = first_fit_decreasing(lengths, self.max_length) or [[]]
            positions = [[p for i in indices for p in range(lengths[i])] for indices in bins]
            examples = [tuple([v for i in indices for v in examples[i][field]] for field in range(len(examples[0])))
                        for indices in bins]
        batch = self._pad_inputs(examples)
        width = batch["input_ids"].shape[1]
        batch["labels"] = self._pad([example[3] for example in examples], IGNORE_INDEX, width)
        if self.targets is not None:
            batch["mtp_labels"], batch["mtp_weights"] = self._pad_multi_targets(examples, width)
        if positions is not None:
            batch["position_ids"] = self._pad(positions, 0, width)
        return batch

    def _collate_eval(self, examples: list[tuple]) -> dict[str, torch.Tensor]:
        batch = self._pad_inputs(examples)
        targets = [example[3] for example in examples]
        target_ids = _pad(targets, 0, max(1, max(len(t) for t in targets)), "right")
        labels = torch.full_like(batch["input_ids"], IGNORE_INDEX)
        labels[torch.arange(len(examples)), _last_real_position(batch["attention_mask"])] = target_ids[:, 0]
        batch["labels"] = labels
        batch["target_ids"] = target_ids
        batch["target_time"] = torch.tensor([example[4] for example in examples], dtype=torch.long)
        if self.exclude_history:
            histories = [list(dict.fromkeys(example[5])) for example in examples]
            batch["exclude_ids"] = _pad(histories, 0, max(1, max(len(h) for h in histories)), "right")
        return batch

    def _pad_inputs(self, examples: list[tuple]) -> dict[str, torch.Tensor]:
        width = max(1, max(len(example[0]) for example in examples))  # a row of only padding keeps a valid shape
        return {
            "input_ids": self._pad([example[0] for example in examples], 0, width),
            "attention_mask": self._pad([[1] * len(example[0]) for example in examples], 0, width),
            "timestamps": self._pad([example[1] for example in examples], 0, width),
            "action_ids": self._pad([example[2] for example in examples], 0, width),
        }

    def _pad(self, sequences: list[list[int]], value: int, width: int) -> torch.Tensor:
        return _pad(sequences, value, width, self.padding_side)

    def _pad_multi_targets(self, examples: list[tuple], width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T, K) int64 targets and float32 weights, each example's rows on the same side as its inputs."""
        rows = [(np.asarray(example[4], dtype=np.int64).reshape(len(example[0]), -1),
                 np.asarray(example[5], dtype=np.float32).reshape(len(example[0]), -1)) for example in examples]
        slots = max([1] + [ids.shape[1] for ids, _ in rows])
        ids_out = torch.zeros(len(rows), width, slots, dtype=torch.long)
        weights_out = torch.zeros(len(rows), width, slots, dtype=torch.float32)
        for b, (ids, weights) in enumerate(rows):
            n, k = ids.shape
            start = width - n if self.padding_side == "left" else 0
            ids_out[b, start:start + n, :k] = torch.from_numpy(ids)
            weights_out[b, start:start + n, :k] = torch.from_numpy(weights)
        return ids_out, weights_out


class TaskCollator(NextItemCollator):
    """Task rows (`genrec_hf.data.tasks`) → the same batches as `NextItemCollator`, targets read from the row.

    mode="train": rows carry `labels` aligned with their events (`labels[t]` = target after event t, -100 = none);
        the most recent `max_length` events and their labels are kept (cut longer rows with `label_windows`).
    mode="eval": the context is the row's events (most recent `max_length` as input, all of them excluded with
        `exclude_history`, and so are a row's optional `consumed_ids`), `target_ids` the row's targets (B, T)
        0-padded and `target_time` its `target_time`.
    """

    def _train_example(self, row: dict[str, Any]) -> tuple[list[int], list[int], list[int], list[int]]:
        if self.targets is not None:
            raise ValueError("TaskCollator reads each position's target from the row's labels; multi-token targets "
                             "(targets=) are built by NextItemCollator over event rows.")
        items, labels = list(row["item_ids"]), list(row["labels"])
        if len(labels) != len(items):
            raise ValueError(f"Row of user {row.get('user_id')!r}: labels has {len(labels)} values for "
                             f"{len(items)} items.")
        times, actions = (_field(row, name, len(items))[-self.max_length:] for name in ("timestamps", "action_ids"))
        return items[-self.max_length:], times, actions, labels[-self.max_length:]

    def _eval_example(self, index: int, row: dict[str, Any]) -> tuple[list[int], list[int], list[int], list[int],
                                                                       int, list[int]]:
        items = list(row["item_ids"])
        targets = list(row["target_ids"])
        if not items or not targets:
            raise ValueError(f"Task eval row {index} (user {row.get('user_id')!r}) has {len(items)} context "
                             f"event(s) and {len(targets)} target(s); expected at least one of each.")
        times, actions = (_field(row, name, len(items))[-self.max_length:] for name in ("timestamps", "action_ids"))
        # Items consumed after the context but before the list is shown (a staleness replay's `consumed_ids`) are
        # history at show time: excluded with it.
        consumed = list(row.get("consumed_ids") or [])
        return items[-self.max_length:], times, actions, targets, int(row.get("target_time") or 0), items + consumed


def _pad(sequences: list[list[int]], value: int, width: int, side: str) -> torch.Tensor:
    """(B, width) int64 tensor, each sequence aligned to the `side`'s opposite end and filled with `value`."""
    out = torch.full((len(sequences), width), value, dtype=torch.long)
    for i, values in enumerate(sequences):
        if not len(values):
            continue
        tensor = torch.as_tensor(list(values), dtype=torch.long)
        if side == "left":
            out[i, width - len(values):] = tensor
        else:
            out[i, :len(values)] = tensor
    return out


def _field(row: dict[str, Any], name: str, length: int) -> list[int]:
    """A per-event column of a row; zeros when the row lacks it (e.g. hand-made rows with only `item_ids`)."""
    values = row.get(name)
    if values is None:
        return [0] * length
    values = list(values)
    if len(values) != length:
        raise ValueError(f"Row of user {row.get('user_id')!r}: {name} has {len(values)} values for {length} items.")
    return values


def _last_real_position(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last 1 in each row, whatever the padding side."""
    positions = torch.arange(attention_mask.shape[1]).expand_as(attention_mask)
    return torch.where(attention_mask.bool(), positions, -1).max(dim=1).values.clamp(min=0)
