"""Run-folder failure modes (docs/failure_modes.md): concurrent runs, unwritable folders, copied run folders,
interrupted saves, resumes with nothing left to train, the whole run's loss, divergence, and overwrite."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from genrec_hf.cli import main
from genrec_hf.training import GenRecTrainer, pipeline
from genrec_hf.training.run_folder import check_output_dir

from tests.helpers import REPO_ROOT, tiny_config
from tests.training.test_pretrain import tiny_args

RECIPE = str(REPO_ROOT / "recipes/pretrain/genrec-100k.yaml")
RUN_LOCK_FILE = ".genrec-hf.lock"
STAGING_DIR = ".checkpoint-staging"
SAVE_STAGING_DIR = ".genrec-save-staging"
MANIFEST = "genrec_weights.json"
STEPS_PER_EPOCH = 10  # tiny_args: 290 training windows, batch 32


def _train(out: Path, epochs: int = 3, *extra: str, resume: bool = False) -> int:
    """A tiny CLI training run keeping every checkpoint (one per epoch)."""
    args = ["train", RECIPE, "--output_dir", str(out), *tiny_args(epochs), "--training.save_total_limit", "null",
            *extra]
    return main([*args, "--resume_from_checkpoint"] if resume else args)


def _metrics(out: Path) -> dict:
    return json.loads((out / "metrics.json").read_text())


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path / "model.safetensors"))


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if "error:" in line]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """An uninterrupted 3-epoch run with checkpoint-10, -20 and -30."""
    out = tmp_path_factory.mktemp("full") / "run"
    assert _train(out) == 0
    return out


def test_second_run_started_into_the_same_folder_is_refused(tmp_path, monkeypatch, capsys):
    """Catches two runs started together into one output folder both passing the non-empty check (nothing is
    written yet), so one run's model silently replaces the other's: the second is refused, naming the holder."""
    real_prepare = pipeline.prepare_run
    out = tmp_path / "shared"
    second: dict = {}

    def race(recipe, data=None, item_tower=None, **kwargs):  # the second run starts while the first loads its data
        if not second:
            second["started"] = True
            second["code"] = _train(out, 1)
            second["err"] = capsys.readouterr().err
        return real_prepare(recipe, data, item_tower, **kwargs)

    monkeypatch.setattr(pipeline, "prepare_run", race)
    assert _train(out, 1) == 0
    assert second["code"] == 2
    (line,) = _error_lines(second["err"])
    assert str(out) in line and "in use by another run" in line and f"pid {os.getpid()}" in line
    assert not (out / RUN_LOCK_FILE).exists()  # released at the end
    assert (out / "model.safetensors").is_file()


def test_a_stale_lock_is_taken_over_and_a_live_one_refused(tmp_path, caplog):
    """Catches a killed run's lock blocking the folder forever, and a live run's lock being ignored."""
    from genrec_hf.training.run_folder import RunFolderLock, RunFolderLockedError

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock_file = tmp_path / RUN_LOCK_FILE
    lock_file.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": "earlier"}))
    with caplog.at_level(logging.WARNING), RunFolderLock(tmp_path, enabled=True) as lock:
        assert lock.held and json.loads(lock_file.read_text())["pid"] == os.getpid()
    assert "stale lock" in caplog.text and not lock_file.exists()

    lock_file.write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "started": "now"}))
    with pytest.raises(RunFolderLockedError, match=f"{tmp_path}.*pid {os.getppid()}"):
        with RunFolderLock(tmp_path, enabled=True):
            pass
    assert lock_file.exists()  # someone else's lock is never removed


def test_only_rank_zero_takes_the_lock_and_it_is_released_on_errors(tmp_path, monkeypatch):
    """Catches every DDP rank taking the lock (rank 1 would then refuse rank 0's run) and a failed run leaving
    its lock behind."""
    from genrec_hf.training.run_folder import RunFolderLock

    monkeypatch.setenv("RANK", "1")
    with RunFolderLock(tmp_path) as lock:
        assert not lock.enabled and not (tmp_path / RUN_LOCK_FILE).exists()
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ValueError, match="boom"):
        with RunFolderLock(tmp_path):
            assert (tmp_path / RUN_LOCK_FILE).exists()
            raise ValueError("boom")
    assert not (tmp_path / RUN_LOCK_FILE).exists()


def test_unwritable_output_dir_fails_before_loading_data(tmp_path, monkeypatch, capsys):
    """Catches an output folder that cannot be created (its parent is a regular file) being found only when the
    trained model is saved, after the whole run."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setattr(pipeline, "prepare_run",
                        lambda *args, **kwargs: pytest.fail("data loaded before the folder check"))
    assert _train(blocker / "out", 1) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert "cannot create or write the output folder" in line and str(blocker / "out") in line
    with pytest.raises(OSError, match="cannot create or write the output folder"):
        check_output_dir(blocker / "out", overwrite=False, resuming=False)


