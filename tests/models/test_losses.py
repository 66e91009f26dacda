"""Loss functions against plain reference implementations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from genrec_hf.models.genrec.losses import (
    full_softmax_loss,
    item_log_probabilities,
    sample_negatives,
    sampled_softmax_loss,
)


pytestmark = pytest.mark.usefixtures("one_thread")


def _problem(seed=0, n=7, items=15, dim=4):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, dim, generator=g, requires_grad=True), torch.randn(items, dim, generator=g),
            torch.randint(1, items, (n,), generator=g))


def test_full_softmax_equals_cross_entropy_without_padding():
    q, v, t = _problem()
    logits = q @ v.T
    expected = F.cross_entropy(logits[:, 1:], t - 1, reduction="sum")
    torch.testing.assert_close(full_softmax_loss(q, v, t), expected)
    scaled = full_softmax_loss(q, v, t, temperature=0.5, l2_normalize=True)
    cos = F.normalize(q, dim=-1) @ F.normalize(v, dim=-1).T / 0.5
    torch.testing.assert_close(scaled, F.cross_entropy(cos[:, 1:], t - 1, reduction="sum"))


def _reference_sampled(q, v, t, negatives, in_batch=False, log_q=None, remove_hits=True, temperature=1.0,
                       l2=False):
    """One row at a time, written out plainly."""
    total = 0.0
    q = q.detach()
    qn = F.normalize(q, dim=-1) if l2 else q
    vn = F.normalize(v, dim=-1) if l2 else v
    for i in range(q.shape[0]):
        row_negs = negatives[i] if negatives.dim() == 2 else negatives
        candidates = [int(t[i])] + row_negs.tolist() + (t.tolist() if in_batch else [])
        logits = []
        for position, item in enumerate(candidates):
            if position > 0 and remove_hits and item == int(t[i]):
                continue
            logit = float(qn[i] @ vn[item]) / temperature
            if log_q is not None:
                logit -= float(log_q[item])
            logits.append(logit)
        total += -(logits[0] - math.log(sum(math.exp(x) for x in logits)))
    return total


@pytest.mark.parametrize("shared", [True, False])
@pytest.mark.parametrize("in_batch", [False, True])
@pytest.mark.parametrize("remove_hits", [True, False])
def test_sampled_softmax_matches_reference(shared, in_batch, remove_hits):
    q, v, t = _problem()
    g = torch.Generator().manual_seed(1)
    negatives = sample_negatives(15, (6,) if shared else (7, 6), device=q.device, generator=g)
    negatives[..., 0] = t[0]  # force an accidental hit
    got = sampled_softmax_loss(q, v, t, negatives, in_batch_negatives=in_batch, remove_accidental_hits=remove_hits)
    expected = _reference_sampled(q, v, t, negatives, in_batch=in_batch, remove_hits=remove_hits)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_sampled_softmax_logq_temperature_l2():
    q, v, t = _problem(seed=2)
    negatives = torch.arange(1, 15)
    log_q = torch.log(torch.linspace(0.01, 1.0, 15))
    got = sampled_softmax_loss(q, v, t, negatives, item_log_q=log_q, temperature=0.05, l2_normalize=True)
    expected = _reference_sampled(q, v, t, negatives, log_q=log_q, temperature=0.05, l2=True)
    assert got.item() == pytest.approx(expected, rel=1e-5)
    # a uniform sampler's log q is a constant: the correction changes nothing
    flat = sampled_softmax_loss(q, v, t, negatives, item_log_q=torch.full((15,), -2.0))
    torch.testing.assert_close(flat, sampled_softmax_loss(q, v, t, negatives))


def test_all_other_items_as_negatives_equals_full_softmax():
    q, v, t = _problem(seed=4)
    negatives = torch.arange(1, 15)  # every item once; the hit (the positive itself) is removed
    torch.testing.assert_close(sampled_softmax_loss(q, v, t, negatives), full_softmax_loss(q, v, t))


def test_gradients_flow_and_negatives_never_padding():
    q, v, t = _problem()
    v = v.clone().requires_grad_(True)
    sampled_softmax_loss(q, v, t, sample_negatives(15, (50,), device=q.device)).backward()
    assert q.grad is not None and torch.isfinite(q.grad).all() and v.grad.abs().sum() > 0
    assert (sample_negatives(3, (1000,), device=q.device) > 0).all()


@pytest.mark.parametrize("shared", [True, False])
def test_sampled_softmax_all_options_together(shared):
    q, v, t = _problem(seed=5)
    g = torch.Generator().manual_seed(2)
    negatives = sample_negatives(15, (9,) if shared else (7, 9), device=q.device, generator=g)
    negatives[..., 1] = t[-1]
    log_q = torch.log(torch.rand(15, generator=g) + 0.1)
    kwargs = dict(in_batch=True, log_q=log_q, temperature=0.3, l2=True)
    got = sampled_softmax_loss(q, v, t, negatives, in_batch_negatives=True, item_log_q=log_q, temperature=0.3,
                               l2_normalize=True)
    assert got.item() == pytest.approx(_reference_sampled(q, v, t, negatives, **kwargs), rel=1e-5)


def test_explicit_logits_cross_entropy_for_sampled_candidates():
    # sampled softmax = cross-entropy over [positive, negatives] logits built by hand (no hits in this draw)
    q, v, t = _problem(seed=6)
    negatives = torch.tensor([i for i in range(1, 15) if i not in set(t.tolist())][:5])
    logits = torch.cat([(q * v[t]).sum(-1, keepdim=True), q @ v[negatives].T], dim=1)
    expected = F.cross_entropy(logits, torch.zeros(len(t), dtype=torch.long), reduction="sum")
    torch.testing.assert_close(sampled_softmax_loss(q, v, t, negatives), expected)


@pytest.mark.parametrize("options", [dict(), dict(temperature=0.2, l2_normalize=True)])
def test_sampled_with_every_other_item_once_equals_full_in_value_and_gradient(options):
    # negatives = every item of the catalog once (padding excluded), accidental hit (the positive) removed:
    # the candidate set is exactly the catalog, so the sampled loss and its gradients are the full softmax's.
    q, v, t = _problem(seed=7)
    v = v.clone().requires_grad_(True)
    sampled = sampled_softmax_loss(q, v, t, torch.arange(1, 15), **options)
    grads_sampled = torch.autograd.grad(sampled, (q, v))
    full = full_softmax_loss(q, v, t, **options)
    grads_full = torch.autograd.grad(full, (q, v))
    torch.testing.assert_close(sampled, full)
    for a, b in zip(grads_sampled, grads_full):
        torch.testing.assert_close(a, b)
    # per-position negatives holding the same set (shuffled per row) give the same loss
    per_position = torch.stack([torch.randperm(14) + 1 for _ in range(len(t))])
    torch.testing.assert_close(sampled_softmax_loss(q, v, t, per_position, **options), full)


def test_model_trains_with_sampled_softmax():
    from genrec_hf import GenRecConfig, GenRecForNextItemPrediction

    torch.manual_seed(0)
    config = GenRecConfig(vocab_size=51, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=64, max_position_embeddings=16, hidden_dropout_prob=0.0,
                          attention_dropout=0.0, loss_type="sampled", num_negatives=10,
                          head_projection_ratio=4, tie_word_embeddings=False)
    model = GenRecForNextItemPrediction(config)
    # a learnable rule: the next item is (item + 7) mod 50, shifted into 1..50
    starts = torch.randint(1, 51, (32, 1))
    sequence = (starts - 1 + 7 * torch.arange(13)) % 50 + 1
    input_ids, labels = sequence[:, :-1], sequence[:, 1:]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

    def full_loss() -> float:
        with torch.no_grad():
            hidden = model.model(input_ids).last_hidden_state
            return full_softmax_loss(model.head(hidden.reshape(-1, 32)), model.item_vectors,
                                     labels.reshape(-1)).item() / labels.numel()

    before = full_loss()
    losses = []
    for _ in range(40):
        loss = model(input_ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) < 0.5 * sum(losses[:5])
    assert full_loss() < 0.5 * before  # what the sampled loss learned holds under the full softmax


def test_popularity_sampler_draws_from_q_and_never_padding():
    counts = torch.tensor([50.0, 0.0, 1.0, 9.0, 99.0])  # the padding count is ignored
    log_q = item_log_probabilities(counts)
    expected = torch.tensor([0.0, 1.0, 2.0, 10.0, 100.0]) / 113.0
    torch.testing.assert_close(log_q[1:].exp(), expected[1:])
    assert log_q[0] == float("-inf")
    g = torch.Generator().manual_seed(0)
    draws = sample_negatives(5, (200_000,), item_log_q=log_q, generator=g)
    frequencies = torch.bincount(draws, minlength=5).double() / draws.numel()
    assert frequencies[0] == 0
    torch.testing.assert_close(frequencies[1:], expected[1:].double(), atol=3e-3, rtol=0)
    per_position = sample_negatives(5, (7, 3), item_log_q=log_q, generator=g)
    assert per_position.shape == (7, 3) and per_position.min() >= 1 and per_position.max() <= 4
    uniform = item_log_probabilities(counts, alpha=0.0)
    torch.testing.assert_close(uniform[1:].exp(), torch.full((4,), 0.25))


def test_logq_corrected_popularity_sampling_estimates_the_full_softmax_gradient():
    # With the correction, the sampled softmax's gradient approaches the full softmax's as negatives grow (Bengio &
    # Senecal); under a skewed sampler and without it, the estimate stays biased towards punishing popular items.
    q, v, t = _problem(seed=7, items=12)
    v = v.clone().requires_grad_(True)
    counts = torch.tensor([0.0] + [2.0 ** i for i in range(11)])  # q from ~0.05% to ~50%
    log_q = item_log_probabilities(counts)
    negatives = sample_negatives(12, (400_000,), item_log_q=log_q, generator=torch.Generator().manual_seed(3))

    def grads(loss_fn):
        q.grad = v.grad = None
        loss_fn().backward()
        return torch.cat([q.grad.flatten(), v.grad.flatten()])

    full = grads(lambda: full_softmax_loss(q, v, t))
    corrected = grads(lambda: sampled_softmax_loss(q, v, t, negatives, item_log_q=log_q, remove_accidental_hits=False))
    biased = grads(lambda: sampled_softmax_loss(q, v, t, negatives, remove_accidental_hits=False))
    assert (corrected - full).norm() / full.norm() < 0.03
    assert (biased - full).norm() / full.norm() > 0.3
