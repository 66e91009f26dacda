"""Incremental state (`GenRecCache`): a forward over new events with the cache equals one forward over the whole
history, for both position encodings, with time gaps and action types, after padded first forwards, and its
limits fail loudly."""

from __future__ import annotations

import pytest
import torch

from genrec_hf import GenRecForNextItemPrediction
from genrec_hf.models.genrec import GenRecCache

from tests.helpers import tiny_config

LENGTH = 12


def _model(**overrides) -> GenRecForNextItemPrediction:
    torch.manual_seed(0)
    model = GenRecForNextItemPrediction(tiny_config(**overrides)).eval()
    with torch.no_grad():  # make the time-gap and position tables matter as much as the items
        for table in (model.model.embeddings.time_gap_embeddings, model.model.embeddings.position_embeddings):
            if table is not None:
                table.weight.normal_(0, 1.0)
    return model


def _events(batch: int = 2, length: int = LENGTH, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 41, (batch, length), generator=g)
    # Gaps from seconds to months, so consecutive events fall into different time-gap buckets.
    gaps = (10 ** (torch.rand(batch, length, generator=g) * 7)).long()
    return ids, gaps.cumsum(dim=1), torch.randint(0, 3, (batch, length), generator=g)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("position_encoding", ["rope", "learned"])
def test_incremental_equals_full_recompute(position_encoding, attn):
    """Catches a new event's position restarting at 0 (learned table or RoPE angle), its time gap taken from 0 or
    from nothing instead of the last cached event, keys cached before the rotary encoding, and a mask that hides
    the cached events or lets a new event see a later one."""
    model = _model(position_encoding=position_encoding, attn_implementation=attn)
    ids, times, actions = _events()
    with torch.no_grad():
        full = model(ids, timestamps=times, action_ids=actions)
        out = model(ids[:, :5], timestamps=times[:, :5], action_ids=actions[:, :5], use_cache=True)
        cache = out.cache
        assert isinstance(cache, GenRecCache) and cache.get_seq_length() == 5
        torch.testing.assert_close(out.last_hidden_state, full.last_hidden_state[:, :5], atol=1e-5, rtol=1e-5)
        steps = [(5, 6), (6, 9), (9, 10), (10, 12)]  # one event and several at once
        for start, stop in steps:
            out = model(ids[:, start:stop], timestamps=times[:, start:stop], action_ids=actions[:, start:stop],
                        cache=cache)
            assert out.cache is cache
            torch.testing.assert_close(out.last_hidden_state, full.last_hidden_state[:, start:stop], atol=1e-5,
                                       rtol=1e-5)
            torch.testing.assert_close(out.user_embeddings, full.last_hidden_state[:, stop - 1], atol=1e-5,
                                       rtol=1e-5)
    assert cache.seen.tolist() == [LENGTH, LENGTH] and cache.last_timestamp.tolist() == times[:, -1].tolist()


def test_time_gaps_change_the_answer():
    """Catches the test above passing vacuously: the cached time gap must be the real one, so a cache whose last
    timestamp is wrong gives a different state."""
    model = _model()
    ids, times, _ = _events(batch=1)
    with torch.no_grad():
        full = model(ids, timestamps=times)
        cache = model(ids[:, :-1], timestamps=times[:, :-1], use_cache=True).cache
        cache.last_timestamp = cache.last_timestamp - 10**6
        wrong = model(ids[:, -1:], timestamps=times[:, -1:], cache=cache)
    assert (wrong.user_embeddings - full.user_embeddings).abs().max() > 1e-2


def test_padded_first_forward_then_extend():
    """Catches the left or right padding of a first, batched forward counted as events (shifted positions, a gap
    measured from a padding slot's timestamp) or attended to by the appended events."""
    model = _model(position_encoding="learned")
    ids, times, _ = _events(batch=2, length=8)
    lengths = [5, 3]
    for side in ("left", "right"):
        padded = torch.zeros(2, 5, dtype=torch.long)
        padded_times = torch.zeros(2, 5, dtype=torch.long)
        for row, n in enumerate(lengths):
            cols = slice(5 - n, 5) if side == "left" else slice(0, n)
            padded[row, cols], padded_times[row, cols] = ids[row, :n], times[row, :n]
        with torch.no_grad():
            cache = model(padded, timestamps=padded_times, use_cache=True).cache
            new = torch.stack([ids[row, n:n + 2] for row, n in enumerate(lengths)])
            new_times = torch.stack([times[row, n:n + 2] for row, n in enumerate(lengths)])
            out = model(new, timestamps=new_times, cache=cache)
            for row, n in enumerate(lengths):
                alone = model(ids[row:row + 1, :n + 2], timestamps=times[row:row + 1, :n + 2])
                torch.testing.assert_close(out.user_embeddings[row], alone.user_embeddings[0], atol=1e-5, rtol=1e-5)
        assert cache.seen.tolist() == [7, 5]


def test_cache_limits_fail_loudly():
    """Catches a cached history silently running past the position table, padded appends corrupting positions,
    mixing timestamped and untimed events, packed rows being cached, and the older `past_key_values=` name being
    ignored."""
    model = _model(max_position_embeddings=6)
    ids, times, _ = _events(batch=1, length=8)
    with torch.no_grad():
        cache = model(ids[:, :5], timestamps=times[:, :5], use_cache=True).cache
        model(ids[:, 5:6], timestamps=times[:, 5:6], past_key_values=cache)
        assert cache.seen.tolist() == [6]
        with pytest.raises(ValueError, match="max_position_embeddings"):
            model(ids[:, 6:7], timestamps=times[:, 6:7], cache=cache)
        cache = model(ids[:, :2], timestamps=times[:, :2], use_cache=True).cache
        with pytest.raises(ValueError, match="padding"):
            model(torch.tensor([[0, 3]]), timestamps=times[:, 2:4], cache=cache)
        with pytest.raises(ValueError, match="timestamps"):
            model(ids[:, 2:3], cache=cache)
        with pytest.raises(ValueError, match="Packed"):
            model(ids[:, :4], position_ids=torch.tensor([[0, 1, 0, 1]]), use_cache=True)
        assert model(ids[:, :3]).cache is None  # config.use_cache is off by default
        assert cache.nbytes > 0


def test_gradient_checkpointing_turns_caching_off():
    """Catches a cache filled twice (the backward replay of every checkpointed layer appending again), and a
    filled cache silently ignored there (the new events run as if they were the whole history)."""
    model = _model()
    model.activation_checkpointing_enable()
    model.train()
    ids, times, _ = _events(batch=1, length=4)
    out = model(ids, timestamps=times, use_cache=True)
    assert out.cache is None
    with torch.no_grad():
        filled = model(ids[:, :2], timestamps=times[:, :2], use_cache=True).cache
    with pytest.raises(ValueError, match="gradient checkpointing"):  # never silently drop the cached past
        model(ids[:, 2:3], timestamps=times[:, 2:3], cache=filled)
