"""The one ranking rule of the package: the full-catalog position of each held-out target.

For a row with targets Y (0-padded) and a target y ∈ Y:

    rank(y) = 1 + #{rankable items j ≠ y with score_j >= score_y}

* rankable = not index 0 (padding), not in the row's exclusions (e.g. its history), allowed for the row (e.g. an
  availability window); the row's targets are always rankable, even when excluded or not allowed;
* ties are pessimistic (`>=`), so a constant model ranks every target last;
* NaN is pessimistic: an item scoring NaN beats the target and a NaN target is beaten by every rankable item,
  so a diverged model never looks perfect;
* other targets of the same row are items of the served list like any other: they count above y when they score
  at least as high (each distinct item once). For one target per row (T = 1, leave-one-out) this is the usual
  rank; for set-valued targets it is y's position in the served list, which is what recall@K of a set measures.

`rank_targets` is the one implementation (items scored `chunk_size` at a time, each chunk once, memory
O(B × chunk), never B × catalog); `dense_target_ranks` is the plain reference over a dense score matrix that the
tests hold it to.
"""

from __future__ import annotations

import torch

from ..models.genrec.scoring import AllowedItems, as_exclusion, rankable_chunk, score_items


def check_targets(target_ids: torch.Tensor, num_items: int) -> torch.Tensor:
    """(B, T) int64 targets from (B,) or (B, T) item indices; 0 pads a (B, T) row, a (B,) target must be real."""
    if target_ids.dim() not in (1, 2):
        raise ValueError(f"target_ids must be (batch,) or (batch, T); got shape {tuple(target_ids.shape)}.")
    low = 1 if target_ids.dim() == 1 else 0
    if target_ids.numel() and (target_ids.min() < low or target_ids.max() >= num_items):
        raise ValueError(f"target ids must be item indices in [1, {num_items - 1}] (0 is padding); got "
                         f"[{int(target_ids.min())}, {int(target_ids.max())}].")
    targets = target_ids.long()
    return targets[:, None] if targets.dim() == 1 else targets


# Items scored per chunk when ranking: (batch x chunk) scores + one bool mask stay cache-sized (measured in
# benchmarks/scale: 8,192 beats 65,536 by several times at batch 256 on one core).
RANKING_CHUNK = 8192


def rank_targets(
    queries: torch.Tensor,
    item_vectors: torch.Tensor,
    target_ids: torch.Tensor,
    *,
    exclude_ids: torch.Tensor | None = None,
    allowed: AllowedItems | None = None,
    chunk_size: int = RANKING_CHUNK,
    temperature: float = 1.0,
    l2_normalize: bool = False,
) -> torch.Tensor:
    """1-based full-catalog rank of every target under `score_items(queries, item_vectors)` (module rule).

    Args:
        queries: (B, d) query vectors (e.g. `outputs.user_embeddings`).
        item_vectors: (V, d) item vectors; row 0 is padding and never ranked.
        target_ids: (B, T) targets padded with 0, or (B,) one target per row.
        exclude_ids: Optional (B, H) items not ranked for the row (0 entries ignored).
        allowed: Optional items each row may rank (`AllowedItems`).
        chunk_size: Items scored at once.

    Returns:
        LongTensor shaped like `target_ids`: ranks, 0 where the target is padding.

    Each chunk is scored once into one preallocated buffer, and a target's count over it is one comparison:
    `~(score < target)` is true for a higher or tied score and for any NaN on either side, so the tie and NaN rules
    cost nothing extra. Items a row may not rank (padding, its exclusions, its own targets) are counted like any
    other and then taken back, from the same chunk scores (a few per row), so no batch x chunk mask is built; only
    an `allowed` rule (an availability window) masks whole chunks.
    """
    batch, num_items = queries.shape[0], item_vectors.shape[0]
    device = queries.device
    squeeze = target_ids.dim() == 1
    targets = check_targets(target_ids, num_items).to(device)
    if targets.shape[0] != batch:
        raise ValueError(f"target_ids has {targets.shape[0]} rows for {batch} queries.")
    valid = targets > 0
    # Every target is scored once, here, and compared with every chunk's scores; a target's own chunk score is
    # then taken back with the other unrankable items, from the very value that was counted.
    target_scores = score_items(queries.unsqueeze(1), item_vectors[targets], temperature=temperature,
                                l2_normalize=l2_normalize).float().reshape(batch, -1)
    not_ranked = _distinct_nonzero(targets if exclude_ids is None else torch.cat(
        [as_exclusion(exclude_ids, batch, device, "exclude_ids"), targets], 1))
    width = targets.shape[1]
    counts = torch.zeros(batch, width, dtype=torch.long, device=device)
    chunk_size = max(1, min(chunk_size, num_items))
    score_buffer = torch.empty(batch * chunk_size, device=device)
    below_buffer = torch.empty(batch * chunk_size, dtype=torch.bool, device=device)
    for start in range(0, num_items, chunk_size):
        stop = min(start + chunk_size, num_items)
        scores = score_buffer[:batch * (stop - start)].view(batch, stop - start)
        score_items(queries, item_vectors[start:stop], temperature=temperature, l2_normalize=l2_normalize,
                    out=scores)
        below = below_buffer[:batch * (stop - start)].view(batch, stop - start)
        rankable = None if allowed is None else rankable_chunk(batch, start, stop, not_ranked, allowed, device)
        for t in range(width):  # one (B, C) comparison at a time: memory stays O(B x chunk)
            torch.lt(scores, target_scores[:, t:t + 1], out=below)
            if rankable is None:  # everything counts; the unrankable items are taken back below
                counts[:, t] += (stop - start) - below.sum(dim=1)
            else:
                counts[:, t] += (~below & rankable).sum(dim=1)
        if rankable is None:
            counts -= _unrankable_beats(scores, target_scores, not_ranked, start, stop)
    counts += _other_targets_above(targets, target_scores)
    ranks = torch.where(valid, counts + 1, torch.zeros_like(counts))
    return ranks[:, 0] if squeeze else ranks


