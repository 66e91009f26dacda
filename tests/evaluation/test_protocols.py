"""The evaluation protocol (DESIGN.md §5) against brute-force references written out plainly."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from genrec_hf import GenRecConfig, GenRecForNextItemPrediction
from genrec_hf.evaluation import (
    RankingAccumulator,
    dense_target_ranks,
    evaluate_model,
    metrics_from_ranks,
    ranking_metrics,
)
from genrec_hf.models.genrec.scoring import chunked_target_ranks

KS = (1, 5, 10, 50, 200)


pytestmark = pytest.mark.usefixtures("one_thread")


def reference_rank(scores: list[float], target: int, exclude: set[int]) -> int:
    """1 + #{j not padding, not excluded, not the target: s_j >= s_target} for one user."""
    return 1 + sum(1 for j, s in enumerate(scores) if j != 0 and j != target and j not in exclude
                   and s >= scores[target])


def reference_metrics(ranks: list[int], ks=KS) -> dict[str, float]:
    out = {"mrr": sum(1 / r for r in ranks) / len(ranks)}
    for k in ks:
        out[f"hr@{k}"] = sum(r <= k for r in ranks) / len(ranks)
        out[f"ndcg@{k}"] = sum(1 / math.log2(r + 1) for r in ranks if r <= k) / len(ranks)
    return out


def _tied_scores(seed=0, batch=40, items=60, history=8):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 6, (batch, items), generator=g).float()  # integer scores: many exact ties
    targets = torch.randint(1, items, (batch,), generator=g)
    exclude = torch.randint(0, items, (batch, history), generator=g)  # 0 = padding entries, duplicates likely
    exclude[::3, 0] = targets[::3]  # some users have the target in their history: it is still ranked
    return scores, targets, exclude


def test_metrics_from_ranks_match_plain_formulas():
    ranks = torch.tensor([1, 2, 3, 10, 11, 50, 51, 200, 201, 7])
    got = metrics_from_ranks(ranks)
    assert set(got) == {"mrr"} | {f"{m}@{k}" for m in ("hr", "ndcg") for k in KS}
    assert got == pytest.approx(reference_metrics(ranks.tolist()))
    assert metrics_from_ranks(torch.tensor([1]))["ndcg@1"] == 1.0
    assert metrics_from_ranks(torch.tensor([3]), ks=(5,))["ndcg@5"] == pytest.approx(0.5)  # 1/log2(4)
    with pytest.raises(ValueError, match="no users"):
        metrics_from_ranks(torch.tensor([]))
    with pytest.raises(ValueError, match="1-based"):
        metrics_from_ranks(torch.tensor([0, 1]))


def test_accumulator_over_batches_equals_all_at_once():
    ranks = torch.randint(1, 500, (97,), generator=torch.Generator().manual_seed(0))
    accumulator = RankingAccumulator(ks=(1, 10, 100))
    for part in ranks.split(10):  # uneven last batch
        accumulator.add(part)
    metrics = accumulator.compute()
    assert metrics.pop("num_users") == 97
    assert metrics == pytest.approx(metrics_from_ranks(ranks, ks=(1, 10, 100)))


@pytest.mark.parametrize("exclude_history", [True, False])
def test_ranking_metrics_match_brute_force_with_ties_and_exclusions(exclude_history):
    scores, targets, exclude = _tied_scores()
    ranks = [reference_rank(row.tolist(), int(t), set(ex.tolist()) if exclude_history else set())
             for row, t, ex in zip(scores, targets, exclude)]
    got = ranking_metrics(scores, targets, exclude, exclude_history=exclude_history)
    assert got == pytest.approx(reference_metrics(ranks))
    assert dense_target_ranks(scores, targets, exclude if exclude_history else None).tolist() == ranks


def test_dense_and_chunked_ranks_agree():
    g = torch.Generator().manual_seed(3)
    queries = torch.randint(-2, 3, (12, 3), generator=g).float()
    vectors = torch.randint(-2, 3, (41, 3), generator=g).float()
    targets = torch.randint(1, 41, (12,), generator=g)
    exclude = torch.randint(0, 41, (12, 6), generator=g)
    exclude[:, 0] = targets
    dense = dense_target_ranks(queries @ vectors.T, targets, exclude)
    for chunk_size in (1, 5, 41):
        assert torch.equal(chunked_target_ranks(queries, vectors, targets, exclude=exclude, chunk_size=chunk_size),
                           dense)


