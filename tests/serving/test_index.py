"""Approximate top-k (faiss): same conventions and scores as the exact top-k, restrictions honoured, recall
measured against exact, and a clear error when the optional extra is missing."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from genrec_hf import GenRecForNextItemPrediction
from genrec_hf.models.genrec.scoring import chunked_topk
from genrec_hf.serving import Recommender

from tests.helpers import REPO_ROOT, tiny_config

faiss = pytest.importorskip("faiss")
from genrec_hf.serving.index import FaissIndex, recall_at_k  # noqa: E402


def _problem(vocab_size: int = 2001, batch: int = 128, **overrides):
    torch.manual_seed(0)
    model = GenRecForNextItemPrediction(tiny_config(vocab_size=vocab_size, **overrides)).eval()
    history = torch.randint(1, vocab_size, (batch, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        queries = model(history).user_embeddings
    return model, queries, history


@pytest.mark.parametrize("overrides", [{}, {"l2_normalize_scores": True, "score_temperature": 0.05}])
def test_exhaustive_indexes_equal_exact_topk(overrides):
    """Catches an index that ranks by raw inner product for a cosine model, drops the temperature from the scores,
    returns the padding item or faiss' 0-based ids as item indices."""
    model, queries, history = _problem(vocab_size=301, batch=16, **overrides)
    exact = model.topk(queries, 10, exclude=history)
    for kind, options in (("flat", {}), ("ivf", {"nlist": 4, "nprobe": 4})):  # ivf probing every list = exact
        index = FaissIndex.build(model.item_vectors, kind=kind, temperature=model.config.score_temperature,
                                 l2_normalize=model.config.l2_normalize_scores, **options)
        top = index.search(queries, 10, exclude=history)
        assert torch.equal(top.items, exact.items), kind
        torch.testing.assert_close(top.scores, exact.scores, atol=1e-4, rtol=1e-4)


def test_recall_against_exact_is_measured():
    """Catches an approximate index whose top-10 has little to do with the exact top-10 (wrong metric, vectors
    indexed without their rows aligned to item ids). Measured on an untrained tiny model (2,000 items, d=32,
    random vectors: the hard case for IVF); the numbers are printed with -s."""
    model, queries, history = _problem()
    exact = model.topk(queries, 10, exclude=history)
    recalls = {}
    for kind in ("ivf", "hnsw"):
        index = FaissIndex.build(model.item_vectors, kind=kind)
        recalls[kind] = recall_at_k(index.search(queries, 10, exclude=history).items, exact.items)
    print(f"recall@10 vs exact, 2,000 items: {recalls}")
    assert recalls["hnsw"] >= 0.9
    assert recalls["ivf"] >= 0.5


def test_restrictions_are_honoured_and_answers_stay_full():
    """Catches allowed-item masks ignored by the index, history items returned, and a restrictive mask with a
    small nprobe giving fewer than k items although k allowed items exist (the exact fallback)."""
    model, queries, history = _problem(vocab_size=2001, batch=8)
    allowed = torch.zeros(2001, dtype=torch.bool)
    allowed[torch.arange(3, 2001, 97)] = True  # 21 items spread over the lists
    allowed[history[0, :3]] = True  # some allowed items are in row 0's history
    index = FaissIndex.build(model.item_vectors, kind="ivf", nprobe=1)
    top = index.search(queries, 15, exclude=history, allowed=allowed)
    exact = chunked_topk(queries, model.item_vectors.detach(), 15, exclude=history, allowed=allowed)
    for row in range(8):
        got = top.items[row].tolist()
        assert all(allowed[i] for i in got) and not set(got) & set(history[row].tolist())
        assert len(got) == len(set(got)) == 15
        assert set(got) == set(exact.items[row].tolist())
    hnsw = FaissIndex.build(model.item_vectors, kind="hnsw")
    top = hnsw.search(queries, 30, exclude=history, allowed=allowed)  # more than allowed: padded like exact
    assert ((top.items == 0) == torch.isinf(top.scores)).all()
    assert set(top.items[0].tolist()) - {0} == set(allowed.nonzero().flatten().tolist()) - set(history[0].tolist())


def test_recommender_with_index_and_saved_index(tmp_path, model_dir):
    """Catches the Recommender bypassing its index, candidates lost on the approximate path, and a saved index
    that does not load back to the same answers."""
    exact = Recommender.from_pretrained(model_dir)
    approx = Recommender.from_pretrained(model_dir, index="flat")
    history = ["m105", "m117", "m101"]
    assert [r.item_id for r in approx.recommend(history, 5)] == [r.item_id for r in exact.recommend(history, 5)]
    got = approx.recommend(history, 5, candidates=["m110", "m111", "m105"])
    assert {r.item_id for r in got} == {"m110", "m111"}
    index = approx.index()
    assert index is not None and index.kind == "flat"
    index.save(tmp_path / "index")
    loaded = FaissIndex.load(tmp_path / "index")
    q = torch.randn(3, exact.item_vectors().shape[1])
    assert torch.equal(loaded.search(q, 5).items, index.search(q, 5).items)


def test_missing_faiss_names_the_extra():
    """Catches a bare `ModuleNotFoundError: faiss` (or an import at package import time) instead of an error
    naming `pip install "genrec-hf[ann]"`; and the serving package importing fastapi/faiss when imported."""
    code = ("import sys; sys.modules['faiss'] = None\n"
            "import genrec_hf, genrec_hf.serving, genrec_hf.cli, genrec_hf.serving.index, genrec_hf.serving.export\n"
            "assert 'fastapi' not in sys.modules and 'uvicorn' not in sys.modules\n"
            "from genrec_hf.serving.index import FaissIndex\n"
            "import torch\n"
            "try:\n    FaissIndex.build(torch.randn(5, 4))\nexcept ImportError as e:\n    print(e)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert 'pip install "genrec-hf[ann]"' in result.stdout


def test_ivf_trained_on_a_sample_still_indexes_every_item():
    """Catches `max_train_points` adding only the training sample to the index (items outside it unreachable):
    probing every list of an IVF trained on 200 of 2,000 items must still be exact."""
    model, queries, history = _problem(vocab_size=2001, batch=16)
    index = FaissIndex.build(model.item_vectors, kind="ivf", nlist=8, nprobe=8, max_train_points=200)
    assert index.num_items == 2000
    exact = model.topk(queries, 10, exclude=history)
    assert torch.equal(index.search(queries, 10, exclude=history).items, exact.items)
