"""Staleness replay: offline evaluation of cached serving (paper §4).

Production lists are often computed from a cached user state and shown hours later: the immediate next event may
already be consumed when the list is shown. The replay reproduces that with a staleness Δ, in one of two ways:

* `anchor="request"` (default): every held-out target of an eval split (leave-one-out test, or a task's rows) is a
  request shown at a time T; the cached state is the context **up to T − Δ**, and the context's events after
  T − Δ are the items **consumed in between**. T is the target's time for the single-target tasks (next event,
  high engagement, availability). For the set-valued `long_horizon` task, whose target is the set of new items in
  a window `start_days`-`end_days` after the context's last event, T is that event's time (the request the window
  belongs to), not the first target's time: that one lies at least `start_days` (7) after the context, so every Δ
  below it would replay the full context. Δ = 0 is the split's usual evaluation; every user
  keeps its target (the window is not moved), and users whose whole context is within Δ of T have no cached
  state: counted in `num_users_without_context` and left out. Works with any model (a leave-one-out model does
  not leak: the context is a subset of the usual one; the long-horizon targets, though, lie inside the training
  events of a model trained on the whole log).
* `anchor="cut"`: one global cache refresh at the cut t; the state is the events **before t**, the list is shown
  at **t + Δ**, and the targets are the events **at or after t + Δ** (the next one, or the set within a window, per
  task). Users without an event at or after t + Δ are counted in `num_users_without_target`, users without an
  event before t in `num_users_without_context`; neither is averaged. Δ = 0 is the time-split test; the model must
  have been trained on events before the cut (`data.split: time` with the same cut), or the replay leaks.

Either way, items consumed in between are excluded from the ranking together with the history (the user has them
when the list is shown), and the replay is rows plus a `RankingProtocol` handed to the one ranking path
(`TaskCollator` → `rank_batches` → `rank_targets` → `metrics_from_ranks`), not a loop of its own; every downstream
task of `genrec_hf.data.tasks` has its staleness version (`STALENESS_TASKS`).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from datasets import Dataset, Features, Sequence as SequenceFeature, Value
from torch.utils.data import DataLoader

from ..data import leave_one_out, load_interactions, remap_to_vocab
from ..data.collators import TaskCollator
from ..data.interactions import flat_column
from ..data.protocol import RankingProtocol
from ..data.tasks import build_task, item_availability
from ..loading import load_saved_model
from .metrics import DEFAULT_KS, metrics_from_ranks
from .protocols import rank_batches

logger = logging.getLogger(__name__)

DAY = 24 * 3600
_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": DAY, "w": 7 * DAY}
STALENESS_TASKS = ("short_horizon", "high_engagement", "availability", "long_horizon")


def parse_duration(text: str | float | int) -> int:
    """Seconds of a duration such as `0`, `90s`, `30m`, `1h`, `24h`, `2d`, `1w` (a bare number is seconds)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value = float(text)
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(s|m|min|h|d|w)?\s*", str(text))
        if not match:
            raise ValueError(f"staleness {text!r} is not a duration: expected e.g. 0, 90s, 30m, 1h, 24h, 2d.")
        value = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"staleness {text!r}: expected a duration >= 0.")
    return int(round(value))


def format_duration(seconds: int) -> str:
    """`0`, `90s`, `30m`, `1h`, `48h`: the shortest exact unit up to hours (staleness labels of reports)."""
    if seconds == 0:
        return "0"
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def parse_durations(text: str) -> list[int]:
    """`"0,1h,24h,48h"` → [0, 3600, 86400, 172800] (duplicates refused)."""
    parts = [part for part in text.split(",") if part.strip()]
    if not parts:
        raise ValueError(f"--staleness {text!r}: expected comma-separated durations such as 0,1h,24h,48h.")
    values = [parse_duration(part) for part in parts]
    if len(set(values)) != len(values):
        raise ValueError(f"--staleness {text!r} repeats a duration.")
    return values


REPLAY_FEATURES = Features({
    "user_id": Value("string"),
    "item_ids": SequenceFeature(Value("int64")),
    "timestamps": SequenceFeature(Value("int64")),
    "action_ids": SequenceFeature(Value("int64")),
    "target_ids": SequenceFeature(Value("int64")),
    "target_time": Value("int64"),
    "consumed_ids": SequenceFeature(Value("int64")),  # items consumed between the cut and the show time
})