def test_constant_scores_rank_last_not_first():
    catalog = 50  # items 1..49 plus padding 0
    scores = torch.zeros(4, catalog)
    targets = torch.tensor([1, 2, 30, 49])
    metrics = ranking_metrics(scores, targets, exclude_history=False)
    assert metrics["mrr"] == pytest.approx(1 / (catalog - 1))
    assert metrics["hr@10"] == 0.0
    nan_metrics = ranking_metrics(torch.full((4, catalog), float("nan")), targets, exclude_history=False)
    assert nan_metrics["mrr"] == pytest.approx(1 / (catalog - 1))


def test_ranking_metrics_rejects_bad_inputs():
    with pytest.raises(ValueError, match="scores must be"):
        ranking_metrics(torch.zeros(5), torch.tensor([1]))
    with pytest.raises(ValueError, match="padding"):
        ranking_metrics(torch.zeros(2, 5), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="padding"):
        ranking_metrics(torch.zeros(2, 5), torch.tensor([5, 1]))


# ----------------------------------------------------------------------------------------------- evaluate_model
def _tiny_model(**overrides) -> GenRecForNextItemPrediction:
    torch.manual_seed(0)
    config = GenRecConfig(vocab_size=37, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=32, max_position_embeddings=12, num_action_types=3,
                          score_chunk_size=5, **overrides)
    return GenRecForNextItemPrediction(config)


