"""Exact full-catalog scoring in chunks: top-k with memory bounded by the chunk size.

Scores are dot products between query vectors (batch × d) and item vectors (catalog × d). Index 0 is padding and
is never ranked. A batch × catalog score matrix is never built: items are scored `chunk_size` at a time and a
running top-k is merged. Which items of a chunk a row may return is `rankable_chunk`, the one mask rule: target ranks
for evaluation (`genrec_hf.evaluation.ranking`) use it too.

Torch only (no genrec_hf imports): copied next to saved checkpoints for `trust_remote_code` loading.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F


class TopItems(NamedTuple):
    """Top-k items per query, best first: what `chunked_topk`, `model.topk`, `model.recommend` and
    `adapters.score_mixed_batch` all return (unpacks as `items, scores = ...`)."""

    items: torch.Tensor
    """(B, k) item indices; 0 where fewer than k items were rankable."""
    scores: torch.Tensor
    """(B, k) float scores; -inf where fewer than k items were rankable."""


# Items a row may rank: (V,) or (B, V) bool, or `fn(start, stop)` giving the (B, stop-start) or (stop-start,) mask
# of one chunk (so e.g. an availability window is never materialised as B × catalog).
AllowedItems = torch.Tensor | Callable[[int, int], torch.Tensor]


def as_exclusion(exclude: torch.Tensor | None, batch: int, device: torch.device,
                 name: str = "exclude") -> torch.Tensor:
    """Exclusions as a padded (batch, H) LongTensor of item indices, 0 = nothing (None: no column)."""
    if exclude is None:
        return torch.zeros(batch, 0, dtype=torch.long, device=device)
    if exclude.dim() != 2 or exclude.shape[0] != batch:
        raise ValueError(f"{name} must have shape (batch={batch}, H), got {tuple(exclude.shape)}.")
    return exclude.to(device=device, dtype=torch.long)


def history_exclusions(histories: Sequence[Sequence[int]], device: torch.device | str | None = None) -> torch.Tensor:
    """(B, H) LongTensor of each history's item indices, right-padded with 0 to the longest: the `exclude` that
    leaves a user's seen items out of their top-k."""
    out = torch.zeros(len(histories), max((len(h) for h in histories), default=0), dtype=torch.long, device=device)
    for i, history in enumerate(histories):
        out[i, :len(history)] = torch.as_tensor(list(history), dtype=torch.long)
    return out


def rankable_chunk(batch: int, start: int, stop: int, not_ranked: torch.Tensor, allowed: AllowedItems | None,
                   device: torch.device) -> torch.Tensor:
    """(B, stop-start) bool: the items start..stop-1 each row may rank: not padding (index 0), not among the row's
    `not_ranked` (B, H) item indices (0 entries ignored), and allowed when `allowed` is given."""
    width = stop - start
    rankable = torch.ones(batch, width + 1, dtype=torch.bool, device=device)  # last column: out-of-chunk ids
    local = not_ranked - start
    inside = (local >= 0) & (local < width) & (not_ranked > 0)
    rankable.scatter_(1, torch.where(inside, local, width), False)
    rankable = rankable[:, :width]
    if start == 0:
        rankable[:, 0] = False
    if allowed is not None:
        mask = allowed(start, stop) if callable(allowed) else allowed[..., start:stop]
        rankable &= mask.to(device=device, dtype=torch.bool)
    return rankable


def score_items(queries: torch.Tensor, item_vectors: torch.Tensor, *, temperature: float = 1.0,
                l2_normalize: bool = False, out: torch.Tensor | None = None) -> torch.Tensor:
    """Scores of every query against the given item vectors (the one scoring rule of the package).

    `out`: a float32 buffer of the result's shape to write into (a ranking loop reuses one instead of allocating
    batch x chunk scores per chunk); the values are the same as without it.
    """
    if l2_normalize:
        queries = F.normalize(queries, dim=-1)
        item_vectors = F.normalize(item_vectors, dim=-1)
    if out is None:
        return (queries @ item_vectors.transpose(-1, -2)) / temperature
    if queries.dtype == item_vectors.dtype == out.dtype and queries.dim() == 2:
        torch.mm(queries, item_vectors.t(), out=out)
        if temperature != 1.0:
            out.div_(temperature)
    else:
        out.copy_((queries @ item_vectors.transpose(-1, -2)) / temperature)
    return out


