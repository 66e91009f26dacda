"""The FLOPs model reproduces the paper's FLOPs table (its §3) within 3%, and counts the backbone honestly."""

from __future__ import annotations

import pytest

from genrec_hf import GenRecConfig, count_backbone_parameters
from genrec_hf.scaling.flops import backbone_flops_per_token, backbone_parameters, flops_per_token, flops_reduction

# The paper's illustrative backbone: 6 layers, d=1024, 512 events. Its FFN width is not stated; blocks of 8·d²
# weights (here a classic FFN of width 2d) give its reported 3.4e8 FLOPs/token.
PAPER = GenRecConfig(vocab_size=10, hidden_size=1024, num_hidden_layers=6, num_attention_heads=16,
                     intermediate_size=2048, mlp_type="mlp", max_position_embeddings=512)
PAPER_DIMS = dict(num_hidden_layers=6, hidden_size=1024, intermediate_size=2048, mlp_type="mlp", norm_type="rmsnorm")


def test_backbone_is_counted_from_the_architecture_and_matches_reported_cost():
    # 6·N + 12·L·T·d with N counted on the real module
    n = count_backbone_parameters(PAPER)
    assert backbone_flops_per_token(PAPER, 512) == 6 * n + 12 * 6 * 512 * 1024
    assert backbone_flops_per_token(PAPER, 512) == pytest.approx(3.4e8, rel=0.03)
    assert backbone_flops_per_token(PAPER_DIMS, 512) == backbone_flops_per_token(PAPER, 512)


@pytest.mark.parametrize("overrides", [dict(), dict(mlp_type="mlp", norm_type="layernorm", intermediate_size=96)])
def test_analytic_parameter_count_equals_module_count(overrides):
    config = GenRecConfig(**{**dict(vocab_size=50, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                    intermediate_size=80), **overrides})
    dims = {k: getattr(config, k) for k in ("num_hidden_layers", "hidden_size", "intermediate_size", "mlp_type",
                                            "norm_type")}
    assert backbone_parameters(dims) == count_backbone_parameters(config)


@pytest.mark.parametrize("backbone", [None, 3.4e8])
@pytest.mark.parametrize("model", [PAPER, PAPER_DIMS])
def test_paper_table(backbone, model):
    kwargs = dict(num_items=1_000_000, seq_len=512, backbone_flops=backbone)
    full = flops_per_token(model, head="full", **kwargs)
    assert set(full) == {"backbone", "head", "loss", "total"}
    assert full["total"] == pytest.approx(1.26e10, rel=0.03)
    assert flops_per_token(model, head="sampled+projected", **kwargs)["total"] == pytest.approx(3.56e8, rel=0.03)
    assert flops_reduction(model, **kwargs) == pytest.approx(35.5, rel=0.03)
    assert flops_reduction(model, num_items=10_000_000, seq_len=512, backbone_flops=backbone) == pytest.approx(
        249, rel=0.03)


def test_each_trick_alone_helps_and_backbone_is_unchanged():
    kwargs = dict(num_items=1_000_000, seq_len=512)
    full, sampled, projected = (flops_per_token(PAPER, head=h, **kwargs) for h in ("full", "sampled", "projected"))
    assert full["backbone"] == sampled["backbone"] == projected["backbone"]
    assert sampled["head"] == pytest.approx(full["head"] / 100, rel=1e-3)
    assert projected["head"] == pytest.approx(full["head"] / 8, rel=1e-3)
    assert full["total"] == pytest.approx(full["backbone"] + full["head"] + full["loss"])
    assert full["loss"] < 1e-3 * full["head"]
    # strict matmul convention (6·d_out·V): the head halves, the reduction shrinks
    strict = flops_reduction(PAPER, head_factor=6.0, **kwargs)
    assert 15 < strict < flops_reduction(PAPER, **kwargs)
    with pytest.raises(ValueError, match="head='bpr'"):
        flops_per_token(PAPER, head="bpr")
    with pytest.raises(ValueError, match="max_position_embeddings"):
        flops_per_token(PAPER_DIMS, num_items=10)
