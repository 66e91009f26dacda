"""Loss functions against plain reference implementations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from genrec_hf.losses import full_softmax_loss, sample_uniform_negatives, sampled_softmax_loss


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
    negatives = sample_uniform_negatives(15, (6,) if shared else (7, 6), device=q.device, generator=g)
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
    sampled_softmax_loss(q, v, t, sample_uniform_negatives(15, (50,), device=q.device)).backward()
    assert q.grad is not None and torch.isfinite(q.grad).all() and v.grad.abs().sum() > 0
    assert (sample_uniform_negatives(3, (1000,), device=q.device) > 0).all()
