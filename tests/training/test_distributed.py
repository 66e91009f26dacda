"""Two real CPU processes (DDP over gloo) through `accelerate launch` and the shipped cpu_ddp.yaml (issue: the
`--cpu --num_processes 2` trap silently runs one process; this proves two ran and that gathered evaluation neither
drops nor duplicates users)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from genrec_hf import GenRecForNextItemPrediction
from genrec_hf.evaluation.saved_models import evaluate_saved_model

from tests.helpers import REPO_ROOT

pytestmark = pytest.mark.slow  # two `accelerate launch` runs of two processes each: minutes on a shared CPU

DATA = "synthetic:num_users=101,num_items=60,num_clusters=4"  # odd user count: the last batch is uneven
ARGS = ["--data.source", DATA, "--training.disable_tqdm", "true", "--data.max_length", "16",
        "--training.per_device_train_batch_size", "16", "--training.per_device_eval_batch_size", "16",
        "--model.overrides", "{hidden_size: 16, intermediate_size: 32, num_attention_heads: 2}",
        "--evaluation.num_examples", "0"]


def _launch(*extra: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
               str(REPO_ROOT / "recipes/accelerate_configs/cpu_ddp.yaml"), "-m", "genrec_hf.cli", "train",
               str(REPO_ROOT / "recipes/pretrain/genrec-100k.yaml"), *ARGS, *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "model"
    _launch("--output_dir", str(out), "--training.num_train_epochs", "2")
    return out


def test_two_processes_really_ran(ddp_run):
    metrics = json.loads((ddp_run / "metrics.json").read_text())
    assert metrics["train"]["world_size"] == 2
    assert metrics["train"]["device"].startswith("cpu")


def test_gathered_eval_equals_single_process(ddp_run):
    recorded = json.loads((ddp_run / "metrics.json").read_text())["test"]
    single = evaluate_saved_model(ddp_run, DATA, split="test", max_length=16, batch_size=7)
    assert single["num_users"] == 101
    for key in ("mrr", "hr@10", "ndcg@10", "hr@50"):
        assert recorded[key] == pytest.approx(single[key], abs=1e-6), key


def test_checkpoints_written_once_and_loadable(ddp_run):
    checkpoints = sorted(p.name for p in ddp_run.glob("checkpoint-*"))
    assert len(checkpoints) == 2 and len(set(checkpoints)) == 2
    for name in checkpoints:
        GenRecForNextItemPrediction.from_pretrained(ddp_run / name)
    assert len(list(ddp_run.glob("model*.safetensors"))) == 1


def test_resume_under_ddp(ddp_run, tmp_path):
    """Catches a DDP resume restarting from scratch (Trainer's restored step would be 0) or reporting the loss of
    the resumed steps only, and a rank other than 0 taking (and leaving) the run-folder lock."""
    first = sorted(ddp_run.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[0]
    shutil.copytree(first, tmp_path / "resumed" / first.name)
    _launch("--output_dir", str(tmp_path / "resumed"), "--training.num_train_epochs", "2",
            "--resume_from_checkpoint")
    metrics = json.loads((tmp_path / "resumed" / "metrics.json").read_text())
    assert metrics["train"]["epochs"] == 2.0 and metrics["train"]["world_size"] == 2
    uninterrupted = json.loads((ddp_run / "metrics.json").read_text())["train"]
    start = json.loads((first / "trainer_state.json").read_text())["global_step"]
    assert metrics["train"]["resumed_from_step"] == start > 0
    assert metrics["train"]["steps"] == uninterrupted["steps"]
    assert metrics["train"]["loss"] == pytest.approx(uninterrupted["loss"], rel=1e-4)
    assert not list((tmp_path / "resumed").glob(".genrec-hf.lock")) and not list(ddp_run.glob(".genrec-hf.lock"))


STEP_SCRIPT = """
import json, sys
sys.path.insert(0, {repo!r})
import torch
from datasets import Dataset
from transformers import TrainingArguments
from genrec_hf import GenRecForNextItemPrediction
from genrec_hf.training.trainer import GenRecTrainer
from tests.helpers import tiny_config
from tests.training.test_loss_normalisation import _collate, _rows

out, batch_size = sys.argv[1], int(sys.argv[2])
torch.manual_seed(0)
model = GenRecForNextItemPrediction(tiny_config())
args = TrainingArguments(output_dir=out, per_device_train_batch_size=batch_size, max_steps=1, learning_rate=0.1,
                         optim="sgd", lr_scheduler_type="constant", report_to=[], use_cpu=True, save_strategy="no",
                         remove_unused_columns=False, seed=0, data_seed=0, disable_tqdm=True)
def collate(rows):  # every event feature present: DDP is told (by default) that no parameter sits idle
    batch = _collate(rows)
    batch["timestamps"] = torch.arange(batch["input_ids"].shape[1]).expand_as(batch["input_ids"]) * 3600
    batch["action_ids"] = batch["input_ids"] % 3
    return batch
trainer = GenRecTrainer(model=model, args=args, train_dataset=Dataset.from_list(_rows()), data_collator=collate,
                        eval_collator=collate)
trainer._get_train_sampler = lambda *a, **k: torch.utils.data.SequentialSampler(trainer.train_dataset)
result = trainer.train()
if trainer.is_world_process_zero():
    torch.save({{k: v.detach().clone() for k, v in model.state_dict().items()}}, out + "/weights.pt")
    json.dump({{"world_size": args.world_size, "loss": result.training_loss}}, open(out + "/info.json", "w"))
if torch.distributed.is_initialized():  # tear down together and explicitly: a rank that reaches teardown while the
    torch.distributed.barrier()         # other still writes, or is left to interpreter shutdown, can abort in gloo's
    torch.distributed.destroy_process_group()  # threads ("terminate called without an active exception", once in CI)
sys.stdout.flush(); sys.stderr.flush()
import os; os._exit(0)  # the step is done and saved; interpreter finalisation is not what this test checks
"""


def test_one_ddp_step_equals_one_single_process_step(tmp_path):
    """Catches data-parallel loss normalisation by each rank's own supervised count (or a mean of per-rank means):
    one SGD step of 2 processes x 4 uneven rows (29 vs 24 supervised positions) must give the weights of one
    process x the same 8 rows."""
    import torch

    script = tmp_path / "step.py"
    script.write_text(STEP_SCRIPT.format(repo=str(REPO_ROOT)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    for command in ([sys.executable, str(script), str(single), "8"],
                    [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                     str(REPO_ROOT / "recipes/accelerate_configs/cpu_ddp.yaml"), str(script), str(ddp), "4"]):
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=REPO_ROOT)
        assert result.returncode == 0, result.stderr[-4000:]
    assert json.loads((ddp / "info.json").read_text())["world_size"] == 2
    assert json.loads((single / "info.json").read_text())["world_size"] == 1
    expected, got = torch.load(single / "weights.pt"), torch.load(ddp / "weights.pt")
    initial = {k: v for k, v in _initial_weights().items()}
    moved = [k for k in expected if not torch.equal(expected[k], initial[k])]
    assert moved, "the step changed no weight"
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)


def _initial_weights():
    import torch

    from tests.helpers import tiny_config

    torch.manual_seed(0)
    return GenRecForNextItemPrediction(tiny_config()).state_dict()
