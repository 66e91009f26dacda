"""Training FLOPs per token: backbone + decoding head + loss, for full / sampled / projected heads (PAPER.md §3).

Accounting (per supervised token, forward + backward):
    backbone  = 6 · N_backbone + 12 · L · T · d          (6N for the weight matmuls, 12·L·T·d for attention scores
                                                            and values over a context of T events; Kaplan et al.)
    head      = 12 · d_out · V_eff                         (the paper's convention for the item-scoring matmul and
                                                            its softmax; d_out = d or d / r, V_eff = V or #negatives)
    projection = 6 · d · d_out                              (the projected head's Linear(d, d / r))

With the paper's illustrative backbone (6 layers, d = 1024, 512 events; ≈ 3.4e8 FLOPs/token) this reproduces its
numbers: full softmax 1.26e10 vs sampled (1 %) + projected (d / 8) 3.56e8 at V = 1e6 (35.5×), ≈ 249× at V = 1e7.
"""

from __future__ import annotations

from dataclasses import dataclass

from .configuration_genrec import GenRecConfig

HEADS = ("full", "sampled", "projected", "sampled+projected")


@dataclass(frozen=True)
class FlopsBreakdown:
    backbone: float
    projection: float
    head: float

    @property
    def total(self) -> float:
        return self.backbone + self.projection + self.head

    def as_dict(self) -> dict[str, float]:
        return {"backbone": self.backbone, "projection": self.projection, "head": self.head, "total": self.total}


def backbone_flops_per_token(config: GenRecConfig, seq_len: int) -> float:
    """6·N + 12·L·T·d for the transformer blocks of `config` at context length `seq_len`."""
    from . import count_backbone_parameters

    n = count_backbone_parameters(config)
    return 6.0 * n + 12.0 * config.num_hidden_layers * seq_len * config.hidden_size


def flops_per_token(
    config: GenRecConfig,
    *,
    head: str = "full",
    seq_len: int | None = None,
    num_items: int | None = None,
    negatives_fraction: float = 0.01,
    projection_ratio: int = 8,
    backbone_flops: float | None = None,
) -> FlopsBreakdown:
    """Training FLOPs per token of `config` with the given head.

    Args:
        head: "full", "sampled" (uniform negatives = `negatives_fraction` of the catalog), "projected"
            (act → Linear(d, d / projection_ratio) before the item dot product), or "sampled+projected".
        seq_len: Context length (default `config.max_position_embeddings`).
        num_items: Catalog size V (default `config.vocab_size - 1`).
        backbone_flops: Use this backbone cost instead of counting it (e.g. the paper's reported 3.4e8).
    """
    if head not in HEADS:
        raise ValueError(f"head={head!r}; expected one of {HEADS}.")
    seq_len = seq_len or config.max_position_embeddings
    items = num_items if num_items is not None else config.vocab_size - 1
    d = config.hidden_size
    d_out = d // projection_ratio if "projected" in head else d
    v_eff = negatives_fraction * items if "sampled" in head else items
    backbone = backbone_flops if backbone_flops is not None else backbone_flops_per_token(config, seq_len)
    projection = 6.0 * d * d_out if "projected" in head else 0.0
    return FlopsBreakdown(backbone=backbone, projection=projection, head=12.0 * d_out * v_eff)


def flops_reduction(config: GenRecConfig, *, head: str = "sampled+projected", **kwargs: object) -> float:
    """How many times fewer training FLOPs per token `head` needs than the full softmax."""
    return flops_per_token(config, head="full", **kwargs).total / flops_per_token(config, head=head, **kwargs).total
