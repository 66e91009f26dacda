"""Helpers shared by the test modules (fixtures live in conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def tiny_config(**overrides):
    from genrec_hf import GenRecConfig

    base = dict(vocab_size=41, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                max_position_embeddings=16, hidden_dropout_prob=0.0, attention_dropout=0.0, num_action_types=3)
    return GenRecConfig(**{**base, **overrides})


def train_one_step(output_dir, rows: list[dict], collate, batch_size: int, accumulation: int):
    """One optimizer step of a tiny model through `Trainer` on `rows` in order, `accumulation` micro-batches of
    `batch_size`; asserts the logged loss is the one-batch loss of all rows and returns the updated model."""
    import torch
    from datasets import Dataset
    from transformers import Trainer, TrainingArguments

    from genrec_hf import GenRecForNextItemPrediction

    torch.manual_seed(0)
    model = GenRecForNextItemPrediction(tiny_config())
    args = TrainingArguments(
        output_dir=str(output_dir), per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation, max_steps=1, learning_rate=0.1, optim="sgd",
        lr_scheduler_type="constant", report_to=[], use_cpu=True, save_strategy="no",
        remove_unused_columns=False, logging_steps=1, seed=0, data_seed=0, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_list(rows), data_collator=collate)
    trainer._get_train_sampler = lambda *a, **k: torch.utils.data.SequentialSampler(trainer.train_dataset)
    # Our labels are already aligned (no shift): every non -100 label must count in num_items_in_batch.
    assert trainer.model_accepts_loss_kwargs and not trainer._loss_shifts_labels
    initial = GenRecForNextItemPrediction(tiny_config())
    initial.load_state_dict(model.state_dict())
    expected = initial(**collate(rows)).loss.item()  # mean over all supervised positions of the rows
    result = trainer.train()
    assert abs(result.training_loss - expected) < 1e-5, (result.training_loss, expected)
    return model


def run_without_genrec_hf(script: str, cwd) -> None:
    """Run `script` (Python source that prints "ok" at its end) in a fresh interpreter where genrec_hf cannot be
    imported, as a Hub user with only transformers would: a failure shows the subprocess's traceback."""
    import subprocess
    import sys

    script = 'import sys\nsys.modules["genrec_hf"] = None  # any import of genrec_hf now fails\n' + script
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=cwd,
                            env={"HF_HUB_OFFLINE": "1", "PATH": "", "HF_HOME": str(Path(cwd) / "hf_home"),
                                 "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ok" in result.stdout


def benchmark_module(name: str):
    """The benchmark script `benchmarks/<topic>/<name>.py` imported as a module (the scripts are not a package)."""
    import importlib.util

    (path,) = (REPO_ROOT / "benchmarks").glob(f"*/{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def require_shared_data(name: str) -> Path:
    """The real data set `name` (MovieLens / Amazon files kept beside the project), or skip with the reason."""
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"real data {name!r} is absent: tests on real data read the MovieLens / Amazon files from a "
                    "shared/data folder beside the repository (docs/data.md says where to download them)")
    return path


def integer_ranking_problem(seed: int = 0, batch: int = 6, items: int = 23, dim: int = 3):
    """(queries, item vectors, targets, exclusions) with small integer vectors, so exact score ties exist; each
    history holds its own target (which must still be ranked), a duplicate and, in row 0, padding."""
    import torch

    g = torch.Generator().manual_seed(seed)
    queries = torch.randint(-2, 3, (batch, dim), generator=g).float()
    vectors = torch.randint(-2, 3, (items, dim), generator=g).float()
    targets = torch.randint(1, items, (batch,), generator=g)
    exclude = torch.randint(0, items, (batch, 5), generator=g)
    exclude[:, 0] = targets
    exclude[:, 1] = exclude[:, 2]
    exclude[0, 3:] = 0
    return queries, vectors, targets, exclude
