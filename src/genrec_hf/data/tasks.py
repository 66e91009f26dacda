"""Downstream tasks built from one interaction log: the task registry and builders (datasets + ranking protocol).

Every task turns `InteractionData` (one time-ordered row per user) into a `TaskData`:

* `train` rows: `user_id`, `item_ids`, `timestamps`, `action_ids`, `labels` — `labels[t]` is the item to predict
  after events ≤ t, or -100 where the task has nothing to supervise. The pre-training objective is the special
  case `labels[t] = item_ids[t+1]`; a task keeps only the positions whose next event is a task target.
* `validation` / `test` rows: the context (`item_ids`, `timestamps`, `action_ids`, most recent last) plus
  `target_ids` (one or more items) and `target_time` (unix seconds of the first target, 0 when unknown).
* `protocol` (`genrec_hf.data.protocol.RankingProtocol`): whether targets are a set, and an optional per-item
  availability date + window that restrict the ranked catalog of a row to items that became available within
  `window` before its `target_time`.

Batches come from `genrec_hf.data.collators.TaskCollator` (training rows cut by `label_windows`), ranking and metrics
from `genrec_hf.evaluation` (`evaluate_model(model, batches, task.protocol)`), like every other protocol.

Splits are per-user and leak-free in time order (the leave-one-out protocol generalised to task targets): a user's
test anchor is their last qualifying target, the validation anchor the last qualifying target before it, and the
training rows only see events before the validation anchor.

`register_task(name, check=fn)` also registers `fn(**params)`, which refuses parameters that can select no target
(an empty window) when a recipe is read, before any data; a fine-tune refuses a task left with no user
(`require_eligible_users`).

Registering your own task::

    from genrec_hf.data.tasks import build_task, register_task, single_target_task

    @register_task("weekend")
    def weekend_task(data, **params):
        "Next event that happens on a Saturday or Sunday."
        import datetime
        def is_target(row, i):
            return datetime.datetime.utcfromtimestamp(row["timestamps"][i]).weekday() >= 5
        return single_target_task(data, is_target, name="weekend", params=params)

    task = build_task("weekend", data)   # TaskData with train / validation / test / protocol
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from datasets import Dataset, Features, Sequence, Value

from .interactions import InteractionData
from .protocol import RankingProtocol

DAY = 24 * 3600

_CONTEXT_FEATURES = {
    "user_id": Value("string"),
    "item_ids": Sequence(Value("int64")),
    "timestamps": Sequence(Value("int64")),
    "action_ids": Sequence(Value("int64")),
}
TRAIN_FEATURES = Features({**_CONTEXT_FEATURES, "labels": Sequence(Value("int64"))})
EVAL_FEATURES = Features({
    **_CONTEXT_FEATURES,
    "target_ids": Sequence(Value("int64")),
    "target_time": Value("int64"),
})


@dataclass
class TaskData:
    """A downstream task's datasets (canonical row formats above) and the protocol its eval rows are ranked by."""

    name: str
    train: Dataset
    validation: Dataset
    test: Dataset
    protocol: RankingProtocol
    params: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)


TaskBuilder = Callable[..., TaskData]
TASKS: dict[str, TaskBuilder] = {}
TASK_CHECKS: dict[str, Callable[..., None]] = {}  # per task: parameters that can select no target at all


def register_task(name: str, check: Callable[..., None] | None = None) -> Callable[[TaskBuilder], TaskBuilder]:
    """Decorator registering `fn(data, **params) -> TaskData` under `name` (see the module docstring); `check(**params)`
    raises a `ValueError` for parameters that can never select a target, before any data is read."""

    def decorator(fn: TaskBuilder) -> TaskBuilder:
        TASKS[name] = fn
        if check is not None:
            TASK_CHECKS[name] = check
        return fn

    return decorator


