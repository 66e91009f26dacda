"""Ranking metrics from per-user target ranks: MRR, HR@K, NDCG@K, recall@K (one definition for one or many targets)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

DEFAULT_KS = (1, 5, 10, 50, 200)


def metrics_from_ranks(ranks: torch.Tensor, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """Means over users of MRR, HR@K, NDCG@K and recall@K from (U,) or (U, T) 1-based ranks (0 = padding).

    Per user with targets Y (the non-zero ranks of its row):
        mrr = 1 / best rank; hr@K = 1 if any target ranks <= K; recall@K = share of Y ranked <= K;
        ndcg@K = Σ_{y ranked <= K} 1/log2(1 + rank_y) / Σ_{i <= min(K, |Y|)} 1/log2(1 + i).
    With one target per user these are the standard single-target MRR / HR@K / NDCG@K, and recall@K = hr@K.
    Users whose row holds no target are not averaged; they are counted in `num_users_without_target`
    (`num_users` counts the averaged ones), so a split that lost users says so.
    """
    ranks = torch.as_tensor(ranks).long()
    if ranks.dim() == 1:
        ranks = ranks[:, None]
    if ranks.dim() != 2:
        raise ValueError(f"ranks must be (users,) or (users, T); got shape {tuple(ranks.shape)}.")
    if ranks.numel() and ranks.min() < 0:
        raise ValueError(f"Ranks are 1-based (0 = padding); got {int(ranks.min())}.")
    valid = ranks > 0
    scored = valid.any(dim=1)
    ranks, valid = ranks[scored], valid[scored]
    if ranks.shape[0] == 0:
        raise ValueError("No ranks to average: the evaluation split has no users with a target.")
    rank = ranks.double()
    best = torch.where(valid, rank, torch.full_like(rank, float("inf"))).min(dim=1).values
    count = valid.sum(dim=1).double()
    discount = torch.where(valid, 1.0 / torch.log2(rank + 1.0), torch.zeros_like(rank))
    metrics = {"mrr": (1.0 / best).mean().item()}
    for k in ks:
        hit = valid & (ranks <= k)
        ideal = torch.cumsum(1.0 / torch.log2(torch.arange(2, k + 2, dtype=torch.double)), 0)
        idcg = ideal[count.clamp(max=k).long() - 1]
        metrics[f"hr@{k}"] = hit.any(dim=1).double().mean().item()
        metrics[f"ndcg@{k}"] = (torch.where(hit, discount, torch.zeros_like(discount)).sum(dim=1) / idcg).mean().item()
        metrics[f"recall@{k}"] = (hit.sum(dim=1) / count).mean().item()
    metrics["num_users"] = int(ranks.shape[0])
    metrics["num_users_without_target"] = int((~scored).sum())
    return metrics


def pad_ranks(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """One (U, T_max) rank matrix from per-batch (B, T_b) (or (B,)) ranks, right-padded with 0."""
    parts = [part[:, None] if part.dim() == 1 else part for part in parts]
    if not parts:
        return torch.zeros(0, 1, dtype=torch.long)
    width = max(part.shape[1] for part in parts)
    return torch.cat([torch.nn.functional.pad(part.long().cpu(), (0, width - part.shape[1])) for part in parts])
