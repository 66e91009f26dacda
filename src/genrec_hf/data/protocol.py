"""What an evaluation row's ranked catalog is: `RankingProtocol`, a description handed to the ranking path.

A protocol is data, not a loop: the leave-one-out next item (`LEAVE_ONE_OUT`, the default), a downstream task's
set-valued targets (`genrec_hf.data.tasks`), an availability window, a cold/warm target slice. It lives with the
data that defines it; `genrec_hf.evaluation` applies it (`rank_batches` -> `rank_targets` -> `metrics_from_ranks`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.genrec.scoring import AllowedItems


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