def check_task_params(name: str, params: dict[str, Any]) -> None:
    """The task's own parameter check (`register_task(check=...)`) on its defaults updated with `params`."""
    if name in TASK_CHECKS:
        defaults = {p.name: p.default for p in inspect.signature(TASKS[name]).parameters.values()
                    if p.default is not inspect.Parameter.empty}
        TASK_CHECKS[name](**{**defaults, **params})


def build_task(name: str, data: InteractionData, **params: Any) -> TaskData:
    """Build the registered task `name` from `InteractionData`, with task parameters as keywords (checked first by
    the task's own `check`, see `register_task`)."""
    if name not in TASKS:
        raise ValueError(f"Unknown task {name!r}; registered tasks are {sorted(TASKS)} (add one with "
                         "@genrec_hf.data.tasks.register_task).")
    check_task_params(name, params)
    return TASKS[name](data, **params)


def require_eligible_users(task: TaskData, data_name: str) -> None:
    """Raise a `ValueError` naming the task and its parameters when it has no user to train, validate and test on
    (parameters no event meets, such as a rating threshold above every rating): a fine-tune of it would train on
    nothing and fail at its end with an empty evaluation."""
    empty = [split for split in ("train", "validation", "test") if len(getattr(task, split)) == 0]
    if empty:
        shown = ", ".join(f"{k}={v!r}" for k, v in task.params.items()) or "default parameters"
        raise ValueError(f"task {task.name!r} ({shown}) has no eligible user in {data_name}: its {' and '.join(empty)} "
                         f"rows are empty ({task.stats.get('users_dropped', '?')} users dropped); change the task's "
                         "parameters (recipe task.params).")


# ---------------------------------------------------------------------------------------------------------------------
# Shared builders


def _rows(data: InteractionData) -> Iterable[dict[str, Any]]:
    for row in data.sequences:
        n = len(row["item_ids"])
        yield {
            "user_id": str(row["user_id"]),
            "item_ids": list(row["item_ids"]),
            "timestamps": list(row.get("timestamps") or [0] * n),
            "action_ids": list(row.get("action_ids") or [0] * n),
            "ratings": list(row.get("ratings") or [float("nan")] * n),
        }


def _train_row(row: dict[str, Any], stop: int, is_target: Callable[[dict[str, Any], int], bool]) -> dict | None:
    """Events before `stop`, labelled at t with item t+1 where event t+1 is a task target."""
    if stop < 2:
        return None
    labels = [row["item_ids"][t + 1] if is_target(row, t + 1) else -100 for t in range(stop - 1)] + [-100]
    if all(label == -100 for label in labels):
        return None
    return {"user_id": row["user_id"], "item_ids": row["item_ids"][:stop], "timestamps": row["timestamps"][:stop],
            "action_ids": row["action_ids"][:stop], "labels": labels}


def _eval_row(row: dict[str, Any], stop: int, targets: list[int], target_time: int) -> dict[str, Any]:
    return {"user_id": row["user_id"], "item_ids": row["item_ids"][:stop], "timestamps": row["timestamps"][:stop],
            "action_ids": row["action_ids"][:stop], "target_ids": targets, "target_time": int(target_time)}


def _datasets(train: list, validation: list, test: list) -> tuple[Dataset, Dataset, Dataset]:
    def make(rows: list, features: Features) -> Dataset:
        if not rows:
            return Dataset.from_dict({k: [] for k in features}, features=features)
        return Dataset.from_list(rows, features=features)

    return make(train, TRAIN_FEATURES), make(validation, EVAL_FEATURES), make(test, EVAL_FEATURES)