def test_an_output_path_that_is_a_dangling_symlink_is_named(tmp_path, monkeypatch, capsys):
    """Issue 27 P2: an --output_dir that is a symbolic link to a missing folder failed with "File exists" (and
    writing through it would create the target, perhaps on the disk that replaced an unmounted one)."""
    link = tmp_path / "runs"
    link.symlink_to(tmp_path / "unmounted" / "runs")
    monkeypatch.setattr(pipeline, "prepare_run",
                        lambda *args, **kwargs: pytest.fail("data loaded before the folder check"))
    assert _train(link, 1) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert f"--output_dir {link} is a symbolic link to {tmp_path / 'unmounted' / 'runs'}, which does not exist" in line
    assert main(["export-embeddings", str(tmp_path / "model"), "--data", "synthetic", "--out", str(link)]) == 2
    assert f"--out {link} is a symbolic link" in capsys.readouterr().err
    assert not (tmp_path / "unmounted").exists()


def test_resume_in_a_copied_folder_reads_its_own_best_checkpoint(full_run, tmp_path, caplog):
    """Catches a resume in a copied run folder following trainer_state.json's absolute best_model_checkpoint into
    the original folder and saving that other run's weights as this run's model."""
    original = tmp_path / "original"
    shutil.copytree(full_run, original)
    for checkpoint in original.glob("checkpoint-*"):  # a run that lived in `original`
        state_file = checkpoint / "trainer_state.json"
        state = json.loads(state_file.read_text())
        state["best_model_checkpoint"] = str(original / Path(state["best_model_checkpoint"]).name)
        state_file.write_text(json.dumps(state))
    copy = tmp_path / "copy"
    for name in ("checkpoint-10", "checkpoint-20"):
        shutil.copytree(original / name, copy / name)
    state_file = copy / "checkpoint-20" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    best = Path(state["best_model_checkpoint"])
    assert best.parent == original  # the premise: an absolute path into the original folder
    state["best_metric"] = 1.0  # never beaten: the run's model is the recorded best checkpoint
    state_file.write_text(json.dumps(state))
    other = {k: v * 0.5 for k, v in _weights(original / best.name).items()}  # the original folder changes
    save_file(other, str(original / best.name / "model.safetensors"), metadata={"format": "pt"})

    with caplog.at_level(logging.WARNING):
        assert _train(copy, resume=True) == 0
    assert not _equal(_weights(copy), other) and _equal(_weights(copy), _weights(copy / best.name))
    assert "read from this run folder" in caplog.text
    assert _metrics(copy)["train"]["best_checkpoint"] == best.name


def test_interrupted_save_leaves_no_checkpoint_and_resume_continues(tmp_path, monkeypatch, caplog):
    """Catches a disk-full save leaving a partial checkpoint-N folder that the next resume then picks."""
    real_save = GenRecTrainer._save_optimizer_and_scheduler
    saves = []

    def disk_full_on_the_second_save(self, output_dir):
        saves.append(output_dir)
        if len(saves) == 2:
            raise OSError(errno.ENOSPC, "No space left on device", output_dir)
        real_save(self, output_dir)

    monkeypatch.setattr(GenRecTrainer, "_save_optimizer_and_scheduler", disk_full_on_the_second_save)
    out = tmp_path / "run"
    assert _train(out) == 2
    assert (out / "checkpoint-10" / "trainer_state.json").is_file() and not (out / "checkpoint-20").exists()
    monkeypatch.undo()
    with caplog.at_level(logging.WARNING):
        assert _train(out, resume=True) == 0
    assert "interrupted checkpoint save" in caplog.text
    train = _metrics(out)["train"]
    assert train["resumed_from_step"] == 10 and train["steps"] == 30
    assert not (out / STAGING_DIR).exists()


