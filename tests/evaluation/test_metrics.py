"""`metrics_from_ranks`: one definition for one or many targets, against the formulas written out plainly."""

from __future__ import annotations

import math

import pytest
import torch

from genrec_hf.evaluation import DEFAULT_KS, metrics_from_ranks, pad_ranks


def reference_single(ranks: list[int], ks=DEFAULT_KS) -> dict[str, float]:
    """Standard single-target MRR / HR@K / NDCG@K (recall@K = HR@K for one target)."""
    out = {"mrr": sum(1 / r for r in ranks) / len(ranks)}
    for k in ks:
        out[f"hr@{k}"] = sum(r <= k for r in ranks) / len(ranks)
        out[f"ndcg@{k}"] = sum(1 / math.log2(r + 1) for r in ranks if r <= k) / len(ranks)
        out[f"recall@{k}"] = out[f"hr@{k}"]
    return {**out, "num_users": len(ranks), "num_users_without_target": 0}


def test_single_target_metrics_are_the_standard_ones():
    """Catches the (U, T) definitions drifting from the single-target ones pre-training always reported."""
    ranks = torch.tensor([1, 2, 3, 10, 11, 50, 51, 200, 201, 7])
    got = metrics_from_ranks(ranks)
    assert set(got) == {"mrr", "num_users", "num_users_without_target"} | {
        f"{m}@{k}" for m in ("hr", "ndcg", "recall") for k in DEFAULT_KS}
    assert got == pytest.approx(reference_single(ranks.tolist()))
    assert metrics_from_ranks(ranks[:, None]) == got  # (U,) and (U, 1) are the same thing, exactly
    assert metrics_from_ranks(torch.tensor([1]))["ndcg@1"] == 1.0
    assert metrics_from_ranks(torch.tensor([3]), ks=(5,))["ndcg@5"] == pytest.approx(0.5)  # 1/log2(4)


def test_set_metric_definitions():
    """Catches wrong set-valued MRR (best target), recall@K (share of targets) or NDCG@K (ideal of min(K, |Y|))."""
    ranks = torch.tensor([[3, 1, 12], [4, 0, 0], [20, 30, 0]])
    m = metrics_from_ranks(ranks, ks=(1, 10))
    assert m["num_users"] == 3 and m["num_users_without_target"] == 0
    assert math.isclose(m["mrr"], (1 / 1 + 1 / 4 + 1 / 20) / 3)
    assert math.isclose(m["hr@1"], 1 / 3) and math.isclose(m["hr@10"], 2 / 3)
    assert math.isclose(m["recall@10"], (2 / 3 + 1 + 0) / 3)
    ndcg_u0 = (1 / math.log2(4) + 1 / math.log2(2)) / (1 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4))
    assert math.isclose(m["ndcg@10"], (ndcg_u0 + 1 / math.log2(5) + 0) / 3)


def test_users_without_a_target_are_counted_not_averaged():
    """Catches users with no valid target silently vanishing (or counting as misses) in the averages."""
    ranks = torch.tensor([[2, 0], [0, 0], [5, 1]])
    m = metrics_from_ranks(ranks, ks=(1,))
    assert m["num_users"] == 2 and m["num_users_without_target"] == 1
    assert m == pytest.approx(metrics_from_ranks(ranks[[0, 2]], ks=(1,)) | {"num_users_without_target": 1})
    with pytest.raises(ValueError, match="no users"):
        metrics_from_ranks(torch.tensor([]))
    with pytest.raises(ValueError, match="no users"):
        metrics_from_ranks(torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="1-based"):
        metrics_from_ranks(torch.tensor([-1, 1]))


def test_pad_ranks_over_uneven_batches_equals_all_at_once():
    """Catches batches of different target widths (or (B,) single-target batches) being mis-aligned on concat."""
    ranks = torch.randint(1, 500, (97,), generator=torch.Generator().manual_seed(0))
    assert metrics_from_ranks(pad_ranks(list(ranks.split(10))), ks=(1, 10, 100)) == metrics_from_ranks(
        ranks, ks=(1, 10, 100))
    padded = pad_ranks([torch.tensor([[1, 2]]), torch.tensor([3]), torch.tensor([[4, 0, 5]])])
    assert padded.tolist() == [[1, 2, 0], [3, 0, 0], [4, 0, 5]]
