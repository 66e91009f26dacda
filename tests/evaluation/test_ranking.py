"""The one ranking rule (`rank_targets`) against the dense reference and a plain-Python brute force."""

from __future__ import annotations

import math

import pytest
import torch

from genrec_hf.evaluation import dense_target_ranks, rank_targets
from genrec_hf.evaluation import ranking as ranking_module
from genrec_hf.models.genrec.scoring import score_items

from tests.helpers import integer_ranking_problem

pytestmark = pytest.mark.usefixtures("one_thread")


def brute_force_ranks(scores, targets, exclude=None, allowed=None):
    """The module rule one (row, target) at a time in Python: rankable = not padding, (not excluded and allowed) or
    a target of the row; rank = 1 + #{rankable j != y: s_j >= s_y or s_j is NaN or s_y is NaN}."""
    out = torch.zeros_like(targets)
    for b in range(scores.shape[0]):
        row = scores[b].tolist()
        targets_of_row = set(targets[b].tolist()) - {0}
        excluded = set(exclude[b].tolist()) if exclude is not None else set()
        for t in range(targets.shape[1]):
            y = int(targets[b, t])
            if y == 0:
                continue
            rankable = [j for j in range(1, len(row)) if j in targets_of_row
                        or (j not in excluded and (allowed is None or bool(allowed[b, j])))]
            out[b, t] = 1 + sum(1 for j in rankable if j != y and (row[j] >= row[y] or math.isnan(row[j])
                                                                  or math.isnan(row[y])))
    return out


def _problem(seed, batch=7, items=29, dim=3, width=4, nan=False):
    """Integer vectors (exact score ties), 0-padded multi-target rows with duplicates, exclusions holding targets,
    padding and duplicates, a random allowed mask; optionally one NaN item vector."""
    g = torch.Generator().manual_seed(seed)
    queries = torch.randint(-2, 3, (batch, dim), generator=g).float()
    vectors = torch.randint(-2, 3, (items, dim), generator=g).float()
    targets = torch.randint(0, items, (batch, width), generator=g)
    targets[:, 0] = torch.randint(1, items, (batch,), generator=g)
    targets[0, 1] = targets[0, 0]  # a duplicate target
    targets[1, 1:] = 0  # a single-target row
    exclude = torch.randint(0, items, (batch, 6), generator=g)
    exclude[::2, 0] = targets[::2, 0]  # the target in the history is still ranked
    exclude[:, 1] = exclude[:, 2]
    allowed = torch.rand(batch, items, generator=g) > 0.3
    if nan:
        vectors[int(targets[2, 0])] = float("nan")  # a NaN target
        vectors[5] = float("nan")  # a NaN item
    return queries, vectors, targets, exclude, allowed


def test_problem_has_ties():
    """Catches the tie fixtures losing their ties (the pessimistic-tie tests would then prove nothing)."""
    queries, vectors, *_ = _problem(0)
    assert any(len(set(row.tolist())) < row.numel() for row in queries @ vectors.T)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("nan", [False, True])
@pytest.mark.parametrize("filters", ["none", "exclude", "allowed", "both"])
def test_dense_reference_equals_brute_force(seed, nan, filters):
    """Catches the reference itself drifting from the written rule (ties, NaN, padding, targets always ranked)."""
    queries, vectors, targets, exclude, allowed = _problem(seed, nan=nan)
    exclude = exclude if filters in ("exclude", "both") else None
    allowed = allowed if filters in ("allowed", "both") else None
    scores = queries @ vectors.T
    assert torch.equal(dense_target_ranks(scores, targets, exclude, allowed),
                       brute_force_ranks(scores, targets, exclude, allowed))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("nan", [False, True])
@pytest.mark.parametrize("chunk_size", [1, 4, 7, 29, 100])
def test_chunked_ranks_equal_dense_reference(seed, nan, chunk_size):
    """Catches a chunk boundary, exclusion, allowed-mask, duplicate-target or NaN mistake in the one chunked path."""
    queries, vectors, targets, exclude, allowed = _problem(seed, nan=nan)
    scores = queries @ vectors.T
    for ex, al in ((None, None), (exclude, None), (None, allowed), (exclude, allowed)):
        got = rank_targets(queries, vectors, targets, exclude_ids=ex, allowed=al, chunk_size=chunk_size)
        assert torch.equal(got, dense_target_ranks(scores, targets, ex, al))


