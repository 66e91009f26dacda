"""The GenRec model family: config, modeling, losses, scoring, the item tokenizer and the recommendation pipeline.

Every file in this folder imports only torch, transformers and its siblings: `save_pretrained` copies them next to
each checkpoint, so `AutoModel` / `AutoTokenizer.from_pretrained(dir, trust_remote_code=True)` and
`pipeline(model=dir, trust_remote_code=True)` work where genrec_hf is not installed. The names below are resolved on
first use (PEP 562), so importing one module of the family (the config, for the Auto registration) does not import
the others.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .configuration_genrec import PRESET_NOMINAL_SIZES, SIZE_PRESETS, GenRecConfig
    from .modeling_genrec import (GenRecCache, GenRecForNextItemPrediction, GenRecModel, GenRecNextItemOutput,
                                  GenRecPreTrainedModel, count_backbone_parameters)
    from .pipeline_genrec import NextItemRecommendationPipeline
    from .scoring import TopItems
    from .tokenization_genrec import GenRecItemTokenizer

_MODULES = {
    "configuration_genrec": ("GenRecConfig", "PRESET_NOMINAL_SIZES", "SIZE_PRESETS"),
    "modeling_genrec": ("GenRecCache", "GenRecForNextItemPrediction", "GenRecModel", "GenRecNextItemOutput",
                        "GenRecPreTrainedModel", "count_backbone_parameters"),
    "scoring": ("TopItems",),
    "tokenization_genrec": ("GenRecItemTokenizer",),
    "pipeline_genrec": ("NextItemRecommendationPipeline",),
}
_LAZY = {name: module for module, names in _MODULES.items() for name in names}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = sorted(_LAZY)
