"""Cached user state (`UserStateStore` behind `Recommender.update` / `recommend_users`): incremental updates equal a
full recompute across the window boundary, updates run only the new events, the bounds evict least recently used
users and caches, and concurrent updates and reads stay consistent."""

from __future__ import annotations

import threading

import pytest
import torch

from genrec_hf import GenRecForNextItemPrediction
from genrec_hf.data import ItemVocab
from genrec_hf.serving import Recommender, UnknownUserError, UserStateStore

from tests.helpers import tiny_config
from tests.serving.conftest import NUM_ITEMS, RAW_IDS

WINDOW = 16  # tiny_config's max_position_embeddings


def _recommender(position_encoding: str = "rope", **store_options) -> Recommender:
    torch.manual_seed(0)
    model = GenRecForNextItemPrediction(tiny_config(vocab_size=NUM_ITEMS + 1,
                                                    position_encoding=position_encoding)).eval()
    with torch.no_grad():  # time gaps and positions as strong as the items, so a wrong one shows
        for table in (model.model.embeddings.time_gap_embeddings, model.model.embeddings.position_embeddings):
            if table is not None:
                table.weight.normal_(0, 1.0)
    recommender = Recommender(model, ItemVocab(RAW_IDS))
    if store_options:
        recommender.user_states = UserStateStore(recommender, **store_options)
    return recommender


def _stream(count: int, seed: int = 0) -> tuple[list[str], list[int]]:
    g = torch.Generator().manual_seed(seed)
    items = [RAW_IDS[i] for i in torch.randint(0, NUM_ITEMS, (count,), generator=g).tolist()]
    gaps = (10 ** (torch.rand(count, generator=g) * 7)).long()
    return items, gaps.cumsum(0).tolist()


def _recompute(recommender: Recommender, items: list[str], times: list[int] | None, task: str = "__base__"):
    indices = [recommender.encode_item(raw) for raw in items]
    return recommender.encode_queries([indices], timestamps=None if times is None else [times], task=task)[0]


def _count_forward_lengths(recommender: Recommender) -> list[int]:
    """Events per state forward (`encode_state`: -n for a rebuild over n events, +n for an increment of n)."""
    lengths: list[int] = []
    real = recommender._forward

    def spy(inputs, task):
        if "use_cache" in inputs:
            lengths.append(inputs["input_ids"].shape[1] * (1 if inputs["cache"] is not None else -1))
        return real(inputs, task)

    recommender._forward = spy
    return lengths


@pytest.mark.parametrize("position_encoding", ["rope", "learned"])
def test_incremental_updates_equal_full_recompute_across_the_window(position_encoding):
    """Catches a cached state whose positions, time gaps or attended events drift from a full recompute, one that
    keeps growing past max_position_embeddings (or crashes there) instead of rebuilding from the last window, and
    updates that secretly recompute the whole history (overflow_keep = the window: exact answers)."""
    recommender = _recommender(position_encoding, overflow_keep=WINDOW)
    lengths = _count_forward_lengths(recommender)
    items, times = _stream(2 * WINDOW + 5)
    chunks = [1] * 10 + [3, 2] + [1] * (len(items) - 15)  # single events and small batches
    done = 0
    for size in chunks:
        recommender.update("u", items[done:done + size], timestamps=times[done:done + size])
        done += size
        got = recommender.user_states.embeddings(["u"])[0][0]
        want = _recompute(recommender, items[:done][-WINDOW:], times[:done][-WINDOW:])
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    stats = recommender.user_states.stats
    # The window fills at the 16th event (13th update): 1 build + 12 increments; every later update rebuilds.
    assert stats.rebuilds == 1 + (len(chunks) - 13) and stats.incremental == 12
    assert lengths[:13] == [-1] + [1] * 9 + [3, 2, 1]  # increments ran only their new events
    assert lengths[13:] == [-WINDOW] * (len(chunks) - 13)
    recs = recommender.recommend_users("u", k=5)
    stateless = recommender.recommend(items, k=5, timestamps=times)
    assert [r.item_id for r in recs] == [r.item_id for r in stateless]
    assert [r.score for r in recs] == pytest.approx([r.score for r in stateless], abs=1e-4)