def chunked_topk(
    queries: torch.Tensor,
    item_vectors: torch.Tensor,
    k: int,
    *,
    exclude: torch.Tensor | None = None,
    allowed: torch.Tensor | None = None,
    chunk_size: int = 65536,
    temperature: float = 1.0,
    l2_normalize: bool = False,
) -> TopItems:
    """Exact top-k items per query over the whole catalog, scoring `chunk_size` items at a time.

    Args:
        queries: (B, d) query vectors.
        item_vectors: (V, d) item vectors; row 0 is padding and never returned.
        k: Number of items to return (capped at the number of rankable items).
        exclude: Optional (B, H) item indices to skip per query (e.g. the history); 0 entries are ignored.
        allowed: Optional (V,) boolean mask of items that may be returned (e.g. currently available items).
        chunk_size: Items scored at once; memory is O(B × (chunk_size + k)).

    Returns:
        `TopItems(items, scores)`, each (B, k), best first. Slots with no rankable item hold item 0 and score -inf;
        items scoring NaN come after every item with a number.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k={k!r}; expected a positive integer number of items to return.")
    batch, num_items = queries.shape[0], item_vectors.shape[0]
    k = min(k, num_items - 1)
    device = queries.device
    exclude = as_exclusion(exclude, batch, device)
    # Items are ordered by a key in which NaN sorts after every number but before excluded items (-inf): a
    # diverged model's NaN scores never come first, and they stay visible as NaN in the returned scores.
    best_keys = torch.full((batch, k), float("-inf"), device=device)
    best_scores = best_keys.clone()
    best_index = torch.zeros(batch, k, dtype=torch.long, device=device)
    chunk_size = max(1, min(chunk_size, num_items))
    buffer = torch.empty(batch * chunk_size, device=device)  # one score buffer for every chunk
    for start in range(0, num_items, chunk_size):
        stop = min(start + chunk_size, num_items)
        scores = score_items(queries, item_vectors[start:stop], temperature=temperature, l2_normalize=l2_normalize,
                             out=buffer[:batch * (stop - start)].view(batch, stop - start))
        _drop_unrankable(scores, start, stop, exclude, allowed)
        keys = torch.where(torch.isnan(scores), torch.finfo(scores.dtype).min, scores) \
            if bool(torch.isnan(scores).any()) else scores
        chunk_keys, position = keys.topk(min(k, stop - start), dim=1)  # the chunk's best, then merged with the best
        merged_keys = torch.cat([best_keys, chunk_keys], dim=1)
        merged_scores = torch.cat([best_scores, scores.gather(1, position)], dim=1)
        merged_index = torch.cat([best_index, position + start], dim=1)
        best_keys, pos = merged_keys.topk(k, dim=1)
        best_scores = merged_scores.gather(1, pos)
        best_index = merged_index.gather(1, pos)
    best_index = best_index.masked_fill(best_keys == float("-inf"), 0)
    return TopItems(best_index, best_scores)


def _drop_unrankable(scores: torch.Tensor, start: int, stop: int, exclude: torch.Tensor,
                     allowed: torch.Tensor | None) -> None:
    """Set to -inf, in place, the chunk's items a row may not return: padding (item 0), the row's `exclude` ids
    (written where they fall, a few per row, instead of a batch x chunk mask) and items `allowed` leaves out."""
    if start == 0:
        scores[:, 0] = float("-inf")
    if exclude.numel():
        local = exclude - start
        inside = (exclude > 0) & (local >= 0) & (local < stop - start)
        # entries outside the chunk write column 0's own final value back (a no-op), so every write agrees
        first = torch.where((inside & (local == 0)).any(dim=1), float("-inf"), scores[:, 0])
        values = torch.where(inside, torch.tensor(float("-inf"), device=scores.device), first[:, None])
        scores.scatter_(1, torch.where(inside, local, torch.zeros_like(local)), values)
    if allowed is not None:
        mask = allowed[..., start:stop].to(device=scores.device, dtype=torch.bool)
        scores.masked_fill_(~mask, float("-inf"))
