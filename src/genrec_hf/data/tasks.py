"""Downstream tasks built from one interaction log: datasets + evaluation spec per task.

Every task turns `InteractionData` (one time-ordered row per user) into a `TaskData`:

* `train` rows: `user_id`, `item_ids`, `timestamps`, `action_ids`, `labels` — `labels[t]` is the item to predict
  after events ≤ t, or -100 where the task has nothing to supervise. The pre-training objective is the special
  case `labels[t] = item_ids[t+1]`; a task keeps only the positions whose next event is a task target.
* `validation` / `test` rows: the context (`item_ids`, `timestamps`, `action_ids`, most recent last) plus
  `target_ids` (one or more items) and `target_time` (unix seconds of the first target, 0 when unknown).
* `spec` (`EvalSpec`): whether targets are a set, and an optional per-item availability date + window that restrict
  the ranked catalog of a row to items that became available within `window` before its `target_time`.

Splits are per-user and leak-free in time order (the leave-one-out protocol generalised to task targets): a user's
test anchor is their last qualifying target, the validation anchor the last qualifying target before it, and the
training rows only see events before the validation anchor.

Registering your own task::

    from genrec_hf.tasks import TaskData, register_task, single_target_task

    @register_task("weekend")
    def weekend_task(data, **params):
        "Next event that happens on a Saturday or Sunday."
        import datetime
        def is_target(row, i):
            return datetime.datetime.utcfromtimestamp(row["timestamps"][i]).weekday() >= 5
        return single_target_task(data, is_target, name="weekend", params=params)

    task = build_task("weekend", data)   # TaskData with train / validation / test / spec
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from datasets import Dataset, Features, Sequence, Value

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
class EvalSpec:
    """How a task's validation/test rows are ranked and scored.

    Attributes:
        set_valued: Targets are a set (long-horizon); metrics use the set definitions of `set_metrics_from_ranks`.
        available_since: Optional (V,) int64 tensor: when each item became available (unix s or event index);
            with `availability_window`, a row ranks only items with
            `target_time - window < available_since <= target_time` (targets are always ranked).
        availability_window: Width of that window, in the unit of `available_since`.
        exclude_history: Do not rank items of the context (targets are always ranked).
        description: One line saying what the target is (goes into metrics.json and the card).
    """

    set_valued: bool = False
    available_since: torch.Tensor | None = None
    availability_window: float | None = None
    exclude_history: bool = True
    description: str = ""


@dataclass
class TaskData:
    """A downstream task's datasets (canonical row formats above) and evaluation spec."""

    name: str
    train: Dataset
    validation: Dataset
    test: Dataset
    spec: EvalSpec
    params: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)


TaskBuilder = Callable[..., TaskData]
TASKS: dict[str, TaskBuilder] = {}


def register_task(name: str) -> Callable[[TaskBuilder], TaskBuilder]:
    """Decorator registering `fn(data, **params) -> TaskData` under `name` (see the module docstring)."""

    def decorator(fn: TaskBuilder) -> TaskBuilder:
        TASKS[name] = fn
        return fn

    return decorator


def build_task(name: str, data: Any, **params: Any) -> TaskData:
    """Build the registered task `name` from `InteractionData`, with task parameters as keywords."""
    if name not in TASKS:
        raise ValueError(f"Unknown task {name!r}; registered tasks are {sorted(TASKS)} (add one with "
                         "@genrec_hf.tasks.register_task).")
    return TASKS[name](data, **params)


# ---------------------------------------------------------------------------------------------------------------------
# Shared builders


def _rows(data: Any) -> Iterable[dict[str, Any]]:
    for row in data.sequences:
        n = len(row["item_ids"])
        yield {
            "user_id": str(row["user_id"]),
            "item_ids": list(row["item_ids"]),
            "timestamps": list(row.get("timestamps") or [0] * n),
            "action_ids": list(row.get("action_ids") or [0] * n),
            "ratings": list(row.get("ratings") or [float("nan")] * n),
        }


