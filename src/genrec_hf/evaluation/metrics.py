"""Ranking metrics from 1-based ranks: MRR, HR@K, NDCG@K."""

from __future__ import annotations

from collections.abc import Sequence

import torch

DEFAULT_KS = (1, 5, 10, 50, 200)


def metrics_from_ranks(ranks: torch.Tensor, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """MRR, HR@K and NDCG@K (means over users) from 1-based ranks."""
    ranks = ranks.double().reshape(-1)
    if ranks.numel() == 0:
        raise ValueError("No ranks to average: the evaluation split has no users.")
    if ranks.min() < 1:
        raise ValueError(f"Ranks are 1-based; got {ranks.min().item():g}.")
    metrics = {"mrr": (1.0 / ranks).mean().item()}
    for k in ks:
        hit = ranks <= k
        metrics[f"hr@{k}"] = hit.double().mean().item()
        metrics[f"ndcg@{k}"] = torch.where(hit, 1.0 / torch.log2(ranks + 1.0), torch.zeros_like(ranks)).mean().item()
    return metrics


class RankingAccumulator:
    """Collects ranks batch by batch; `compute()` equals `metrics_from_ranks` over all of them at once."""

    def __init__(self, ks: Sequence[int] = DEFAULT_KS) -> None:
        self.ks = tuple(ks)
        self._ranks: list[torch.Tensor] = []

    def add(self, ranks: torch.Tensor) -> None:
        self._ranks.append(ranks.detach().reshape(-1).cpu())

    @property
    def ranks(self) -> torch.Tensor:
        return torch.cat(self._ranks) if self._ranks else torch.zeros(0, dtype=torch.long)

    def compute(self) -> dict[str, float]:
        return {**metrics_from_ranks(self.ranks, self.ks), "num_users": float(self.ranks.numel())}