def single_target_task(
    data: InteractionData,
    is_target: Callable[[dict[str, Any], int], bool],
    *,
    name: str,
    params: dict[str, Any] | None = None,
    protocol: RankingProtocol | None = None,
    min_context: int = 1,
) -> TaskData:
    """A next-event task whose target is the next event satisfying `is_target(row, i)`.

    `row` holds the user's full lists (`item_ids`, `timestamps`, `action_ids`, `ratings`); `i` indexes an event.
    Test = the user's last qualifying event (context = everything before it); validation = the last qualifying
    event before that; training rows cover the events before the validation anchor, supervised at every position
    whose next event qualifies. Users without two qualifying events after `min_context` events are dropped.
    """
    train, validation, test = [], [], []
    dropped = 0
    for row in _rows(data):
        anchors = [i for i in range(min_context, len(row["item_ids"])) if is_target(row, i)]
        if len(anchors) < 2:
            dropped += 1
            continue
        val_i, test_i = anchors[-2], anchors[-1]
        test.append(_eval_row(row, test_i, [row["item_ids"][test_i]], row["timestamps"][test_i]))
        validation.append(_eval_row(row, val_i, [row["item_ids"][val_i]], row["timestamps"][val_i]))
        train_row = _train_row(row, val_i, is_target)
        if train_row is not None:
            train.append(train_row)
    tr, va, te = _datasets(train, validation, test)
    return TaskData(name=name, train=tr, validation=va, test=te, protocol=protocol or RankingProtocol(),
                    params=dict(params or {}),
                    stats={"users_dropped": dropped, "train_rows": len(tr), "eval_users": len(te)})


def validation_cut(tasks: Iterable[TaskData]) -> dict[str, int]:
    """Per user, how many of their events come before the earliest validation anchor of any of `tasks`: a model
    pre-trained on those events only has seen no task's validation or test target."""
    cut: dict[str, int] = {}
    for task in tasks:
        for user, items in zip(task.validation["user_id"], task.validation["item_ids"]):
            cut[str(user)] = min(cut.get(str(user), len(items)), len(items))
    return cut


def events_before(data: InteractionData, cut: dict[str, int], users: Iterable[str] | None = None,
                  min_events: int = 3) -> InteractionData:
    """`data` with each user's events cut to `cut[user]` (`validation_cut`: no task target leaks into
    pre-training); users no task evaluates keep every event; `users` keeps only those users; users left with fewer
    than `min_events` events are dropped."""
    sequences = data.sequences
    if users is not None:
        keep = set(users)
        sequences = sequences.filter(lambda row: str(row["user_id"]) in keep)
    columns = [c for c in ("item_ids", "timestamps", "action_ids", "ratings") if c in sequences.column_names]

    def truncate(row: dict[str, Any]) -> dict[str, Any]:
        stop = cut.get(str(row["user_id"]), len(row["item_ids"]))
        return {c: row[c][:stop] if row[c] is not None else None for c in columns}

    sequences = sequences.map(truncate).filter(lambda row: len(row["item_ids"]) >= min_events)
    return dataclasses.replace(data, sequences=sequences)


# ---------------------------------------------------------------------------------------------------------------------
# Built-in tasks


def _check_long_horizon(start_days: float, end_days: float, start_events: int, end_events: int, max_targets: int,
                        train_stride: int, max_train_targets: int, **_: Any) -> None:
    for low, high, value_low, value_high in (("start_days", "end_days", start_days, end_days),
                                             ("start_events", "end_events", start_events, end_events)):
        if not value_low < value_high:
            raise ValueError(f"task long_horizon: {low}={value_low} must be less than {high}={value_high} (the "
                             f"target window [{low}, {high}) after the context would be empty).")
    for key, value in (("max_targets", max_targets), ("train_stride", train_stride),
                       ("max_train_targets", max_train_targets)):
        if value < 1:
            raise ValueError(f"task long_horizon: {key}={value}; expected an integer >= 1.")


def _check_availability(window_days: float, window_events: int, **_: Any) -> None:
    if not window_days > 0 or not window_events > 0:
        raise ValueError(f"task availability: window_days={window_days} and window_events={window_events} must be "
                         "> 0 (an empty window makes no item new).")


@register_task("short_horizon")
def short_horizon(data: InteractionData, exclude_history: bool = True) -> TaskData:
    """Paper task B: the very next event after the context (leave-one-out on all events)."""
    protocol = RankingProtocol(exclude_history=exclude_history, description="next event after the context")
    return single_target_task(data, lambda row, i: True, name="short_horizon",
                              params={"exclude_history": exclude_history}, protocol=protocol)


