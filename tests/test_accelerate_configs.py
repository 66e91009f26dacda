"""Every shipped accelerate config parses with accelerate's own schema and says what it promises."""

from __future__ import annotations

import pytest
from accelerate.commands.config.config_args import ClusterConfig

import genrec_hf.modeling_genrec as modeling
from genrec_hf import GenRecPreTrainedModel

from .conftest import REPO_ROOT

CONFIGS = sorted((REPO_ROOT / "recipes" / "accelerate_configs").glob("*.yaml"))
EXPECTED = {
    "cpu.yaml": ("NO", 1, "no"),
    "cpu_ddp.yaml": ("MULTI_GPU", 2, "no"),
    "ddp.yaml": ("MULTI_GPU", 8, "bf16"),
    "fsdp.yaml": ("FSDP", 8, "bf16"),
    "deepspeed_zero2.yaml": ("DEEPSPEED", 8, "bf16"),
    "deepspeed_zero3.yaml": ("DEEPSPEED", 8, "bf16"),
}


def test_all_configs_shipped():
    assert {p.name for p in CONFIGS} == set(EXPECTED)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_is_valid(path):
    config = ClusterConfig.from_yaml_file(str(path))
    distributed, processes, precision = EXPECTED[path.name]
    assert str(config.distributed_type).split(".")[-1] == distributed
    assert config.num_processes == processes
    assert str(config.mixed_precision).split(".")[-1].lower() == precision
    text = path.read_text()
    assert f"accelerate launch --config_file recipes/accelerate_configs/{path.name} -m genrec_hf.cli train" in text
    launched = text.split("-m genrec_hf.cli train ")[1].split()[0]
    assert (REPO_ROOT / launched).is_file(), launched


def test_cpu_ddp_avoids_the_one_process_trap():
    config = ClusterConfig.from_yaml_file(str(REPO_ROOT / "recipes/accelerate_configs/cpu_ddp.yaml"))
    assert config.use_cpu is False  # use_cpu=true routes accelerate to its single-process launcher


def test_fsdp_wraps_the_decoder_layer():
    config = ClusterConfig.from_yaml_file(str(REPO_ROOT / "recipes/accelerate_configs/fsdp.yaml"))
    fsdp = config.fsdp_config
    assert fsdp["fsdp_version"] == 2
    assert fsdp["fsdp_transformer_layer_cls_to_wrap"] in GenRecPreTrainedModel._no_split_modules
    assert hasattr(modeling, fsdp["fsdp_transformer_layer_cls_to_wrap"])


def test_deepspeed_stages():
    for stage in (2, 3):
        config = ClusterConfig.from_yaml_file(str(REPO_ROOT / f"recipes/accelerate_configs/deepspeed_zero{stage}.yaml"))
        assert config.deepspeed_config["zero_stage"] == stage
