"""genrec_hf: large generative recommenders (decoder-only next-event transformers) on the Hugging Face stack.

Importing the package registers `GenRecConfig` / `GenRecModel` / `GenRecForNextItemPrediction` with the Auto classes.
"""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModel

from .configuration_genrec import PRESET_NOMINAL_SIZES, SIZE_PRESETS, GenRecConfig
from .modeling_genrec import (
    GenRecForNextItemPrediction,
    GenRecModel,
    GenRecNextItemOutput,
    GenRecPreTrainedModel,
)

__version__ = "0.1.0"

AutoConfig.register("genrec", GenRecConfig, exist_ok=True)
AutoModel.register(GenRecConfig, GenRecModel, exist_ok=True)
# Saved checkpoints carry `auto_map` + the source files, so they also load with `trust_remote_code=True` where
# genrec_hf is not installed (how Hub users load them). Remote code gives back exactly the class that was saved:
# a backbone for a `GenRecModel` folder, the backbone + decoding head for a `GenRecForNextItemPrediction` folder.
GenRecConfig.register_for_auto_class()
GenRecModel.register_for_auto_class("AutoModel")
GenRecForNextItemPrediction.register_for_auto_class("AutoModel")


def count_backbone_parameters(model_or_config: torch.nn.Module | GenRecConfig) -> int:
    """Parameters of the transformer blocks and final norm: the paper's model size (no embeddings, no head).

    A config is instantiated on the meta device, so even `genrec-1b` costs no memory.
    """
    if isinstance(model_or_config, GenRecConfig):
        with torch.device("meta"):
            model_or_config = GenRecModel(model_or_config)
    backbone = getattr(model_or_config, "model", model_or_config)
    if not isinstance(backbone, GenRecModel):
        raise TypeError(f"Expected a GenRecConfig or a GenRec model, got {type(model_or_config).__name__}.")
    blocks = sum(p.numel() for p in backbone.layers.parameters())
    return blocks + sum(p.numel() for p in backbone.norm.parameters())


__all__ = [
    "GenRecConfig",
    "GenRecModel",
    "GenRecForNextItemPrediction",
    "GenRecNextItemOutput",
    "GenRecPreTrainedModel",
    "SIZE_PRESETS",
    "PRESET_NOMINAL_SIZES",
    "count_backbone_parameters",
]
