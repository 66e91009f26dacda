"""Multi-token prediction losses against naive references, and K = 1 with weight 1 against next-token prediction."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from genrec_hf import GenRecForNextItemPrediction
from genrec_hf.models.genrec.losses import (full_softmax_loss, full_softmax_multi_target_loss,
                                            item_log_probabilities, sampled_softmax_loss,
                                            sampled_softmax_multi_target_loss)

from tests.helpers import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


def _problem(seed=0, n=7, k=4, items=30, dim=8):
    g = torch.Generator().manual_seed(seed)
    queries = torch.randn(n, dim, generator=g)
    vectors = torch.randn(items, dim, generator=g)
    targets = torch.randint(1, items, (n, k), generator=g)
    targets[1, 2:] = 0  # empty slots
    targets[3, 1] = targets[3, 0]  # a repeated target
    weights = torch.rand(n, k, generator=g)
    weights[targets == 0] = 123.0  # whatever sits in an empty slot must not count
    return queries, vectors, targets, weights


def _naive_full(queries, vectors, targets, weights):
    total = torch.zeros(())
    for n in range(targets.shape[0]):
        logits = queries[n] @ vectors.T
        logits[0] = float("-inf")
        log_p = torch.log_softmax(logits, dim=0)
        for k in range(targets.shape[1]):
            if targets[n, k] > 0:
                total = total - weights[n, k] * log_p[targets[n, k]]
    return total


def _naive_sampled(queries, vectors, targets, weights, negatives, in_batch, log_q, hits):
    """One positive at a time against its position's candidates, written out with Python loops."""
    total = torch.zeros(())
    n_rows = targets.shape[0]
    for n in range(n_rows):
        own = {int(t) for t in targets[n] if t > 0}
        candidates = (negatives.tolist() if negatives.dim() == 1 else negatives[n].tolist())
        if in_batch:
            candidates += targets[:, 0].tolist()
        for k in range(targets.shape[1]):
            y = int(targets[n, k])
            if y == 0:
                continue
            logits = [queries[n] @ vectors[y] - (log_q[y] if log_q is not None else 0.0)]
            for c in candidates:
                if hits and c in own:
                    continue
                logits.append(queries[n] @ vectors[c] - (log_q[c] if log_q is not None else 0.0))
            total = total - weights[n, k] * torch.log_softmax(torch.stack(logits), dim=0)[0]
    return total


def test_full_softmax_multi_target_matches_naive_reference():
    """A target gathered from the wrong row or column, empty slots counted (with their garbage weight), or the
    padding item left in the softmax."""
    queries, vectors, targets, weights = _problem()
    got = full_softmax_multi_target_loss(queries, vectors, targets, weights)
    torch.testing.assert_close(got, _naive_full(queries, vectors, targets, weights), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shared", [True, False], ids=["batch_negatives", "position_negatives"])
@pytest.mark.parametrize("in_batch", [False, True], ids=["", "in_batch"])
@pytest.mark.parametrize("log_q", [False, True], ids=["", "logq"])
def test_sampled_multi_target_matches_naive_reference(shared, in_batch, log_q):
    """Another target of the same position used as a negative (only its own positive masked), the logQ correction
    missing on the positives, per-position negatives read from another position, or empty slots counted."""
    queries, vectors, targets, weights = _problem(seed=1)
    g = torch.Generator().manual_seed(2)
    negatives = torch.randint(1, 30, (12,) if shared else (7, 12), generator=g)
    negatives.view(-1)[:3] = targets[0, :3]  # accidental hits of several targets of position 0
    if not shared:
        negatives[2, :2] = targets[2, 1:3]
    q = item_log_probabilities(torch.arange(30, dtype=torch.float64)) if log_q else None
    got = sampled_softmax_multi_target_loss(queries, vectors, targets, weights, negatives, in_batch_negatives=in_batch,
                                            item_log_q=q)
    expected = _naive_sampled(queries, vectors, targets, weights, negatives, in_batch, q, hits=True)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_one_target_weight_one_is_next_token_prediction():
    """K = 1 with weight 1 drifting from the next-token losses (a different softmax, the positive left out of its
    own denominator, hits masked differently)."""
    queries, vectors, targets, _ = _problem(seed=3)
    first = targets[:, 0]
    ones = torch.ones(len(first), 1)
    torch.testing.assert_close(full_softmax_multi_target_loss(queries, vectors, first[:, None], ones),
                               full_softmax_loss(queries, vectors, first), rtol=0, atol=0)
    negatives = torch.randint(1, 30, (7, 10), generator=torch.Generator().manual_seed(4))
    negatives[0, 0] = first[0]
    for shared_negatives in (negatives[0], negatives):
        for in_batch in (False, True):
            got = sampled_softmax_multi_target_loss(queries, vectors, first[:, None], ones, shared_negatives,
                                                    in_batch_negatives=in_batch)
            expected = sampled_softmax_loss(queries, vectors, first, shared_negatives, in_batch_negatives=in_batch)
            torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-5)


