"""Cold / warm metrics of a cold-start split (`genrec_hf.data.cold_splits`) from one ranking pass.

`cold_warm_metrics` ranks the test rows once through the one ranking path (`rank_batches`), with the full catalog
(cold items included) rankable, and splits the ranks by target (`slice_ranks`: the same ranks a
`RankingProtocol.target_items` pass keeps). `cold_warm_ranks` + `save_cold_start_ranks` keep them per user, for a
paired bootstrap between runs on the same split.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..data.protocol import LEAVE_ONE_OUT, RankingProtocol
from .metrics import DEFAULT_KS, metrics_from_ranks, pad_ranks
from .protocols import rank_batches

logger = logging.getLogger(__name__)
COLD_START_RANKS = "cold_start_ranks.json"  # per-user test ranks of a cold-start split, in a run's output folder


def cold_warm_ranks(model: torch.nn.Module, batches: Sequence[dict[str, torch.Tensor]],
                    protocol: RankingProtocol = LEAVE_ONE_OUT) -> tuple[torch.Tensor, torch.Tensor]:
    """(U, T) 1-based ranks (0 = padding) of every eval row's targets and the (U, T) target ids they rank, from one
    pass of the one ranking path (`rank_batches`) with the whole catalog rankable. Slice them by target with
    `slice_ranks`; keep them per user for a paired bootstrap (`evaluation.paired_bootstrap`)."""
    ranks = rank_batches(model, batches, protocol)
    targets = pad_ranks([protocol.targets(batch["target_ids"]) for batch in batches])
    if targets.shape[0] != ranks.shape[0]:
        raise ValueError(f"{targets.shape[0]} target rows for {ranks.shape[0]} ranked rows: `batches` must be "
                         "re-iterable (a list or a DataLoader), not a one-shot iterator.")
    width = max(ranks.shape[1], targets.shape[1])
    pad = lambda t: torch.nn.functional.pad(t, (0, width - t.shape[1]))  # noqa: E731
    return pad(ranks), pad(targets)


def slice_ranks(ranks: torch.Tensor, targets: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    """`ranks` with the entries whose target is not marked in the (V,) bool `items` set to 0 (padding): the same
    ranks as a `RankingProtocol(target_items=items)` pass would give, without ranking again."""
    if targets.numel() and int(targets.max()) >= items.shape[0]:
        raise ValueError(f"the slice has {items.shape[0]} entries but a target is item {int(targets.max())}: the "
                         "slice belongs to another catalog.")
    keep = items.to(targets.device)[targets] & (targets > 0)
    return torch.where(keep, ranks, torch.zeros_like(ranks))


def cold_warm_metrics(model: torch.nn.Module, batches: Sequence[dict[str, torch.Tensor]], cold_mask: torch.Tensor,
                      protocol: RankingProtocol = LEAVE_ONE_OUT, *, ks: Sequence[int] = DEFAULT_KS
                      ) -> dict[str, dict[str, float]]:
    """{"all", "cold", "warm"}: metrics of the same eval batches over all targets, cold targets only, warm only.

    The whole catalog stays rankable in each (a cold target competes with warm items and vice versa); a slice only
    chooses which targets count. `batches` must be re-iterable (a list or a DataLoader). One ranking pass
    (`cold_warm_ranks`) serves all three."""
    ranks, targets = cold_warm_ranks(model, batches, protocol)
    return cold_warm_slices(ranks, targets, cold_mask, ks=ks)


def cold_warm_slices(ranks: torch.Tensor, targets: torch.Tensor, cold_mask: torch.Tensor, *,
                     ks: Sequence[int] = DEFAULT_KS) -> dict[str, dict[str, float]]:
    """`cold_warm_metrics` from ranks already computed (`cold_warm_ranks`)."""
    out = {"all": metrics_from_ranks(ranks, ks)}
    for name, mask in (("cold", cold_mask), ("warm", ~cold_mask)):
        mask = mask.clone()
        mask[0] = False
        sliced = slice_ranks(ranks, targets, mask)
        if not bool((sliced > 0).any()):  # no user with a target of this slice
            logger.warning("cold_warm_metrics: %s slice is empty", name)
            out[name] = {"num_users": 0}
            continue
        out[name] = metrics_from_ranks(sliced, ks)
    return out


def save_cold_start_ranks(path: str | Path, ranks: torch.Tensor, targets: torch.Tensor, num_warm: int) -> Path:
    """Write per-user test ranks as JSON (`targets`, `ranks`: one list per test row, in test-split order;
    `num_warm`: targets above it are cold) so runs on the same split can be compared user by user."""
    path = Path(path)
    path.write_text(json.dumps({"num_warm": int(num_warm), "targets": targets.tolist(), "ranks": ranks.tolist()}))
    return path


def load_cold_start_ranks(path: str | Path) -> dict[str, Any]:
    """`save_cold_start_ranks`'s file back: {"num_warm", "targets" (U, T), "ranks" (U, T), "cold" (U,) bool: the
    row's first target is a cold item}."""
    raw = json.loads(Path(path).read_text())
    targets = torch.tensor(raw["targets"], dtype=torch.long).reshape(len(raw["targets"]), -1)
    ranks = torch.tensor(raw["ranks"], dtype=torch.long).reshape(targets.shape)
    return {"num_warm": raw["num_warm"], "targets": targets, "ranks": ranks, "cold": targets[:, 0] > raw["num_warm"]}
