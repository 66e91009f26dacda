"""transformers' own common model battery (`ModelTesterMixin`, `ConfigTester`) run against the GenRec classes.

The battery is the `tests/` folder of the installed transformers release: `TRANSFORMERS_TESTS_DIR` (e.g. a git
checkout's `tests/`), else `~/.cache/genrec_hf/transformers-tests/<version>/tests`, which
`tools/fetch_transformers_tests.sh` fills from that release's PyPI sdist. Absent files skip this module, saying so.

The sdist ships only the top-level `tests/*.py`, not the sub-packages that `test_modeling_common.py` and
`test_configuration_common.py` import from. Where those are absent, `_install_missing_helpers` stands in for them:
`ExportTesterMixin` and `GenerationTesterMixin` as empty mixins (export is covered by
`tests/models/test_modeling_common.py`; GenRec does not generate) and `config_common_kwargs` as our own set of
non-default common config values. With a full checkout the real ones are used.

Nothing here skips a battery test; the battery skips on its own conditions, each of which holds for GenRec:
no accelerator / flash-attention / deepspeed / kernels / MPS / several GPUs on CPU CI; not a composite model (no
sub-configs); a KV cache of GenRec's own class (`GenRecCache`, not a transformers `Cache`: the cache-name test skips
as "non standard Cache"), no `inputs_embeds` (an event is several fields, not one embedding), no
`capture_outputs` recorder, no experts, no TP plan, no sliding window, no weight-conversion mapping, no
fp32-pinned modules, no rope-scaling base class; `@slow` tests need RUN_SLOW. Position embeddings are not resized
(`test_resize_position_embeddings = False`): histories longer than the table keep their most recent events.
"""

from __future__ import annotations

import importlib
import os
import sys
import types
import unittest
from pathlib import Path
from unittest import mock

import pytest
import torch
import transformers
from transformers.models.auto import modeling_auto

from genrec_hf import GenRecConfig, GenRecForNextItemPrediction, GenRecModel

from tests.helpers import tiny_config

PACKAGE = "_transformers_battery"


def battery_dir() -> Path:
    if os.environ.get("TRANSFORMERS_TESTS_DIR"):
        return Path(os.environ["TRANSFORMERS_TESTS_DIR"])
    return Path.home() / ".cache" / "genrec_hf" / "transformers-tests" / transformers.__version__ / "tests"


def _module(name: str, path: Path | None = None, **attributes) -> types.ModuleType:
    module = types.ModuleType(name)
    if path is not None:
        module.__path__ = [str(path)]
    module.__dict__.update(attributes)
    sys.modules[name] = module
    return module


# Common `PretrainedConfig` fields with non-default values, for `ConfigTester.check_config_arguments_init` (which
# checks that a config keeps every one of them; `dtype` must be float16 there).
COMMON_CONFIG_KWARGS = dict(
    return_dict=False, output_hidden_states=True, output_attentions=True, dtype="float16",
    tie_word_embeddings=False, chunk_size_feed_forward=5, architectures=["GenRecForNextItemPrediction"],
    id2label={0: "first", 1: "second"}, label2id={"first": 0, "second": 1}, problem_type="regression",
    bos_token_id=7, eos_token_id=8, sep_token_id=9, pad_token_id=3, decoder_start_token_id=4,
)


def _install_missing_helpers(root: Path) -> None:
    """Stand-ins for the battery's sub-package imports that the sdist lacks (see the module docstring)."""
    _module(PACKAGE, root)
    helpers = {
        "exporters.test_export": dict(ExportTesterMixin=type("ExportTesterMixin", (), {})),
        "generation.test_utils": dict(GenerationTesterMixin=type("GenerationTesterMixin", (), {})),
        "utils.test_configuration_utils": dict(config_common_kwargs=COMMON_CONFIG_KWARGS),
    }
    for dotted, attributes in helpers.items():
        package, name = dotted.split(".")
        if (root / package / f"{name}.py").is_file():
            continue
        _module(f"{PACKAGE}.{package}", root / package)
        _module(f"{PACKAGE}.{dotted}", **attributes)


