"""Multi-token prediction targets (paper §4): a weighted set of future events for every context position.

For a user's time-ordered events e_0 .. e_{n-1} and a context position t (the model has read e_0 .. e_t), the
target set Y_t is the future events e_j, j > t, chosen by

* count: the first K of them (`num_targets`), and/or
* horizon: only those with `time_j - time_t <= H` (`horizon_seconds`),
* value: only events whose reward (an engagement column such as `ratings`) is at least `min_reward`,

each weighted `w = r_j * exp(-ln2 * (time_j - t_context) / beta)` with `beta` = `half_life_seconds` (None: no
decay) and r_j the reward (1 without a reward column). **t_context is the timestamp of the context's last event**
e_t, the moment a cache built from that context could first serve it; the request time of an online system is
t_context or later, which is what the decay accounts for. With `weight_normalization="position"` each position's
weights are divided by their sum (log-space, so decays of many half-lives do not underflow), which makes K = 1
exactly next-token prediction; `"none"` keeps the paper's plain sum.

Targets never leave the row they are built from: a training window's last positions see only the events inside it
(`sliding_windows` with a stride below `max_length` gives them more), and a packed batch builds each example's
targets before packing, so no target crosses from one user into the next.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .interactions import flat_column

LN2 = math.log(2.0)


WEIGHT_NORMALIZATIONS = ("position", "none")


def _check(condition: bool, field: str, value: Any, expected: str) -> None:
    if not condition:
        raise ValueError(f"{field}={value!r} is invalid: expected {expected}.")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class MultiTokenTargets:
    """Builds (targets, weights) for every context position of one example (a recipe's `objective:` section with
    `type: mtp` makes one; the fields are that section's, module docstring)."""

    num_targets: int | None = 5
    horizon_seconds: float | None = None
    half_life_seconds: float | None = 3600.0
    reward_column: str | None = None
    min_reward: float | None = None
    weight_normalization: str = "position"

    def __post_init__(self) -> None:
        k = self.num_targets
        _check(k is None or (isinstance(k, int) and not isinstance(k, bool) and k > 0), "num_targets", k,
               "None (every event within the horizon) or a positive integer number of future events")
        for name in ("horizon_seconds", "half_life_seconds"):
            value = getattr(self, name)
            _check(value is None or (_number(value) and value > 0), name, value, "None or a positive number of seconds")
        _check(k is not None or self.horizon_seconds is not None, "num_targets", k,
               "a positive integer when horizon_seconds is None (at least one of them bounds the targets)")
        column = self.reward_column
        _check(column is None or (isinstance(column, str) and column != ""), "reward_column", column,
               "None (reward 1) or the name of a per-event numeric column, e.g. 'ratings'")
        _check(self.min_reward is None or _number(self.min_reward), "min_reward", self.min_reward, "None or a number")
        _check(self.min_reward is None or column is not None, "min_reward", self.min_reward,
               "None when reward_column is None (the threshold applies to the reward column)")
        _check(self.weight_normalization in WEIGHT_NORMALIZATIONS, "weight_normalization", self.weight_normalization,
               f"one of {WEIGHT_NORMALIZATIONS}")

    @property
    def uses_time(self) -> bool:
        """Whether the targets read timestamps (a horizon or a decay), which data without timestamps lacks."""
        return self.horizon_seconds is not None or self.half_life_seconds is not None

    def __call__(self, items: Sequence[int], times: Sequence[int] | None = None,
                 rewards: Sequence[float] | None = None,
                 num_positions: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(P, W) int64 targets (0 = empty slot) and (P, W) float32 weights of the first P positions.

        `items`, `times` (unix seconds) and `rewards` are one user's events in time order; position t's targets are
        events after t (P = `num_positions`, default len(items) - 1). W is K, or with only a horizon the largest
        target count of the example. A position whose slot 0 is 0 has no target (it is not supervised).
        """
        items = np.asarray(items, dtype=np.int64)
        n = len(items)
        positions = n - 1 if num_positions is None else num_positions
        if positions < 0 or positions > n:
            raise ValueError(f"num_positions={num_positions} for an example of {n} events.")
        times = np.zeros(n, dtype=np.int64) if times is None else np.asarray(times, dtype=np.int64)
        if self.reward_column is not None and rewards is None:
            raise ValueError(f"reward_column={self.reward_column!r}: the example has no such column.")
        reward = np.ones(n, dtype=np.float64) if rewards is None else np.asarray(rewards, dtype=np.float64)
        if len(times) != n or len(reward) != n:
            raise ValueError(f"items, times and rewards must have one value per event ({n}); got {len(times)} "
                             f"times and {len(reward)} rewards.")
        if np.isnan(reward).any() or (reward < 0).any():
            bad = reward[np.isnan(reward) | (reward < 0)][0]
            raise ValueError(f"reward_column={self.reward_column!r} holds {bad}; rewards must be numbers >= 0.")

        # Candidate events: those that may be targets at all (reward threshold, positive reward).
        keep = reward > 0
        if self.min_reward is not None:
            keep &= reward >= self.min_reward
        candidates = np.flatnonzero(keep)  # event indices, increasing
        t = np.arange(positions)
        first = np.searchsorted(candidates, t, side="right")  # first candidate after position t
        if self.horizon_seconds is not None:
            limit = times[:positions] + self.horizon_seconds
            last = np.searchsorted(times[candidates], limit, side="right")  # times are sorted within a row
            last = np.maximum(last, first)
        else:
            last = np.full(positions, len(candidates))
        if self.num_targets is not None:
            last = np.minimum(last, first + self.num_targets)
        counts = last - first
        width = self.num_targets if self.num_targets is not None else max(1, int(counts.max(initial=0)))
        slots = np.arange(width)
        valid = slots[None, :] < counts[:, None]  # (P, W)
        index = np.where(valid, first[:, None] + slots[None, :], 0)
        events = candidates[np.minimum(index, max(len(candidates) - 1, 0))] if len(candidates) else index
        targets = np.where(valid, items[events] if n else 0, 0).astype(np.int64)

        log_w = np.log(np.where(valid, reward[events], 1.0))
        if self.half_life_seconds is not None:
            delta = (times[events] - times[t][:, None]).astype(np.float64)
            log_w = log_w - LN2 * delta / self.half_life_seconds
        log_w = np.where(valid, log_w, -np.inf)
        if self.weight_normalization == "position":
            top = np.where(counts > 0, log_w.max(axis=1, initial=-np.inf), 0.0)[:, None]
            weights = np.exp(log_w - top)
            weights /= np.maximum(weights.sum(axis=1, keepdims=True), np.finfo(np.float64).tiny)
        else:
            weights = np.exp(log_w)
        return targets, np.where(valid, weights, 0.0).astype(np.float32)


def check_reward_column(dataset: Any, column: str | None, where: str = "training rows") -> None:
    """Raise a `ValueError` naming the column when it is absent, not numeric, or holds negative values."""
    if column is None:
        return
    features = getattr(dataset, "features", None) or {}
    if column not in features:
        numeric = sorted(name for name, feature in features.items() if _is_numeric_sequence(feature))
        raise ValueError(f"objective.reward_column={column!r} is not a column of the {where}; per-event numeric columns "
                         f"are {numeric}.")
    if not _is_numeric_sequence(features[column]):
        raise ValueError(f"objective.reward_column={column!r} is not a per-event numeric column of the {where} "
                         f"(it is {features[column]}).")
    values, _ = flat_column(dataset, column)
    bad = np.isnan(values) | (values < 0) if values.dtype.kind == "f" else values < 0
    if bad.any():
        raise ValueError(f"objective.reward_column={column!r} holds {values[bad][0]} in the {where}; rewards must be "
                         "numbers >= 0.")


def _is_numeric_sequence(feature: Any) -> bool:
    inner = getattr(feature, "feature", None)
    if inner is None and isinstance(feature, list) and feature:
        inner = feature[0]
    dtype = getattr(inner, "dtype", "")
    return isinstance(dtype, str) and (dtype.startswith("int") or dtype.startswith("float")
                                       or dtype.startswith("uint"))
