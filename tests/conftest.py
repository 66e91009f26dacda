from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def tiny_config(**overrides):
    from genrec_hf import GenRecConfig

    base = dict(vocab_size=41, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                max_position_embeddings=16, hidden_dropout_prob=0.0, attention_dropout=0.0, num_action_types=3)
    return GenRecConfig(**{**base, **overrides})


@pytest.fixture
def tiny_model():
    from genrec_hf import GenRecForNextItemPrediction

    torch.manual_seed(0)
    return GenRecForNextItemPrediction(tiny_config()).eval()


def require_shared_data(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.exists():
        pytest.skip(f"real data {path} is absent (see shared/data/SOURCES.md)")
    return path


@pytest.fixture
def one_thread():
    """One intra-op thread: on a shared, loaded 2-core machine OpenMP barriers make tiny ops 100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