def test_allowed_forms_agree():
    """Catches a (V,) mask or a per-chunk callable being applied to the wrong items (off by the chunk start)."""
    queries, vectors, targets, exclude, allowed = _problem(1)
    shared = allowed[0]
    expected = dense_target_ranks(queries @ vectors.T, targets, exclude, shared)
    widths = []

    def per_chunk(start, stop):
        widths.append(stop - start)
        return shared[start:stop]

    assert torch.equal(rank_targets(queries, vectors, targets, exclude_ids=exclude, allowed=shared, chunk_size=6),
                       expected)
    assert torch.equal(rank_targets(queries, vectors, targets, exclude_ids=exclude, allowed=per_chunk, chunk_size=6),
                       expected)
    assert widths == [6, 6, 6, 6, 5]  # every chunk asked once, never the whole catalog


def test_each_chunk_is_scored_once(monkeypatch):
    """Catches the old task path that scored every chunk twice (once for target scores, once for counting)."""
    calls = []

    def counting(queries, item_vectors, **kwargs):
        calls.append(tuple(item_vectors.shape[:-1]))
        return score_items(queries, item_vectors, **kwargs)

    monkeypatch.setattr(ranking_module, "score_items", counting)
    queries, vectors, targets, exclude, allowed = _problem(2)
    rank_targets(queries, vectors, targets, exclude_ids=exclude, allowed=allowed, chunk_size=10)
    assert calls == [(7, 4), (10,), (10,), (9,)]  # the (B, T) targets once, then each chunk of the catalog once


def test_single_target_shape_and_validation():
    """Catches (B,) targets losing their shape, and a padding / out-of-catalog single target passing silently."""
    queries, vectors, targets, exclude, _ = _problem(3)
    flat = rank_targets(queries, vectors, targets[:, 0], exclude_ids=exclude, chunk_size=5)
    assert flat.shape == (7,)
    assert torch.equal(flat, dense_target_ranks(queries @ vectors.T, targets[:, :1], exclude)[:, 0])
    with pytest.raises(ValueError, match="padding"):
        rank_targets(queries[:2], vectors, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="padding"):
        rank_targets(queries[:2], vectors, torch.tensor([[1, 29], [1, 0]]))
    with pytest.raises(ValueError, match="padding"):
        dense_target_ranks(torch.zeros(2, 5), torch.tensor([5, 1]))
    with pytest.raises(ValueError, match="batch"):
        rank_targets(queries[:2], vectors, torch.tensor([1, 2]), exclude_ids=torch.tensor([1, 2]))


def test_temperature_and_l2_match_dense_scores():
    """Catches the chunked path scoring with a different rule than `score_items` (temperature, cosine)."""
    g = torch.Generator().manual_seed(7)
    queries, vectors = torch.randn(4, 5, generator=g), torch.randn(31, 5, generator=g)
    targets = torch.tensor([1, 7, 30, 12])
    got = rank_targets(queries, vectors, targets, chunk_size=6, temperature=0.05, l2_normalize=True)
    dense = score_items(queries, vectors, temperature=0.05, l2_normalize=True)
    expected = [1 + int(((dense[i] >= dense[i, t]) & (torch.arange(31) != t) & (torch.arange(31) != 0)).sum())
                for i, t in enumerate(targets.tolist())]
    assert got.tolist() == expected


def test_constant_model_ranks_last():
    """Catches optimistic ties: a model scoring every item the same must rank every target last."""
    vectors, queries = torch.ones(11, 4), torch.ones(3, 4)
    assert rank_targets(queries, vectors, torch.tensor([1, 5, 10]), chunk_size=3).tolist() == [10, 10, 10]
    ranks = rank_targets(queries, vectors, torch.tensor([1, 5, 10]), exclude_ids=torch.tensor([[2, 3, 4]] * 3))
    assert ranks.tolist() == [7, 7, 7]  # excluding 3 other items leaves 7 rankable items
    # a set: each target's other targets are items of the list too, so tied targets all rank last
    assert rank_targets(queries[:1], vectors, torch.tensor([[1, 5, 0]]), chunk_size=4).tolist() == [[10, 10, 0]]


def test_nan_is_pessimistic_for_single_and_set_targets():
    """Catches the old `tasks.multi_target_ranks` bug: a NaN target got rank 0 and its user vanished from the
    metrics (NaN items never counted against the target); a diverged model must not look perfect."""
    vectors, queries = torch.randn(9, 3), torch.randn(2, 3)
    queries[0] = float("nan")  # a diverged user embedding
    vectors[4] = float("nan")  # one broken item
    assert rank_targets(queries, vectors, torch.tensor([2, 4]), chunk_size=4).tolist() == [8, 8]
    assert rank_targets(queries[1:], vectors, torch.tensor([2]), chunk_size=4)[0] >= 2  # item 4 counts against it
    sets = rank_targets(queries, vectors, torch.tensor([[2, 4, 0], [4, 0, 0]]), chunk_size=3)
    assert sets.tolist() == [[8, 8, 0], [8, 0, 0]]  # NaN targets last, never 0


