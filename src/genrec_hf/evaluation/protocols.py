"""Evaluation protocols as data, and the one model-level ranking loop that applies them.

A protocol says what a row's ranked catalog is; the rows (and their collator) say what the targets are. Leave-one-out
next item (`LEAVE_ONE_OUT`, the default) ranks each user's held-out event against the whole catalog with the history
excluded; a downstream task (`genrec_hf.data.tasks`) hands its own `RankingProtocol` (set-valued targets, an
availability window). Every protocol goes through `rank_batches` → `evaluation.ranking.rank_targets` →
`metrics_from_ranks`; there is no second loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from tqdm.auto import tqdm

from ..data.protocol import LEAVE_ONE_OUT, RankingProtocol
from .metrics import DEFAULT_KS, metrics_from_ranks, pad_ranks
from .ranking import RANKING_CHUNK, rank_targets

MODEL_INPUTS = ("input_ids", "attention_mask", "timestamps", "action_ids")


def _base(model: torch.nn.Module) -> torch.nn.Module:
    """The GenRec model under a PeftModel (its active adapter still applies in `model(...)`)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@torch.no_grad()
def rank_batches(
    model: torch.nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    protocol: RankingProtocol = LEAVE_ONE_OUT,
    *,
    chunk_size: int | None = None,
    gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """(num_users, T) 1-based ranks (0 = padding) of every eval row's targets under `model` and `protocol`.

    `model` is a `GenRecForNextItemPrediction` or a PeftModel around one (its active adapter scores). Batches are
    dicts as from the eval collators: `input_ids`, `attention_mask`, `timestamps`, `action_ids`, `target_ids` (B, T)
    (or (B,)), optionally `exclude_ids` (B, H) and `target_time` (B,). Items are scored `chunk_size` (default
    `config.score_chunk_size`, at most `RANKING_CHUNK`) at a time. `gather` (e.g. `accelerator.gather_for_metrics`,
    after padding T across processes) collects each batch's ranks from every process. The model's train/eval mode
    is restored.
    """
    was_training = model.training
    model.eval()
    base = _base(model)
    config = base.config
    ranks: list[torch.Tensor] = []
    # A bar fed by hand: wrapping `batches` in tqdm.auto would open a second, throwaway DataLoader iterator
    # (a global RNG draw, and worker start-up when dataloader_num_workers > 0).
    bar = tqdm(total=len(batches) if hasattr(batches, "__len__") else None, desc="ranking", disable=not progress,
               leave=False)
    try:
        for batch in batches:
            bar.update()
            item_vectors = base.item_vectors  # fused vectors are computed on access: once per batch
            device = item_vectors.device
            inputs = {key: batch[key].to(device) for key in MODEL_INPUTS if batch.get(key) is not None}
            queries = model(**inputs).user_embeddings
            exclude = batch.get("exclude_ids") if protocol.exclude_history else None
            batch_ranks = rank_targets(
                queries, item_vectors, protocol.targets(batch["target_ids"].to(device)),
                exclude_ids=None if exclude is None else exclude.to(device), allowed=protocol.allowed(batch),
                chunk_size=chunk_size or min(config.score_chunk_size, RANKING_CHUNK),
                temperature=config.score_temperature,
                l2_normalize=config.l2_normalize_scores)
            if batch_ranks.dim() == 1:
                batch_ranks = batch_ranks[:, None]
            ranks.append((gather(batch_ranks) if gather is not None else batch_ranks).detach().cpu())
    finally:
        bar.close()
        model.train(was_training)
    return pad_ranks(ranks)


def evaluate_model(
    model: torch.nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    protocol: RankingProtocol = LEAVE_ONE_OUT,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    chunk_size: int | None = None,
    gather: Callable[[torch.Tensor], torch.Tensor] | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """`metrics_from_ranks` of `rank_batches` (same arguments): MRR, HR@K, NDCG@K, recall@K and user counts."""
    ranks = rank_batches(model, batches, protocol, chunk_size=chunk_size, gather=gather, progress=progress)
    return metrics_from_ranks(ranks, ks)
