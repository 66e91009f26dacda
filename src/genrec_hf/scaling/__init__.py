"""Scaling: FLOPs accounting per token (full / sampled / projected heads); offset power-law fits of a metric against
backbone size, with the ceiling P0, headroom and bootstrap intervals (`fit_scaling`, `fit_csv`).

The size-ladder runner that writes the CSV these fits read is `genrec_hf.scaling.ladder` (`run_ladder`,
`LadderRecipe`; `genrec-hf scaling run`), imported on its own since it needs the training stack.
"""

from .fit import (
    Extrapolation,
    LogLinearFit,
    OffsetPowerLawFit,
    ScalingFit,
    fit_csv,
    fit_scaling,
    format_table,
    load_ranks,
)
from .flops import HEADS, backbone_flops_per_token, backbone_parameters, flops_per_token, flops_reduction

__all__ = [
    "HEADS",
    "Extrapolation",
    "LogLinearFit",
    "OffsetPowerLawFit",
    "ScalingFit",
    "backbone_flops_per_token",
    "backbone_parameters",
    "fit_csv",
    "fit_scaling",
    "flops_per_token",
    "flops_reduction",
    "format_table",
    "load_ranks",
]
