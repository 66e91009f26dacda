"""The one evaluation protocol: full-catalog ranking, pessimistic ties, history excluded.

For each user the held-out item is ranked against every item of the catalog (index 0 = padding never ranked):
rank = 1 + #{items not excluded, not the target, scoring >= the target}. Items of the user's history are excluded
by default (HSTU protocol). From ranks: MRR, HR@K and NDCG@K (one relevant item: 1 / log2(rank + 1) if rank <= K).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from tqdm.auto import tqdm

from ..models.genrec.scoring import chunked_target_ranks
from .metrics import DEFAULT_KS, metrics_from_ranks

def ranking_metrics(
    scores: torch.Tensor,
    targets: torch.Tensor,
    exclude: torch.Tensor | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    exclude_history: bool = True,
) -> dict[str, float]:
    """Metrics of dense (batch × catalog) scores, column 0 = padding; `exclude` is (batch × H) item indices.

    The same rule as `scoring.chunked_target_ranks` (tested equal), for callers that already hold dense scores, e.g.
    a baseline or `model(..., output_logits=True).logits` on a small catalog. `exclude_history=False` ignores
    `exclude` (all items ranked).
    """
    if scores.dim() != 2 or targets.shape != (scores.shape[0],):
        raise ValueError(f"scores must be (batch, catalog) and targets (batch,); got {tuple(scores.shape)} and "
                         f"{tuple(targets.shape)}.")
    _check_targets(targets, scores.shape[1])
    ranks = dense_target_ranks(scores, targets, exclude if exclude_history else None)
    return metrics_from_ranks(ranks, ks)


def dense_target_ranks(scores: torch.Tensor, targets: torch.Tensor,
                       exclude: torch.Tensor | None = None) -> torch.Tensor:
    """1-based pessimistic ranks of `targets` under dense scores (padding column 0 and `exclude` not ranked).

    rank = 1 + #{j ∉ {0, target} ∪ exclude: score_j >= score_target}; NaN scores count against the target.
    """
    scores = scores.float()
    targets = targets.long().to(scores.device)
    target_scores = scores.gather(1, targets[:, None])
    masked = torch.zeros_like(scores, dtype=torch.bool)
    if exclude is not None and exclude.numel():
        masked.scatter_(1, exclude.long().to(scores.device), True)
    masked.scatter_(1, targets[:, None], True)  # the target is added back as the leading 1
    masked[:, 0] = True
    beats = (scores >= target_scores) | torch.isnan(scores) | torch.isnan(target_scores)
    return 1 + (beats & ~masked).sum(dim=1)


def _check_targets(targets: torch.Tensor, num_items: int) -> None:
    if targets.numel() and (targets.min() < 1 or targets.max() >= num_items):
        raise ValueError(f"target ids must be item indices in [1, {num_items - 1}] (0 is padding); got "
                         f"[{int(targets.min())}, {int(targets.max())}].")


@torch.no_grad()
def target_ranks(
    model: torch.nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    *,
    chunk_size: int | None = None,
    exclude_history: bool = True,
    gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """(num_users,) 1-based full-catalog rank of each batch row's `target_ids` under a `GenRecForNextItemPrediction`.

    Batches are dicts as from `NextItemCollator(max_length, mode="eval")`: `input_ids`, `attention_mask`,
    `timestamps`, `action_ids`, `target_ids` (B,) and optionally `exclude_ids` (B, H), ignored when
    `exclude_history=False`. Items are scored `chunk_size` (default `config.score_chunk_size`) at a time against
    `outputs.user_embeddings`, so memory never holds a batch × catalog matrix. `gather` (e.g.
    `accelerator.gather_for_metrics`) collects ranks from every process without the duplicates of an uneven last
    batch. The model's train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    config = model.config
    item_vectors = model.item_vectors
    device = item_vectors.device
    ranks: list[torch.Tensor] = []
    try:
        for batch in tqdm(batches, desc="ranking", disable=not progress, leave=False):
            inputs = {key: batch[key].to(device) if batch.get(key) is not None else None
                      for key in ("input_ids", "attention_mask", "timestamps", "action_ids")}
            targets = batch["target_ids"].to(device)
            _check_targets(targets, item_vectors.shape[0])
            exclude = batch.get("exclude_ids") if exclude_history else None
            outputs = model(**inputs)
            batch_ranks = chunked_target_ranks(
                outputs.user_embeddings, item_vectors, targets,
                exclude=exclude.to(device) if exclude is not None else None,
                chunk_size=chunk_size or config.score_chunk_size, temperature=config.score_temperature,
                l2_normalize=config.l2_normalize_scores,
            )
            ranks.append((gather(batch_ranks) if gather is not None else batch_ranks).detach().reshape(-1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long)


def evaluate_model(
    model: torch.nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    *,
    ks: Sequence[int] = DEFAULT_KS,
    chunk_size: int | None = None,
    exclude_history: bool = True,
    gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
    progress: bool = True,
) -> dict[str, float]:
    """Full-catalog ranking metrics (MRR, HR@K, NDCG@K) of a model over eval batches, plus `num_users`; the
    arguments are those of `target_ranks`."""
    ranks = target_ranks(model, batches, chunk_size=chunk_size, exclude_history=exclude_history, gather=gather,
                         progress=progress)
    return {**metrics_from_ranks(ranks, ks), "num_users": float(ranks.numel())}
