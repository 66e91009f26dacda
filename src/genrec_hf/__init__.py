"""genrec_hf: large generative recommenders (decoder-only next-event transformers) on the Hugging Face stack.

Importing the package registers `GenRecConfig` / `GenRecModel` / `GenRecForNextItemPrediction`, the item tokenizer
and the `next-item-recommendation` pipeline with transformers' Auto classes and pipeline registry. Both the
registration and the public names below are lazy (`_registration`, PEP 562 `__getattr__`): `import genrec_hf` loads
neither torch nor transformers, so the `genrec-hf` command answers `--help` at once; the first use of a name, or
of transformers' Auto classes, loads what it needs.

The layout (see docs/architecture.md): `models/genrec/` (config, modeling, tokenizer, pipeline: shipped with
checkpoints), `data/`, `evaluation/`, `training/`, `adapters`, `serving/`, `scaling/`, `cards`, `cli`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import _registration
from ._version import __version__

if TYPE_CHECKING:  # the names `__getattr__` resolves, for type checkers and the import-linter contract
    from .models.genrec import (PRESET_NOMINAL_SIZES, SIZE_PRESETS, GenRecConfig, GenRecForNextItemPrediction,
                                GenRecItemTokenizer, GenRecModel, GenRecNextItemOutput, GenRecPreTrainedModel,
                                NextItemRecommendationPipeline, count_backbone_parameters)
    from .models.genrec.scoring import TopItems

_LAZY = {name: ".models.genrec" for name in (
    "GenRecConfig", "GenRecModel", "GenRecForNextItemPrediction", "GenRecNextItemOutput", "GenRecPreTrainedModel",
    "GenRecItemTokenizer", "NextItemRecommendationPipeline", "SIZE_PRESETS", "PRESET_NOMINAL_SIZES",
    "count_backbone_parameters", "TopItems")}

_registration.install()


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "GenRecConfig",
    "GenRecModel",
    "GenRecForNextItemPrediction",
    "GenRecItemTokenizer",
    "GenRecNextItemOutput",
    "GenRecPreTrainedModel",
    "NextItemRecommendationPipeline",
    "SIZE_PRESETS",
    "TopItems",
    "PRESET_NOMINAL_SIZES",
    "count_backbone_parameters",
    "__version__",
]