@pytest.mark.parametrize("damage", ["truncated model.safetensors", "no optimizer state", "no trainer_state.json",
                                    "weights differ from genrec_weights.json"])
def test_resume_skips_a_partial_latest_checkpoint(full_run, tmp_path, caplog, damage):
    """Catches `--resume_from_checkpoint` taking the newest checkpoint folder even when its save never finished
    (Trainer then fails, or silently resumes without the optimizer state), or when its weights were changed after
    the save (checkpoints carry a weights manifest)."""
    out = tmp_path / "run"
    for name in ("checkpoint-10", "checkpoint-20"):
        shutil.copytree(full_run / name, out / name)
    latest = out / "checkpoint-20"
    if damage.startswith("truncated"):
        weights = latest / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage.startswith("weights differ"):  # same size, one float changed: only the manifest can tell
        data = bytearray((latest / "model.safetensors").read_bytes())
        data[-4:] = bytes(reversed(data[-4:]))
        (latest / "model.safetensors").write_bytes(bytes(data))
    elif damage == "no optimizer state":
        (latest / "optimizer.pt").unlink()
    else:
        (latest / "trainer_state.json").unlink()
    with caplog.at_level(logging.WARNING):
        assert _train(out, resume=True) == 0
    assert f"skipped the partial checkpoint(s) checkpoint-20 ({damage})" in caplog.text
    assert _metrics(out)["train"]["resumed_from_step"] == 10


@pytest.mark.parametrize("epochs", [2, 3])
def test_resume_with_no_epochs_left_is_refused(full_run, tmp_path, capsys, epochs):
    """Catches a resume of a finished run asking for no more epochs than the checkpoint has (Trainer trains nothing
    and the run records a training loss of 0.0)."""
    out = tmp_path / "run"
    shutil.copytree(full_run, out)
    before = (out / "metrics.json").read_text()
    assert _train(out, epochs, resume=True) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert "already trained 3 epochs" in line and f"num_train_epochs={epochs}" in line
    assert (out / "metrics.json").read_text() == before


# --- an interrupted final save (X2): the files are staged, then published by renames, the manifest last -------------

def _checkpoints_only(full_run: Path, out: Path) -> None:
    """A run folder as a run leaves it when it is killed after training, before its final save."""
    for checkpoint in full_run.glob("checkpoint-*"):
        shutil.copytree(checkpoint, out / checkpoint.name)


def _loads_like(out: Path, full_run: Path) -> None:
    from genrec_hf.serving import Recommender

    Recommender.from_pretrained(out)  # verified: weights, config and vocabulary match the manifest
    assert _equal(_weights(out), _weights(full_run))
    ranking = [k for k in _metrics(full_run)["test"] if "runtime" not in k and "per_second" not in k]
    assert {k: _metrics(out)["test"][k] for k in ranking} == {k: _metrics(full_run)["test"][k] for k in ranking}
    assert _metrics(out)["train"]["loss"] == _metrics(full_run)["train"]["loss"]  # the whole run's, not 0.0
    assert not (out / SAVE_STAGING_DIR).exists()


@pytest.mark.parametrize("kill_at", [
    "genrec_hf.models.genrec.tokenization_genrec:GenRecItemTokenizer.save_vocabulary",  # the item vocabulary
    "genrec_hf.training.run_folder:write_manifest"])
