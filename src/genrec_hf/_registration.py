"""Registration of the GenRec classes with transformers' Auto classes and pipeline registry, without importing them.

`import genrec_hf` must stay cheap (the `genrec-hf` command imports the package before it parses a flag; torch and
transformers' Auto modules cost seconds of CPU), yet a Python user who imported it expects
`AutoConfig` / `AutoModel` / `AutoTokenizer.from_pretrained(run_dir)` and `pipeline("next-item-recommendation", ...)`
to know GenRec without `trust_remote_code`. So each registration runs when the transformers module that owns the
registry has finished importing (right away when it already has): `AutoConfig`'s once
`transformers.models.auto.configuration_auto` is loaded, `AutoModel`'s once `modeling_auto` is, and so on. Each hook
imports only what its registry needs; `transformers` is never imported here.

Standard library only at import time (a post-import hook is a `sys.meta_path` finder that wraps the module's loader).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import threading
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

_CLOSURE = "genrec_hf.models.genrec"


def _closure(name: str) -> ModuleType:
    """A module of the remote-code closure (`configuration_genrec`, `modeling_genrec`, ...), imported on demand."""
    return importlib.import_module(f"{_CLOSURE}.{name}")


class GenRecAutoModel:
    """`AutoModel`'s entry for `GenRecConfig`: the class a folder was saved as, `GenRecModel` for a new config.

    Registering `GenRecModel` itself would make an installed genrec_hf shadow the checkpoint's `auto_map`
    (transformers prefers a registered non-transformers class), so `AutoModel.from_pretrained` of a head checkpoint
    would drop the head here but keep it under remote code. Dispatching on `config.architectures` (written by
    `save_pretrained`) gives the same class in both cases. The model classes are imported on first use, so
    registering this entry costs no torch import.
    """

    config_class: Any = None  # GenRecConfig, set at registration

    @staticmethod
    def _saved_class(config: Any) -> Any:
        modeling = _closure("modeling_genrec")
        classes = {cls.__name__: cls for cls in (modeling.GenRecModel, modeling.GenRecForNextItemPrediction)}
        for name in getattr(config, "architectures", None) or ():
            if name in classes:
                return classes[name]
        return modeling.GenRecModel

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: Any, *args: Any, config: Any = None, **kwargs: Any) -> Any:
        if config is None:
            config = cls.config_class.from_pretrained(pretrained_model_name_or_path)
        return cls._saved_class(config).from_pretrained(pretrained_model_name_or_path, *args, config=config, **kwargs)

    @classmethod
    def _from_config(cls, config: Any, **kwargs: Any) -> Any:
        return cls._saved_class(config)._from_config(config, **kwargs)


def _register_config() -> None:
    configuration_auto = importlib.import_module("transformers.models.auto.configuration_auto")
    configuration_auto.AutoConfig.register("genrec", _closure("configuration_genrec").GenRecConfig, exist_ok=True)


def _register_model() -> None:
    GenRecAutoModel.config_class = _closure("configuration_genrec").GenRecConfig
    modeling_auto = importlib.import_module("transformers.models.auto.modeling_auto")
    modeling_auto.AutoModel.register(GenRecAutoModel.config_class, GenRecAutoModel, exist_ok=True)


def _register_tokenizer() -> None:
    tokenization_auto = importlib.import_module("transformers.models.auto.tokenization_auto")
    tokenization_auto.AutoTokenizer.register(_closure("configuration_genrec").GenRecConfig,
                                             tokenizer_class=_closure("tokenization_genrec").GenRecItemTokenizer,
                                             exist_ok=True)


def _register_pipeline() -> None:
    pipelines = importlib.import_module("transformers.pipelines")
    modeling_auto = importlib.import_module("transformers.models.auto.modeling_auto")
    pipeline_class = _closure("pipeline_genrec").NextItemRecommendationPipeline
    task = _closure("modeling_genrec").PIPELINE_TASK
    if task not in pipelines.PIPELINE_REGISTRY.supported_tasks:
        pipelines.PIPELINE_REGISTRY.register_pipeline(task, pipeline_class=pipeline_class,
                                                      pt_model=modeling_auto.AutoModel)


# transformers module whose import completes a registry → what registers GenRec there
HOOKS: dict[str, Callable[[], None]] = {
    "transformers.models.auto.configuration_auto": _register_config,
    "transformers.models.auto.modeling_auto": _register_model,
    "transformers.models.auto.tokenization_auto": _register_tokenizer,
    "transformers.pipelines": _register_pipeline,
}


class _PostImportFinder(importlib.abc.MetaPathFinder):
    """Runs a callback right after a watched module has executed (its loader's `exec_module` is wrapped)."""

    def __init__(self, hooks: dict[str, Callable[[], None]]) -> None:
        self.hooks = dict(hooks)
        self._lock = threading.Lock()

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        with self._lock:
            if fullname not in self.hooks:
                return None
            callback = self.hooks.pop(fullname)
        spec = None
        for finder in sys.meta_path:
            if finder is not self and hasattr(finder, "find_spec"):
                spec = finder.find_spec(fullname, path, target)
                if spec is not None:
                    break
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_register(module: ModuleType) -> None:
            exec_module(module)
            callback()

        spec.loader.exec_module = exec_then_register  # type: ignore[method-assign]
        return spec


_installed = False


def install() -> None:
    """Register GenRec wherever transformers' registries are already imported; hook the rest (idempotent)."""
    global _installed
    if _installed:
        return
    _installed = True
    pending = {}
    for module, register in HOOKS.items():
        if module in sys.modules:
            register()
        else:
            pending[module] = register
    if pending:
        sys.meta_path.insert(0, _PostImportFinder(pending))
