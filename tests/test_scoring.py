"""Chunked top-k and target ranks against brute force (full score matrix + sort / Python loops)."""

from __future__ import annotations

import pytest
import torch

from genrec_hf.evaluation import dense_target_ranks, metrics_from_ranks, ranking_metrics, RankingAccumulator
from genrec_hf.scoring import chunked_target_ranks, chunked_topk


def _integer_problem(seed=0, batch=6, items=23, dim=3):
    g = torch.Generator().manual_seed(seed)
    # small integer vectors: exact ties between items exist
    queries = torch.randint(-2, 3, (batch, dim), generator=g).float()
    vectors = torch.randint(-2, 3, (items, dim), generator=g).float()
    targets = torch.randint(1, items, (batch,), generator=g)
    exclude = torch.randint(0, items, (batch, 5), generator=g)
    exclude[:, 0] = targets  # the target in the history must still be ranked
    exclude[:, 1] = exclude[:, 2]  # duplicates
    return queries, vectors, targets, exclude


def _reference_ranks(queries, vectors, targets, exclude):
    ranks = []
    for q, t, ex in zip(queries, targets.tolist(), exclude.tolist()):
        scores = (vectors @ q).tolist()
        skip = set(ex) | {0, t}
        ranks.append(1 + sum(1 for j, s in enumerate(scores) if j not in skip and s >= scores[t]))
    return torch.tensor(ranks)


@pytest.mark.parametrize("chunk_size", [1, 4, 7, 23, 100])
def test_target_ranks_match_reference(chunk_size):
    queries, vectors, targets, exclude = _integer_problem()
    expected = _reference_ranks(queries, vectors, targets, exclude)
    got = chunked_target_ranks(queries, vectors, targets, exclude=exclude, chunk_size=chunk_size)
    assert torch.equal(got, expected)
    assert torch.equal(dense_target_ranks(queries @ vectors.T, targets, exclude), expected)


def test_constant_model_ranks_last():
    vectors = torch.ones(11, 4)
    queries = torch.ones(3, 4)
    ranks = chunked_target_ranks(queries, vectors, torch.tensor([1, 5, 10]), chunk_size=3)
    assert ranks.tolist() == [10, 10, 10]  # 10 rankable items, ties pessimistic


@pytest.mark.parametrize("chunk_size", [2, 5, 50])
@pytest.mark.parametrize("k", [1, 4, 9])
def test_topk_matches_brute_force(chunk_size, k):
    g = torch.Generator().manual_seed(1)
    queries, vectors = torch.randn(5, 8, generator=g), torch.randn(30, 8, generator=g)
    exclude = torch.randint(0, 30, (5, 6), generator=g)
    allowed = torch.rand(30, generator=g) > 0.3
    scores, index = chunked_topk(queries, vectors, k, exclude=exclude, allowed=allowed, chunk_size=chunk_size)
    full = queries @ vectors.T
    full[:, 0] = float("-inf")
    full.scatter_(1, exclude, float("-inf"))
    full[:, ~allowed] = float("-inf")
    expected_scores, expected_index = full.topk(k, dim=1)
    torch.testing.assert_close(scores, expected_scores)
    finite = torch.isfinite(expected_scores)
    assert torch.equal(index[finite], expected_index[finite])
    assert (index != 0).all() or not finite.all()


def test_topk_never_returns_padding_and_caps_k():
    scores, index = chunked_topk(torch.ones(2, 2), torch.ones(4, 2), k=10, chunk_size=2)
    assert index.shape == (2, 3) and (index > 0).all()


def _reference_metrics(ranks, ks):
    import math

    out = {"mrr": sum(1 / r for r in ranks) / len(ranks)}
    for k in ks:
        out[f"hr@{k}"] = sum(r <= k for r in ranks) / len(ranks)
        out[f"ndcg@{k}"] = sum(1 / math.log2(r + 1) for r in ranks if r <= k) / len(ranks)
    return out


def test_metrics_match_reference_and_accumulate():
    ranks = torch.tensor([1, 2, 3, 10, 11, 50, 200, 201, 7])
    expected = _reference_metrics(ranks.tolist(), (1, 5, 10, 50, 200))
    got = metrics_from_ranks(ranks)
    for key, value in expected.items():
        assert got[key] == pytest.approx(value), key
    accumulator = RankingAccumulator()
    accumulator.add(ranks[:4])
    accumulator.add(ranks[4:])
    accumulated = accumulator.compute()
    assert accumulated.pop("num_users") == 9
    assert accumulated == pytest.approx(got)


def test_ranking_metrics_dense_matches_reference_with_ties():
    queries, vectors, targets, exclude = _integer_problem(seed=3, batch=20)
    scores = queries @ vectors.T
    got = ranking_metrics(scores, targets, exclude, ks=(1, 5, 10))
    expected = _reference_metrics(_reference_ranks(queries, vectors, targets, exclude).tolist(), (1, 5, 10))
    assert got == pytest.approx(expected)
    with pytest.raises(ValueError, match="scores must be"):
        ranking_metrics(scores[0], targets)


def test_evaluate_module_loads_offline_by_path():
    import evaluate

    from genrec_hf.metrics import RANKING_METRIC_PATH

    ranks = [1, 4, 12, 300]
    assert evaluate.load(RANKING_METRIC_PATH, "ranks").compute(ranks=ranks) == pytest.approx(metrics_from_ranks(torch.tensor(ranks)))
    queries, vectors, targets, _ = _integer_problem(seed=5)
    scores = (queries @ vectors.T).tolist()
    got = evaluate.load(RANKING_METRIC_PATH).compute(predictions=scores, references=targets.tolist(), ks=(1, 5))
    expected = metrics_from_ranks(dense_target_ranks(torch.tensor(scores), targets), (1, 5))
    assert got == pytest.approx(expected)