def _cut(row: dict[str, Any], stop: int) -> dict[str, Any]:
    return {k: (v[:stop] if isinstance(v, list) else v) for k, v in row.items()}


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
    data: Any,
    is_target: Callable[[dict[str, Any], int], bool],
    *,
    name: str,
    params: dict[str, Any] | None = None,
    spec: EvalSpec | None = None,
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
    return TaskData(name=name, train=tr, validation=va, test=te, spec=spec or EvalSpec(), params=dict(params or {}),
                    stats={"users_dropped": dropped, "train_rows": len(tr), "eval_users": len(te)})


# ---------------------------------------------------------------------------------------------------------------------
# Built-in tasks


@register_task("short_horizon")
def short_horizon(data: Any, exclude_history: bool = True) -> TaskData:
    """Paper task B: the very next event after the context (leave-one-out on all events)."""
    spec = EvalSpec(exclude_history=exclude_history, description="next event after the context")
    return single_target_task(data, lambda row, i: True, name="short_horizon",
                              params={"exclude_history": exclude_history}, spec=spec)


@register_task("high_engagement")
def high_engagement(data: Any, threshold: float = 4.0, exclude_history: bool = True) -> TaskData:
    """Next event whose rating/engagement is at least `threshold` (e.g. rating ≥ 4 on MovieLens)."""
    spec = EvalSpec(exclude_history=exclude_history, description=f"next event with rating >= {threshold}")

    def is_target(row: dict[str, Any], i: int) -> bool:
        value = row["ratings"][i]
        return value is not None and not math.isnan(value) and value >= threshold

    return single_target_task(data, is_target, name="high_engagement",
                              params={"threshold": threshold, "exclude_history": exclude_history}, spec=spec)


def item_availability(data: Any, use_release_dates: bool = True) -> tuple[torch.Tensor, str]:
    """(V,) availability date per item index and its unit.

    With timestamps: the release timestamp from `data.item_info` (keys `release_timestamp`/`release_date` as unix
    seconds) when present and `use_release_dates`, else the item's first appearance in the log. Without timestamps:
    the global event index of its first appearance (users concatenated in order — a proxy; reported as "events").
    """
    size = len(data.vocab)
    since = torch.full((size,), torch.iinfo(torch.int64).max, dtype=torch.int64)
    has_time = bool(getattr(data, "has_timestamps", True))
    counter = 0
    for row in data.sequences:
        times = row.get("timestamps") if has_time else None
        for j, item in enumerate(row["item_ids"]):
            value = int(times[j]) if times else counter
            counter += 1
            if value < since[item]:
                since[item] = value
    if has_time and use_release_dates and getattr(data, "item_info", None):
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


