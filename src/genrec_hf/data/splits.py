"""Evaluation splits over canonical sequences. Every split keeps the `sequences` columns; in validation/test rows
the LAST event is the target and everything before it is the history (what `NextItemCollator(mode="eval")` reads).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
from datasets import Dataset, DatasetDict

from .interactions import InteractionData, flat_column, row_lengths, take_event_ranges

logger = logging.getLogger(__name__)


def _slice_rows(sequences: Dataset, bounds: np.ndarray) -> Dataset:
    """Row i truncated to its first `bounds[i]` events; rows whose bound is -1 are left out."""
    rows = np.flatnonzero(bounds >= 0)
    return take_event_ranges(sequences, rows, np.zeros_like(rows), bounds[rows])


def leave_one_out_bounds(lengths: np.ndarray) -> dict[str, np.ndarray]:
    """Per split, how many of each user's events its row keeps (-1: the user is not in the split): train n−2,
    validation n−1, test n, each only when it leaves a (history, target) pair (>= 2 events). The one rule, shared
    by `leave_one_out` and the streamed splits of a prepared folder."""
    lengths = np.asarray(lengths, dtype=np.int64)
    return {name: np.where(lengths - drop >= 2, lengths - drop, -1)
            for name, drop in (("train", 2), ("validation", 1), ("test", 0))}


def time_split_bounds(lengths: np.ndarray, before: np.ndarray) -> dict[str, np.ndarray]:
    """`time_split`'s rule per user from `before` (events before the cut): train / validation keep the pre-cut
    events (>= 2 of them), test those plus the first event after the cut (>= 1 on each side); -1: not in it."""
    lengths, before = np.asarray(lengths, dtype=np.int64), np.asarray(before, dtype=np.int64)
    train = np.where(before >= 2, before, -1)
    return {"train": train, "validation": train, "test": np.where((before >= 1) & (before < lengths), before + 1, -1)}


def leave_one_out(data: InteractionData,
                  required: Iterable[str] = ("train", "validation", "test")) -> DatasetDict:
    """Per user: train = events up to n−2, validation = up to n−1, test = all n (HSTU / SASRec protocol).

    A split only holds users for which it has a (history, target) pair: train needs n−2 ≥ 2 events (n ≥ 4),
    validation n−1 ≥ 2 (n ≥ 3), test n ≥ 2. A `required` split that is empty is a ValueError that counts users by
    event count (evaluating only the test split can pass `required=("test",)`).
    """
    unknown = sorted(set(required) - {"train", "validation", "test"})
    if unknown:
        raise ValueError(f"required={list(required)}: unknown split(s) {unknown}; expected train, validation, test.")
    lengths = row_lengths(data.sequences)
    bounds = leave_one_out_bounds(lengths)
    splits = {}
    for name, drop in (("train", 2), ("validation", 1), ("test", 0)):
        need = drop + 2
        if name in required and not (bounds[name] >= 0).any():
            raise ValueError(f"leave-one-out of {data.name}: the {name} split is empty. Leave-one-out needs users "
                             "with >= 4 events for train (2 to train on + the validation and test targets), >= 3 for "
                             f"validation, >= 2 for test; no user has >= {need}: {_length_counts(lengths)}. Use a log "
                             "with longer histories (or min_user_events=4 to drop the short users).")
        splits[name] = _slice_rows(data.sequences, bounds[name])
    _log_sizes("leave-one-out", data, splits)
    return DatasetDict(splits)


def _length_counts(lengths: np.ndarray) -> str:
    """'12 users have 2 events, 3 users have 3 events' (of N users) — the shortest few event counts."""
    values, counts = np.unique(lengths, return_counts=True)
    parts = [f"{count} user{'s' if count != 1 else ''} {'have' if count != 1 else 'has'} {value} event"
             f"{'s' if value != 1 else ''}" for value, count in zip(values[:4].tolist(), counts[:4].tolist())]
    if len(values) > 4:
        parts.append(f"{int(counts[4:].sum())} more have {int(values[4])}..{int(values[-1])} events")
    return f"of {len(lengths)} users, " + ", ".join(parts)


def time_split(data: InteractionData, cut: int | None = None, quantile: float | None = None) -> DatasetDict:
    """Global time split at `cut` (unix seconds) or at the `quantile` of all event times.

    train = every user's events before the cut (users with ≥ 2 of them); validation = the same pre-cut events,
    the last one as target (so it is also a training event: a check of fit, not a held-out estimate); test = the
    pre-cut history + the first event at/after the cut as target (users with ≥ 1 event on each side).
    """
    if not data.has_timestamps:
        raise ValueError(f"{data.name} has no timestamps (only event order), so a global time split means nothing; "
                         "use leave_one_out.")
    if (cut is None) == (quantile is None):
        raise ValueError(f"Give exactly one of cut= (unix seconds) or quantile= (0..1); got cut={cut}, "
                         f"quantile={quantile}.")
    if quantile is not None and not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile={quantile}; expected a number strictly between 0 and 1.")
    times, row_of_event = flat_column(data.sequences, "timestamps")
    if quantile is not None:
        cut = int(np.quantile(times, quantile))
    assert cut is not None
    lengths = row_lengths(data.sequences)
    # rows are time-ordered, so the count of pre-cut events is the position of the first event at/after the cut
    before = np.bincount(row_of_event, weights=times < cut, minlength=len(lengths)).astype(np.int64)
    bounds = time_split_bounds(lengths, before)
    in_train, in_test = bounds["train"] >= 0, bounds["test"] >= 0
    how = f"quantile {quantile} of event times" if quantile is not None else "given cut"
    if not in_train.any() or not in_test.any():
        empty = "train and validation splits are" if not in_train.any() else "test split is"
        raise ValueError(
            f"time split of {data.name} at cut {cut} ({how}; event times span {int(times.min())}.."
            f"{int(times.max())}): the {empty} empty. Train/validation need users with >= 2 events before the cut, "
            f"test users with >= 1 event before it and >= 1 at/after it; of {len(lengths)} users, "
            f"{int(in_train.sum())} have >= 2 events before the cut and {int(in_test.sum())} have events on both "
            f"sides ({int(before.sum())} events before, {int((lengths - before).sum())} at/after). Pick another "
            "cut or quantile.")
    splits = {"train": _slice_rows(data.sequences, bounds["train"])}
    splits["validation"] = splits["train"]
    splits["test"] = _slice_rows(data.sequences, bounds["test"])
    logger.info("time split at %d (%s)", cut, how)
    _log_sizes("time split", data, splits)
    return DatasetDict(splits)


def _log_sizes(kind: str, data: InteractionData, splits: dict[str, Dataset]) -> None:
    total = len(data.sequences)
    logger.info("%s of %s (%d users): %s", kind, data.name, total,
                ", ".join(f"{name} {len(rows)} users ({total - len(rows)} left out)" for name, rows in splits.items()))