def test_final_save_killed_while_staging_keeps_the_folder_and_resume_redoes_it(full_run, tmp_path, monkeypatch,
                                                                                 capsys, kill_at):
    """X2: a kill right after the final model.safetensors write left weights without vocabulary, manifest or
    metrics; `recommend` asked "was this model trained with genrec_hf?" and resume refused (no epochs left). Now
    the save is staged: loads name the interrupted save, and a resume redoes the final evaluation and save."""
    from tests.faults import Killed, fault

    out = tmp_path / "run"
    _checkpoints_only(full_run, out)
    fault(monkeypatch, kill_at)
    with pytest.raises(Killed):
        _train(out, resume=True)  # training is complete: the resume goes straight to the final save, killed there
    monkeypatch.undo()
    assert (out / SAVE_STAGING_DIR / "model.safetensors").is_file()
    assert not (out / "model.safetensors").exists() and not (out / "genrec_weights.json").exists()
    assert main(["recommend", str(out), "--history", "1,2"]) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert "last save was interrupted" in line and SAVE_STAGING_DIR in line and "--resume_from_checkpoint" in line
    assert _train(out, resume=True) == 0
    _loads_like(out, full_run)


def test_final_save_killed_while_publishing_is_refused_and_finished_by_resume(full_run, tmp_path, monkeypatch,
                                                                              caplog, capsys):
    """X2 while the staged files are renamed into place: the folder mixes published and unpublished files (no
    manifest), so loads refuse it; a resume publishes the rest, the manifest last."""
    from genrec_hf.serving import Recommender
    from tests.faults import Killed, fault

    out = tmp_path / "run"
    _checkpoints_only(full_run, out)
    fault(monkeypatch, "genrec_hf.training.run_folder:_move", call=3)
    with pytest.raises(Killed):
        _train(out, resume=True)
    monkeypatch.undo()
    assert (out / "config.json").is_file() and not (out / "genrec_weights.json").exists()
    with pytest.raises(ValueError, match="last save was interrupted"):
        Recommender.from_pretrained(out)
    with caplog.at_level(logging.WARNING):
        assert _train(out, resume=True) == 2  # published; then there is nothing left to train
    assert "finishing the interrupted final save" in caplog.text
    assert "already trained 3 epochs" in capsys.readouterr().err
    _loads_like(out, full_run)


def test_sigterm_during_an_atomic_save_is_recoverable(tmp_path):
    """X2 with a real signal (nothing after it runs, not even `finally` blocks): SIGTERM in a subprocess while a
    staged save is being published (add-items, the quickest command that saves a model; train and finetune use the
    same `staged_save`). The folder is then refused by name, and the documented re-run recovers it."""
    from genrec_hf.data import ItemVocab
    from genrec_hf.integrity import write_manifest
    from genrec_hf.serving import Recommender
    from tests.models.test_item_tower import tower_model

    model_dir, out = tmp_path / "tower", tmp_path / "grown"
    tower_model().save_pretrained(model_dir)
    ItemVocab([str(i) for i in range(1, 41)]).save(model_dir)
    write_manifest(model_dir)
    items = tmp_path / "new.jsonl"
    items.write_text('{"item_id": "n1", "genres": ["drama"]}\n')
    args = ["add-items", str(model_dir), str(items), "--output_dir", str(out)]
    done = subprocess.run([sys.executable, "-m", "tests.faults", "genrec_hf.training.run_folder:_move", "2", "--",
                           *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "src"), str(REPO_ROOT)])})
    assert done.returncode == -15, done.stderr[-2000:]
    assert (out / SAVE_STAGING_DIR / MANIFEST).is_file()  # killed mid-publish: nothing cleaned up
    assert main(["recommend", str(out), "--history", "1,2"]) == 2
    assert main([*args, "--overwrite"]) == 0
    assert Recommender.from_pretrained(out).num_items == 41 and not (out / SAVE_STAGING_DIR).exists()


def test_resume_continues_the_run_and_reports_its_whole_loss(full_run, tmp_path, monkeypatch):
    """Catches a resume that restarts from scratch or without the optimizer state (it would run 30 steps, or end
    on other weights than the uninterrupted run), and metrics.json's train.loss covering only the resumed steps."""
    out = tmp_path / "run"
    shutil.copytree(full_run / "checkpoint-10", out / "checkpoint-10")
    real_step = GenRecTrainer.training_step
    steps = []

    def counted(self, *args, **kwargs):
        steps.append(self.state.global_step)
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(GenRecTrainer, "training_step", counted)
    assert _train(out, resume=True) == 0
    assert steps == list(range(10, 30))  # continues at the checkpoint's step
    assert _equal(_weights(out), _weights(full_run))  # model, optimizer, scheduler, RNG and data order restored
    resumed, uninterrupted = _metrics(out)["train"], _metrics(full_run)["train"]
    history = json.loads((full_run / "checkpoint-30" / "trainer_state.json").read_text())["log_history"]
    logged = [(e["step"], e["loss"]) for e in history if "loss" in e]
    assert [s for s, _ in logged] == [10, 20, 30]  # one entry per epoch, so the whole-run mean is their mean
    whole_run = sum(loss for _, loss in logged) / len(logged)
    assert resumed["loss"] == pytest.approx(whole_run, rel=1e-9)
    assert uninterrupted["loss"] == pytest.approx(whole_run, rel=1e-9)
    assert resumed["resumed_from_step"] == 10 and resumed["steps"] == uninterrupted["steps"] == 30


