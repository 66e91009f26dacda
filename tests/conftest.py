from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tests.helpers import tiny_config  # noqa: E402


@pytest.fixture
def tiny_model():
    from genrec_hf import GenRecForNextItemPrediction

    torch.manual_seed(0)
    return GenRecForNextItemPrediction(tiny_config()).eval()


@pytest.fixture
def one_thread():
    """One intra-op thread: on a shared, loaded 2-core machine OpenMP barriers make tiny ops 100x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
