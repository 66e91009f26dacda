"""Statistics over per-user ranks: each user's value of a ranking metric, and paired bootstrap intervals for
comparing two models on the same users."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TypeVar

import numpy as np
import torch

_RANK_METRIC = re.compile(r"^(?P<name>mrr|hr|ndcg|recall)(@(?P<k>\d+))?$")
_SINGLE_TARGET_METRIC = re.compile(r"(hr|ndcg)@([1-9][0-9]*)")
Ranks = TypeVar("Ranks", np.ndarray, torch.Tensor)


def per_user_values(ranks: Ranks, metric: str = "mrr") -> Ranks:
    """Each user's metric from (U,) or (U, T) 1-based ranks (0 = padding); NaN for a user without a target.

    Same definitions as `metrics_from_ranks`, so their mean is the reported metric: "mrr" (best target), "hr@K",
    "recall@K" and "ndcg@K" (over the row's targets). A tensor in gives a float64 tensor out, an array an array.
    """
    if isinstance(ranks, torch.Tensor):
        return torch.from_numpy(per_user_values(ranks.detach().cpu().numpy(), metric))
    match = _RANK_METRIC.match(metric)
    if not match or (match["name"] != "mrr") != (match["k"] is not None):
        raise ValueError(f"per-user ranks give mrr, hr@K, recall@K or ndcg@K; cannot compute metric {metric!r} "
                         "from them.")
    ranks = np.asarray(ranks)
    if ranks.ndim == 1:
        ranks = ranks[:, None]
    valid = ranks > 0
    count = valid.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        if match["name"] == "mrr":
            value = np.max(np.where(valid, 1.0 / np.where(valid, ranks, 1), 0.0), axis=1)
        else:
            k = int(match["k"])
            hit = valid & (ranks <= k)
            if match["name"] == "hr":
                value = hit.any(axis=1).astype(float)
            elif match["name"] == "recall":
                value = hit.sum(axis=1) / count
            else:
                gain = np.where(hit, 1.0 / np.log2(ranks.astype(float) + 1.0), 0.0).sum(axis=1)
                ideal = np.cumsum(1.0 / np.log2(np.arange(2, k + 2, dtype=float)))
                value = gain / ideal[np.clip(np.minimum(count, k) - 1, 0, None)]
    return np.where(count > 0, value, np.nan)


def per_user_metric(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The per-user value behind a single-target ranking metric, for `paired_bootstrap(metric=...)`.

    "mrr" -> 1/rank, "hr@K" -> [rank <= K], "ndcg@K" -> [rank <= K] / log2(1 + rank) (`per_user_values`): the
    means over users equal `metrics_from_ranks` of the same (U,) 1-based ranks.
    """
    if name != "mrr" and _SINGLE_TARGET_METRIC.fullmatch(name) is None:
        raise ValueError(f"metric {name!r}: expected 'mrr', 'hr@K' or 'ndcg@K' with K a positive integer.")
    return lambda ranks: per_user_values(ranks, name)


def paired_bootstrap(
    ranks_a: torch.Tensor,
    ranks_b: torch.Tensor,
    *,
    metric: Callable[[torch.Tensor], torch.Tensor] = lambda ranks: 1.0 / ranks,
    num_samples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """Relative difference (b − a) / a of a per-user metric (default reciprocal rank → MRR) of two models ranked on
    the **same users in the same order**, with a paired percentile-bootstrap confidence interval over users.

    On ML-100K's 943 test users one model's MRR has a standard error of about ±0.006 (±7%), so a single-run
    difference of a few percent is noise; the interval says whether it is.
    """
    if ranks_a.shape != ranks_b.shape or ranks_a.dim() != 1 or ranks_a.numel() == 0:
        raise ValueError(f"paired ranks must be two non-empty 1-d tensors of the same users; got shapes "
                         f"{tuple(ranks_a.shape)} and {tuple(ranks_b.shape)}.")
    a, b = metric(ranks_a.double()), metric(ranks_b.double())
    generator = torch.Generator().manual_seed(seed)
    users = torch.randint(0, a.numel(), (num_samples, a.numel()), generator=generator)
    sample_a, sample_b = a[users].mean(dim=1), b[users].mean(dim=1)
    relative = (sample_b - sample_a) / sample_a
    tail = (1.0 - confidence) / 2
    low, high = torch.quantile(relative, torch.tensor([tail, 1.0 - tail], dtype=torch.float64)).tolist()
    n = a.numel()
    return {"a": a.mean().item(), "b": b.mean().item(), "a_stderr": (a.std() / n ** 0.5).item(),
            "b_stderr": (b.std() / n ** 0.5).item(), "relative": ((b.mean() - a.mean()) / a.mean()).item(),
            "relative_low": low, "relative_high": high}
