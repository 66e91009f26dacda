"""Statistics over per-user ranks: paired bootstrap intervals for comparing two models on the same users."""

from __future__ import annotations

from collections.abc import Callable

import re

import torch


def per_user_metric(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The per-user value behind a single-target ranking metric, for `paired_bootstrap(metric=...)`.

    "mrr" -> 1/rank, "hr@K" -> [rank <= K], "ndcg@K" -> [rank <= K] / log2(1 + rank): the means over users equal
    `metrics_from_ranks` of the same (U,) 1-based ranks.
    """
    if name == "mrr":
        return lambda ranks: 1.0 / ranks
    match = re.fullmatch(r"(hr|ndcg)@([1-9][0-9]*)", name)
    if match is None:
        raise ValueError(f"metric {name!r}: expected 'mrr', 'hr@K' or 'ndcg@K' with K a positive integer.")
    kind, k = match.group(1), int(match.group(2))
    if kind == "hr":
        return lambda ranks: (ranks <= k).double()
    return lambda ranks: (ranks <= k).double() / torch.log2(1.0 + ranks.double())


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