def _distinct_nonzero(ids: torch.Tensor) -> torch.Tensor:
    """(B, H) item ids with repeats within a row (and padding) set to 0: each unrankable item is taken back once."""
    ordered, _ = ids.sort(dim=1)
    repeat = torch.zeros_like(ordered, dtype=torch.bool)
    repeat[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
    return torch.where(repeat, torch.zeros_like(ordered), ordered)


def _unrankable_beats(scores: torch.Tensor, target_scores: torch.Tensor, not_ranked: torch.Tensor, start: int,
                      stop: int) -> torch.Tensor:
    """(B, T): how many of the chunk's unrankable items (padding, and each row's distinct `not_ranked` ids inside
    start..stop-1) the chunk pass counted against each target, read from the same `scores`."""
    local = not_ranked - start
    inside = (not_ranked > 0) & (local >= 0) & (local < stop - start)
    if start == 0:  # padding, item 0, is never ranked
        local = torch.cat([torch.zeros_like(local[:, :1]), local], 1)
        inside = torch.cat([torch.ones_like(inside[:, :1]), inside], 1)
    picked = scores.gather(1, torch.where(inside, local, torch.zeros_like(local)))  # (B, H)
    beats = ~(picked[:, None, :] < target_scores[:, :, None])  # (B, T, H)
    return (beats & inside[:, None, :]).sum(dim=2)


def dense_target_ranks(scores: torch.Tensor, target_ids: torch.Tensor, exclude_ids: torch.Tensor | None = None,
                       allowed: torch.Tensor | None = None) -> torch.Tensor:
    """The module rule over dense (B, V) scores, written plainly: the reference `rank_targets` is tested against.

    `target_ids` (B,) or (B, T) 0-padded; `exclude_ids` (B, H); `allowed` (V,) or (B, V) bool. Returns ranks shaped
    like `target_ids` (0 at padding).
    """
    scores = scores.float()
    batch, num_items = scores.shape
    squeeze = target_ids.dim() == 1
    targets = check_targets(target_ids, num_items).to(scores.device)
    rankable = torch.ones_like(scores, dtype=torch.bool)
    if exclude_ids is not None and exclude_ids.numel():
        rankable.scatter_(1, exclude_ids.long().to(scores.device), False)
    if allowed is not None:
        rankable &= allowed.to(scores.device).bool().expand(batch, num_items)
    rankable.scatter_(1, targets, True)
    rankable[:, 0] = False
    target_scores = scores.gather(1, targets)  # (B, T)
    beats = ((scores[:, None, :] >= target_scores[:, :, None]) | torch.isnan(scores)[:, None, :]
             | torch.isnan(target_scores)[:, :, None])  # (B, T, V)
    itself = torch.arange(num_items, device=scores.device) == targets[:, :, None]
    ranks = 1 + (beats & rankable[:, None, :] & ~itself).sum(dim=2)
    ranks = torch.where(targets > 0, ranks, torch.zeros_like(ranks))
    return ranks[:, 0] if squeeze else ranks


def _other_targets_above(targets: torch.Tensor, target_scores: torch.Tensor) -> torch.Tensor:
    """(B, T): for each target, the distinct other targets of its row that beat it under the module rule."""
    width = targets.shape[1]
    if width == 1:
        return torch.zeros_like(targets)
    same = targets[:, :, None] == targets[:, None, :]  # (B, i, j)
    earlier = torch.ones(width, width, dtype=torch.bool, device=targets.device).tril(-1)  # [j, k]: k < j
    first = (targets > 0) & ~(same & earlier).any(dim=2)  # the first slot of each distinct target item
    nan = torch.isnan(target_scores)
    beats = ((target_scores[:, None, :] >= target_scores[:, :, None]) | nan[:, None, :] | nan[:, :, None])
    return (beats & first[:, None, :] & ~same).sum(dim=2)