def _batches(num_batches=3, batch=5, length=7, vocab=37, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(num_batches):
        input_ids = torch.randint(1, vocab, (batch, length), generator=g)
        input_ids[0, :3] = 0  # left padding
        mask = (input_ids != 0).long()
        out.append({
            "input_ids": input_ids, "attention_mask": mask,
            "timestamps": torch.cumsum(torch.randint(1, 5000, (batch, length), generator=g), dim=1) * mask,
            "action_ids": torch.randint(0, 3, (batch, length), generator=g) * mask,
            "target_ids": torch.randint(1, vocab, (batch,), generator=g),
            "exclude_ids": torch.cat([input_ids[:, 2:], torch.zeros(batch, 2, dtype=torch.long)], dim=1),
        })
    return out


def _brute_force(model, batches, exclude_history=True):
    """Rank from the dense logits of `model(..., output_logits=True)`, one user at a time in Python."""
    ranks = []
    model.eval()
    with torch.no_grad():
        for batch in batches:
            logits = model(batch["input_ids"], attention_mask=batch["attention_mask"],
                           timestamps=batch["timestamps"], action_ids=batch["action_ids"], output_logits=True).logits
            for row, target, exclude in zip(logits, batch["target_ids"], batch["exclude_ids"]):
                ranks.append(reference_rank(row.tolist(), int(target),
                                            set(exclude.tolist()) if exclude_history else set()))
    return {**reference_metrics(ranks), "num_users": float(len(ranks))}


@pytest.mark.parametrize("overrides", [dict(), dict(head_projection_ratio=4, tie_word_embeddings=False,
                                                    score_temperature=0.05, l2_normalize_scores=True)])
@pytest.mark.parametrize("exclude_history", [True, False])
def test_evaluate_model_equals_brute_force_over_logits(overrides, exclude_history):
    model = _tiny_model(**overrides)
    batches = _batches()
    model.train()
    got = evaluate_model(model, batches, exclude_history=exclude_history, progress=False)
    assert model.training  # mode restored
    assert got == pytest.approx(_brute_force(model, batches, exclude_history))
    assert evaluate_model(model, batches, chunk_size=1000, exclude_history=exclude_history, progress=False) == got


def test_evaluate_model_constant_model_ranks_last():
    model = _tiny_model()
    with torch.no_grad():
        model.item_vectors.zero_()  # every item scores 0: ties everywhere
    got = evaluate_model(model, _batches(num_batches=1), exclude_history=False, progress=False)
    assert got["mrr"] == pytest.approx(1 / 36)  # 36 real items: every target ranks last


def test_evaluate_model_on_collator_batches():
    from torch.utils.data import DataLoader

    from genrec_hf.data.collators import NextItemCollator

    g = torch.Generator().manual_seed(1)
    rows = [{"user_id": u, "item_ids": torch.randint(1, 37, (int(n),), generator=g).tolist()}
            for u, n in enumerate(torch.randint(2, 15, (11,), generator=g))]
    model = _tiny_model()
    loader = DataLoader(rows, batch_size=4, collate_fn=NextItemCollator(8, mode="eval"))
    got = evaluate_model(model, loader, progress=False)
    assert got["num_users"] == 11
    assert got == pytest.approx(_brute_force(model, list(loader)))


# ----------------------------------------------------------------------------------------------- evaluate module
def test_evaluate_module_loads_offline_by_path(monkeypatch):
    import evaluate

    from genrec_hf.evaluation import RANKING_METRIC_PATH

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ranks = [1, 4, 12, 300, 2]
    for path in (RANKING_METRIC_PATH, str(Path(RANKING_METRIC_PATH).parent)):  # the script or its folder
        module = evaluate.load(path, "ranks")
        assert module.compute(ranks=ranks) == pytest.approx(metrics_from_ranks(torch.tensor(ranks)))
    scores, targets, _ = _tied_scores(seed=5, batch=6, items=20)
    got = evaluate.load(RANKING_METRIC_PATH).compute(predictions=scores.tolist(), references=targets.tolist(),
                                                     ks=(1, 5))
    ranks = [reference_rank(row.tolist(), int(t), set()) for row, t in zip(scores, targets)]
    assert got == pytest.approx(reference_metrics(ranks, ks=(1, 5)))
    # batch-by-batch `add_batch` gives the same numbers
    module = evaluate.load(RANKING_METRIC_PATH, "ranks")
    module.add_batch(ranks=ranks[:3])
    module.add_batch(ranks=ranks[3:])
    assert module.compute(ks=(1, 5)) == pytest.approx(reference_metrics(ranks, ks=(1, 5)))


def test_popularity_scores_count_training_events_and_reject_foreign_ids():
    from datasets import Dataset

    from genrec_hf.evaluation.baselines import popularity_scores

    train = Dataset.from_dict({"item_ids": [[1, 2, 2], [3], [2, 4, 1]]})
    assert popularity_scores(train, 6).tolist() == [0, 2, 3, 1, 1, 0]
    with pytest.raises(ValueError, match="vocab_size=4"):
        popularity_scores(train, 4)


def test_paired_bootstrap_interval_brackets_the_difference_only_when_real():
    from genrec_hf.evaluation import paired_bootstrap

    g = torch.Generator().manual_seed(0)
    ranks = torch.randint(1, 200, (900,), generator=g)
    same = paired_bootstrap(ranks, ranks.clone())
    assert same["relative"] == same["relative_low"] == same["relative_high"] == 0
    better = paired_bootstrap(ranks, (ranks // 2).clamp(min=1))  # every rank halved: a real improvement
    assert better["b"] > better["a"] and 0 < better["relative_low"] < better["relative"] < better["relative_high"]
    shuffled = paired_bootstrap(ranks, ranks[torch.randperm(900, generator=g)])  # same distribution, unpaired
    assert shuffled["relative_low"] < 0 < shuffled["relative_high"]
    assert same["a_stderr"] == pytest.approx((1.0 / ranks.double()).std().item() / 30.0)
    with pytest.raises(ValueError, match="same users"):
        paired_bootstrap(ranks, ranks[:10])


def test_target_ranks_feed_evaluate_model(tiny_model):
    from genrec_hf.evaluation import target_ranks

    batches = [dict(input_ids=torch.tensor([[1, 2, 3], [4, 5, 0]]), attention_mask=torch.tensor([[1, 1, 1], [1, 1, 0]]),
                    target_ids=torch.tensor([7, 9]), exclude_ids=torch.tensor([[1, 2, 3], [4, 5, 0]]))]
    ranks = target_ranks(tiny_model, batches, progress=False)
    assert ranks.shape == (2,) and (ranks >= 1).all()
    metrics = evaluate_model(tiny_model, batches, progress=False)
    assert metrics["mrr"] == pytest.approx((1.0 / ranks.double()).mean().item())