def load_battery() -> tuple[type, type]:
    root = battery_dir()
    missing = [f for f in ("test_modeling_common.py", "test_configuration_common.py") if not (root / f).is_file()]
    if missing:
        where = str(root).replace(str(Path.home()), "~")  # no machine path in a skip reason
        pytest.skip(f"transformers' common test battery is absent ({', '.join(missing)} not in {where}); run "
                    "tools/fetch_transformers_tests.sh or set TRANSFORMERS_TESTS_DIR", allow_module_level=True)
    pytest.importorskip("parameterized", reason="transformers' test battery needs the `parameterized` package")
    _install_missing_helpers(root)
    modeling = importlib.import_module(f"{PACKAGE}.test_modeling_common")
    # test_configuration_common.py imports transformers afresh from its folder's __init__.py (a file the sdist
    # lacks) into a module-level name it never uses; hand it the installed package instead.
    real_import = transformers.utils.direct_transformers_import
    transformers.utils.direct_transformers_import = lambda *args, **kwargs: transformers
    try:
        configuration = importlib.import_module(f"{PACKAGE}.test_configuration_common")
    finally:
        transformers.utils.direct_transformers_import = real_import
    return modeling.ModelTesterMixin, configuration.ConfigTester


ModelTesterMixin, ConfigTester = load_battery()


class GenRecBatteryModelTester:
    """What the battery asks of a model tester: sizes, a config and one batch of inputs."""

    def __init__(self, parent: unittest.TestCase, batch_size: int = 3, seq_length: int = 7) -> None:
        self.parent = parent
        self.batch_size = batch_size
        self.seq_length = seq_length
        self.is_training = True
        config = self.get_config()
        self.vocab_size = config.vocab_size
        self.hidden_size = config.hidden_size
        self.num_hidden_layers = config.num_hidden_layers
        self.num_attention_heads = config.num_attention_heads

    def get_config(self) -> GenRecConfig:
        return tiny_config()

    def prepare_config_and_inputs_for_common(self) -> tuple[GenRecConfig, dict[str, torch.Tensor]]:
        config = self.get_config()
        shape = (self.batch_size, self.seq_length)
        inputs = dict(
            input_ids=torch.randint(1, config.vocab_size, shape),
            attention_mask=torch.ones(shape, dtype=torch.long),
            timestamps=torch.cumsum(torch.randint(0, 10_000, shape), dim=1),
            action_ids=torch.randint(0, config.num_action_types, shape),
        )
        return config, inputs


class GenRecTransformersModelTest(ModelTesterMixin, unittest.TestCase):
    all_model_classes = (GenRecModel, GenRecForNextItemPrediction)
    test_resize_position_embeddings = False  # see the module docstring
    # Opt in: the battery runs this check only for models whose files carry a 2023+ copyright line.
    test_can_init_all_missing_weights_before_2023 = True

    def setUp(self) -> None:
        self.model_tester = GenRecBatteryModelTester(self)
        self.config_tester = ConfigTester(self, config_class=GenRecConfig, hidden_size=32, num_attention_heads=2)
        # The battery recognises base models (no loss: not trained by the training tests) by name in transformers'
        # static auto table; GenRec registers with the Auto classes at runtime, which that table does not see.
        patcher = mock.patch.dict(modeling_auto.MODEL_MAPPING_NAMES, {"genrec": GenRecModel.__name__})
        patcher.start()
        self.addCleanup(patcher.stop)

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        inputs = super()._prepare_for_class(inputs_dict, model_class, return_labels=return_labels)
        if return_labels and model_class is GenRecForNextItemPrediction:
            # Already aligned next-item targets (labels[:, t] is the event after t), as GenRec's collators build them;
            # a function of the inputs, so that repeated calls (tuple vs dict outputs) get the same labels.
            labels = inputs["input_ids"].roll(-1, dims=1)
            labels[:, -1] = -100
            inputs["labels"] = labels
        return inputs

    def test_config(self) -> None:
        self.config_tester.run_common_tests()