@dataclass
class StalenessReplay:
    """Eval rows (`TaskCollator(mode="eval")` format + `consumed_ids`) and the protocol of one Δ."""

    delta_seconds: int
    rows: Dataset
    protocol: RankingProtocol
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return format_duration(self.delta_seconds)


def cut_at_quantile(data: Any, quantile: float) -> int:
    """The cut `time_split(quantile=...)` uses: the quantile of all event times (unix seconds)."""
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"cut quantile={quantile}; expected a number strictly between 0 and 1.")
    times, _ = flat_column(data.sequences, "timestamps")
    return int(np.quantile(times, quantile))


def staleness_replay(data: Any, delta: int | str, *, cut: int, task: str = "short_horizon",
                     exclude_history: bool = True, threshold: float = 4.0, window_days: float = 30.0,
                     start_days: float = 7.0, end_days: float = 30.0, max_targets: int = 50) -> StalenessReplay:
    """The replay rows of one staleness `delta` (seconds or a duration string) at the global `cut` (unix s).

    Tasks (as `genrec_hf.data.tasks`, measured from the show time t + Δ instead of the context's end):
        short_horizon: the first event at/after t + Δ;
        high_engagement: the first such event with rating >= `threshold`;
        availability: the first such event on an item available for less than `window_days` at its time, ranked
            among the items available then (the task's protocol);
        long_horizon: the set of new items engaged in [t + Δ + start_days, t + Δ + end_days) (set-valued).
    """
    if task not in STALENESS_TASKS:
        raise ValueError(f"staleness task={task!r}; expected one of {STALENESS_TASKS}.")
    if not getattr(data, "has_timestamps", True):
        raise ValueError(f"staleness replay needs timestamps, but {data.name} has only the event order (cut and "
                         "show time are moments in time); use data with timestamps.")
    delta = parse_duration(delta)
    show = int(cut) + delta
    description = f"staleness replay: state from events before {int(cut)}, shown {format_duration(delta)} later"
    protocol = RankingProtocol(exclude_history=exclude_history, description=f"{description}, next event")
    since = None
    if task == "availability":
        since, _ = item_availability(data)
        window = window_days * DAY
        protocol = RankingProtocol(available_since=since, availability_window=window, exclude_history=exclude_history,
                                   description=f"{description}, next event on an item available < {window_days} days")
    elif task == "long_horizon":
        protocol = RankingProtocol(set_valued=True, exclude_history=exclude_history,
                                   description=f"{description}, new items engaged {start_days}-{end_days} days later")
    elif task == "high_engagement":
        protocol = RankingProtocol(exclude_history=exclude_history,
                                   description=f"{description}, next event with rating >= {threshold}")

    columns: dict[str, list] = {name: [] for name in REPLAY_FEATURES}
    no_context = no_target = 0
    table = data.sequences.with_format("numpy")
    for row in table:
        items, times = np.asarray(row["item_ids"], dtype=np.int64), np.asarray(row["timestamps"], dtype=np.int64)
        begin = int(np.searchsorted(times, cut, side="left"))  # events before the cut: the cached context
        if begin == 0:
            no_context += 1
            continue
        start = int(np.searchsorted(times, show, side="left"))  # first event at/after the show time
        targets, target_time = _targets(task, items, times, row, start, show, begin, since, threshold,
                                        window_days, start_days, end_days, max_targets)
        if not targets:
            no_target += 1
            continue
        columns["user_id"].append(str(row["user_id"]))
        columns["item_ids"].append(items[:begin].tolist())
        columns["timestamps"].append(times[:begin].tolist())
        columns["action_ids"].append(np.asarray(row["action_ids"], dtype=np.int64)[:begin].tolist())
        columns["target_ids"].append(targets)
        columns["target_time"].append(int(target_time))
        columns["consumed_ids"].append(list(dict.fromkeys(items[begin:start].tolist())))
    rows = Dataset.from_dict(columns, features=REPLAY_FEATURES)
    stats = {"anchor": "cut", "cut": int(cut), "show_time": show, "task": task, "num_users_with_target": len(rows),
             "num_users_without_target": no_target, "num_users_without_context": no_context,
             "mean_consumed_in_between": float(np.mean([len(c) for c in columns["consumed_ids"]]))
             if len(rows) else 0.0}
    return StalenessReplay(delta_seconds=delta, rows=rows, protocol=protocol, stats=stats)


