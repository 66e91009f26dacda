"""The one evaluation protocol (DESIGN.md §5): full-catalog ranking, pessimistic ties, history excluded.

For each user the held-out item is ranked against every item of the catalog (index 0 = padding never ranked):
rank = 1 + #{items not excluded, not the target, scoring >= the target}. Items of the user's history are excluded
by default (HSTU protocol). From ranks: MRR, HR@K and NDCG@K (one relevant item: 1 / log2(rank + 1) if rank <= K).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from tqdm.auto import tqdm

from .scoring import chunked_target_ranks

DEFAULT_KS = (1, 5, 10, 50, 200)


def metrics_from_ranks(ranks: torch.Tensor, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """MRR, HR@K and NDCG@K (means over users) from 1-based ranks."""
    ranks = ranks.double().reshape(-1)
    if ranks.numel() == 0:
        raise ValueError("No ranks to average: the evaluation split has no users.")
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


def ranking_metrics(
    scores: torch.Tensor,
    targets: torch.Tensor,
    exclude: torch.Tensor | None = None,
    ks: Sequence[int] = DEFAULT_KS,
) -> dict[str, float]:
    """Metrics of dense (batch × catalog) scores, column 0 = padding; `exclude` is (batch × H) item indices.

    The same rule as `scoring.chunked_target_ranks`, for callers that already hold dense scores.
    """
    if scores.dim() != 2 or targets.shape != (scores.shape[0],):
        raise ValueError(f"scores must be (batch, catalog) and targets (batch,); got {tuple(scores.shape)} and "
                         f"{tuple(targets.shape)}.")
    ranks = dense_target_ranks(scores, targets, exclude)
    return metrics_from_ranks(ranks, ks)


def dense_target_ranks(scores: torch.Tensor, targets: torch.Tensor,
                       exclude: torch.Tensor | None = None) -> torch.Tensor:
    """1-based pessimistic ranks of `targets` under dense scores (padding column 0 and `exclude` not ranked)."""
    scores = scores.float().clone()
    scores[:, 0] = float("-inf")
    target_scores = scores.gather(1, targets.long()[:, None])
    masked = torch.zeros_like(scores, dtype=torch.bool)
    if exclude is not None and exclude.numel():
        masked.scatter_(1, exclude.long(), True)
    masked.scatter_(1, targets.long()[:, None], True)  # the target is added back as the leading 1
    masked[:, 0] = True
    return 1 + ((scores >= target_scores) & ~masked).sum(dim=1)


@torch.no_grad()
def evaluate_model(
    model: torch.nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    *,
    ks: Sequence[int] = DEFAULT_KS,
    gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Full-catalog ranking metrics of a `GenRecForNextItemPrediction` over eval batches.

    Batches come from `NextItemCollator(mode="eval")`: `input_ids`, `attention_mask`, `timestamps`, `action_ids`,
    `target_ids` (B,) and optionally `exclude_ids` (B, H). Items are scored `config.score_chunk_size` at a time, so
    memory never holds a batch × catalog matrix. `gather` (e.g. `accelerator.gather_for_metrics`) collects ranks
    from every process without the duplicates of an uneven last batch.
    """
    was_training = model.training
    model.eval()
    config = model.config
    accumulator = RankingAccumulator(ks)
    for batch in tqdm(batches, desc="ranking", disable=not progress, leave=False):
        outputs = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                        timestamps=batch.get("timestamps"), action_ids=batch.get("action_ids"))
        ranks = chunked_target_ranks(
            outputs.user_embeddings, model.item_vectors, batch["target_ids"], exclude=batch.get("exclude_ids"),
            chunk_size=config.score_chunk_size, temperature=config.score_temperature,
            l2_normalize=config.l2_normalize_scores,
        )
        accumulator.add(gather(ranks) if gather is not None else ranks)
    model.train(was_training)
    return accumulator.compute()
