"""Evaluation protocols as data, and the one model-level ranking loop that applies them.

A protocol says what a row's ranked catalog is; the rows (and their collator) say what the targets are. Leave-one-out
next item (`LEAVE_ONE_OUT`, the default) ranks each user's held-out event against the whole catalog with the history
excluded; a downstream task (`genrec_hf.data.tasks`) hands its own `RankingProtocol` (set-valued targets, an
availability window). Every protocol goes through `rank_batches` → `evaluation.ranking.rank_targets` →
`metrics_from_ranks`; there is no second loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .metrics import DEFAULT_KS, metrics_from_ranks, pad_ranks
from .ranking import AllowedItems, rank_targets

MODEL_INPUTS = ("input_ids", "attention_mask", "timestamps", "action_ids")


@dataclass(frozen=True, eq=False)
class RankingProtocol:
    """How eval batches (`target_ids` (B, T), `exclude_ids`, `target_time`) are ranked.

    Attributes:
        exclude_history: Do not rank the row's `exclude_ids` (its history); targets are always ranked.
        set_valued: Targets are a set (reported; the metrics are the same set definitions either way).
        available_since: Optional (V,) int64 tensor: when each item became available (unix s or event index).
            With `availability_window` a row ranks only items with
            `target_time - window < available_since <= target_time` (targets are always ranked).
        availability_window: Width of that window, in the unit of `available_since`.
        description: One line saying what is ranked (goes into metrics.json and the card).
        target_items: Optional (V,) bool tensor: only targets it marks are scored (e.g. the cold items of a
            cold-start split); other targets are set to 0 (padding), so a row left without one is counted in
            `num_users_without_target`. Every item stays rankable: this slices the targets, not the catalog.

    More protocols are more data of this kind, not more loops: a staleness replay (context cut Δ before the
    target) is rows built with the cut plus this protocol; a cold/warm item slice is an allowed mask (rank only
    the slice: another `allowed` term) and/or a target mask (targets outside the slice set to 0 in `target_ids`,
    so users left without a target are counted in `num_users_without_target`, never scored).
    """

    exclude_history: bool = True
    set_valued: bool = False
    available_since: torch.Tensor | None = None
    availability_window: float | None = None
    description: str = "next item after the history (leave-one-out), full catalog"
    target_items: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if (self.available_since is None) != (self.availability_window is None):
            raise ValueError("available_since and availability_window go together (give both or neither).")

    def allowed(self, batch: dict[str, torch.Tensor]) -> AllowedItems | None:
        """The batch's per-chunk allowed-items mask (availability window at each row's `target_time`), or None."""
        if self.available_since is None:
            return None
        if batch.get("target_time") is None:
            raise ValueError("An availability protocol needs `target_time` in the eval batch (use the task collator).")
        since = self.available_since
        times = batch["target_time"].reshape(-1, 1).double()
        window = float(self.availability_window)

        def allowed(start: int, stop: int) -> torch.Tensor:
            chunk = since[start:stop].to(times.device).reshape(1, -1).double()
            return (chunk > times - window) & (chunk <= times)

        return allowed

    def targets(self, target_ids: torch.Tensor) -> torch.Tensor:
        """The batch's targets with those outside `target_items` set to 0 ((B, T); unchanged without a slice)."""
        if self.target_items is None:
            return target_ids
        targets = target_ids[:, None] if target_ids.dim() == 1 else target_ids
        if targets.numel() and int(targets.max()) >= self.target_items.shape[0]:
            raise ValueError(f"target_items has {self.target_items.shape[0]} entries but a target is item "
                             f"{int(targets.max())}: the slice belongs to another catalog.")
        keep = self.target_items.to(targets.device)[targets] & (targets > 0)
        return torch.where(keep, targets, torch.zeros_like(targets))

    def summary(self) -> str:
        """One line for metrics.json: the ranking rule this protocol applied."""
        return ("full-catalog ranking" + (" within the availability window" if self.available_since is not None else "")
                + f"; history excluded={self.exclude_history}; set-valued={self.set_valued}")


LEAVE_ONE_OUT = RankingProtocol()


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
    `config.score_chunk_size`) at a time. `gather` (e.g. `accelerator.gather_for_metrics`, after padding T across
    processes) collects each batch's ranks from every process. The model's train/eval mode is restored.
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
                chunk_size=chunk_size or config.score_chunk_size, temperature=config.score_temperature,
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
