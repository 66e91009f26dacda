"""genrec_hf: large generative recommenders (decoder-only next-event transformers) on the Hugging Face stack.

Importing the package registers `GenRecConfig` / `GenRecModel` / `GenRecForNextItemPrediction` with the Auto classes.
The layout (see docs/architecture.md): `models/genrec/` (config + modeling, shipped with checkpoints), `data/`,
`evaluation/`, `training/`, `adapters`, `serving/`, `scaling/`, `cards`, `cli`.
"""

from __future__ import annotations

from transformers import AutoConfig, AutoModel

from .models.genrec import (
    PRESET_NOMINAL_SIZES,
    SIZE_PRESETS,
    GenRecConfig,
    GenRecForNextItemPrediction,
    GenRecModel,
    GenRecNextItemOutput,
    GenRecPreTrainedModel,
    count_backbone_parameters,
)
from .models.genrec.scoring import TopItems

__version__ = "0.1.0"

AutoConfig.register("genrec", GenRecConfig, exist_ok=True)
AutoModel.register(GenRecConfig, GenRecModel, exist_ok=True)
# Saved checkpoints carry `auto_map` + the source files, so they also load with `trust_remote_code=True` where
# genrec_hf is not installed (how Hub users load them). Remote code gives back exactly the class that was saved:
# a backbone for a `GenRecModel` folder, the backbone + decoding head for a `GenRecForNextItemPrediction` folder.
GenRecConfig.register_for_auto_class()
GenRecModel.register_for_auto_class("AutoModel")
GenRecForNextItemPrediction.register_for_auto_class("AutoModel")

__all__ = [
    "GenRecConfig",
    "GenRecModel",
    "GenRecForNextItemPrediction",
    "GenRecNextItemOutput",
    "GenRecPreTrainedModel",
    "SIZE_PRESETS",
    "TopItems",
    "PRESET_NOMINAL_SIZES",
    "count_backbone_parameters",
]