def _targets(task: str, items: np.ndarray, times: np.ndarray, row: dict[str, Any], start: int, show: int,
             begin: int, since: torch.Tensor | None, threshold: float, window_days: float, start_days: float,
             end_days: float, max_targets: int) -> tuple[list[int], int]:
    """(targets, time of the first) of one user after the show time, per task; ([], 0) when there is none."""
    after = np.arange(start, len(items))
    if task == "short_horizon":
        picked = after[:1]
    elif task == "high_engagement":
        ratings = np.asarray(row["ratings"], dtype=np.float64)[after]
        picked = after[~np.isnan(ratings) & (ratings >= threshold)][:1]
    elif task == "availability":
        available = since[torch.as_tensor(items[after])].numpy() if len(after) else np.zeros(0, np.int64)
        new = (times[after] - window_days * DAY < available) & (available <= times[after])
        picked = after[new][:1]
    else:  # long_horizon: distinct items not already held, in the window after the show time
        inside = after[(times[after] >= show + start_days * DAY) & (times[after] < show + end_days * DAY)]
        held = set(items[:start].tolist())
        picked_items, first = [], 0
        for j in inside.tolist():
            item = int(items[j])
            if item not in held and item not in picked_items:
                first = first or int(times[j])
                picked_items.append(item)
        return picked_items[:max_targets], first
    if not len(picked):
        return [], 0
    return [int(items[picked[0]])], int(times[picked[0]])


ANCHORS = ("request", "cut")


def request_replay(data: Any, delta: int | str, *, task: str = "short_horizon", split: str = "test",
                   exclude_history: bool = True, **task_params: Any) -> StalenessReplay:
    """`anchor="request"`: the `split` rows of `task` (leave-one-out for `short_horizon`, else the task builder's),
    each shown at its request time T from the cached context up to T − Δ: T is the target's time, or for
    `long_horizon` the context's last event, which the target window is measured from (module docstring)."""
    if task not in STALENESS_TASKS:
        raise ValueError(f"staleness task={task!r}; expected one of {STALENESS_TASKS}.")
    if split not in ("validation", "test"):
        raise ValueError(f"staleness split={split!r}; expected 'validation' or 'test'.")
    if not getattr(data, "has_timestamps", True):
        raise ValueError(f"staleness replay needs timestamps, but {data.name} has only the event order (the cache "
                         "age Δ is a time); use data with timestamps.")
    delta = parse_duration(delta)
    if task == "short_horizon":
        source = leave_one_out(data, required=(split,))[split].with_format("numpy")
        protocol = RankingProtocol(exclude_history=exclude_history, description="next event")
        request_at = "target_time"

        def context_and_target(row: dict[str, Any]) -> tuple[dict[str, np.ndarray], list[int], int, int]:
            events = {name: np.asarray(row[name])[:-1] for name in ("item_ids", "timestamps", "action_ids")}
            return events, [int(row["item_ids"][-1])], int(row["timestamps"][-1]), int(row["timestamps"][-1])
    else:
        built = build_task(task, data, exclude_history=exclude_history, **task_params)
        source, protocol = getattr(built, split).with_format("numpy"), built.protocol
        window = task == "long_horizon"  # targets in a window measured from the context's end: the request is there
        request_at = "context_end" if window else "target_time"

        def context_and_target(row: dict[str, Any]) -> tuple[dict[str, np.ndarray], list[int], int, int]:
            events = {name: np.asarray(row[name]) for name in ("item_ids", "timestamps", "action_ids")}
            request = int(events["timestamps"][-1]) if window else int(row["target_time"])
            return events, [int(t) for t in row["target_ids"]], int(row["target_time"]), request

    columns: dict[str, list] = {name: [] for name in REPLAY_FEATURES}
    no_context = 0
    for row in source:
        events, targets, target_time, request = context_and_target(row)
        # The cache holds the events up to T − Δ (all of them for Δ = 0, ties with the request included).
        cached = int(len(events["item_ids"]) if delta == 0
                     else np.searchsorted(events["timestamps"], request - delta, side="right"))
        if cached == 0:
            no_context += 1
            continue
        columns["user_id"].append(str(row["user_id"]))
        for name in ("item_ids", "timestamps", "action_ids"):
            columns[name].append(events[name][:cached].tolist())
        columns["target_ids"].append(targets)
        columns["target_time"].append(target_time)
        columns["consumed_ids"].append(list(dict.fromkeys(events["item_ids"][cached:].tolist())))
    rows = Dataset.from_dict(columns, features=REPLAY_FEATURES)
    shown = (f"each {split} target shown from the state {format_duration(delta)} before it" if request_at ==
             "target_time" else f"each {split} window requested from the state {format_duration(delta)} before the "
             "context's end")
    description = f"staleness replay: {shown} (items consumed in between excluded), {protocol.description}"
    protocol = RankingProtocol(exclude_history=protocol.exclude_history, set_valued=protocol.set_valued,
                               available_since=protocol.available_since,
                               availability_window=protocol.availability_window, description=description)
    stats = {"anchor": "request", "split": split, "task": task, "request_at": request_at,
             "num_users_with_target": len(rows),
             "num_users_without_target": 0, "num_users_without_context": no_context,
             "mean_consumed_in_between": float(np.mean([len(c) for c in columns["consumed_ids"]]))
             if len(rows) else 0.0}
    return StalenessReplay(delta_seconds=delta, rows=rows, protocol=protocol, stats=stats)