@register_task("availability")
def availability(data: Any, window_days: float = 30.0, window_events: int = 2000, use_release_dates: bool = True,
                 exclude_history: bool = True) -> TaskData:
    """Paper task C ("what's new for you"): the next event on an item that became available within the window.

    An item is new at time t if `t - window < available_since(item) <= t` (release date, or first appearance in
    the log). Each row ranks only the items new at its target time. Without timestamps the window is counted in
    global events (`window_events`), a proxy stated in the spec.
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

    spec = EvalSpec(available_since=since, availability_window=window, exclude_history=exclude_history,
                    description=f"next event on an item available for < {window_days if unit == 'seconds' else window_events} "
                                f"{'days' if unit == 'seconds' else 'events'} (ranked among such items)")
    task = single_target_task(data, is_target, name="availability", spec=spec,
                              params={"window_days": window_days, "window_events": window_events,
                                      "use_release_dates": use_release_dates, "exclude_history": exclude_history})
    if unit == "events":  # rows carry the event position so the candidate window matches the availability unit
        for split in ("validation", "test"):
            ds = getattr(task, split)
            ds = ds.map(lambda r: {"target_time": offsets[r["user_id"]] + len(r["item_ids"])})
            setattr(task, split, ds.cast(EVAL_FEATURES))
    task.stats["availability_unit"] = unit
    return task


@register_task("long_horizon")
def long_horizon(data: Any, start_days: float = 7.0, end_days: float = 30.0, start_events: int = 5,
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
    timed = bool(getattr(data, "has_timestamps", True))

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
    spec = EvalSpec(set_valued=True, exclude_history=exclude_history,
                    description=f"set of new items engaged {lo}-{hi} {unit} after the context")
    return TaskData(name="long_horizon", train=tr, validation=va, test=te, spec=spec,
                    params={"start_days": start_days, "end_days": end_days, "start_events": start_events,
                            "end_events": end_events, "max_targets": max_targets, "train_stride": train_stride,
                            "max_train_targets": max_train_targets, "exclude_history": exclude_history},
                    stats={"users_dropped": dropped, "train_rows": len(tr), "eval_users": len(te),
                           "window_unit": unit})


# ---------------------------------------------------------------------------------------------------------------------
# Collation, ranking and metrics


def windows(dataset: Dataset, max_length: int) -> Dataset:
    """Cut training rows longer than `max_length` into consecutive windows, keeping those with a label."""

    def split(batch: dict[str, list]) -> dict[str, list]:
        out: dict[str, list] = {k: [] for k in batch}
        for i in range(len(batch["item_ids"])):
            n = len(batch["item_ids"][i])
            for stop in range(n, 0, -max_length):
                start = max(0, stop - max_length)
                if all(label == -100 for label in batch["labels"][i][start:stop]):
                    continue
                for key in batch:
                    out[key].append(batch[key][i][start:stop] if key != "user_id" else batch[key][i])
        return out

    return dataset.map(split, batched=True, features=TRAIN_FEATURES)


def _left_pad(rows: list[list[int]], length: int, value: int = 0) -> torch.Tensor:
    out = torch.full((len(rows), length), value, dtype=torch.long)
    for i, row in enumerate(rows):
        row = row[-length:]
        if row:
            out[i, length - len(row):] = torch.as_tensor(row, dtype=torch.long)
    return out


@dataclass
class TaskCollator:
    """Left-pads task rows to the longest in the batch (at most `max_length`, most recent events kept).

    `mode="train"` returns input_ids, attention_mask, timestamps, action_ids, labels; `mode="eval"` returns the
    same inputs plus `target_ids` (B, T) padded with 0, `target_time` (B,) and `exclude_ids` (B, H) = the context
    items when `exclude_history` (0 = nothing).
    """

    max_length: int
    mode: str = "train"
    exclude_history: bool = True

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        length = min(self.max_length, max(len(r["item_ids"]) for r in rows))
        batch = {
            "input_ids": _left_pad([r["item_ids"] for r in rows], length),
            "timestamps": _left_pad([r["timestamps"] for r in rows], length),
            "action_ids": _left_pad([r["action_ids"] for r in rows], length),
        }
        batch["attention_mask"] = (batch["input_ids"] != 0).long()
        if self.mode == "train":
            batch["labels"] = _left_pad([r["labels"] for r in rows], length, value=-100)
            return batch
        width = max(len(r["target_ids"]) for r in rows)
        batch["target_ids"] = torch.zeros(len(rows), width, dtype=torch.long)
        for i, r in enumerate(rows):
            batch["target_ids"][i, :len(r["target_ids"])] = torch.as_tensor(r["target_ids"], dtype=torch.long)
        batch["target_time"] = torch.as_tensor([int(r["target_time"]) for r in rows], dtype=torch.long)
        if self.exclude_history:
            hist = max(1, max(len(r["item_ids"]) for r in rows))
            batch["exclude_ids"] = torch.zeros(len(rows), hist, dtype=torch.long)
            for i, r in enumerate(rows):
                if r["item_ids"]:
                    batch["exclude_ids"][i, :len(r["item_ids"])] = torch.as_tensor(r["item_ids"], dtype=torch.long)
        return batch


def multi_target_ranks(
    scores_fn: Callable[[int, int], torch.Tensor],
    num_items: int,
    target_ids: torch.Tensor,
    *,
    exclude_ids: torch.Tensor | None = None,
    allowed_fn: Callable[[int, int], torch.Tensor] | None = None,
    chunk_size: int = 65536,
) -> torch.Tensor:
    """1-based position of every target in the ranked list, catalog scored in chunks (ties pessimistic).

    position(y) = 1 + #{items j ≠ y rankable with score_j ≥ score_y}. Rankable = not padding, not excluded,
    allowed; targets are always rankable (a target is never excluded, and other targets count above it as they
    would in the served list). `scores_fn(start, stop)` returns (B, stop-start) scores; `allowed_fn(start, stop)`
    a (B, stop-start) bool mask. Returns (B, T) ranks, 0 where `target_ids` is padding.
    """
    batch, width = target_ids.shape
    valid = target_ids > 0
    target_scores = torch.full((batch, width), float("-inf"))
    chunks = []
    for start in range(0, num_items, chunk_size):
        stop = min(start + chunk_size, num_items)
        chunks.append((start, stop))
        scores = scores_fn(start, stop).float()
        local = target_ids - start
        inside = valid & (local >= 0) & (local < stop - start)
        gathered = scores.gather(1, local.clamp(0, stop - start - 1))
        target_scores = torch.where(inside, gathered, target_scores)
    ranks = torch.ones(batch, width, dtype=torch.long)
    for start, stop in chunks:
        scores = scores_fn(start, stop).float()
        rankable = torch.ones_like(scores, dtype=torch.bool)
        if start == 0:
            rankable[:, 0] = False
        if allowed_fn is not None:
            rankable &= allowed_fn(start, stop).to(rankable.device)
        if exclude_ids is not None and exclude_ids.numel():
            local = exclude_ids - start
            inside = (local >= 0) & (local < stop - start) & (exclude_ids > 0)
            padded = torch.cat([rankable, rankable.new_ones(batch, 1)], dim=1)
            padded.scatter_(1, torch.where(inside, local, stop - start), False)
            rankable = padded[:, :stop - start]
        local_t = target_ids - start
        inside_t = valid & (local_t >= 0) & (local_t < stop - start)
        padded = torch.cat([rankable, rankable.new_zeros(batch, 1)], dim=1)
        padded.scatter_(1, torch.where(inside_t, local_t, stop - start), True)
        rankable = padded[:, :stop - start]
        # (B, T, C): items at or above each target, the target itself removed below.
        above = (scores.unsqueeze(1) >= target_scores.unsqueeze(2)) & rankable.unsqueeze(1)
        ranks += above.sum(dim=2)
        ranks -= inside_t.long()  # the target counted itself
    return torch.where(valid, ranks, torch.zeros_like(ranks))


def set_metrics_from_ranks(ranks: torch.Tensor, ks: Iterable[int] = (1, 5, 10, 50, 200)) -> dict[str, float]:
    """Ranking metrics for (U, T) target positions (0 = padding), one row per user, averaged over users.

    mrr = 1 / position of the best-ranked target; hr@K = 1 if any target is in the top K; recall@K = share of
    the user's targets in the top K; ndcg@K = Σ_{targets in top K} 1/log2(1+pos) / Σ_{i ≤ min(K, |Y|)} 1/log2(1+i).
    With one target per user these are the standard single-target MRR / HR@K / NDCG@K (and recall@K = hr@K).
    """
    ranks = ranks.long()
    valid = ranks > 0
    users = int(valid.any(dim=1).sum())
    if users == 0:
        return {"mrr": 0.0, "num_users": 0}
    ranks, valid = ranks[valid.any(dim=1)], valid[valid.any(dim=1)]
    big = torch.where(valid, ranks, torch.full_like(ranks, torch.iinfo(torch.long).max))
    best = big.min(dim=1).values.double()
    count = valid.sum(dim=1).double()
    out = {"mrr": float((1.0 / best).mean())}
    for k in ks:
        hit = valid & (ranks <= k)
        out[f"hr@{k}"] = float(hit.any(dim=1).double().mean())
        out[f"recall@{k}"] = float((hit.sum(dim=1) / count).mean())
        dcg = (hit.double() / torch.log2(ranks.double().clamp(min=1) + 1)).sum(dim=1)
        ideal_n = count.clamp(max=k).long()
        discounts = 1.0 / torch.log2(torch.arange(2, k + 2, dtype=torch.double))
        idcg = torch.cumsum(discounts, 0)[ideal_n - 1]
        out[f"ndcg@{k}"] = float((dcg / idcg).mean())
    out["num_users"] = users
    return out


def _unwrap_base(model: torch.nn.Module) -> torch.nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@torch.no_grad()
def task_ranks(model: torch.nn.Module, batch: dict[str, torch.Tensor], spec: EvalSpec,
               adapter_names: list[str] | None = None, item_vectors: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T) positions of each row's targets under the task's protocol (history exclusion, availability set)."""
    base = _unwrap_base(model)
    device = base.item_vectors.device
    inputs = {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "timestamps", "action_ids")}
    extra = {"adapter_names": adapter_names} if adapter_names is not None else {}
    queries = model(**inputs, **extra).user_embeddings.float()
    vectors = (item_vectors if item_vectors is not None else base.item_vectors).float()
    config = base.config

    def scores_fn(start: int, stop: int) -> torch.Tensor:
        from ..models.genrec.scoring import score_items

        return score_items(queries, vectors[start:stop], temperature=config.score_temperature,
                           l2_normalize=config.l2_normalize_scores).cpu()

    allowed_fn = None
    if spec.available_since is not None:
        since = spec.available_since
        times = batch["target_time"].view(-1, 1).double()

        def allowed_fn(start: int, stop: int) -> torch.Tensor:
            s = since[start:stop].view(1, -1).double()
            return (s > times - spec.availability_window) & (s <= times)

    exclude = batch.get("exclude_ids") if spec.exclude_history else None
    return multi_target_ranks(scores_fn, vectors.shape[0], batch["target_ids"].cpu(),
                              exclude_ids=None if exclude is None else exclude.cpu(), allowed_fn=allowed_fn,
                              chunk_size=config.score_chunk_size)


