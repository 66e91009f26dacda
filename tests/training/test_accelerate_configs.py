"""Every shipped accelerate config parses with accelerate's own schema and says what it promises; cpu_ddp.yaml really
starts two CPU processes in one gloo group (`--cpu --num_processes 2` alone silently runs one)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from accelerate.commands.config.config_args import ClusterConfig

import genrec_hf.models.genrec.modeling_genrec as modeling
from genrec_hf import GenRecPreTrainedModel

from tests.helpers import REPO_ROOT

CONFIG_DIR = REPO_ROOT / "recipes" / "accelerate_configs"
CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))
EXPECTED = {  # distributed_type, num_processes, mixed_precision
    "cpu.yaml": ("NO", 1, "no"),
    "cpu_ddp.yaml": ("MULTI_GPU", 2, "no"),
    "ddp.yaml": ("MULTI_GPU", 8, "bf16"),
    "fsdp.yaml": ("FSDP", 8, "bf16"),
    "deepspeed_zero2.yaml": ("DEEPSPEED", 8, "bf16"),
    "deepspeed_zero3.yaml": ("DEEPSPEED", 8, "bf16"),
}

PROBE = """
import json, os
import torch, torch.distributed as dist
from accelerate import Accelerator

acc = Accelerator()
total = torch.tensor([float(acc.process_index + 1)])
if dist.is_initialized() and acc.num_processes > 1:
    dist.all_reduce(total)  # real communication: 1 + 2 over two ranks
# One file per process: two ranks printing to one pipe can interleave within a line.
with open(f"probe-{os.getpid()}.json", "w") as out:
    json.dump({
        "pid": os.getpid(), "rank": acc.process_index, "num_processes": acc.num_processes,
        "world_size": dist.get_world_size() if dist.is_initialized() else None,
        "backend": dist.get_backend() if dist.is_initialized() else None,
        "distributed_type": str(acc.distributed_type), "device": str(acc.device), "all_reduce": total.item(),
    }, out)
acc.wait_for_everyone()  # neither rank tears the gloo group down while the other still uses it
if dist.is_initialized():
    dist.destroy_process_group()
"""


def _load(name: str) -> ClusterConfig:
    return ClusterConfig.from_yaml_file(str(CONFIG_DIR / name))


def test_all_configs_shipped():
    assert {p.name for p in CONFIGS} == set(EXPECTED)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_is_valid(path):
    config = ClusterConfig.from_yaml_file(str(path))
    distributed, processes, precision = EXPECTED[path.name]
    assert str(config.distributed_type).split(".")[-1] == distributed
    assert config.num_processes == processes
    assert str(config.mixed_precision).split(".")[-1].lower() == precision
    assert config.num_machines == 1 and config.compute_environment.value == "LOCAL_MACHINE"
    text = path.read_text()
    assert text.startswith("# "), "every config starts with a comment saying what it is for"
    assert f"accelerate launch --config_file recipes/accelerate_configs/{path.name} -m genrec_hf.cli train" in text
    launched = text.split("-m genrec_hf.cli train ")[1].split()[0]
    assert (REPO_ROOT / launched).is_file(), launched


def test_cpu_configs_need_no_gpu():
    assert _load("cpu.yaml").use_cpu is True
    ddp = _load("cpu_ddp.yaml")
    assert ddp.use_cpu is False  # ignored by the torchrun launcher; the ranks are told CPU by the env / recipe
    assert ddp.main_process_port == 0  # a free port: parallel runs do not collide


def test_fsdp_wraps_the_decoder_layer():
    fsdp = _load("fsdp.yaml").fsdp_config
    assert fsdp["fsdp_version"] == 2
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp["fsdp_transformer_layer_cls_to_wrap"] in GenRecPreTrainedModel._no_split_modules
    assert isinstance(getattr(modeling, fsdp["fsdp_transformer_layer_cls_to_wrap"]), type)


def test_fsdp_config_builds_an_fsdp2_plugin(monkeypatch):
    """What the launcher hands the ranks (FSDP_* env) gives a valid FSDP2 plugin wrapping GenRecDecoderLayer."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(CONFIG_DIR / "fsdp.yaml"), "train.py"])
    args, _, _ = _validate_launch_command(args)
    env = prepare_multi_gpu_env(args)
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    for key, value in env.items():
        if key.startswith("FSDP_"):
            monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2
    assert plugin.transformer_cls_names_to_wrap == ["GenRecDecoderLayer"]
    assert plugin.reshard_after_forward is True


def test_deepspeed_stages():
    for stage in (2, 3):
        config = _load(f"deepspeed_zero{stage}.yaml")
        assert config.deepspeed_config["zero_stage"] == stage
    assert _load("deepspeed_zero3.yaml").deepspeed_config["zero3_init_flag"] is True


def _launch(tmp_path, *flags: str, use_cpu_env: bool = True) -> list[dict]:
    script = tmp_path / "probe.py"
    script.write_text(PROBE)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("ACCELERATE_USE_CPU", None)
    if use_cpu_env:
        env["ACCELERATE_USE_CPU"] = "1"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIG_DIR / "cpu_ddp.yaml"),
               *flags, str(script)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=180, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    return [json.loads(path.read_text()) for path in sorted(tmp_path.glob("probe-*.json"))]


def test_cpu_ddp_really_starts_two_gloo_processes(tmp_path):
    ranks = sorted(_launch(tmp_path), key=lambda r: r["rank"])
    assert [r["rank"] for r in ranks] == [0, 1]
    assert len({r["pid"] for r in ranks}) == 2
    for r in ranks:
        assert r["num_processes"] == 2 and r["world_size"] == 2 and r["backend"] == "gloo", r
        assert r["device"].startswith("cpu") and r["distributed_type"].endswith("MULTI_CPU"), r
        assert r["all_reduce"] == 3.0  # both ranks contributed


def test_the_cpu_flag_trap_runs_one_process(tmp_path):
    """Why cpu_ddp.yaml uses the torchrun launcher: with `--cpu`, accelerate 1.15 starts a single process."""
    ranks = _launch(tmp_path, "--cpu")
    assert len(ranks) == 1 and ranks[0]["num_processes"] == 1