def test_every_candidate_a_hit_gives_zero_loss_and_finite_gradients():
    """A position whose negatives are all its own targets (row 0): log-sum-exp over nothing must give loss 0, not
    NaN gradients that poison the whole step."""
    queries, vectors, _, _ = _problem(seed=5)
    queries = queries[:2].clone()
    queries.requires_grad_(True)
    targets = torch.tensor([[3, 4], [5, 0]])
    negatives = torch.tensor([3, 4, 3])
    loss = sampled_softmax_multi_target_loss(queries, vectors, targets, torch.ones(2, 2), negatives)
    loss.backward()
    assert torch.isfinite(queries.grad).all()
    row1 = _naive_sampled(queries.detach(), vectors, targets, torch.ones(2, 2), negatives, False, None, True)
    torch.testing.assert_close(loss.detach(), row1, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("overrides", [{}, dict(loss_type="sampled", num_negatives=8),
                                       dict(loss_type="sampled", num_negatives=8, negative_sharing="position",
                                            in_batch_negatives=True)], ids=["full", "sampled", "sampled_position"])
def test_model_mtp_with_next_item_only_equals_ntp(overrides):
    """The model's multi-token path normalised or sampled differently from its next-token path: an MTP run with
    K = 1 and weight 1 must train exactly the NTP model (same negatives drawn under the same seed)."""
    model = GenRecForNextItemPrediction(tiny_config(**overrides)).eval()
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(1, 41, (3, 10), generator=g)
    labels = torch.randint(1, 41, (3, 10), generator=g)
    labels[:, :2] = -100
    torch.manual_seed(1)
    ntp = model(input_ids, labels=labels).loss
    torch.manual_seed(1)
    mtp = model(input_ids, labels=labels, mtp_labels=labels.clamp(min=0)[..., None],
                mtp_weights=torch.ones(3, 10, 1)).loss
    torch.testing.assert_close(mtp, ntp, rtol=1e-6, atol=1e-6)


def test_model_mtp_is_divided_by_supervised_positions():
    """A loss divided by the number of targets (or their weight sum) instead of supervised positions changes
    with how targets are spread over the batch, so grad-accumulated and full batches would train differently."""
    model = GenRecForNextItemPrediction(tiny_config()).eval()
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(1, 41, (2, 6), generator=g)
    mtp = torch.randint(1, 41, (2, 6, 3), generator=g)
    weights = torch.rand(2, 6, 3, generator=g)
    labels = mtp[..., 0].clone()
    labels[0, :2] = -100
    out = model(input_ids, labels=labels, mtp_labels=mtp, mtp_weights=weights, output_hidden_states=False)
    queries = model.head(out.last_hidden_state[labels != -100])
    expected = full_softmax_multi_target_loss(queries, model.item_vectors, mtp[labels != -100],
                                              weights[labels != -100]) / 10
    torch.testing.assert_close(out.loss, expected)
    summed = model(input_ids, labels=labels, mtp_labels=mtp, mtp_weights=weights, num_items_in_batch=20).loss
    torch.testing.assert_close(summed, expected / 2)


def test_model_refuses_bad_multi_targets():
    """Mismatched shapes, out-of-range ids or negative weights silently train on garbage (or crash in an index
    kernel) instead of a clear error."""
    model = GenRecForNextItemPrediction(tiny_config()).eval()
    input_ids = torch.randint(1, 41, (2, 5))
    labels = input_ids.clone()
    with pytest.raises(ValueError, match="mtp_labels"):
        model(input_ids, labels=labels, mtp_labels=input_ids[..., None])  # no weights
    with pytest.raises(ValueError, match="mtp_labels"):
        model(input_ids, labels=labels, mtp_labels=input_ids[:, :4, None], mtp_weights=torch.ones(2, 4, 1))
    with pytest.raises(ValueError, match=r"mtp_labels contains 41"):
        model(input_ids, labels=labels, mtp_labels=torch.full((2, 5, 1), 41), mtp_weights=torch.ones(2, 5, 1))
    with pytest.raises(ValueError, match="mtp_weights must be finite and >= 0"):
        model(input_ids, labels=labels, mtp_labels=input_ids[..., None], mtp_weights=-torch.ones(2, 5, 1))


def test_full_softmax_multi_target_gradient_matches_reference():
    """A vectorised loss whose forward matches but whose backward does not (e.g. a detached weight path)."""
    queries, vectors, targets, weights = _problem(seed=6)
    a = queries.clone().requires_grad_(True)
    b = queries.clone().requires_grad_(True)
    full_softmax_multi_target_loss(a, vectors, targets, weights).backward()
    _naive_full(b, vectors, targets, weights).backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-5)
    assert F.mse_loss(a.grad, torch.zeros_like(a.grad)) > 0
