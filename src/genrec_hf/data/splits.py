"""Evaluation splits over canonical sequences. Every split keeps the `sequences` columns; in validation/test rows
the LAST event is the target and everything before it is the history (what `NextItemCollator(mode="eval")` reads).
"""

from __future__ import annotations

import logging

import numpy as np
from datasets import Dataset, DatasetDict

from .interactions import InteractionData, flat_column, row_lengths, take_event_ranges

logger = logging.getLogger(__name__)


def _slice_rows(sequences: Dataset, bounds: list[int | None]) -> Dataset:
    """Row i truncated to its first `bounds[i]` events; rows whose bound is None are left out."""
    rows = np.array([i for i, stop in enumerate(bounds) if stop is not None], dtype=np.int64)
    stops = np.array([stop for stop in bounds if stop is not None], dtype=np.int64)
    return take_event_ranges(sequences, rows, np.zeros_like(rows), stops)


def leave_one_out(data: InteractionData) -> DatasetDict:
    """Per user: train = events up to n−2, validation = up to n−1, test = all n (HSTU / SASRec protocol).

    A split only holds users for which it has a (history, target) pair: train needs n−2 ≥ 2 events, validation
    n−1 ≥ 2, test n ≥ 2.
    """
    lengths = row_lengths(data.sequences).tolist()
    splits = {}
    for name, drop in (("train", 2), ("validation", 1), ("test", 0)):
        splits[name] = _slice_rows(data.sequences, [n - drop if n - drop >= 2 else None for n in lengths])
    _log_sizes("leave-one-out", data, splits)
    return DatasetDict(splits)


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
    train_bounds = [int(b) if b >= 2 else None for b in before]
    test_bounds = [int(b) + 1 if 1 <= b < n else None for b, n in zip(before, lengths)]
    splits = {"train": _slice_rows(data.sequences, train_bounds)}
    splits["validation"] = splits["train"]
    splits["test"] = _slice_rows(data.sequences, test_bounds)
    logger.info("time split at %d (%s)", cut, f"quantile {quantile}" if quantile is not None else "given")
    _log_sizes("time split", data, splits)
    return DatasetDict(splits)


def _log_sizes(kind: str, data: InteractionData, splits: dict[str, Dataset]) -> None:
    logger.info("%s of %s (%d users): %s", kind, data.name, len(data.sequences),
                ", ".join(f"{name} {len(rows)} users" for name, rows in splits.items()))