@torch.no_grad()
def evaluate_task(model: torch.nn.Module, dataset: Dataset, spec: EvalSpec, *, max_length: int,
                  batch_size: int = 256, ks: Iterable[int] = (1, 5, 10, 50, 200),
                  gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
                  batches: Iterable[dict[str, torch.Tensor]] | None = None) -> dict[str, float]:
    """Task metrics (`set_metrics_from_ranks`) of a model (or PeftModel, active adapter) on validation/test rows."""
    from torch.utils.data import DataLoader

    was_training = model.training
    model.eval()
    if batches is None:
        collator = TaskCollator(max_length, mode="eval", exclude_history=spec.exclude_history)
        batches = DataLoader(dataset, batch_size=batch_size, collate_fn=collator, shuffle=False)
    all_ranks: list[torch.Tensor] = []
    width = 1
    for batch in batches:
        ranks = task_ranks(model, batch, spec)
        if gather is not None:
            ranks = gather(ranks.to(_unwrap_base(model).item_vectors.device)).cpu()
        all_ranks.append(ranks)
        width = max(width, ranks.shape[1])
    model.train(was_training)
    if not all_ranks:
        return {"mrr": 0.0, "num_users": 0}
    padded = torch.cat([torch.nn.functional.pad(r, (0, width - r.shape[1])) for r in all_ranks])
    return set_metrics_from_ranks(padded, ks)
