"""genrec_hf: large generative recommenders (decoder-only next-event transformers) on the Hugging Face stack.

Importing the package registers `GenRecConfig` / `GenRecModel` / `GenRecForNextItemPrediction` with the Auto classes.
The layout (see docs/architecture.md): `models/genrec/` (config + modeling, shipped with checkpoints), `data/`,
`evaluation/`, `training/`, `adapters`, `serving/`, `scaling/`, `cards`, `cli`.
"""

from __future__ import annotations

from transformers import AutoConfig, AutoModel

from ._version import __version__
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


class _GenRecAutoModel:
    """`AutoModel`'s entry for `GenRecConfig`: the class a folder was saved as, `GenRecModel` for a new config.

    Registering `GenRecModel` itself would make an installed genrec_hf shadow the checkpoint's `auto_map`
    (transformers prefers a registered non-transformers class), so `AutoModel.from_pretrained` of a head checkpoint
    would drop the head here but keep it under remote code. Dispatching on `config.architectures` (written by
    `save_pretrained`) gives the same class in both cases.
    """

    config_class = GenRecConfig
    _classes = {cls.__name__: cls for cls in (GenRecModel, GenRecForNextItemPrediction)}

    @classmethod
    def _saved_class(cls, config: GenRecConfig) -> type[GenRecPreTrainedModel]:
        for name in getattr(config, "architectures", None) or ():
            if name in cls._classes:
                return cls._classes[name]
        return GenRecModel

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, config: GenRecConfig | None = None, **kwargs):
        if config is None:
            config = GenRecConfig.from_pretrained(pretrained_model_name_or_path)
        return cls._saved_class(config).from_pretrained(pretrained_model_name_or_path, *args, config=config, **kwargs)

    @classmethod
    def _from_config(cls, config: GenRecConfig, **kwargs):
        return cls._saved_class(config)._from_config(config, **kwargs)


AutoConfig.register("genrec", GenRecConfig, exist_ok=True)
AutoModel.register(GenRecConfig, _GenRecAutoModel, exist_ok=True)
# Saved checkpoints carry `auto_map` + the source files, so they also load with `trust_remote_code=True` where
# genrec_hf is not installed (how Hub users load them). Either way `AutoModel` gives back exactly the class that
# was saved: a backbone for a `GenRecModel` folder, the backbone + decoding head for a `GenRecForNextItemPrediction`
# folder.
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
    "__version__",
]
