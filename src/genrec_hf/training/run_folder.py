"""A run's output folder, kept safe (docs/failure_modes.md): one run at a time, never a half-written checkpoint.

* `RunFolderLock`: an exclusive lock for the length of a run (a second run into the folder is refused; a dead
  run's stale lock is taken over).
* `check_output_dir`: a non-empty folder is written into only when asked (`--overwrite_output_dir`, a resume).
* `clear_previous_run`: `--overwrite_output_dir` removes exactly what an earlier run of the package wrote there.
* `resolve_resume_checkpoint` / `checkpoint_problem` / `require_training_left`: resume from the newest complete
  checkpoint, never from one an interrupted save left partial, and never into a run with nothing left to train.
* `publish_dir`: how a folder written elsewhere (a staged checkpoint) replaces its final name atomically.
* `staged_save` / `final_save_covers`: a run's final files are written to a staging folder and published by renames,
  the manifest last, so a kill at any point leaves the previous state or a folder that loads refuse by name and a
  resume finishes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from accelerate import PartialState
from safetensors import safe_open
from transformers import TrainingArguments
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ..evaluation.cold_slices import COLD_START_RANKS
from ..integrity import MANIFEST_FILE, SAVE_STAGING_DIR, WeightsIntegrityError, verify_manifest, write_manifest
from ..models import genrec

logger = logging.getLogger(__name__)
RUN_LOCK_FILE = ".genrec-hf.lock"  # held by the run writing the folder (pid, host, start time)


STAGING_DIR = ".checkpoint-staging"  # checkpoints being written; renamed to checkpoint-N once complete


_PROBE_PREFIX = ".genrec-hf-write-test-"


_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors",
                 "pytorch_model.bin", "pytorch_model.bin.index.json", "adapter_model.bin")


_OPTIMIZER_FILES = ("optimizer.pt", "optimizer.bin")


class RunFolderLockedError(RuntimeError):
    """Another live run holds the output folder's lock."""


