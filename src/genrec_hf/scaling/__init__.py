"""Scaling: FLOPs accounting per token (full / sampled / projected heads).

Offset power-law fits, headroom and the size-ladder runner join this room.
"""

from .flops import HEADS, backbone_flops_per_token, backbone_parameters, flops_per_token, flops_reduction

__all__ = ["HEADS", "backbone_flops_per_token", "backbone_parameters", "flops_per_token", "flops_reduction"]
