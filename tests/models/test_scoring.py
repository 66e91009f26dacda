"""Chunked top-k against brute force (full score matrix + sort); target ranks are tested in tests/evaluation."""

from __future__ import annotations

import pytest
import torch

from genrec_hf.models.genrec.scoring import chunked_topk, history_exclusions, rankable_chunk

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


@pytest.mark.parametrize("allowed_kind", ["none", "shared", "per_row", "callable"])
def test_rankable_chunk_matches_a_plain_mask(allowed_kind):
    """The one chunk mask of top-k and of target ranks, against the rule written item by item: catches an excluded
    id masking its neighbour instead (off-by-one in the chunk-local index, ids on a chunk boundary), padding left
    rankable, and a shared, per-row or per-chunk `allowed` read at the wrong offset."""
    g = torch.Generator().manual_seed(3)
    batch, num_items = 4, 23
    not_ranked = torch.randint(0, num_items, (batch, 7), generator=g)
    not_ranked[0, :3] = torch.tensor([0, 5, 6])  # padding entry and the ids at a chunk boundary (chunks of 5)
    shared = torch.rand(num_items, generator=g) > 0.3
    per_row = torch.rand(batch, num_items, generator=g) > 0.3
    allowed = {"none": None, "shared": shared, "per_row": per_row,
               "callable": lambda start, stop: per_row[:, start:stop]}[allowed_kind]
    dense = {"none": torch.ones(batch, num_items, dtype=torch.bool), "shared": shared.expand(batch, -1),
             "per_row": per_row, "callable": per_row}[allowed_kind]
    for start in range(0, num_items, 5):
        stop = min(start + 5, num_items)
        mask = rankable_chunk(batch, start, stop, not_ranked, allowed, torch.device("cpu"))
        for row in range(batch):
            excluded = set(not_ranked[row].tolist()) - {0}
            expected = [item != 0 and item not in excluded and bool(dense[row, item]) for item in range(start, stop)]
            assert mask[row].tolist() == expected, (start, row)


def test_history_exclusions_right_pads_each_history():
    """Catches histories of different lengths shifted or truncated in the (B, H) `exclude` of top-k."""
    assert history_exclusions([[3, 1, 4], [5], (9, 2)]).tolist() == [[3, 1, 4], [5, 0, 0], [9, 2, 0]]
    assert history_exclusions([[7]]).dtype == torch.long
