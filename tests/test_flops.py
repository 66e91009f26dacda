"""The FLOPs model reproduces the paper's table (PAPER.md §3) within 3%."""

from __future__ import annotations

import pytest

from genrec_hf import GenRecConfig
from genrec_hf.flops import backbone_flops_per_token, flops_per_token, flops_reduction

# The paper's illustrative backbone: 6 layers, d=1024, 512 events (a 2d-wide classic FFN matches its 3.4e8).
PAPER = GenRecConfig(vocab_size=10, hidden_size=1024, num_hidden_layers=6, num_attention_heads=16,
                     intermediate_size=2048, mlp_type="mlp", max_position_embeddings=512)


def test_backbone_matches_reported_cost():
    assert backbone_flops_per_token(PAPER, 512) == pytest.approx(3.4e8, rel=0.03)


@pytest.mark.parametrize("backbone", [None, 3.4e8])
def test_paper_table(backbone):
    kwargs = dict(num_items=1_000_000, seq_len=512, backbone_flops=backbone)
    assert flops_per_token(PAPER, head="full", **kwargs).total == pytest.approx(1.26e10, rel=0.03)
    assert flops_per_token(PAPER, head="sampled+projected", **kwargs).total == pytest.approx(3.56e8, rel=0.03)
    assert flops_reduction(PAPER, **kwargs) == pytest.approx(35.5, rel=0.03)
    assert flops_reduction(PAPER, num_items=10_000_000, seq_len=512, backbone_flops=backbone) == pytest.approx(
        249, rel=0.03)


def test_each_trick_alone_helps_and_backbone_is_unchanged():
    kwargs = dict(num_items=1_000_000, seq_len=512)
    full, sampled, projected = (flops_per_token(PAPER, head=h, **kwargs) for h in ("full", "sampled", "projected"))
    assert full.backbone == sampled.backbone == projected.backbone
    assert sampled.head == pytest.approx(full.head / 100)
    assert projected.head == pytest.approx(full.head / 8)
    with pytest.raises(ValueError, match="head='bpr'"):
        flops_per_token(PAPER, head="bpr")