@register_task("high_engagement")
def high_engagement(data: InteractionData, threshold: float = 4.0, exclude_history: bool = True) -> TaskData:
    """Next event whose rating/engagement is at least `threshold` (e.g. rating ≥ 4 on MovieLens)."""
    protocol = RankingProtocol(exclude_history=exclude_history, description=f"next event with rating >= {threshold}")

    def is_target(row: dict[str, Any], i: int) -> bool:
        value = row["ratings"][i]
        return value is not None and not math.isnan(value) and value >= threshold

    return single_target_task(data, is_target, name="high_engagement",
                              params={"threshold": threshold, "exclude_history": exclude_history},
                              protocol=protocol)


def item_availability(data: InteractionData, use_release_dates: bool = True) -> tuple[torch.Tensor, str]:
    """(V,) availability date per item index and its unit.

    With timestamps: the release timestamp from `data.item_info` (keys `release_timestamp`/`release_date` as unix
    seconds) when present and `use_release_dates`, else the item's first appearance in the log. Without timestamps:
    the global event index of its first appearance (users concatenated in order — a proxy; reported as "events").
    """
    size = len(data.vocab)
    since = torch.full((size,), torch.iinfo(torch.int64).max, dtype=torch.int64)
    has_time = bool(data.has_timestamps)
    counter = 0
    for row in data.sequences:
        times = row.get("timestamps") if has_time else None
        for j, item in enumerate(row["item_ids"]):
            value = int(times[j]) if times else counter
            counter += 1
            if value < since[item]:
                since[item] = value
    if has_time and use_release_dates and data.item_info:
        for raw_id, info in data.item_info.items():
            release = info.get("release_timestamp", info.get("release_date")) if isinstance(info, dict) else None
            if isinstance(release, (int, float)) and not isinstance(release, bool):
                try:
                    index = data.vocab.encode(raw_id)
                except (KeyError, ValueError):
                    continue
                if isinstance(index, int) and 0 < index < size:
                    since[index] = int(release)
    return since, ("seconds" if has_time else "events")


@register_task("availability", check=_check_availability)
def availability(data: InteractionData, window_days: float = 30.0, window_events: int = 2000,
                 use_release_dates: bool = True, exclude_history: bool = True) -> TaskData:
    """Paper task C ("what's new for you"): the next event on an item that became available within the window.

    An item is new at time t if `t - window < available_since(item) <= t` (release date, or first appearance in
    the log). Each row ranks only the items new at its target time. Without timestamps the window is counted in
    global events (`window_events`), a proxy stated in the protocol's description.
    """
    since, unit = item_availability(data, use_release_dates)
    window = window_days * DAY if unit == "seconds" else float(window_events)
    if unit == "events":
        # Event positions in the same global order as item_availability counted them.
        offsets, total = {}, 0
        for row in data.sequences:
            offsets[str(row["user_id"])] = total
            total += len(row["item_ids"])

    def event_time(row: dict[str, Any], i: int) -> int:
        return row["timestamps"][i] if unit == "seconds" else offsets[row["user_id"]] + i

    def is_target(row: dict[str, Any], i: int) -> bool:
        t = event_time(row, i)
        return t - window < int(since[row["item_ids"][i]]) <= t

    width = f"{window_days} days" if unit == "seconds" else f"{window_events} events"
    protocol = RankingProtocol(available_since=since, availability_window=window, exclude_history=exclude_history,
                               description=f"next event on an item available for < {width} (ranked among such items)")
    task = single_target_task(data, is_target, name="availability", protocol=protocol,
                              params={"window_days": window_days, "window_events": window_events,
                                      "use_release_dates": use_release_dates, "exclude_history": exclude_history})
    if unit == "events":  # rows carry the event position so the candidate window matches the availability unit
        for split in ("validation", "test"):
            ds = getattr(task, split)
            ds = ds.map(lambda r: {"target_time": offsets[r["user_id"]] + len(r["item_ids"])})
            setattr(task, split, ds.cast(EVAL_FEATURES))
    task.stats["availability_unit"] = unit
    return task