def test_run_training_loss_weights_entries_by_steps_and_adds_the_unlogged_tail():
    """Catches the whole-run loss averaging log entries unweighted or dropping steps after the last entry."""
    from transformers import TrainerState

    from genrec_hf.training.trainer import run_training_loss

    state = TrainerState(global_step=12, log_history=[{"loss": 2.0, "step": 5}, {"loss": 1.0, "step": 10}])
    session_loss = (2.0 * 5 + 1.0 * 5 + 0.5 * 2) / 12  # steps 11-12 (loss 0.5) were never logged
    assert run_training_loss(state, session_loss, 0) == pytest.approx(16 / 12)
    # Resumed at step 10 from a checkpoint whose last entry was at step 8: steps 9-10 have no known loss.
    state = TrainerState(global_step=14, log_history=[{"loss": 3.0, "step": 8}, {"loss": 1.0, "step": 12}])
    session_loss = (1.0 * 2 + 0.5 * 2) / 4
    assert run_training_loss(state, session_loss, 10) == pytest.approx((3.0 * 8 + 1.0 * 2 + 0.5 * 2) / 12)
    assert run_training_loss(TrainerState(global_step=0), 0.0, 0) is None


def test_divergent_run_stops_naming_the_step_and_saves_nothing(tmp_path, capsys):
    """Catches a learning rate of 1e9 training to NaN, exiting 0 and serving all-NaN scores."""
    args = tiny_args(2)
    args[args.index("0.01")] = "1e9"
    out = tmp_path / "run"
    assert main(["train", RECIPE, "--output_dir", str(out), *args]) == 2
    (line,) = _error_lines(capsys.readouterr().err)
    assert "training loss is" in line and " at step " in line
    assert not (out / "model.safetensors").exists()
    for checkpoint in out.glob("checkpoint-*"):
        assert all(torch.isfinite(t).all() for t in _weights(checkpoint).values())


