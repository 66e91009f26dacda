"""Statistics over per-user ranks: paired bootstrap intervals for comparing two models on the same users."""

from __future__ import annotations

from collections.abc import Callable

import torch


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