@register_task("long_horizon", check=_check_long_horizon)
def long_horizon(data: InteractionData, start_days: float = 7.0, end_days: float = 30.0, start_events: int = 5,
                 end_events: int = 20, max_targets: int = 50, train_stride: int = 5, max_train_targets: int = 5,
                 exclude_history: bool = True) -> TaskData:
    """Paper task A (long-horizon taste): the set of items engaged in `[start, end)` after the context.

    The window is `[t_last + start_days, t_last + end_days)` where t_last is the time of the last context event;
    without timestamps it is events `[start_events, end_events)` after the context (stated in `stats`). Targets
    already in the context are dropped (the history is excluded from ranking). Test context = the latest cut
    with a non-empty window; validation = the same rule on the events before the test window starts; training
    rows use cuts every `train_stride` events before the validation window, each target set subsampled to
    `max_train_targets` rows (one target supervised at the last position per row).
    """
    timed = bool(data.has_timestamps)

    def window(row: dict[str, Any], stop: int, limit: int) -> tuple[list[int], int, int]:
        """Distinct new items in the window after events[:stop], seen before index `limit`; (targets, time, end)."""
        items, times = row["item_ids"], row["timestamps"]
        seen = set(items[:stop])
        if timed:
            lo, hi = times[stop - 1] + start_days * DAY, times[stop - 1] + end_days * DAY
            picked = [j for j in range(stop, limit) if lo <= times[j] < hi]
        else:
            picked = list(range(stop + start_events, min(stop + end_events, limit)))
        targets, first_time = [], 0
        for j in picked:
            if items[j] not in seen and items[j] not in targets:
                if not targets:
                    first_time = times[j]
                targets.append(items[j])
        end = (picked[-1] + 1) if picked else stop
        return targets[:max_targets], first_time, end

    def latest_cut(row: dict[str, Any], limit: int) -> tuple[int, list[int], int] | None:
        for stop in range(limit - 1, 0, -1):
            targets, t, _ = window(row, stop, limit)
            if targets:
                return stop, targets, t
        return None

    train, validation, test = [], [], []
    dropped = 0
    for row in _rows(data):
        n = len(row["item_ids"])
        test_cut = latest_cut(row, n)
        if test_cut is None:
            dropped += 1
            continue
        # Validation must not see the test targets: its window ends before the test context ends.
        val_cut = latest_cut(row, test_cut[0])
        if val_cut is None:
            dropped += 1
            continue
        test.append(_eval_row(row, test_cut[0], test_cut[1], test_cut[2]))
        validation.append(_eval_row(row, val_cut[0], val_cut[1], val_cut[2]))
        limit = val_cut[0]
        for stop in range(limit - 1, 0, -train_stride):
            targets, _, _ = window(row, stop, limit)
            for target in targets[:max_train_targets]:
                train.append({"user_id": row["user_id"], "item_ids": row["item_ids"][:stop],
                              "timestamps": row["timestamps"][:stop], "action_ids": row["action_ids"][:stop],
                              "labels": [-100] * (stop - 1) + [target]})
    tr, va, te = _datasets(train, validation, test)
    unit = "days" if timed else "events (no timestamps: event-count window)"
    lo, hi = (start_days, end_days) if timed else (start_events, end_events)
    protocol = RankingProtocol(set_valued=True, exclude_history=exclude_history,
                               description=f"set of new items engaged {lo}-{hi} {unit} after the context")
    return TaskData(name="long_horizon", train=tr, validation=va, test=te, protocol=protocol,
                    params={"start_days": start_days, "end_days": end_days, "start_events": start_events,
                            "end_events": end_events, "max_targets": max_targets, "train_stride": train_stride,
                            "max_train_targets": max_train_targets, "exclude_history": exclude_history},
                    stats={"users_dropped": dropped, "train_rows": len(tr), "eval_users": len(te),
                           "window_unit": unit})
