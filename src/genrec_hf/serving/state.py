"""Cached user state: each user's backbone state (`GenRecCache`) and user embedding, extended event by event.

`UserStateStore` is what `Recommender.update` / `Recommender.recommend_users` and the server's `POST /events` /
`POST /recommend {"user_id"}` use. Per user it keeps

  * the raw history (item indices, and timestamps when the events carry them), the most recent `max_events`:
    what `exclude_seen` excludes and what a state is rebuilt from;
  * per task (adapter) served to that user, a `UserState`: the backbone cache over the most recent events of that
    history and the user embedding after its last event.

An update runs only the new events through the model, attending to the cached ones (`GenRecModel.forward` with
`cache=`), so it costs one short forward instead of a forward over the whole history; the result equals a full
recompute to float tolerance (tests/serving/test_state.py).

Window. A state covers at most `window = min(max_position_embeddings, max_events)` events (a trained model's
`max_position_embeddings` is its recipe's `data.max_length`, 50 in the shipped recipes). A state is (re)built from
the user's most recent `overflow_keep` events and then extended event by event until it covers `window` events; the
event after that rebuilds it from the most recent `overflow_keep` events again. The default `overflow_keep` is half
the window: past the window one update in `window - overflow_keep` is a rebuild (a full forward over `overflow_keep`
events) and the others are incremental, and a recommendation reads the most recent `overflow_keep` to `window`
events. `overflow_keep = window` reads exactly the events a stateless `Recommender.recommend(history)` reads (the
most recent `window`), at the price of a full forward for every event once a history is longer than the window
(benchmarks/serving/README.md measures both on a trained model).

Updates are all or nothing: items, timestamps (integers that fit in 64 bits) and the timestamps-or-none rule are
checked before anything is stored, and the new states are computed on copies of the caches, so an update that fails
leaves the user's history and states exactly as they were (a new user is not kept).

Bounds. At most `max_users` users (the least recently used one is dropped, history and states), and at most
`max_cache_bytes` of backbone caches over all users: beyond it the least recently used caches are dropped but the
user's history and embedding stay, so recommending still needs no forward and the user's next event rebuilds
the cache from the history (one full forward). Embeddings and histories are bounded by
`max_users × (max_events + embedding width)` numbers.

Threads. Any number of threads may update and read. One user's updates are applied one at a time, in the order
their calls take the user's lock; model forwards run under the recommender's forward lock. A user dropped (LRU)
while one of its updates is in flight is dropped with it.
"""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Union

import torch

from ..models.genrec import GenRecCache

if TYPE_CHECKING:
    from .recommender import Recommender

RawId = Union[str, int]
DEFAULT_MAX_CACHE_BYTES = 1 << 30


class UnknownUserError(KeyError):
    """A user id with no stored events."""

    def __init__(self, user_id: str) -> None:
        self.user_id = user_id
        super().__init__(user_id)

    def __str__(self) -> str:
        return f"No events stored for user {self.user_id!r}; send their events first (POST /events)."


@dataclass(frozen=True)
class UserState:
    """One user's state for one task: the embedding after the last event, and the cache it extends from.

    `cache` is None once dropped to stay under the byte bound (the next update rebuilds it); `window` is the
    number of most recent history events the state reads.
    """

    embedding: torch.Tensor
    cache: GenRecCache | None
    window: int


@dataclass
class _User:
    events: list[int] = field(default_factory=list)
    timestamps: list[int] | None = None
    states: dict[str, UserState] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class StoreStats:
    """Counters since the store was made: how updates were served and what the bounds dropped."""

    incremental: int = 0  # states extended with the new events only
    rebuilds: int = 0  # states (re)built by a forward over the history window: new, dropped, or outgrown
    user_evictions: int = 0
    cache_evictions: int = 0


