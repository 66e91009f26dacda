"""`Recommender`: the one object a service holds: a saved model (+ task adapters), its vocabulary and a top-k index.

Raw item ids in, raw ids + scores + titles out. Calls are safe from many threads: the model forward runs under a
lock (the forward toggles eval mode and, with adapters, reads PEFT state), while top-k search and id mapping run
outside it. Tasks are served through per-row `adapter_names` (`adapters.score_mixed_batch`'s mechanism), never by
switching the active adapter, so concurrent requests for different tasks cannot see each other's adapter.

User state: `recommend(histories)` encodes each history from scratch (`encode_queries`); `update(user_id, events)`
and `recommend_users(user_ids)` keep each user's backbone state (`serving.state.UserStateStore`, bounded, LRU) and
extend it with the new events only, so recommending for a known user needs no forward at all.
"""

from __future__ import annotations

import math
import numbers
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import torch
from peft import PeftModel

from ..adapters import BASE_ADAPTER, adapter_item_vectors, only_adapter, tower_has_lora
from ..data import ItemVocab
from ..loading import check_vocab, load_serving_model
from ..models.genrec import GenRecCache, GenRecForNextItemPrediction
from ..models.genrec.modeling_genrec import history_inputs
from ..models.genrec.scoring import TopItems, history_exclusions
from ..models.genrec.tokenization_genrec import UnknownItemError  # noqa: F401 - re-exported by serving
from .index import FaissIndex, require_faiss
from .state import UserStateStore

BASE_TASK = BASE_ADAPTER  # the task served by the base model, no adapter
ROW_CHUNK = 256  # histories encoded and ranked together: a large batch is answered chunk by chunk, in bounded memory
INT64 = (-(1 << 63), (1 << 63) - 1)
RawId = Union[str, int]
Filters = Union[Mapping[str, Any], Callable[[str, Mapping[str, Any]], bool]]


class UnknownTaskError(ValueError):
    """A task name with no adapter loaded."""

    def __init__(self, task: str, known: Sequence[str]) -> None:
        self.task = task
        super().__init__(f"Unknown task {task!r}; this recommender serves {sorted(known) or 'no task adapters'} "
                         "(task=None: the base model).")