def test_non_finite_weights_are_never_checkpointed(tmp_path):
    """Catches a checkpoint (a candidate "best" model) being saved with NaN weights after a finite loss."""
    from transformers import TrainerCallback, TrainingArguments

    from genrec_hf import GenRecForNextItemPrediction
    from genrec_hf.data import NextItemCollator, leave_one_out, load_interactions, sliding_windows
    from genrec_hf.training.trainer import NonFiniteError

    data = load_interactions("synthetic:num_users=40,num_items=30,num_clusters=3,seed=1")
    splits = leave_one_out(data)
    model = GenRecForNextItemPrediction(tiny_config(vocab_size=len(data.vocab), num_action_types=6))

    class Poison(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step == 2:
                with torch.no_grad():
                    model.model.embeddings.item_embeddings.weight[1, 0] = float("nan")

    args = TrainingArguments(output_dir=str(tmp_path), max_steps=4, save_strategy="steps", save_steps=2,
                             per_device_train_batch_size=8, eval_strategy="no", report_to=[], use_cpu=True,
                             remove_unused_columns=False, disable_tqdm=True)
    trainer = GenRecTrainer(model=model, args=args, train_dataset=sliding_windows(splits["train"], 16),
                            data_collator=NextItemCollator(16), eval_collator=NextItemCollator(16, mode="eval"),
                            callbacks=[Poison()])
    with pytest.raises(NonFiniteError, match="checkpoint at step 2: tensor .*item_embeddings.weight has non-finite"):
        trainer.train()
    assert not list(tmp_path.glob("checkpoint-*"))


def test_overwrite_removes_the_previous_runs_files_and_keeps_the_users(full_run, tmp_path, caplog):
    """Catches --overwrite_output_dir leaving the old run's checkpoints and evaluation files beside the new run's
    (a resume or a reader would mix the two runs), or deleting a user's own files."""
    out = tmp_path / "run"
    shutil.copytree(full_run, out)
    shutil.copytree(out / "checkpoint-30", out / "checkpoint-999")
    (out / "eval_results_test.json").write_text("{}")
    (out / "notes.txt").write_text("mine")
    (out / "analysis.py").write_text("print('mine')")
    (out / "plots").mkdir()
    (out / "plots" / "loss.csv").write_text("1,2")
    with caplog.at_level(logging.INFO):
        assert _train(out, 1, "--overwrite_output_dir") == 0
    names = {p.name for p in out.iterdir()}
    assert {"notes.txt", "analysis.py", "plots"} <= names and (out / "plots" / "loss.csv").is_file()
    assert "eval_results_test.json" not in names
    assert {n for n in names if n.startswith("checkpoint-")} == {"checkpoint-10"}
    assert _metrics(out)["train"]["steps"] == STEPS_PER_EPOCH
    assert "removed the previous run's" in caplog.text and "checkpoint-999" in caplog.text


def test_clear_previous_run_keeps_files_the_package_did_not_write(tmp_path):
    """Catches the overwrite cleanup deleting a user's README or script that only looks like the package's."""
    from genrec_hf.training.run_folder import clear_previous_run

    (tmp_path / "README.md").write_text("# my notes about this folder\n")
    (tmp_path / "helper.py").write_text("")
    (tmp_path / "modeling_genrec.py").write_text("")  # remote code only beside a config.json
    assert clear_previous_run(tmp_path) == []
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "checkpoint-final").mkdir()  # not a Trainer checkpoint name
    assert clear_previous_run(tmp_path) == ["config.json", "modeling_genrec.py"]
    assert {p.name for p in tmp_path.iterdir()} == {"README.md", "helper.py", "checkpoint-final"}


def _final_save(folder: Path, steps: int) -> None:
    from genrec_hf.integrity import write_manifest

    folder.mkdir(parents=True, exist_ok=True)
    save_file({"w": torch.zeros(2)}, str(folder / "model.safetensors"))
    (folder / "metrics.json").write_text(json.dumps({"train": {"steps": steps}}))
    write_manifest(folder)


@pytest.mark.parametrize(("layout", "covered"), [
    ("final save of step 30", True),
    ("final save of step 20 (the resumed run's own save was lost)", False),
    ("no final save", False),
    ("final save of step 30 + an incomplete staged one", True),
    ("a complete staged save of step 30, half published", True),
])
def test_final_save_covers_gives_every_process_the_same_answer(tmp_path, layout, covered):
    """Catches a resume that refuses to finish an interrupted final save, finishes one that was complete, or (in a
    distributed run, where only rank 0 repairs the folder) ranks that disagree on whether there is training left."""
    from genrec_hf.training.run_folder import final_save_covers

    out = tmp_path / "run"
    (out / "checkpoint-30").mkdir(parents=True)
    (out / "checkpoint-30" / "trainer_state.json").write_text(json.dumps({"global_step": 30}))
    if "step 30" in layout and "staged" not in layout.split("+")[0]:
        _final_save(out, 30)
    elif "step 20" in layout:
        _final_save(out, 20)
    if "incomplete staged" in layout:
        (out / SAVE_STAGING_DIR).mkdir()
        save_file({"w": torch.ones(2)}, str(out / SAVE_STAGING_DIR / "model.safetensors"))
    if "half published" in layout:
        _final_save(out / SAVE_STAGING_DIR, 30)
        os.replace(out / SAVE_STAGING_DIR / "metrics.json", out / "metrics.json")  # moved before the kill
    assert final_save_covers(out, out / "checkpoint-30", recover=False) is covered  # another rank: no repair
    assert final_save_covers(out, out / "checkpoint-30") is covered  # rank 0 repairs the folder
    assert not (out / SAVE_STAGING_DIR).exists()
    assert (out / MANIFEST).is_file() == ("step" in layout)
