"""The `next-item-recommendation` pipeline: raw item ids in, the top-k next items (raw ids, scores, titles) out.

    from transformers import pipeline
    recommend = pipeline("next-item-recommendation", model="runs/genrec-500k-synthetic", trust_remote_code=True)
    recommend(["617", "469"], top_k=10)            # one history (oldest first) → [{"item_id", "score", "title"}, ...]
    recommend([["617", "469"], ["12"]], top_k=5)   # a batch of histories → one list per history
    recommend({"history": ["617", "469"], "timestamps": [1700000000, 1700003600]})

A saved GenRec folder carries this file and names it under `custom_pipelines` in `config.json`, so
`pipeline(model=folder, trust_remote_code=True)` infers the task and runs without genrec_hf installed; with
genrec_hf imported the task is also in transformers' pipeline registry (for models passed as objects).

Adapters (LoRA, through transformers' PEFT integration): `pipeline(model=ADAPTER_FOLDER, ...)` serves an adapter
folder on the base it names; `pipeline(..., adapters={"short_horizon": FOLDER})` loads named adapters on the base,
and `recommend(history, adapter="short_horizon")` picks one per call (`adapter=None`: the base alone).

Scoring is the model's own: the user state after the most recent `model_max_length` events (the tokenizer's left
padding and truncation), exact top-k over the whole catalog in chunks (`model.topk`), items of the whole history
left out unless `exclude_seen=False`. Standard library + torch + transformers only (shipped with checkpoints).
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from transformers import PreTrainedModel
from transformers.pipelines.base import Pipeline

from .scoring import history_exclusions


def _is_history(value: Any) -> bool:
    """One history: a flat sequence of raw ids (or a dict with one), not a batch of them."""
    if isinstance(value, Mapping):
        return True
    return isinstance(value, (list, tuple)) and not any(isinstance(v, (list, tuple, Mapping)) for v in value)


class NextItemRecommendationPipeline(Pipeline):
    """Top-k next items after histories of raw item ids, with the model's item tokenizer (module docstring)."""

    _load_tokenizer = True
    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_video_processor = False

    def __init__(self, *args: Any, adapters: Mapping[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.model.eval()  # a model handed in as an object may still be in training mode (dropout on)
        self._lock = threading.Lock()  # the active adapter is model state: one switch + forward at a time
        # an adapter folder given as the model is served by default; adapters loaded by name only when asked for
        layers = self._adapter_layers()
        active = layers[0].active_adapter if layers else None
        self.default_adapter = active[0] if isinstance(active, list) else active
        with warnings.catch_warnings():  # PEFT's notices of a second adapter, and of an ID-only base (no tower)
            warnings.filterwarnings("ignore", message=".*Already found a `peft_config` attribute.*")
            warnings.filterwarnings("ignore", message=".*no modules were excluded.*")
            for name, folder in (adapters or {}).items():
                self.model.load_adapter(str(folder), adapter_name=name)

    def _adapters(self) -> list[str]:
        """Names of the adapters loaded on the model."""
        return sorted(getattr(self.model, "peft_config", None) or {}) if self._adapter_layers() else []

    def _adapter_layers(self) -> list[torch.nn.Module]:
        """The model's LoRA layers and modules_to_save copies (found by their methods: peft is not imported here).

        They are switched one by one, as transformers' `set_adapter` does, which checks for a newer peft than the
        adapters need."""
        return [module for module in self.model.modules() if not isinstance(module, PreTrainedModel)
                and callable(getattr(module, "set_adapter", None))
                and callable(getattr(module, "enable_adapters", None))]

    def _sanitize_parameters(self, top_k: int | None = None, exclude_seen: bool | None = None,
                             adapter: str | None = None, timestamps: Sequence[int] | None = None,
                             action_ids: Sequence[int] | None = None,
                             **kwargs: Any) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        if kwargs:
            raise TypeError(f"next-item-recommendation got unexpected argument(s) {sorted(kwargs)}; it takes "
                            "top_k, exclude_seen, adapter, timestamps, action_ids.")
        preprocess = {k: v for k, v in (("timestamps", timestamps), ("action_ids", action_ids)) if v is not None}
        forward: dict[str, Any] = {}
        if top_k is not None:
            if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
                raise ValueError(f"top_k={top_k!r} is invalid: expected a positive integer number of items.")
            forward["top_k"] = top_k
        if exclude_seen is not None:
            forward["exclude_seen"] = bool(exclude_seen)
        if adapter is not None:
            loaded = self._adapters()
            if adapter not in loaded:
                raise ValueError(f"Unknown adapter {adapter!r}; this pipeline has {loaded or 'no adapters'} "
                                 "(load them with pipeline(..., adapters={name: folder})).")
            forward["adapter"] = adapter
        return preprocess, forward, {}

    def __call__(self, inputs: Any, **kwargs: Any) -> Any:
        """Recommendations for one history (a list of dicts) or a batch of histories (a list of such lists)."""
        if _is_history(inputs):
            return super().__call__([inputs], **kwargs)[0]
        return super().__call__(inputs, **kwargs)

    def preprocess(self, inputs: Sequence[str | int] | Mapping[str, Any], timestamps: Sequence[int] | None = None,
                   action_ids: Sequence[int] | None = None) -> dict[str, Any]:
        if isinstance(inputs, Mapping):
            history = inputs.get("history", inputs.get("item_ids"))
            if history is None:
                raise ValueError(f"a history dict needs 'history' (raw item ids, oldest first); got keys "
                                 f"{sorted(inputs)}.")
            timestamps = inputs.get("timestamps", timestamps)
            action_ids = inputs.get("action_ids", action_ids)
        else:
            history = inputs
        if not history:
            raise ValueError("The history is empty: give at least one raw item id the model knows.")
        encoded = self.tokenizer(list(history), timestamps=timestamps, action_ids=action_ids, return_tensors="pt")
        # the whole history's items are left out of the recommendations, not only the events the model reads
        seen = self.tokenizer(list(history), truncation=False)["input_ids"]
        return {**encoded, "seen": [index for index in seen if index != 0]}

    @torch.no_grad()
    def _forward(self, model_inputs: dict[str, Any], top_k: int = 10, exclude_seen: bool = True,
                 adapter: str | None = None) -> dict[str, Any]:
        seen = model_inputs.pop("seen")
        if not seen or not isinstance(seen[0], list):  # one unbatched row
            seen = [seen]
        top_k = min(top_k, self.model.config.vocab_size - 1)
        with self._lock:
            self._select_adapter(adapter if adapter is not None else self.default_adapter)
            outputs = self.model(**model_inputs)
            exclude = history_exclusions(seen, outputs.user_embeddings.device) if exclude_seen else None
            top = self.model.topk(outputs.user_embeddings, top_k, exclude=exclude)
        return {"items": top.items, "scores": top.scores}

    def _select_adapter(self, adapter: str | None) -> None:
        """Make `adapter` the only active one (None: every adapter off, the base alone). A layer the adapter does
        not train (a modules_to_save copy of another adapter's head) runs the base's module."""
        for layer in self._adapter_layers():
            enabled = adapter is not None
            if enabled:
                try:
                    layer.set_adapter(adapter, inference_mode=True)
                except ValueError:  # peft: "Adapter ... not found" in this wrapper
                    enabled = False
            layer.enable_adapters(enabled)

    def postprocess(self, model_outputs: dict[str, Any]) -> list[dict[str, Any]]:
        items = model_outputs["items"].reshape(-1).tolist()
        scores = model_outputs["scores"].reshape(-1).tolist()
        out = []
        for index, score in zip(items, scores):
            if index == 0:  # fewer rankable items than top_k
                continue
            raw = self.tokenizer.convert_ids_to_tokens(index)
            out.append({"item_id": raw, "score": float(score), "title": self.tokenizer.title(raw)})
        return out


__all__ = ["NextItemRecommendationPipeline"]