def test_overflow_keep_trades_exactness_for_cheap_updates():
    """Catches `overflow_keep` ignored (a rebuild per event past the window) or a rebuilt state that reads other
    events than the most recent `overflow_keep`, and the window not following max_events."""
    recommender = _recommender(overflow_keep=12)
    items, times = _stream(40, seed=1)
    for i in range(len(items)):
        recommender.update("u", items[i:i + 1], timestamps=times[i:i + 1])
        state = recommender.user_states._users["u"].states["__base__"]
        assert 12 <= state.window <= WINDOW or i < 12
        want = _recompute(recommender, items[:i + 1][-state.window:], times[:i + 1][-state.window:])
        torch.testing.assert_close(state.embedding, want, atol=1e-5, rtol=1e-5)
    stats = recommender.user_states.stats
    assert stats.rebuilds == 1 + (40 - WINDOW + 4) // 5  # one rebuild per 5 events past the first full window
    small = UserStateStore(recommender, max_events=6)
    assert small.window == 6 and small.overflow_keep == 3
    with pytest.raises(ValueError, match="overflow_keep"):
        UserStateStore(recommender, overflow_keep=WINDOW + 1)


def test_default_rebuilds_once_per_half_window_past_it():
    """Issue 27 item 8: past `max_length` events (a trained model's max_position_embeddings) every further event
    rebuilt the whole state, so the incremental path never applied to a trained model. By default a state outgrowing
    the window is rebuilt from the most recent half, so one update in window/2 is a rebuild; each state still equals
    a full recompute over the events it reads."""
    recommender = _recommender()
    assert recommender.user_states.overflow_keep == WINDOW // 2
    lengths = _count_forward_lengths(recommender)
    items, times = _stream(4 * WINDOW, seed=2)
    for i in range(len(items)):
        recommender.update("u", items[i:i + 1], timestamps=times[i:i + 1])
        state = recommender.user_states._users["u"].states["__base__"]
        assert state.window == i + 1 if i < WINDOW else WINDOW // 2 <= state.window <= WINDOW
        want = _recompute(recommender, items[:i + 1][-state.window:], times[:i + 1][-state.window:])
        torch.testing.assert_close(state.embedding, want, atol=1e-5, rtol=1e-5)
    past = len(items) - WINDOW  # updates after the window filled
    assert recommender.user_states.stats.rebuilds == 1 + -(-past // (WINDOW // 2))
    assert sorted(set(lengths)) == [-WINDOW // 2, -1, 1]  # rebuilds read half the window; the rest one event


def test_a_failed_update_leaves_the_user_as_it_was(monkeypatch):
    """Issue 27 item 4: a timestamp beyond int64 was appended before the forward failed, so every later update
    and recommendation for that user failed until eviction. Checks run first, states are computed on copies, and
    a failure in the middle of a multi-task update changes nothing; a new user whose first update fails is not kept."""
    recommender = _recommender()
    store = recommender.user_states
    recommender.update("u", ["m101", "m102"], timestamps=[10, 20])
    before = store._users["u"].states["__base__"]
    for bad in ([1 << 63], [True], ["30"], [30.0]):
        with pytest.raises(ValueError, match=r"timestamps\[0\]"):
            recommender.update("u", ["m103"], timestamps=bad)
    real = recommender.encode_state
    calls = []

    def fail_on_the_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("forward failed")
        return real(*args, **kwargs)

    store._users["u"].states["other"] = before  # a second state, so the update computes two
    monkeypatch.setattr(recommender, "encode_state", fail_on_the_second)
    with pytest.raises(RuntimeError):
        recommender.update("u", ["m103"], timestamps=[30])
    monkeypatch.undo()
    del store._users["u"].states["other"]
    assert store.history("u") == ([2, 3], [10, 20])
    assert store._users["u"].states["__base__"] is before and before.cache.get_seq_length() == 2
    recommender.update("u", ["m103"], timestamps=[30])
    torch.testing.assert_close(store.embeddings(["u"])[0][0],
                               _recompute(recommender, ["m101", "m102", "m103"], [10, 20, 30]), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="64 bits"):
        recommender.update("new", ["m101"], timestamps=[-(1 << 64)])
    assert "new" not in store


def test_byte_bound_drops_caches_but_keeps_users_recommendable():
    """Catches an unbounded cache, eviction of the most recently used cache instead of the oldest, an evicted
    user that can no longer be recommended, and a rebuilt cache that differs from a full recompute."""
    probe = _recommender()
    probe.update("p", ["m101", "m102"])
    per_user = probe.user_states.cache_bytes
    recommender = _recommender(max_cache_bytes=int(2.5 * per_user))
    lengths = _count_forward_lengths(recommender)
    for user in ("a", "b", "c"):
        recommender.update(user, ["m101", "m102"])
    store = recommender.user_states
    assert store.cache_bytes <= 2.5 * per_user and store.stats.cache_evictions == 1
    assert store._users["a"].states["__base__"].cache is None and store._users["c"].states["__base__"].cache
    calls = len(lengths)
    recommender.recommend_users(["a", "b", "c"], k=3)  # embeddings are kept: no forward
    assert len(lengths) == calls
    recommender.update("a", ["m103"])  # its cache was dropped: rebuilt from the history
    assert lengths[-1] == -3 and store.stats.rebuilds == 4
    torch.testing.assert_close(store.embeddings(["a"])[0][0], _recompute(recommender, ["m101", "m102", "m103"], None),
                               atol=1e-5, rtol=1e-5)
    actual = sum(s.cache.nbytes for u in store._users.values() for s in u.states.values() if s.cache is not None)
    assert store.cache_bytes == actual


def test_user_bound_and_errors():
    """Catches LRU dropping a recently read user, unknown users answered from nothing, partial storage of a
    batch with an unknown item, and timestamps that drift out of step with a user's events."""
    recommender = _recommender(max_users=2, max_events=3)
    recommender.update("a", ["m101", "m102"], timestamps=[10, 20])
    recommender.update("a", ["m103", "m104"], timestamps=[30, 40])
    assert recommender.user_states.history("a") == ([3, 4, 5], [20, 30, 40])  # m102..m104
    with pytest.raises(ValueError, match="timestamps"):
        recommender.update("a", ["m105"])
    with pytest.raises(ValueError, match="ghost"):
        recommender.update("a", ["m105", "ghost"], timestamps=[50, 60])
    assert recommender.user_states.history("a")[0] == [3, 4, 5]
    recommender.update("b", ["m101"])
    recommender.recommend_users("a", k=1)  # a is now more recent than b
    recommender.update("c", ["m101"])
    assert "b" not in recommender.user_states and "a" in recommender.user_states
    assert recommender.user_states.stats.user_evictions == 1
    with pytest.raises(UnknownUserError, match="'b'"):
        recommender.recommend_users("b", k=1)
    assert recommender.user_states.forget("a") and "a" not in recommender.user_states
    recs = recommender.recommend_users(["c"], k=NUM_ITEMS - 1, candidates=["m101", "m110"])
    assert [r.item_id for r in recs[0]] == ["m110"]  # the seen m101 is excluded


def test_concurrent_updates_and_reads_stay_consistent():
    """Catches a race that loses or reorders one user's events, extends a cache twice, or corrupts the byte
    accounting, under concurrent writers (several per user) and readers."""
    recommender = _recommender(max_events=64, overflow_keep=WINDOW)
    streams = {f"u{i}": _stream(24, seed=10 + i)[0] for i in range(4)}
    errors: list[BaseException] = []

    def write(user: str, part: int) -> None:
        try:
            for raw in streams[user][part::2]:  # two writers per user, interleaving their halves
                recommender.update(user, [raw])
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    def read() -> None:
        try:
            for _ in range(30):
                known = [u for u in streams if u in recommender.user_states]
                if known:
                    recommender.recommend_users(known, k=3)
        except BaseException as error:  # pragma: no cover
            errors.append(error)

    threads = [threading.Thread(target=write, args=(u, p)) for u in streams for p in (0, 1)]
    threads += [threading.Thread(target=read) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    store = recommender.user_states
    for user, events in streams.items():
        history = [recommender.vocab.decode(i) for i in store.history(user)[0]]
        assert sorted(history) == sorted(events)  # every event stored once, in some interleaving
        torch.testing.assert_close(store.embeddings([user])[0][0], _recompute(recommender, history[-WINDOW:], None),
                                   atol=1e-5, rtol=1e-5)
    actual = sum(s.cache.nbytes for u in store._users.values() for s in u.states.values() if s.cache is not None)
    assert store.cache_bytes == actual


def test_task_states_follow_their_adapter(model_dir, adapter_dir):
    """Catches one cache shared by every task (an adapter changes the keys and values) and a task state that is
    not extended by later events."""
    recommender = Recommender.from_pretrained(model_dir, adapters={"short": adapter_dir})
    history = ["m105", "m117", "m101"]
    recommender.update("u", history[:2])
    first = recommender.recommend_users("u", k=4, task="short")
    assert [r.item_id for r in first] == [r.item_id for r in recommender.recommend(history[:2], 4, task="short")]
    recommender.update("u", history[2:])
    assert recommender.user_states.stats.incremental == 2  # base and short both extended
    for task in (None, "short"):
        got = recommender.recommend_users("u", k=4, task=task)
        want = recommender.recommend(history, 4, task=task)
        assert [r.item_id for r in got] == [r.item_id for r in want]
        assert [r.score for r in got] == pytest.approx([r.score for r in want], abs=1e-4)
