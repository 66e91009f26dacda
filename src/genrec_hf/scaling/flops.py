"""Training FLOPs per token: backbone + decoding head + loss, for full / sampled / projected heads.

Why: the paper's efficiency claim (35.5× fewer FLOPs at a 1e6-item catalog, ≈249× at 1e7) is a statement about this
arithmetic, so it lives in one tested place and the head benchmark reports it next to measured wall clock.

Accounting convention (per supervised token, forward + backward ≈ 3 × forward, a multiply-add = 2 FLOPs):

    backbone = 6 · N_blocks + 12 · L · T · d
        6 · N: every weight of the transformer blocks is used once per token in a matmul: 2 FLOPs forward,
        4 backward (input and weight gradients). N_blocks counts the blocks and the final norm, no embeddings and no
        head (the paper's size). 12 · L · T · d: attention scores Q·Kᵀ and the weighted sum over values, 2 · T · d
        each forward over a context of T events, ×3 for training, no causal halving (PaLM, Chowdhery et al. 2022,
        App. B). Norms, activations, rotary and softmax inside attention are O(d) or O(T) per token and left out.
    head     = 6 · d · d_out                 (projected head only: Linear(d, d / r) on act(h))
             + head_factor · d_out · V_eff   (item scoring; d_out = d or d / r, V_eff = V or #negatives + 1)
    loss     = 6 · V_eff                     (max / subtract / exp / sum forward, softmax − one-hot backward)

`head_factor` defaults to the paper's 12: the paper's numbers are reproduced by `3.4e8 + 12 · d_out · V_eff`, which is
twice the 6 · d_out · V_eff that a dense (N × d_out) @ (d_out × V) matmul costs forward + backward. The paper does
not say where its extra factor 2 comes from; `head_factor=6` gives the strict matmul count (then the full-vs-
sampled+projected reduction at V = 1e6 is ≈ 19× instead of 35.5×).

The paper's illustrative backbone (6 layers, d = 1024, 512 events) has 3.4e8 FLOPs/token under this convention when
each block holds 8 · d² weights (attention 4 · d², FFN 4 · d², e.g. a classic FFN of width 2d or a gated one of width
4d/3): 6 · 6 · 8 · 1024² + 12 · 6 · 512 · 1024 = 3.02e8 + 3.77e7 = 3.40e8. The paper does not give its FFN width; a
classic 4d FFN would give 4.9e8.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..models.genrec import GenRecConfig, count_backbone_parameters

HEADS = ("full", "sampled", "projected", "sampled+projected")
PAPER_HEAD_FACTOR = 12.0


def backbone_parameters(config_or_dims: GenRecConfig | Mapping[str, Any]) -> int:
    """Weights of the transformer blocks + final norm (no embeddings, no head): `count_backbone_parameters`.

    A mapping of dims (`num_hidden_layers`, `hidden_size`, optional `intermediate_size` (default 4·d), `mlp_type`
    = "gated" | "mlp" and `norm_type` = "rmsnorm" | "layernorm") is turned into a `GenRecConfig` and counted the
    same way, on the meta device, so there is one way of counting a backbone.
    """
    if isinstance(config_or_dims, GenRecConfig):
        return count_backbone_parameters(config_or_dims)
    dims = dict(config_or_dims)
    d = _get(dims, "hidden_size")
    config = GenRecConfig(
        vocab_size=2, hidden_size=d, num_hidden_layers=_get(dims, "num_hidden_layers"), num_attention_heads=1,
        intermediate_size=dims.get("intermediate_size", 4 * d), mlp_type=dims.get("mlp_type", "gated"),
        norm_type=dims.get("norm_type", "rmsnorm"), position_encoding="none",
    )
    return count_backbone_parameters(config)


def backbone_flops_per_token(config_or_dims: GenRecConfig | Mapping[str, Any], seq_len: int) -> float:
    """6 · N_blocks + 12 · L · T · d: training FLOPs per token of the transformer blocks at context length T."""
    layers, d = _get(config_or_dims, "num_hidden_layers"), _get(config_or_dims, "hidden_size")
    return 6.0 * backbone_parameters(config_or_dims) + 12.0 * layers * seq_len * d


def flops_per_token(
    config_or_dims: GenRecConfig | Mapping[str, Any],
    *,
    head: str = "full",
    seq_len: int | None = None,
    num_items: int | None = None,
    negatives_fraction: float = 0.01,
    num_negatives: int | None = None,
    projection_ratio: int = 8,
    head_factor: float = PAPER_HEAD_FACTOR,
    backbone_flops: float | None = None,
) -> dict[str, float]:
    """Training FLOPs per supervised token, broken down as {"backbone", "head", "loss", "total"}.

    Args:
        config_or_dims: A `GenRecConfig` or a mapping of backbone dims (see `backbone_parameters`).
        head: "full" (softmax over the whole catalog), "sampled" (uniform negatives, `negatives_fraction` of the
            catalog or `num_negatives`), "projected" (act → Linear(d, d / projection_ratio) before the item dot
            product) or "sampled+projected" (the paper's efficient head).
        seq_len: Context length T (default: the config's `max_position_embeddings`; required for plain dims).
        num_items: Catalog size V (default: `vocab_size - 1` of the config).
        head_factor: FLOPs per (d_out × candidate) of item scoring: 12 = the paper's convention, 6 = strict matmul.
        backbone_flops: Use this backbone cost instead of counting it (e.g. 0 to get head + loss only).
    """
    if head not in HEADS:
        raise ValueError(f"head={head!r}; expected one of {HEADS}.")
    if seq_len is None:
        seq_len = _get(config_or_dims, "max_position_embeddings")
    items = num_items if num_items is not None else _get(config_or_dims, "vocab_size") - 1
    d = _get(config_or_dims, "hidden_size")
    projected, sampled = "projected" in head, "sampled" in head
    d_out = d // projection_ratio if projected else d
    if sampled:
        negatives = num_negatives if num_negatives is not None else negatives_fraction * items
        v_eff = min(negatives, items - 1) + 1  # the positive + negatives
    else:
        v_eff = items
    backbone = backbone_flops if backbone_flops is not None else backbone_flops_per_token(config_or_dims, seq_len)
    head_flops = (6.0 * d * d_out if projected else 0.0) + head_factor * d_out * v_eff
    loss = 6.0 * v_eff
    return {"backbone": float(backbone), "head": head_flops, "loss": loss, "total": backbone + head_flops + loss}


def flops_reduction(config_or_dims: GenRecConfig | Mapping[str, Any], *, head: str = "sampled+projected",
                    **kwargs: Any) -> float:
    """How many times fewer training FLOPs per token `head` needs than the full softmax."""
    full = flops_per_token(config_or_dims, head="full", **kwargs)["total"]
    return full / flops_per_token(config_or_dims, head=head, **kwargs)["total"]


def _get(config_or_dims: GenRecConfig | Mapping[str, Any], key: str) -> Any:
    if isinstance(config_or_dims, Mapping):
        if key not in config_or_dims:
            raise ValueError(f"dims need {key!r} (got keys {sorted(config_or_dims)}).")
        return config_or_dims[key]
    return getattr(config_or_dims, key)