@dataclass
class Recommendation:
    item_id: str
    score: float
    title: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: a non-finite score (a diverged model) becomes None."""
        score = self.score if math.isfinite(self.score) else None
        return {"item_id": self.item_id, "score": score, "title": self.title}


def _is_single(histories: Sequence[Any]) -> bool:
    return not any(isinstance(h, (list, tuple)) for h in histories)


class Recommender:
    """A model, its vocabulary, optional task adapters and an optional approximate top-k index.

    Args:
        model: a `GenRecForNextItemPrediction`, or a `PeftModel` over one (from `adapters.load_adapters`).
        vocab: the model's `ItemVocab` (raw id ↔ index, titles).
        index: None / "exact" (exact chunked top-k), or an approximate faiss index kind ("ivf", "hnsw", "flat";
            needs `pip install "genrec-hf[ann]"`), built per task from its item vectors on first use.
        index_options: keyword arguments of `FaissIndex.build` (nlist, nprobe, hnsw_m, ef_search, ...).

    `user_states` is the cached per-user state behind `update` / `recommend_users` (a `UserStateStore` with its
    default bounds; assign another to change them). Raw ids are mapped by `tokenizer`, the model's
    `GenRecItemTokenizer` (the one `AutoTokenizer` loads from a saved folder); an unknown id is always an
    `UnknownItemError` here, also for a tower model, whose new items are added with `genrec-hf add-items`.
    """

    def __init__(self, model: GenRecForNextItemPrediction | PeftModel, vocab: ItemVocab, *,
                 index: str | None = None, index_options: dict[str, Any] | None = None) -> None:
        base = model.get_base_model() if hasattr(model, "peft_config") else model
        if not isinstance(base, GenRecForNextItemPrediction):
            raise TypeError(f"Recommender expects a GenRecForNextItemPrediction or a PeftModel over one, got "
                            f"{type(base).__name__}.")
        check_vocab(base, vocab)
        if index not in (None, "exact"):
            require_faiss()
        self.model = model.eval()
        self.base_model = base
        self.config = base.config
        self.vocab = vocab
        self.tasks: tuple[str, ...] = tuple(getattr(model, "peft_config", {}) or ())
        # LoRA on the item tower cannot be served per row (adapter_names): switch the active adapter instead
        self._switch_adapters = bool(self.tasks) and tower_has_lora(model)
        self.index_kind = None if index in (None, "exact") else index
        self.index_options = dict(index_options or {})
        self._indexes: dict[str, FaissIndex] = {}
        self._forward_lock = threading.Lock()
        self._index_lock = threading.Lock()
        self.tokenizer = vocab.tokenizer(base.config, unknown_items="error")
        self.user_states: UserStateStore = UserStateStore(self)

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, *, adapters: Mapping[str, str | Path] | None = None,
                        index: str | None = None, index_options: dict[str, Any] | None = None,
                        base: str | Path | None = None, verify: bool = True, **kwargs: Any) -> Recommender:
        """Load `model_dir` (weights, config, `item_vocab.json`) and any `{task: adapter_dir}` once.

        Weights are verified first (`verify=False` skips it). `model_dir` may also be an adapter folder, served
        merged onto the base it names (or `base`). Loading is `genrec_hf.loading.load_serving_model`.
        """
        model, vocab = load_serving_model(model_dir, adapters=adapters, base=base, verify=verify, **kwargs)
        return cls(model, vocab, index=index, index_options=index_options)

    # ------------------------------------------------------------------------------------------------------------
    # Ids

    @property
    def num_items(self) -> int:
        return self.vocab.num_items

    def encode_item(self, raw: RawId, where: str = "history") -> int:
        """Index of a raw id; `UnknownItemError` names an unknown one."""
        return self.tokenizer.encode_item(raw, where)

    def item(self, raw: RawId) -> dict[str, Any]:
        """{item_id, index, title, info} of one catalog item."""
        index = self.encode_item(raw, "the catalog")
        info = self.tokenizer.item_info.get(str(raw), {})
        return {"item_id": str(raw), "index": index, "title": info.get("title"), "info": info}

    def _check_task(self, task: str | None) -> str:
        if task is None or task == BASE_TASK:
            return BASE_TASK
        if task not in self.tasks:
            raise UnknownTaskError(task, self.tasks)
        return task

    @staticmethod
    def check_timestamps(values: Sequence[Any], count: int, where: str = "timestamps") -> list[int]:
        """`values` as `count` integers that fit in 64 bits (unix seconds); a `ValueError` names the first bad one
        (a bool, a float, text, or a number beyond int64 would fail deep in torch or be read as another time)."""
        values = list(values)
        if len(values) != count:
            raise ValueError(f"{where} has {len(values)} values for {count} events; give one per event or none.")
        for i, value in enumerate(values):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise ValueError(f"{where}[{i}]={value!r} is not an integer; expected unix seconds.")
            if not INT64[0] <= value <= INT64[1]:
                raise ValueError(f"{where}[{i}]={value} does not fit in 64 bits; expected unix seconds.")
        return [int(value) for value in values]

    def _check_k(self, k: Any) -> int:
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.num_items:
            raise ValueError(f"k={k!r} is out of range: expected an integer from 1 to the catalog size "
                             f"{self.num_items}.")
        return k

    # ------------------------------------------------------------------------------------------------------------
    # Vectors

    def item_vectors(self, task: str | None = None) -> torch.Tensor:
        """(V, d_out) item vectors the task scores with (row 0 = padding)."""
        task = self._check_task(task)
        if self.tasks:
            return adapter_item_vectors(self.model, task).detach()
        return self.base_model.item_vectors.detach()

    @torch.no_grad()
    def encode_queries(self, histories: list[list[int]], *, timestamps: list[list[int]] | None = None,
                       action_ids: list[list[int]] | None = None, task: str = BASE_TASK) -> torch.Tensor:
        """(B, d_out) user embeddings of histories of item indices (most recent `max_position_embeddings` read).

        The one place a history becomes a query vector: where a cached incremental user state will plug in.
        """
        inputs = history_inputs(histories, self.config.max_position_embeddings, timestamps=timestamps,
                                action_ids=action_ids, device=self.base_model.item_vectors.device)
        return self._forward(inputs, task).user_embeddings

    @torch.no_grad()
    def encode_state(self, events: list[int], timestamps: list[int] | None = None, *, task: str = BASE_TASK,
                     cache: GenRecCache | None = None) -> tuple[torch.Tensor, GenRecCache]:
        """One user's (d_out,) embedding and backbone cache after `events` (item indices, oldest first).

        With `cache`, only `events` run through the model, attending to the cached ones (the cache is extended in
        place and returned); without, `events` are the whole history read (at most `max_position_embeddings`).
        """
        device = self.base_model.item_vectors.device
        input_ids = torch.as_tensor([events], dtype=torch.long, device=device)
        inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "use_cache": True,
                  "cache": cache, "timestamps": None if timestamps is None
                  else torch.as_tensor([timestamps], dtype=torch.long, device=device)}
        outputs = self._forward(inputs, task)
        return outputs.user_embeddings[0], outputs.cache

    def _forward(self, inputs: dict[str, Any], task: str) -> Any:
        with self._forward_lock:
            if self._switch_adapters:
                with only_adapter(self.model, task):
                    return self.model(**inputs)
            if self.tasks:
                return self.model(**inputs, adapter_names=[task] * inputs["input_ids"].shape[0])
            return self.base_model(**inputs)

    def user_embedding(self, history: list[RawId], *, task: str | None = None) -> torch.Tensor:
        """The (d_out,) query vector of a history of raw ids, scorable against `item_vectors(task)`."""
        if not history:
            raise ValueError("The history is empty: give at least one raw item id the model knows.")
        indices = [self.encode_item(raw) for raw in history]
        return self.encode_queries([indices], task=self._check_task(task))[0]

    # ------------------------------------------------------------------------------------------------------------
    # Top-k

    def allowed_mask(self, candidates: Sequence[RawId] | None = None,
                     filters: Filters | None = None) -> torch.Tensor | None:
        """(V,) bool mask of the items a request may return, or None for the whole catalog.

        `candidates`: raw ids (unknown ones are an error). `filters`: {field: value or list of values} matched
        against `item_info` (a list-valued field such as genres matches when any value is allowed), or a callable
        `(raw_id, info) -> bool`.
        """
        if candidates is None and filters is None:
            return None
        mask = torch.zeros(len(self.vocab), dtype=torch.bool)
        if candidates is not None:
            if not candidates:
                raise ValueError("candidates is empty: give at least one raw item id, or none for the catalog.")
            mask[[self.encode_item(raw, "candidates") for raw in candidates]] = True
        else:
            mask[1:] = True
        if filters is not None:
            keep = torch.zeros_like(mask)
            for index in mask.nonzero().flatten().tolist():
                raw = self.tokenizer.convert_ids_to_tokens(index)
                keep[index] = _passes(raw, self.tokenizer.item_info.get(raw, {}), filters)
            mask = keep
        return mask

    def index(self, task: str | None = None) -> FaissIndex | None:
        """The approximate index of a task (built on first use), or None when serving exact top-k."""
        if self.index_kind is None:
            return None
        task = self._check_task(task)
        with self._index_lock:
            if task not in self._indexes:
                self._indexes[task] = FaissIndex.build(
                    self.item_vectors(task), kind=self.index_kind, temperature=self.config.score_temperature,
                    l2_normalize=self.config.l2_normalize_scores, **self.index_options)
            return self._indexes[task]

    def topk(self, queries: torch.Tensor, k: int, *, task: str | None = None, exclude: torch.Tensor | None = None,
             allowed: torch.Tensor | None = None, exact: bool | None = None) -> TopItems:
        """Top-k of query vectors: exact chunked scoring, or the task's approximate index (`exact=False`)."""
        task = self._check_task(task)
        index = None if exact else self.index(task)
        if index is not None:
            return index.search(queries, k, exclude=exclude, allowed=allowed)
        return self.base_model.topk(queries, k, exclude=exclude, allowed=allowed, item_vectors=self.item_vectors(task))

    def recommend(
        self,
        histories: Sequence[RawId] | Sequence[Sequence[RawId]],
        k: int = 10,
        *,
        task: str | None = None,
        timestamps: Sequence[int] | Sequence[Sequence[int]] | None = None,
        exclude_seen: bool = True,
        candidates: Sequence[RawId] | None = None,
        filters: Filters | None = None,
        exact: bool | None = None,
    ) -> list[Recommendation] | list[list[Recommendation]]:
        """Top-k next items after one history of raw item ids (oldest first), or a batch of histories.

        One history gives a list of `Recommendation`; a list of histories a list of such lists. Items of the
        history are left out unless `exclude_seen=False`; `candidates` / `filters` restrict what may be returned
        (see `allowed_mask`); `task` picks a loaded adapter (None = the base). Fewer than k items come back only
        when fewer are allowed. Unknown items, empty histories, k outside 1..catalog size and unknown tasks raise
        `ValueError`s (`UnknownItemError`, `UnknownTaskError`) naming the culprit.
        """
        if not histories:
            raise ValueError("The history is empty: give at least one raw item id the model knows.")
        single = _is_single(histories)
        rows: list[Sequence[RawId]] = [histories] if single else list(histories)  # type: ignore[list-item]
        times: list[Sequence[int]] | None = None
        if timestamps is not None and len(timestamps):
            times = [timestamps] if single else list(timestamps)  # type: ignore[list-item]
        k = self._check_k(k)
        task_name = self._check_task(task)
        for i, row in enumerate(rows):
            if not row:
                raise ValueError(f"History {i} is empty: every history needs at least one raw item id.")
        indices = [[self.encode_item(raw) for raw in row] for row in rows]
        if times is not None:
            if len(times) != len(rows):
                raise ValueError(f"timestamps has {len(times)} rows for {len(rows)} histories.")
            times = [self.check_timestamps(t, len(row), "timestamps" if single else f"timestamps[{i}]")
                     for i, (t, row) in enumerate(zip(times, rows))]
        allowed = self.allowed_mask(candidates, filters)
        out: list[list[Recommendation]] = []
        for start in range(0, len(indices), ROW_CHUNK):
            chunk = indices[start:start + ROW_CHUNK]
            queries = self.encode_queries(chunk, timestamps=times[start:start + ROW_CHUNK] if times else None,
                                          task=task_name)
            exclude = history_exclusions(chunk) if exclude_seen else None
            top = self.topk(queries, k, task=task_name, exclude=exclude, allowed=allowed, exact=exact)
            out += [self._decode(items, scores) for items, scores in zip(top.items.tolist(), top.scores.tolist())]
        return out[0] if single else out

    # ------------------------------------------------------------------------------------------------------------
    # Cached user state

    def update(self, user_id: str, events: Sequence[RawId], *, timestamps: Sequence[int] | None = None,
               task: str | None = None) -> int:
        """Append a user's new events (raw ids, oldest first) and extend their cached state; returns the number of
        events stored for them. See `serving.state` for the window, the bounds and what happens past them."""
        return self.user_states.update(str(user_id), events, timestamps=timestamps, task=task)

    def recommend_users(
        self,
        user_ids: str | Sequence[str],
        k: int = 10,
        *,
        task: str | None = None,
        exclude_seen: bool = True,
        candidates: Sequence[RawId] | None = None,
        filters: Filters | None = None,
        exact: bool | None = None,
    ) -> list[Recommendation] | list[list[Recommendation]]:
        """Top-k for users known from `update`, from their cached states (no forward unless a state is missing).

        Same arguments and answers as `recommend`, with the users' stored histories as histories: one user id gives
        a list of `Recommendation`, a list of ids a list of lists. Unknown users raise `UnknownUserError`.
        """
        single = isinstance(user_ids, str)
        ids = [user_ids] if single else [str(u) for u in user_ids]
        if not ids:
            raise ValueError("user_ids is empty: give at least one user id.")
        k = self._check_k(k)
        task_name = self._check_task(task)
        allowed = self.allowed_mask(candidates, filters)
        queries, histories = self.user_states.embeddings(ids, task=task_name)
        exclude = history_exclusions(histories) if exclude_seen else None
        top = self.topk(queries, k, task=task_name, exclude=exclude, allowed=allowed, exact=exact)
        out = [self._decode(items, scores) for items, scores in zip(top.items.tolist(), top.scores.tolist())]
        return out[0] if single else out

    def _decode(self, items: list[int], scores: list[float]) -> list[Recommendation]:
        out = []
        for index, score in zip(items, scores):
            if index == 0:  # fewer rankable items than k
                continue
            raw = self.tokenizer.convert_ids_to_tokens(index)
            out.append(Recommendation(item_id=raw, score=float(score), title=self.tokenizer.title(raw)))
        return out


def _passes(raw: str, info: Mapping[str, Any], filters: Filters) -> bool:
    if callable(filters):
        return bool(filters(raw, info))
    for field, wanted in filters.items():
        allowed = set(map(str, wanted)) if isinstance(wanted, (list, tuple, set)) else {str(wanted)}
        value = info.get(field)
        values = value if isinstance(value, (list, tuple)) else [value]
        if not allowed.intersection(str(v) for v in values if v is not None):
            return False
    return True
