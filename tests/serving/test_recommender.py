"""`Recommender`: raw ids in and out, batch and single calls, restrictions, tasks, errors, concurrent readers."""

from __future__ import annotations

import threading

import pytest
import torch

from genrec_hf import GenRecForNextItemPrediction
from genrec_hf.adapters import load_adapters, score_mixed_batch
from genrec_hf.serving import Recommender, UnknownItemError, UnknownTaskError

from tests.serving.conftest import NUM_ITEMS, RAW_IDS

HISTORY = ["m105", "m117", "m101", "m130"]


@pytest.fixture(scope="module")
def recommender(model_dir):
    return Recommender.from_pretrained(model_dir)


def _index(raw: str) -> int:
    return RAW_IDS.index(raw) + 1


def test_raw_ids_map_to_the_model_indices(recommender, model_dir):
    """Catches raw ids decoded with an off-by-one index (padding is 0, so "m100" is index 1) or scores that are
    not the model's own `recommend` scores."""
    model = GenRecForNextItemPrediction.from_pretrained(model_dir).eval()
    expected = model.recommend([[_index(r) for r in HISTORY]], 5)
    recs = recommender.recommend(HISTORY, k=5)
    assert [_index(r.item_id) for r in recs] == expected.items[0].tolist()
    assert [r.score for r in recs] == pytest.approx(expected.scores[0].tolist(), abs=1e-6)
    assert all(r.title == f"Title {r.item_id}" for r in recs)
    assert not set(HISTORY) & {r.item_id for r in recs}


def test_batch_equals_single_calls(recommender):
    """Catches a batch call whose left padding leaks into the shorter history's user embedding."""
    histories = [HISTORY, ["m133"], ["m102", "m103"]]
    batch = recommender.recommend(histories, k=4)
    assert len(batch) == 3
    for history, row in zip(histories, batch):
        single = recommender.recommend(history, k=4)
        assert [r.item_id for r in row] == [r.item_id for r in single]
        assert [r.score for r in row] == pytest.approx([r.score for r in single], abs=1e-5)


def test_candidates_filters_and_seen_items(recommender):
    """Catches candidates or filters that are ignored, and `exclude_seen` dropping candidates outside the history."""
    recs = recommender.recommend(HISTORY, k=10, candidates=["m105", "m110", "m111"])
    assert {r.item_id for r in recs} == {"m110", "m111"}  # m105 is in the history
    recs = recommender.recommend(HISTORY, k=10, candidates=["m105", "m110"], exclude_seen=False)
    assert {r.item_id for r in recs} == {"m105", "m110"}
    odd = recommender.recommend(HISTORY, k=NUM_ITEMS, filters={"genres": "odd"})
    assert odd and all(RAW_IDS.index(r.item_id) % 2 == 1 for r in odd)
    assert len(odd) == NUM_ITEMS // 2 - sum(RAW_IDS.index(h) % 2 for h in HISTORY)
    picked = recommender.recommend(HISTORY, k=3, filters=lambda raw, info: raw.endswith("9"))
    assert picked and all(r.item_id.endswith("9") for r in picked)


@pytest.mark.parametrize(("call", "error", "needle"), [
    (lambda r: r.recommend(["m105", "nope"], 5), UnknownItemError, "'nope'"),
    (lambda r: r.recommend([], 5), ValueError, "empty"),
    (lambda r: r.recommend([["m105"], []], 5), ValueError, "History 1 is empty"),
    (lambda r: r.recommend(HISTORY, 0), ValueError, "k=0"),
    (lambda r: r.recommend(HISTORY, NUM_ITEMS + 1), ValueError, "out of range"),
    (lambda r: r.recommend(HISTORY, True), ValueError, "k=True"),
    (lambda r: r.recommend(HISTORY, 5, task="long"), UnknownTaskError, "'long'"),
    (lambda r: r.recommend(HISTORY, 5, candidates=["zzz"]), UnknownItemError, "candidates"),
    (lambda r: r.recommend(HISTORY, 5, candidates=[]), ValueError, "candidates is empty"),
])
def test_clear_errors(recommender, call, error, needle):
    """Catches a bad request failing deep inside torch (an index error, a silently capped k) instead of a
    ValueError that names the unknown item, the empty history, the bad k or the unknown task."""
    with pytest.raises(error, match=needle.replace("(", r"\(")):
        call(recommender)


def test_tasks_use_their_adapter_without_switching(model_dir, adapter_dir):
    """Catches a task served with the base model (or the base served with the adapter), and concurrent requests
    for different tasks seeing each other's adapter (the answer of each thread must equal the sequential one)."""
    recommender = Recommender.from_pretrained(model_dir, adapters={"short": adapter_dir})
    assert recommender.tasks == ("short",)
    peft = load_adapters(model_dir, {"short": adapter_dir})
    ids = torch.tensor([[_index(r) for r in HISTORY]])
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    for task, name in ((None, "__base__"), ("short", "short")):
        expected = score_mixed_batch(peft, batch, [name], k=5, exclude=ids)
        recs = recommender.recommend(HISTORY, k=5, task=task)
        assert [_index(r.item_id) for r in recs] == expected.items[0].tolist(), task
    base = [r.item_id for r in recommender.recommend(HISTORY, k=5)]
    short = [r.item_id for r in recommender.recommend(HISTORY, k=5, task="short")]
    assert base != short

    answers: dict[int, list[str]] = {}
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            for _ in range(5):
                got = [r.item_id for r in recommender.recommend(HISTORY, k=5, task="short" if i % 2 else None)]
                assert got == (short if i % 2 else base)
            answers[i] = got
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(answers) == 6


def test_existing_single_history_api_with_timestamps(model_dir):
    """Catches the old call form `recommend(history, k, timestamps=, exclude_seen=)` breaking for its callers."""
    recommender = Recommender.from_pretrained(model_dir)
    recs = recommender.recommend(HISTORY, k=3, timestamps=[1, 2, 3, 4], exclude_seen=False)
    assert len(recs) == 3 and all(isinstance(r.item_id, str) for r in recs)
    assert recommender.user_embedding(HISTORY).shape == (recommender.item_vectors().shape[1],)


def test_a_large_batch_is_ranked_in_chunks_with_the_same_answers(recommender, monkeypatch):
    """Issue 27 item 5: a batch of 40,000 histories was encoded and ranked at once (2.5 GB for one request); it is
    now answered ROW_CHUNK histories at a time, and chunking must not change, drop or reorder any answer."""
    from genrec_hf.serving import recommender as module

    g = torch.Generator().manual_seed(3)
    histories = [[RAW_IDS[i] for i in torch.randint(0, NUM_ITEMS, (n,), generator=g).tolist()]
                 for n in torch.randint(1, 9, (11,), generator=g).tolist()]
    times = [list(range(100, 100 + len(h))) for h in histories]
    whole = recommender.recommend(histories, 4, timestamps=times)
    monkeypatch.setattr(module, "ROW_CHUNK", 3)
    sizes = []
    real = recommender.encode_queries
    monkeypatch.setattr(recommender, "encode_queries", lambda rows, **kw: sizes.append(len(rows)) or real(rows, **kw))
    chunked = recommender.recommend(histories, 4, timestamps=times)
    assert sizes == [3, 3, 3, 2]  # never more than ROW_CHUNK histories in memory at once
    assert [[r.item_id for r in row] for row in chunked] == [[r.item_id for r in row] for row in whole]
    assert [r.score for row in chunked for r in row] == pytest.approx([r.score for row in whole for r in row], abs=1e-6)