class UserStateStore:
    """Per-user histories and cached backbone states over a `Recommender` (see the module docstring).

    Args:
        recommender: the `Recommender` whose model encodes the events (and whose adapters are the tasks).
        max_users: users kept; the least recently used one is dropped beyond it.
        max_events: history events kept per user (the most recent).
        max_cache_bytes: total bytes of cached backbone states; least recently used caches are dropped beyond it.
        overflow_keep: events a state is (re)built from once it outgrows the window (default: half the window; the
            whole window for exact answers; see the module docstring).
    """

    def __init__(self, recommender: Recommender, *, max_users: int = 100_000, max_events: int = 1024,
                 max_cache_bytes: int = DEFAULT_MAX_CACHE_BYTES, overflow_keep: int | None = None) -> None:
        if max_users < 1 or max_events < 1 or max_cache_bytes < 0:
            raise ValueError("max_users and max_events must be positive and max_cache_bytes at least 0.")
        self.recommender = recommender
        self.max_users, self.max_events, self.max_cache_bytes = max_users, max_events, max_cache_bytes
        self.window = min(recommender.config.max_position_embeddings, max_events)
        self.overflow_keep = max(1, self.window // 2) if overflow_keep is None else overflow_keep
        if not 1 <= self.overflow_keep <= self.window:
            raise ValueError(f"overflow_keep={overflow_keep} must be between 1 and the window of {self.window} "
                             "events (min of max_position_embeddings and max_events).")
        self.stats = StoreStats()
        self._users: OrderedDict[str, _User] = OrderedDict()
        self._caches: OrderedDict[tuple[str, str], int] = OrderedDict()  # (user, task) → bytes, LRU order
        self._cache_bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._users)

    def __contains__(self, user_id: str) -> bool:
        return user_id in self._users

    @property
    def cache_bytes(self) -> int:
        """Bytes of the backbone caches held now."""
        return self._cache_bytes

    # ------------------------------------------------------------------------------------------------------------

    def update(self, user_id: str, events: Sequence[RawId], *, timestamps: Sequence[int] | None = None,
               task: str | None = None) -> int:
        """Append events (raw ids, oldest first) to a user's history and extend their states; returns the number of
        stored events.

        Every state the user already has (one per task served to them) is extended, and `task`'s is built if it is
        missing. All or nothing: unknown items (`UnknownItemError`), timestamps that are not 64-bit integers, and
        timestamps given for some of a user's batches but not others raise before anything is stored, and a
        failure while computing the new states leaves the user as they were.
        """
        task = self.recommender._check_task(task)
        if not events:
            raise ValueError("events is empty: give at least one raw item id.")
        indices = [self.recommender.encode_item(raw, "events") for raw in events]
        times = None if timestamps is None else self.recommender.check_timestamps(timestamps, len(indices))
        user = self._user(user_id, create=True)
        try:
            with user.lock:
                if user.events and (user.timestamps is None) != (times is None):
                    raise ValueError(f"user {user_id!r}: timestamps must be given with every batch of events or "
                                     "with none (this user's stored events " +
                                     ("have" if user.timestamps is not None else "have no") + " timestamps).")
                history = (user.events + indices)[-self.max_events:]
                history_times = None if times is None else ((user.timestamps or []) + times)[-self.max_events:]
                states = {name: self._advance(history, history_times, user.states.get(name), len(indices), name)
                          for name in {*user.states, task}}
                user.events, user.timestamps = history, history_times  # nothing changed until every state is done
                user.states.update(states)
                count = len(user.events)
        except BaseException:
            if not user.events:  # a user this call created: not kept
                self._drop(user_id, user)
            raise
        self._account(user_id, user)
        return count

    def embeddings(self, user_ids: Sequence[str], *, task: str | None = None) -> tuple[torch.Tensor, list[list[int]]]:
        """(B, d_out) user embeddings of `task` and each user's stored history (item indices), for top-k.

        A user without a state for `task` (first request for it, or cache dropped and never updated since) gets
        one built from their history. Unknown users raise `UnknownUserError`.
        """
        task = self.recommender._check_task(task)
        vectors, histories = [], []
        for user_id in user_ids:
            user = self._user(user_id, create=False)
            with user.lock:
                state = user.states.get(task)
                if state is None:
                    state = user.states[task] = self._advance(user.events, user.timestamps, None, 0, task)
                histories.append(list(user.events))
            vectors.append(state.embedding)
            self._account(user_id, user)
        return torch.stack(vectors), histories

    def history(self, user_id: str) -> tuple[list[int], list[int] | None]:
        """A user's stored history: item indices (oldest first) and timestamps (None without)."""
        user = self._user(user_id, create=False)
        with user.lock:
            return list(user.events), None if user.timestamps is None else list(user.timestamps)

    def forget(self, user_id: str) -> bool:
        """Drop a user (history and states); False when the user was not stored."""
        with self._lock:
            user = self._users.pop(user_id, None)
            self._release(user_id, user)
        return user is not None

    # ------------------------------------------------------------------------------------------------------------

    def _user(self, user_id: str, *, create: bool) -> _User:
        with self._lock:
            user = self._users.get(user_id)
            if user is None:
                if not create:
                    raise UnknownUserError(user_id)
                user = self._users[user_id] = _User()
                while len(self._users) > self.max_users:
                    old_id, old = self._users.popitem(last=False)
                    self._release(old_id, old)
                    self.stats.user_evictions += 1
            self._users.move_to_end(user_id)
            return user

    def _drop(self, user_id: str, user: _User) -> None:
        """Forget `user` if it is still the one stored under `user_id`."""
        with self._lock:
            if self._users.get(user_id) is user:
                del self._users[user_id]
                self._release(user_id, user)

    def _advance(self, events: list[int], timestamps: list[int] | None, state: UserState | None, new: int,
                 task: str) -> UserState:
        """The state after the last `new` of `events` (the user's history with them; called under the user's lock).
        The given state is never changed: an increment extends a copy of its cache."""
        if new and state is not None and state.cache is not None and state.window + new <= self.window:
            start = len(events) - new
            embedding, cache = self.recommender.encode_state(
                events[start:], None if timestamps is None else timestamps[start:], task=task,
                cache=_fork(state.cache))
            with self._lock:
                self.stats.incremental += 1
            return UserState(embedding, cache, state.window + new)
        keep = min(self.overflow_keep, len(events))
        if new > keep:  # a batch longer than overflow_keep: read all of it (up to the window)
            keep = min(new, self.window, len(events))
        embedding, cache = self.recommender.encode_state(
            events[-keep:], None if timestamps is None else timestamps[-keep:], task=task)
        with self._lock:
            self.stats.rebuilds += 1
        return UserState(embedding, cache, keep)

    def _account(self, user_id: str, user: _User) -> None:
        """Record the bytes of a user's caches (as they are now: a later update accounts again after its own
        change) and drop least recently used caches beyond `max_cache_bytes`."""
        with self._lock:
            if self._users.get(user_id) is not user:  # dropped while we computed: its caches go with it
                return
            for task, state in list(user.states.items()):
                key = (user_id, task)
                self._cache_bytes -= self._caches.pop(key, 0)
                if state.cache is not None:
                    self._caches[key] = state.cache.nbytes
                    self._cache_bytes += self._caches[key]
            while self._cache_bytes > self.max_cache_bytes and self._caches:
                (old_id, task), size = self._caches.popitem(last=False)
                self._cache_bytes -= size
                owner = self._users.get(old_id)
                if owner is not None and owner.states.get(task) is not None:
                    # Replace, never mutate: an update in flight holds the old object and writes its own new one.
                    owner.states[task] = replace(owner.states[task], cache=None)
                self.stats.cache_evictions += 1

    def _release(self, user_id: str, user: _User | None) -> None:
        """Forget the byte accounting of a dropped user's caches (called under the store lock)."""
        if user is None:
            return
        for task in list(user.states):
            self._cache_bytes -= self._caches.pop((user_id, task), 0)


def _fork(cache: GenRecCache) -> GenRecCache:
    """A copy of `cache` that a forward can extend without changing the original (the model replaces the cached
    tensors with longer ones, it does not write into them), so no tensor is copied."""
    forked = copy.copy(cache)
    forked.keys, forked.values = list(cache.keys), list(cache.values)
    return forked