def build_replay(data: Any, delta: int | str, *, anchor: str = "request", cut: int | None = None,
                 task: str = "short_horizon", split: str = "test", exclude_history: bool = True,
                 **task_params: Any) -> StalenessReplay:
    """`request_replay` or (`anchor="cut"`, which needs `cut`) `staleness_replay`."""
    if anchor not in ANCHORS:
        raise ValueError(f"staleness anchor={anchor!r}; expected one of {ANCHORS}.")
    if anchor == "request":
        if cut is not None:
            raise ValueError(f"cut={cut} applies to anchor='cut' only (the request anchor shows each target at "
                             "its own time).")
        return request_replay(data, delta, task=task, split=split, exclude_history=exclude_history, **task_params)
    if cut is None:
        raise ValueError("anchor='cut' needs the cache time: cut=<unix seconds> (e.g. cut_at_quantile(data, 0.9)).")
    return staleness_replay(data, delta, cut=cut, task=task, exclude_history=exclude_history, **task_params)


@torch.no_grad()
def staleness_ranks(model: torch.nn.Module, data: Any, delta: int | str, *, anchor: str = "request",
                    cut: int | None = None, task: str = "short_horizon", split: str = "test",
                    max_length: int | None = None, batch_size: int = 256, exclude_history: bool = True,
                    **task_params: Any) -> tuple[torch.Tensor | None, StalenessReplay]:
    """((users, T) ranks of the replay's rows in `data.sequences` order, or None when no row has a target; the
    replay), through `rank_batches` (for paired comparisons of two models on the same users)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    max_length = max_length or base.config.max_position_embeddings
    replay = build_replay(data, delta, anchor=anchor, cut=cut, task=task, split=split,
                          exclude_history=exclude_history, **task_params)
    if len(replay.rows) == 0:
        return None, replay
    collator = TaskCollator(max_length, mode="eval", exclude_history=exclude_history)
    ranks = rank_batches(model, DataLoader(replay.rows, batch_size=batch_size, collate_fn=collator), replay.protocol)
    return ranks, replay


@torch.no_grad()
def evaluate_staleness(model: torch.nn.Module, data: Any, deltas: Sequence[int | str], *, anchor: str = "request",
                       cut: int | None = None, task: str = "short_horizon", split: str = "test",
                       max_length: int | None = None, batch_size: int = 256, exclude_history: bool = True,
                       ks: Sequence[int] = DEFAULT_KS, **task_params: Any) -> dict[str, Any]:
    """Metrics per Δ of `model` on the replay of `data` (already in the model's vocabulary), `anchor` as in the
    module docstring (`cut` for `anchor="cut"`, `split` for `anchor="request"`).

    Returns {"anchor", "cut", "task", "protocol", "staleness": {label: metrics}, "staleness_cost_mrr": {label:
    MRR(Δ) / MRR(0) - 1}} (the cost only when Δ = 0 is among `deltas`). Each Δ's metrics carry the user counts:
    averaged (`num_users`), without a target after the show time (`num_users_without_target`), without a cached
    state (`num_users_without_context`), and the mean number of items consumed in between.
    """
    results: dict[str, Any] = {}
    description = None
    for delta in deltas:
        ranks, replay = staleness_ranks(model, data, delta, anchor=anchor, cut=cut, task=task, split=split,
                                        max_length=max_length, batch_size=batch_size,
                                        exclude_history=exclude_history, **task_params)
        description = replay.protocol.description.replace(f" {replay.label} ", " Δ ")
        if ranks is None:
            logger.warning("staleness %s: no user has an event at/after the show time; nothing to rank",
                           replay.label)
            metrics: dict[str, Any] = {"num_users": 0}
        else:
            metrics = metrics_from_ranks(ranks, ks)
        metrics["num_users_without_target"] = metrics.get("num_users_without_target", 0) + \
            replay.stats["num_users_without_target"]
        metrics["num_users_without_context"] = replay.stats["num_users_without_context"]
        metrics["mean_consumed_in_between"] = replay.stats["mean_consumed_in_between"]
        results[replay.label] = metrics
    out: dict[str, Any] = {"anchor": anchor, "cut": None if cut is None else int(cut), "task": task,
                           "protocol": description, "staleness": results}
    if "0" in results and results["0"].get("mrr"):
        out["staleness_cost_mrr"] = {label: m["mrr"] / results["0"]["mrr"] - 1.0
                                     for label, m in results.items() if "mrr" in m}
    return out


def default_cut(model_dir: str | Path, data: Any, cut: int | None = None,
                cut_quantile: float | None = None) -> tuple[int, str]:
    """(cut, where it came from): as given, else the time split the model was trained with
    (`training_recipe.yaml`), else the 0.9 quantile of event times with a warning that the model may have seen
    events after it."""
    if cut is not None and cut_quantile is not None:
        raise ValueError(f"give one of --cut ({cut}) and --cut_quantile ({cut_quantile}), not both.")
    if cut is not None:
        return int(cut), "--cut"
    if cut_quantile is not None:
        return cut_at_quantile(data, cut_quantile), f"--cut_quantile {cut_quantile}"
    recipe_path = Path(model_dir) / "training_recipe.yaml"
    section = {}
    if recipe_path.is_file():
        section = (yaml.safe_load(recipe_path.read_text()) or {}).get("data") or {}
    if section.get("split") == "time":
        if section.get("time_split_cut") is not None:
            return int(section["time_split_cut"]), "the model's time split (training_recipe.yaml)"
        quantile = float(section.get("time_split_quantile", 0.9))
        return cut_at_quantile(data, quantile), f"the model's time split at quantile {quantile}"
    logger.warning("the model was not trained with data.split: time, so it may have seen events after the replay "
                   "cut (the 0.9 quantile of event times): pass --cut / --cut_quantile for a model trained before it")
    return cut_at_quantile(data, 0.9), "quantile 0.9 (model not trained with a time split: may leak)"


def evaluate_saved_model_staleness(model_dir: str | Path, source: str, deltas: Sequence[int | str], *,
                                   format: str | None = None, anchor: str = "request", split: str = "test",
                                   cut: int | None = None, cut_quantile: float | None = None,
                                   task: str = "short_horizon",
                                   max_length: int | None = None, batch_size: int = 256,
                                   exclude_history: bool = True, ks: Sequence[int] = DEFAULT_KS,
                                   base: str | Path | None = None, verify: bool = True) -> dict[str, Any]:
    """`evaluate_staleness` of a saved model (or adapter) folder on `source`, mapped into its vocabulary."""
    deltas = [parse_duration(d) for d in deltas]
    model, vocab = load_saved_model(model_dir, base=base, verify=verify)
    data = remap_to_vocab(load_interactions(source, format=format), vocab)
    if not data.has_timestamps:
        raise ValueError(f"--staleness needs timestamps, but {data.name} has only the event order.")
    if anchor == "request":
        if cut is not None or cut_quantile is not None:
            raise ValueError("--cut / --cut_quantile set the cache time of --staleness_anchor cut; the request "
                             "anchor shows each target at its own time.")
        result = evaluate_staleness(model, data, deltas, anchor="request", task=task, split=split,
                                    max_length=max_length, batch_size=batch_size, exclude_history=exclude_history,
                                    ks=ks)
        return {"dataset": data.name, "split": split, **result}
    cut, origin = default_cut(model_dir, data, cut, cut_quantile)
    times, _ = flat_column(data.sequences, "timestamps")
    first, last = int(times.min()), int(times.max())
    if not first < cut <= last:
        raise ValueError(f"the staleness cut {cut} ({origin}) is outside the time range of {data.name}, {first} to "
                         f"{last} (unix seconds): no user has events both before and at/after it, so nothing would "
                         "be ranked; give a --cut inside the range or a --cut_quantile.")
    result = evaluate_staleness(model, data, deltas, anchor="cut", cut=cut, task=task, max_length=max_length,
                                batch_size=batch_size, exclude_history=exclude_history, ks=ks)
    return {"dataset": data.name, "cut_from": origin, **result}