@pytest.mark.parametrize("chunk", [3, 7, 100])
def test_fixed_multi_target_case_matches_brute_force(chunk):
    """Catches the set-valued cases the old task path was checked on (many ties, excluded targets, an allowed
    mask, 0-padded rows) regressing; dense scores enter as one-hot queries against the score columns."""
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 5, (6, 20), generator=g).float()  # many ties
    targets = torch.tensor([[3, 0, 0], [5, 6, 7], [1, 2, 0], [19, 4, 0], [8, 0, 0], [2, 9, 11]])
    exclude = torch.tensor([[3, 4, 0], [1, 6, 0], [0, 0, 0], [5, 6, 7], [9, 10, 11], [2, 0, 0]])
    allowed = torch.rand(6, 20, generator=g) > 0.3
    ranks = rank_targets(torch.eye(6), scores.T.contiguous(), targets, exclude_ids=exclude,
                         allowed=lambda a, b: allowed[:, a:b], chunk_size=chunk)
    assert torch.equal(ranks, brute_force_ranks(scores, targets, exclude, allowed))


def reference_ranks(queries, vectors, targets, exclude=None):
    """1 + #{j not padding, not excluded, not the target: s_j >= s_target}, one user at a time in Python."""
    ranks = []
    for row, (q, t) in enumerate(zip(queries, targets.tolist())):
        scores = (vectors @ q).tolist()
        skip = {0, t} | (set(exclude[row].tolist()) if exclude is not None else set())
        ranks.append(1 + sum(1 for j, s in enumerate(scores) if j not in skip and s >= scores[t]))
    return torch.tensor(ranks)


@pytest.mark.parametrize("chunk_size", [1, 4, 7, 23, 100])
@pytest.mark.parametrize("with_exclude", [True, False])
def test_single_target_ranks_match_reference(chunk_size, with_exclude):
    """Catches the leave-one-out rank (the former `scoring.chunked_target_ranks` cases) changing in the move."""
    queries, vectors, targets, exclude = integer_ranking_problem()
    exclude = exclude if with_exclude else None
    got = rank_targets(queries, vectors, targets, exclude_ids=exclude, chunk_size=chunk_size)
    assert torch.equal(got, reference_ranks(queries, vectors, targets, exclude))


@pytest.mark.parametrize("chunk_size", [1, 4, 29, 1000])
def test_taken_back_items_are_counted_once_whatever_they_score(chunk_size):
    """The chunk pass counts every item and takes the unrankable ones back: catches an item taken back twice (a
    duplicate exclusion, a target also in the history), an excluded NaN item or a NaN padding row still counted
    (the NaN rule counts them in the pass, so the take-back must too), and the padding of a chunk 0 of width 1."""
    queries, vectors, targets, exclude, _ = _problem(5, nan=True)
    vectors[0] = float("nan")  # a padding row holding NaN (a model's padding row is not guaranteed to be zeros)
    exclude[:, 3] = 5  # the NaN item, excluded in every row ...
    exclude[:, 4] = 5  # ... twice
    exclude[3, :4] = targets[3, 0]  # a target four times in its own history
    scores = score_items(queries, vectors)
    got = rank_targets(queries, vectors, targets, exclude_ids=exclude, chunk_size=chunk_size)
    assert torch.equal(got, brute_force_ranks(scores, targets, exclude))
    assert torch.equal(got, dense_target_ranks(scores, targets, exclude))


def test_the_score_buffer_is_reused_not_reallocated(monkeypatch):
    """Catches the kernel allocating a batch x chunk score matrix per chunk again (half the CPU of an evaluation
    pass went to re-allocating chunk buffers): every chunk is scored into the same buffer."""
    buffers = []
    real = ranking_module.score_items

    def recording(queries, item_vectors, **kwargs):
        out = kwargs.get("out")
        if out is not None:
            buffers.append(out.untyped_storage().data_ptr())
        return real(queries, item_vectors, **kwargs)

    monkeypatch.setattr(ranking_module, "score_items", recording)
    queries, vectors, targets, exclude, _ = _problem(6, items=50)
    rank_targets(queries, vectors, targets, exclude_ids=exclude, chunk_size=8)
    assert len(buffers) == 7 and len(set(buffers)) == 1
