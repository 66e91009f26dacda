"""Training windows and the batch collator that turns canonical rows into model inputs.

Histories longer than `max_length` are truncated to their most recent events (the collator never reads further
back); `sliding_windows` cuts long training rows beforehand so every event is still supervised once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from datasets import Dataset

from .interactions import row_lengths, take_event_ranges

IGNORE_INDEX = -100


def sliding_windows(dataset: Dataset, max_length: int, stride: int | None = None) -> Dataset:
    """Split rows longer than `max_length + 1` events into overlapping windows of `max_length + 1` events.

    A window of L+1 events gives L (input, next-item) pairs; windows start every `stride` events (default
    `max_length`) and the last one ends at the row's end, so every event after a row's first is a target at least
    once. `stride` above `max_length` would skip targets and is refused. Shorter rows pass unchanged.
    """
    if max_length < 1:
        raise ValueError(f"max_length={max_length}; expected a positive integer.")
    stride = max_length if stride is None else stride
    if not 1 <= stride <= max_length:
        raise ValueError(f"stride={stride}; expected 1..max_length={max_length} (a larger stride leaves events "
                         "that are never a training target).")
    window = max_length + 1
    rows, starts, stops = [], [], []
    for row, length in enumerate(row_lengths(dataset).tolist()):
        if length <= window:
            rows.append(row), starts.append(0), stops.append(length)
            continue
        row_starts = list(range(0, length - window, stride)) + [length - window]
        rows.extend([row] * len(row_starts))
        starts.extend(row_starts)
        stops.extend(s + window for s in row_starts)
    return take_event_ranges(dataset, np.array(rows), np.array(starts), np.array(stops))


class NextItemCollator:
    """Rows with the canonical columns (`item_ids`, `timestamps`, `action_ids`) → padded int64 model inputs.

    mode="train": the most recent `max_length + 1` events; `input_ids` = events[:-1], `labels` = events[1:]
        (aligned: `labels[:, t]` is the item after input event t; -100 at padding).
    mode="eval": history = events[:-1] truncated to its most recent `max_length`, target = events[-1];
        `labels` is -100 except the last real position (= target, so a Trainer eval loss works), `target_ids` (B,),
        and with `exclude_history` an `exclude_ids` (B, H) of the distinct items of the FULL history (not only the
        truncated window), 0-padded on the right (it is a set), for ranking with seen items removed.
    Both return `input_ids`, `attention_mask`, `timestamps`, `action_ids` of the input events, padded on
    `padding_side` ("left" by default, so the last real event sits at position -1).
    """

    def __init__(self, max_length: int, mode: str = "train", padding_side: str = "left",
                 exclude_history: bool = True) -> None:
        if max_length < 1:
            raise ValueError(f"max_length={max_length}; expected a positive integer.")
        if mode not in ("train", "eval"):
            raise ValueError(f"mode={mode!r}; expected 'train' or 'eval'.")
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side={padding_side!r}; expected 'left' or 'right'.")
        self.max_length = max_length
        self.mode = mode
        self.padding_side = padding_side
        self.exclude_history = exclude_history

    def __repr__(self) -> str:
        return (f"NextItemCollator(max_length={self.max_length}, mode={self.mode!r}, "
                f"padding_side={self.padding_side!r}, exclude_history={self.exclude_history})")

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        if not rows:
            raise ValueError("NextItemCollator got an empty batch.")
        return self._train(rows) if self.mode == "train" else self._eval(rows)

    def _train(self, rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        keep = self.max_length + 1
        inputs, labels = [], []
        for row in rows:
            items = list(row["item_ids"])[-keep:]
            fields = [_field(row, name, len(row["item_ids"]))[-keep:][:-1] for name in ("timestamps", "action_ids")]
            inputs.append((items[:-1], *fields))
            labels.append(items[1:])
        batch = self._pad_inputs(inputs)
        batch["labels"] = self._pad(labels, IGNORE_INDEX, batch["input_ids"].shape[1])
        return batch

    def _eval(self, rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        inputs, targets, histories = [], [], []
        for index, row in enumerate(rows):
            items = list(row["item_ids"])
            if len(items) < 2:
                raise ValueError(f"Eval row {index} (user {row.get('user_id')!r}) has {len(items)} event(s); "
                                 "expected a history of at least one event plus the target.")
            fields = [_field(row, name, len(items))[:-1][-self.max_length:] for name in ("timestamps", "action_ids")]
            inputs.append((items[:-1][-self.max_length:], *fields))
            targets.append(items[-1])
            histories.append(list(dict.fromkeys(items[:-1])))
        batch = self._pad_inputs(inputs)
        target_ids = torch.tensor(targets, dtype=torch.long)
        labels = torch.full_like(batch["input_ids"], IGNORE_INDEX)
        last = _last_real_position(batch["attention_mask"])
        labels[torch.arange(len(rows)), last] = target_ids
        batch["labels"] = labels
        batch["target_ids"] = target_ids
        if self.exclude_history:
            batch["exclude_ids"] = _pad(histories, 0, max(1, max(len(h) for h in histories)), "right")
        return batch

    def _pad_inputs(self, inputs: list[tuple[list[int], list[int], list[int]]]) -> dict[str, torch.Tensor]:
        width = max(1, max(len(items) for items, _, _ in inputs))  # a row of only padding keeps a valid shape
        return {
            "input_ids": self._pad([items for items, _, _ in inputs], 0, width),
            "attention_mask": self._pad([[1] * len(items) for items, _, _ in inputs], 0, width),
            "timestamps": self._pad([times for _, times, _ in inputs], 0, width),
            "action_ids": self._pad([actions for _, _, actions in inputs], 0, width),
        }

    def _pad(self, sequences: list[list[int]], value: int, width: int) -> torch.Tensor:
        return _pad(sequences, value, width, self.padding_side)


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
