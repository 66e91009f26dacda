"""Chunked top-k against brute force (full score matrix + sort); target ranks are tested in tests/evaluation."""

from __future__ import annotations

import pytest
import torch

from genrec_hf.models.genrec.scoring import chunked_topk

from tests.helpers import integer_ranking_problem


def test_problem_has_ties():
    queries, vectors, targets, _ = integer_ranking_problem()
    scores = queries @ vectors.T
    assert any(len(set(row.tolist())) < row.numel() for row in scores)


def _brute_topk(queries, vectors, k, exclude=None, allowed=None):
    full = queries @ vectors.T
    full[:, 0] = float("-inf")
    if exclude is not None:
        full.scatter_(1, exclude, float("-inf"))
    if allowed is not None:
        full[:, ~allowed] = float("-inf")
    return full.sort(dim=1, descending=True)  # full sort, then cut


@pytest.mark.parametrize("chunk_size", [2, 3, 5, 50])  # 2 and 3 are smaller than k=4 / 9
@pytest.mark.parametrize("k", [1, 4, 9])
@pytest.mark.parametrize("filters", ["none", "exclude", "allowed", "both"])
def test_topk_matches_brute_force(chunk_size, k, filters):
    g = torch.Generator().manual_seed(1)
    queries, vectors = torch.randn(5, 8, generator=g), torch.randn(30, 8, generator=g)
    exclude = torch.randint(0, 30, (5, 6), generator=g) if filters in ("exclude", "both") else None
    allowed = (torch.rand(30, generator=g) > 0.3) if filters in ("allowed", "both") else None
    index, scores = chunked_topk(queries, vectors, k, exclude=exclude, allowed=allowed, chunk_size=chunk_size)
    sorted_scores, sorted_index = _brute_topk(queries, vectors, k, exclude, allowed)
    torch.testing.assert_close(scores, sorted_scores[:, :k])
    finite = torch.isfinite(sorted_scores[:, :k])
    assert torch.equal(index[finite], sorted_index[:, :k][finite])  # random scores: no ties, order is unique
    assert (index[finite] != 0).all()
    if exclude is not None:
        for row in range(5):
            assert not set(index[row][finite[row]].tolist()) & set(exclude[row].tolist())
    if allowed is not None:
        assert allowed[index[finite]].all()


def test_topk_with_tied_scores_returns_a_valid_top_set():
    queries, vectors, _, exclude = integer_ranking_problem(seed=2)
    index, scores = chunked_topk(queries, vectors, 5, exclude=exclude, chunk_size=3)
    full = queries @ vectors.T
    full[:, 0] = float("-inf")
    full.scatter_(1, exclude, float("-inf"))
    expected = full.topk(5, dim=1).values
    assert torch.equal(scores, expected)  # the score multiset is unique even with ties
    assert torch.equal(full.gather(1, index), scores)  # and each returned index really has that score


def test_topk_never_returns_padding_and_caps_k():
    index, scores = chunked_topk(torch.ones(2, 2), torch.ones(4, 2), k=10, chunk_size=2)
    assert index.shape == (2, 3) and (index > 0).all()
    # everything excluded: -inf slots hold index 0 (never a real item)
    index, scores = chunked_topk(torch.ones(1, 2), torch.ones(4, 2), k=2, exclude=torch.tensor([[1, 2, 3]]))
    assert torch.isinf(scores).all() and (index == 0).all()


def test_topk_ranks_nan_scores_last_and_keeps_them_visible():
    """Catches `recommend` serving a diverged model's NaN-scored items first (torch.topk sorts NaN as largest):
    NaN items come after every item with a number, before excluded ones, and their score stays NaN."""
    vectors = torch.tensor([[0.0], [1.0], [float("nan")], [3.0], [2.0], [5.0]])
    queries = torch.ones(1, 1)
    for chunk_size in (1, 2, 6):
        items, scores = chunked_topk(queries, vectors, 5, exclude=torch.tensor([[5]]), chunk_size=chunk_size)
        assert items.tolist() == [[3, 4, 1, 2, 0]]  # 5 excluded; NaN (item 2) after 1.0; one slot left empty
        assert scores[0, :3].tolist() == [3.0, 2.0, 1.0] and torch.isnan(scores[0, 3])
        assert scores[0, 4] == float("-inf")


def test_topk_keeps_a_positive_infinite_score():
    """Catches the empty-slot rule (-inf → item 0) also wiping out an item that scored +inf."""
    vectors = torch.tensor([[0.0], [float("inf")], [1.0]])
    items, scores = chunked_topk(torch.ones(1, 1), vectors, 2)
    assert items.tolist() == [[1, 2]] and scores[0, 0] == float("inf")


@pytest.mark.parametrize("k", [0, -3, 2.5, True])
def test_topk_rejects_a_k_that_is_not_a_positive_int(k):
    """Catches `k=-3` / `k=0` quietly returning no items and `k=2.5` failing deep inside torch."""
    with pytest.raises(ValueError, match=r"k=.*expected a positive integer"):
        chunked_topk(torch.ones(1, 2), torch.ones(4, 2), k)
