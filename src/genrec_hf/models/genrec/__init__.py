"""The GenRec model family: config, modeling, losses and scoring.

Every file in this folder imports only torch, transformers and its siblings: `save_pretrained` copies them next to
each checkpoint, so `AutoModel.from_pretrained(dir, trust_remote_code=True)` works where genrec_hf is not installed.
"""

from .configuration_genrec import PRESET_NOMINAL_SIZES, SIZE_PRESETS, GenRecConfig
from .modeling_genrec import (
    GenRecCache,
    GenRecForNextItemPrediction,
    GenRecModel,
    GenRecNextItemOutput,
    GenRecPreTrainedModel,
    count_backbone_parameters,
)
from .scoring import TopItems

__all__ = [
    "GenRecCache",
    "GenRecConfig",
    "GenRecForNextItemPrediction",
    "GenRecModel",
    "GenRecNextItemOutput",
    "GenRecPreTrainedModel",
    "PRESET_NOMINAL_SIZES",
    "SIZE_PRESETS",
    "TopItems",
    "count_backbone_parameters",
]
