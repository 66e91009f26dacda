"""Pre-training streamed from a prepared folder (`data.streaming: true`): it trains and evaluates every test user
once, it resumes exactly where the stream stopped, and under two real processes each reads its own shards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from genrec_hf.data.prepare import prepare_events
from genrec_hf.training import load_recipe, train

from tests.helpers import REPO_ROOT

SOURCE = "synthetic:num_users=120,num_items=60,num_clusters=4"
TINY = "{hidden_size: 16, intermediate_size: 32, num_attention_heads: 2}"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    folder = tmp_path_factory.mktemp("prepared") / "log"
    prepare_events(SOURCE, folder, engine="memory", num_shards=4)
    return folder


def _recipe(prepared: Path, out: Path, **overrides: str):
    return load_recipe(REPO_ROOT / "recipes/pretrain/genrec-100k.yaml", {
        "output_dir": str(out), "data.source": str(prepared), "data.streaming": "true", "data.max_length": "12",
        "data.shuffle_users": "16", "model.overrides": TINY, "evaluation.num_examples": "0",
        "evaluation.validation_users": "40", "training.disable_tqdm": "true",
        "training.per_device_train_batch_size": "8", **overrides})


def test_a_streamed_run_trains_and_ranks_every_test_user_once(prepared, tmp_path, one_thread):
    """Catches a streamed run that never ends its epoch (no max_steps / epoch-based evaluation), loads the log,
    or ranks a different set of test users than the in-memory run of the same folder."""
    outcome = train(_recipe(prepared, tmp_path / "stream", **{"training.num_train_epochs": "1"}))
    metrics = outcome.metrics
    assert outcome.run.stream is not None and len(outcome.run.data.sequences) == 0  # nothing loaded
    assert metrics["train"]["steps"] > 0 and metrics["validation"]["num_users"] == 40
    memory = load_recipe(REPO_ROOT / "recipes/pretrain/genrec-100k.yaml", {
        "output_dir": str(tmp_path / "memory"), "data.source": str(prepared), "data.max_length": "12",
        "model.overrides": TINY, "evaluation.num_examples": "0", "training.max_steps": "1",
        "training.disable_tqdm": "true"})
    in_memory = train(memory)
    assert metrics["test"]["num_users"] == in_memory.metrics["test"]["num_users"] == 120
    assert metrics["popularity_baseline"]["test"] == pytest.approx(in_memory.metrics["popularity_baseline"]["test"])


def test_resume_continues_the_stream_and_ends_where_an_uninterrupted_run_ends(prepared, tmp_path, one_thread):
    """Catches a resume that restarts the stream (the first windows trained twice, later ones never) or replays
    it: stopped after 3 steps and resumed to 6, the weights equal a 6-step run's, bit for bit."""
    fixed = {"training.eval_strategy": "no", "training.load_best_model_at_end": "false",
             "training.save_strategy": "steps", "training.save_steps": "3", "training.logging_strategy": "no"}
    straight = train(_recipe(prepared, tmp_path / "straight", **fixed, **{"training.max_steps": "6"}))
    first = train(_recipe(prepared, tmp_path / "resumed", **fixed, **{"training.max_steps": "3"}))
    state = json.loads((tmp_path / "resumed" / "checkpoint-3" / "stream_state-0.json").read_text())
    assert state["epoch"] == 0 and state["stream"] is not None  # the position after the third step's batch
    resumed = train(_recipe(prepared, tmp_path / "resumed", **fixed, **{"training.max_steps": "6"}),
                    resume_from_checkpoint=True)
    assert resumed.metrics["train"]["resumed_from_step"] == 3 and first.metrics["train"]["steps"] == 3
    a = load_file(tmp_path / "straight" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert straight.metrics["test"]["mrr"] == resumed.metrics["test"]["mrr"]


@pytest.mark.parametrize(("override", "message"), [
    ({"data.split": "cold_items"}, r"data.streaming: true cannot go with data.split='cold_items'"),
    ({"data.batching": "grouped"}, r"data.batching='grouped'"),
    ({"training.dataloader_num_workers": "2"}, r"dataloader_num_workers > 0"),
])
def test_streaming_settings_that_cannot_work_are_refused(prepared, tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        _recipe(prepared, tmp_path, **override)


def test_streaming_needs_a_prepared_folder(tmp_path):
    """Catches `data.streaming` on a raw log silently loading it whole (or failing deep in datasets)."""
    recipe = _recipe(Path("synthetic"), tmp_path)
    recipe.data.source = SOURCE
    with pytest.raises(ValueError, match="is not a prepared folder; run `genrec-hf prepare`"):
        train(recipe)


RANKS_SCRIPT = r"""
import json, sys, torch.distributed as dist
from genrec_hf.training import load_recipe, prepare_run, train
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
recipe = load_recipe(sys.argv[1], json.loads(sys.argv[2]))
run = prepare_run(recipe, rank=rank, world_size=world)
stream = run.train_windows
windows = []
for row in stream:  # exactly one epoch: stop when the stream moves to the next one
    if stream.epoch > 0:
        break
    windows.append([row["user_id"], row["item_ids"][0], len(row["item_ids"])])
with open(f"{sys.argv[3]}/rank{rank}.json", "w") as handle:
    json.dump({"files": [str(f) for f in stream.rank_files], "windows": windows}, handle)
outcome = train(recipe)  # a short DDP training run streamed the same way
if rank == 0:
    with open(f"{sys.argv[3]}/metrics.json", "w") as handle:
        json.dump(outcome.metrics, handle)
dist.destroy_process_group()
"""


def test_two_processes_read_disjoint_shards_covering_every_window(prepared, tmp_path):
    """Two real processes (torchrun, gloo): each streams only its own shards, together every training window of
    an epoch once; DDP training from the streams runs and ranks each test user once."""
    script = tmp_path / "ranks.py"
    script.write_text(RANKS_SCRIPT)
    overrides = {"output_dir": str(tmp_path / "ddp"), "data.source": str(prepared), "data.streaming": "true",
                 "data.max_length": "12", "data.shuffle_users": "16", "model.overrides": TINY,
                 "evaluation.num_examples": "0", "evaluation.validation_users": "20", "training.max_steps": "2",
                 "training.disable_tqdm": "true", "training.per_device_train_batch_size": "8",
                 "training.use_cpu": "true"}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script),
               str(REPO_ROOT / "recipes/pretrain/genrec-100k.yaml"), json.dumps(overrides), str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert not set(ranks[0]["files"]) & set(ranks[1]["files"]) and len(ranks[0]["files"]) == 2
    users = [{w[0] for w in r["windows"]} for r in ranks]
    assert not users[0] & users[1]
    from genrec_hf.data import leave_one_out, load_interactions, sliding_windows

    expected = sorted([row["user_id"], row["item_ids"][0], len(row["item_ids"])]
                      for row in sliding_windows(leave_one_out(load_interactions(str(prepared)))["train"], 12))
    assert sorted(ranks[0]["windows"] + ranks[1]["windows"]) == expected
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["train"]["world_size"] == 2 and metrics["test"]["num_users"] == 120


def test_a_truncated_or_foreign_shard_is_refused_before_streaming(prepared, tmp_path):
    """Catches a stream reading a truncated shard (an error deep inside datasets mid-epoch) or a shard written
    with another vocabulary (wrong item indices, silently)."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(prepared, copy)
    shard = sorted(copy.glob("shard-*.parquet"))[1]
    shard.write_bytes(shard.read_bytes()[:-100])
    with pytest.raises(ValueError, match=rf"{shard.name}: .* bytes, the manifest says"):
        train(_recipe(copy, tmp_path / "out"))