def same_path(a: str | Path, b: str | Path) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def sync_tree(folder: str) -> None:
    """fsync a folder's files, so the rename that publishes it never points at unwritten data."""
    for entry in os.scandir(folder):
        if entry.is_file():
            fd = os.open(entry.path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def publish_dir(source: str, target: str) -> None:
    """Move the folder `source` to `target`, replacing a `target` already there (a re-saved step)."""
    if os.path.isdir(target):
        old = f"{source}.replaced"
        os.replace(target, old)
        os.replace(source, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(source, target)


def is_main_rank() -> bool:
    """Whether this is global rank 0, the process that writes the run folder: from the launcher's `RANK` (torchrun,
    accelerate launch, deepspeed), else from accelerate's state once it has started, else True."""
    for variable in ("RANK", "LOCAL_RANK"):
        if os.environ.get(variable, "").strip().isdigit():
            return int(os.environ[variable]) == 0
    if PartialState._shared_state != {}:
        return PartialState().is_main_process
    return True


def refuse_dangling_link(path: str | Path, what: str = "--output_dir") -> None:
    """Raise `FileNotFoundError` when `path` is a symbolic link to nothing: writing through it would create its
    target (perhaps on another disk than the one that is missing), and mkdir says only "File exists"."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        raise FileNotFoundError(f"{what} {path} is a symbolic link to {os.readlink(path)}, which does not exist; "
                                f"create it (or mount what holds it), or choose another {what}.")


def _make_writable_folder(output_dir: Path) -> None:
    """Create `output_dir` and write a probe file in it; any OSError becomes one clear line."""
    refuse_dangling_link(output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=_PROBE_PREFIX, dir=output_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        reason = error.strerror or str(error)
        where = f" ({error.filename})" if error.filename and not same_path(error.filename, output_dir) else ""
        raise OSError(f"cannot create or write the output folder {output_dir}: {reason}{where}; choose another "
                      "--output_dir.") from error


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


class RunFolderLock:
    """An exclusive lock on a run folder for the length of a run: a second run into the same folder is refused.

    The lock is the file `RUN_LOCK_FILE` created atomically (O_CREAT | O_EXCL) with the holder's pid, host and
    start time, and removed when the run ends, however it ends. A lock whose pid is dead on this host is stale
    (a killed run) and is taken over with a warning. Only global rank 0 takes it (`enabled`), as only it writes.
    """

    def __init__(self, output_dir: str | Path, enabled: bool | None = None) -> None:
        self.output_dir = Path(output_dir)
        self.path = self.output_dir / RUN_LOCK_FILE
        self.enabled = is_main_rank() if enabled is None else enabled
        self.held = False

    def __enter__(self) -> RunFolderLock:
        if not self.enabled:
            return self
        _make_writable_folder(self.output_dir)
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "command": " ".join(sys.argv)}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self._remove_if_stale():
                    continue
                raise RunFolderLockedError(self._held_message()) from None
            with os.fdopen(fd, "w") as handle:
                json.dump(holder, handle)
            self.held = True
            return self
        raise RunFolderLockedError(self._held_message())

    def __exit__(self, *exc: Any) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def _holder(self) -> dict[str, Any] | None:
        try:
            holder = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return holder if isinstance(holder, dict) else None

    def _remove_if_stale(self) -> bool:
        holder = self._holder()
        pid = holder.get("pid") if holder else None
        if not isinstance(pid, int) or pid <= 0 or holder.get("host") != socket.gethostname() or _pid_alive(pid):
            return False
        logger.warning("removing the stale lock %s of run pid %s (started %s), which is no longer running",
                       self.path, holder.get("pid"), holder.get("started"))
        self.path.unlink(missing_ok=True)
        return True

    def _held_message(self) -> str:
        holder = self._holder()
        who = (f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}" if holder
               else "an unknown process")
        return (f"output folder {self.output_dir} is in use by another run ({who}); wait for it to finish or choose "
                f"another --output_dir (if no run is writing there, delete {self.path}).")


def check_output_dir(output_dir: Path, overwrite: bool, resuming: bool, flag: str = "--overwrite_output_dir") -> None:
    """Refuse to write into a non-empty folder unless asked (`flag`; nothing a user saved is lost silently), and fail
    early, before any data is loaded, when the folder cannot be created or written."""
    output_dir = Path(output_dir)
    _make_writable_folder(output_dir)
    ours = {RUN_LOCK_FILE}
    entries = [p for p in output_dir.iterdir() if p.name not in ours and not p.name.startswith(_PROBE_PREFIX)]
    if entries and not (overwrite or resuming):
        resume = ", --resume_from_checkpoint to continue a run," if flag == "--overwrite_output_dir" else ""
        raise FileExistsError(f"Output folder {output_dir} exists and is not empty; pass {flag} to write into it"
                              f"{resume} or choose another --output_dir.")


def _package_file_names() -> set[str]:
    """The remote-code `.py` files `save_pretrained` copies next to config.json."""
    return {p.name for p in Path(genrec.__file__).parent.glob("*.py") if p.name != "__init__.py"}


def _is_package_card(path: Path) -> bool:
    try:
        head = path.read_text(errors="replace")[:4000]
    except OSError:
        return False
    return "generated by genrec_hf" in head or "library_name: genrec_hf" in head or "library_name: peft" in head


def clear_previous_run(output_dir: str | Path) -> list[str]:
    """Remove what an earlier run of the package wrote into `output_dir` (for `--overwrite_output_dir`), keep
    every other file, and return the removed names (also logged).

    Removed: checkpoint-* and the staging folders, model / adapter weights and configs, the item tokenizer,
    metrics.json, cold_start_ranks.json, the recipes, training_args.bin, eval_results_*.json, a README.md model card
    written by the package, and the remote-code `.py` files beside config.json.
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    files = {"model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json",
             "config.json", "generation_config.json", "item_vocab.json", "metrics.json", "training_recipe.yaml",
             "finetune_recipe.yaml", "training_args.bin", "adapter_model.safetensors", "adapter_model.bin",
             "adapter_config.json", "genrec_base.json", "genrec_weights.json", "catalog_extensions.json",
             "tokenizer_config.json", COLD_START_RANKS}
    saved = any((output_dir / name).is_file() for name in ("config.json", "tokenizer_config.json"))
    code = _package_file_names() if saved else set()
    removed = []
    for path in sorted(output_dir.iterdir()):
        name = path.name
        if path.is_dir() and not path.is_symlink():
            if name in (STAGING_DIR, SAVE_STAGING_DIR) or (name.startswith(f"{PREFIX_CHECKPOINT_DIR}-")
                                       and name[len(PREFIX_CHECKPOINT_DIR) + 1:].isdigit()):
                shutil.rmtree(path)
                removed.append(name)
            continue
        if (name in files or name in code or (name.startswith("eval_results_") and name.endswith(".json"))
                or (name.startswith("model-") and name.endswith(".safetensors"))
                or (name == "README.md" and _is_package_card(path))):
            path.unlink()
            removed.append(name)
    if removed:
        logger.info("--overwrite_output_dir: removed the previous run's %s from %s (other files kept)",
                    ", ".join(removed), output_dir)
    return removed


def checkpoint_problem(checkpoint: str | Path) -> str | None:
    """Why `checkpoint` cannot be resumed from (a missing or unreadable file), or None when it is complete."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_dir():
        return "not a folder"
    try:
        json.loads((checkpoint / TRAINER_STATE_NAME).read_text())
    except FileNotFoundError:
        return f"no {TRAINER_STATE_NAME}"
    except (OSError, ValueError):
        return f"unreadable {TRAINER_STATE_NAME}"
    weights = [checkpoint / n for n in _WEIGHT_FILES if (checkpoint / n).is_file()]
    if not weights:
        return "no model weights"
    for path in weights:
        if path.suffix == ".safetensors":
            try:
                with safe_open(str(path), framework="pt"):
                    pass
            except Exception:  # truncated: safetensors checks the header against the file size
                return f"truncated {path.name}"
    try:
        verify_manifest(checkpoint)
    except WeightsIntegrityError:
        return f"weights differ from {MANIFEST_FILE}"
    if not any((checkpoint / n).is_file() for n in _OPTIMIZER_FILES):
        return "no optimizer state"
    return None


def _checkpoint_step(path: Path) -> int | None:
    suffix = path.name[len(PREFIX_CHECKPOINT_DIR) + 1:]
    return int(suffix) if path.name.startswith(f"{PREFIX_CHECKPOINT_DIR}-") and suffix.isdigit() else None


def resolve_resume_checkpoint(output_dir: str | Path, resume: str | bool | None) -> str | None:
    """The checkpoint to resume from: `True` = the newest complete `checkpoint-N` of `output_dir` (partial ones,
    from an interrupted save, are skipped and logged), a path = that checkpoint, checked to be complete."""
    if not resume:
        return None
    output_dir = Path(output_dir)
    if resume is not True:
        problem = checkpoint_problem(resume)
        if problem:
            raise ValueError(f"cannot resume from checkpoint {resume}: {problem} (an interrupted save?); pass an "
                             "earlier checkpoint, or --resume_from_checkpoint alone for the newest complete one.")
        return str(resume)
    candidates = sorted(((step, p) for p in (output_dir.iterdir() if output_dir.is_dir() else [])
                         if p.is_dir() and (step := _checkpoint_step(p)) is not None), reverse=True)
    staged = output_dir / STAGING_DIR
    if staged.is_dir() and any(staged.iterdir()):
        logger.warning("skipping the interrupted checkpoint save(s) in %s: %s", staged,
                       ", ".join(sorted(p.name for p in staged.iterdir())))
    skipped = []
    for _, path in candidates:
        problem = checkpoint_problem(path)
        if problem is None:
            if skipped:
                logger.warning("resuming from %s; skipped the partial checkpoint(s) %s", path.name, "; ".join(skipped))
            return str(path)
        skipped.append(f"{path.name} ({problem})")
    raise ValueError(f"no complete checkpoint to resume from in {output_dir}"
                     + (f" (partial: {'; '.join(skipped)})" if skipped else "")
                     + "; start the run without --resume_from_checkpoint.")


def require_training_left(checkpoint: str | Path, args: TrainingArguments) -> None:
    """Refuse a resume that would train nothing (the checkpoint already reached the run's epochs or steps),
    which Trainer would otherwise accept and report a training loss of 0.0 for."""
    state = json.loads((Path(checkpoint) / TRAINER_STATE_NAME).read_text())
    epoch, step = float(state.get("epoch") or 0.0), int(state.get("global_step") or 0)
    if args.max_steps and args.max_steps > 0:
        if step >= args.max_steps:
            raise ValueError(f"checkpoint {checkpoint} already trained {step} steps and training.max_steps="
                             f"{args.max_steps}: resuming would train nothing; raise training.max_steps to continue.")
    elif epoch >= args.num_train_epochs - 1e-9:
        raise ValueError(f"checkpoint {checkpoint} already trained {epoch:g} epochs and training.num_train_epochs="
                         f"{args.num_train_epochs:g}: resuming would train nothing; raise "
                         "training.num_train_epochs to continue.")


def remove_checkpoints(output_dir: str | Path) -> None:
    """Delete Trainer's `checkpoint-N` folders (a run that keeps only its final model)."""
    for checkpoint in Path(output_dir).glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        if checkpoint.is_dir() and _checkpoint_step(checkpoint) is not None:
            shutil.rmtree(checkpoint, ignore_errors=True)


@contextmanager
def staged_save(output_dir: str | Path) -> Iterator[Path]:
    """A run's final save, atomic: the body writes the files into `SAVE_STAGING_DIR` (yielded); then the manifest is
    written there last (it marks the staged save complete), every file is fsynced and `publish_staged` renames them
    into `output_dir`, the manifest last.

    A kill before the manifest leaves `output_dir` as it was plus an incomplete staging folder; a kill while
    publishing leaves a complete one. Loads refuse a folder holding either (`integrity.check_save_complete`) and
    `final_save_covers` (a resume) discards the first and publishes the second. An ordinary exception in the body
    removes the staging folder (the folder is as it was); a kill is not an exception and is what the above is for.
    """
    output_dir = Path(output_dir)
    staging = output_dir / SAVE_STAGING_DIR
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    try:
        yield staging
        write_manifest(staging)
        sync_tree(str(staging))
    except Exception:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    publish_staged(output_dir)


def _move(source: Path, target: Path) -> None:
    """Put one staged file or folder at its final name (replacing what is there)."""
    if source.is_dir():
        publish_dir(str(source), str(target))
    else:
        os.replace(source, target)


def publish_staged(output_dir: str | Path) -> None:
    """Move a complete staged save (its manifest written) into `output_dir`: the folder's old manifest first goes
    (a half-published folder is never taken for a complete one), every other file is renamed into place, the
    manifest last, then the empty staging folder goes. Re-running it after a kill finishes the job."""
    output_dir = Path(output_dir)
    staging = output_dir / SAVE_STAGING_DIR
    (output_dir / MANIFEST_FILE).unlink(missing_ok=True)
    for source in sorted(staging.iterdir()):
        if source.name != MANIFEST_FILE:
            _move(source, output_dir / source.name)
    _move(staging / MANIFEST_FILE, output_dir / MANIFEST_FILE)
    fd = os.open(output_dir, os.O_RDONLY)
    try:
        os.fsync(fd)  # the renames themselves
    finally:
        os.close(fd)
    staging.rmdir()


def recover_final_save(output_dir: str | Path) -> None:
    """Finish or undo an interrupted `staged_save` in `output_dir`: a complete staged save (its manifest, written
    last, is there) is published and checked, an incomplete one removed; both are logged."""
    output_dir = Path(output_dir)
    staging = output_dir / SAVE_STAGING_DIR
    if not staging.is_dir():
        return
    if (staging / MANIFEST_FILE).is_file():
        logger.warning("finishing the interrupted final save of %s: publishing the complete staged save in %s",
                       output_dir, staging)
        publish_staged(output_dir)
        verify_manifest(output_dir)
    else:
        logger.warning("discarding the final save of %s that was interrupted before it was complete (%s)",
                       output_dir, staging)
        shutil.rmtree(staging)


def final_save_covers(output_dir: str | Path, checkpoint: str | Path, *, recover: bool = True) -> bool:
    """Whether `output_dir` holds (or, with an interrupted but complete staged save, is about to hold) a final save
    made at or after `checkpoint`'s step. False means the run's training reached the checkpoint but its final
    evaluation and save did not finish, so a resume must redo them even with no training left. `recover` (the
    process that writes the folder) then finishes or undoes the interrupted save (`recover_final_save`); the answer
    is the same on every process."""
    output_dir = Path(output_dir)
    staging = output_dir / SAVE_STAGING_DIR
    complete_staging = (staging / MANIFEST_FILE).is_file()
    saved = output_dir
    if complete_staging and (staging / "metrics.json").is_file():
        saved = staging  # published next; its metrics.json may also have been moved out already
    try:
        saved_step = json.loads((saved / "metrics.json").read_text())["train"]["steps"]
        step = json.loads((Path(checkpoint) / TRAINER_STATE_NAME).read_text())["global_step"]
    except (OSError, ValueError, KeyError, TypeError):
        saved_step, step = None, None
    has_manifest = complete_staging or (output_dir / MANIFEST_FILE).is_file()  # an incomplete one left it intact
    covered = has_manifest and isinstance(saved_step, int) and isinstance(step, int) and saved_step >= step
    if recover:
        recover_final_save(output_dir)
    if not covered:
        logger.warning("%s has no final save of %s (the run was stopped after training): the resumed run redoes "
                       "the final evaluation and save", output_dir, Path(checkpoint).name)
    return covered
