"""Protocols and the model-level ranking loop against brute-force references written out plainly."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from genrec_hf import GenRecConfig, GenRecForNextItemPrediction
from genrec_hf.evaluation import (
    DEFAULT_KS,
    RankingProtocol,
    dense_target_ranks,
    evaluate_model,
    metrics_from_ranks,
    rank_batches,
)

KS = DEFAULT_KS


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
        out[f"recall@{k}"] = out[f"hr@{k}"]  # one target per user
    return {**out, "num_users": len(ranks), "num_users_without_target": 0}


def _tied_scores(seed=0, batch=40, items=60, history=8):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 6, (batch, items), generator=g).float()  # integer scores: many exact ties
    targets = torch.randint(1, items, (batch,), generator=g)
    exclude = torch.randint(0, items, (batch, history), generator=g)  # 0 = padding entries, duplicates likely
    exclude[::3, 0] = targets[::3]  # some users have the target in their history: it is still ranked
    return scores, targets, exclude


@pytest.mark.parametrize("exclude_history", [True, False])
def test_dense_ranks_and_metrics_match_brute_force_with_ties_and_exclusions(exclude_history):
    """Catches the dense reference or the metrics drifting from the protocol on tied scores and histories."""
    scores, targets, exclude = _tied_scores()
    ranks = [reference_rank(row.tolist(), int(t), set(ex.tolist()) if exclude_history else set())
             for row, t, ex in zip(scores, targets, exclude)]
    got = dense_target_ranks(scores, targets, exclude if exclude_history else None)
    assert got.tolist() == ranks
    assert metrics_from_ranks(got) == pytest.approx(reference_metrics(ranks))


def test_constant_scores_rank_last_not_first():
    """Catches optimistic ties / NaN: a constant or all-NaN model must rank every target last."""
    catalog = 50  # items 1..49 plus padding 0
    targets = torch.tensor([1, 2, 30, 49])
    metrics = metrics_from_ranks(dense_target_ranks(torch.zeros(4, catalog), targets))
    assert metrics["mrr"] == pytest.approx(1 / (catalog - 1))
    assert metrics["hr@10"] == 0.0
    nan_metrics = metrics_from_ranks(dense_target_ranks(torch.full((4, catalog), float("nan")), targets))
    assert nan_metrics["mrr"] == pytest.approx(1 / (catalog - 1))


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
            "target_ids": torch.randint(1, vocab, (batch, 1), generator=g),
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
            for row, target, exclude in zip(logits, batch["target_ids"].reshape(-1), batch["exclude_ids"]):
                ranks.append(reference_rank(row.tolist(), int(target),
                                            set(exclude.tolist()) if exclude_history else set()))
    return reference_metrics(ranks)


@pytest.mark.parametrize("overrides", [dict(), dict(head_projection_ratio=4, tie_word_embeddings=False,
                                                    score_temperature=0.05, l2_normalize_scores=True)])
@pytest.mark.parametrize("exclude_history", [True, False])
def test_evaluate_model_equals_brute_force_over_logits(overrides, exclude_history):
    """Catches the model-level loop ranking other scores than the model's dense logits (head projection,
    temperature, cosine), ignoring the protocol's exclude_history, or leaving the model in eval mode."""
    model = _tiny_model(**overrides)
    batches = _batches()
    model.train()
    protocol = RankingProtocol(exclude_history=exclude_history)
    got = evaluate_model(model, batches, protocol)
    assert model.training  # mode restored
    assert got == pytest.approx(_brute_force(model, batches, exclude_history))
    assert evaluate_model(model, batches, protocol, chunk_size=1000, progress=True) == got


def test_evaluate_model_constant_model_ranks_last():
    """Catches optimistic ties at the model level."""
    model = _tiny_model()
    with torch.no_grad():
        model.item_vectors.zero_()  # every item scores 0: ties everywhere
    got = evaluate_model(model, _batches(num_batches=1), RankingProtocol(exclude_history=False))
    assert got["mrr"] == pytest.approx(1 / 36)  # 36 real items: every target ranks last


def test_evaluate_model_on_collator_batches():
    """Catches the eval collator and the ranking loop disagreeing on the (B, 1) target / exclusion layout."""
    from torch.utils.data import DataLoader

    from genrec_hf.data.collators import NextItemCollator

    g = torch.Generator().manual_seed(1)
    rows = [{"user_id": u, "item_ids": torch.randint(1, 37, (int(n),), generator=g).tolist()}
            for u, n in enumerate(torch.randint(2, 15, (11,), generator=g))]
    model = _tiny_model()
    loader = DataLoader(rows, batch_size=4, collate_fn=NextItemCollator(8, mode="eval"))
    got = evaluate_model(model, loader)
    assert got["num_users"] == 11
    assert got == pytest.approx(_brute_force(model, list(loader)))


# ----------------------------------------------------------------------------------------------- evaluate module
def test_evaluate_module_loads_offline_by_path(monkeypatch):
    """Catches the shipped `evaluate` module drifting from `metrics_from_ranks` / the dense reference."""
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
    sets = [[3, 1, 12], [4], [20, 30]]  # several targets per user, ragged
    got = evaluate.load(RANKING_METRIC_PATH, "set_ranks").compute(ranks=sets, ks=(1, 10))
    assert got == metrics_from_ranks(torch.tensor([[3, 1, 12], [4, 0, 0], [20, 30, 0]]), ks=(1, 10))


def test_popularity_scores_count_training_events_and_reject_foreign_ids():
    """Catches the popularity baseline counting other events than the training rows'."""
    from datasets import Dataset

    from genrec_hf.evaluation.baselines import popularity_scores

    train = Dataset.from_dict({"item_ids": [[1, 2, 2], [3], [2, 4, 1]]})
    assert popularity_scores(train, 6).tolist() == [0, 2, 3, 1, 1, 0]
    with pytest.raises(ValueError, match="vocab_size=4"):
        popularity_scores(train, 4)


def test_paired_bootstrap_interval_brackets_the_difference_only_when_real():
    """Catches an unpaired or mis-centred bootstrap interval."""
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


def test_per_user_metric_means_equal_the_ranking_metrics():
    """Catches a bootstrap over NDCG@K / HR@K whose per-user values disagree with `metrics_from_ranks` (an off-by-one
    in the discount or the cut-off would make compare_runs' NDCG interval describe another metric)."""
    from genrec_hf.evaluation import per_user_metric
    from genrec_hf.evaluation.metrics import metrics_from_ranks

    ranks = torch.tensor([1, 2, 3, 10, 11, 50, 1682, 1, 7])  # ranks at and around every cut-off
    expected = metrics_from_ranks(ranks, ks=(1, 10, 50))
    for name in ("mrr", "hr@1", "hr@10", "ndcg@1", "ndcg@10", "ndcg@50"):
        assert per_user_metric(name)(ranks).double().mean().item() == pytest.approx(expected[name]), name
    for bad in ("ndcg", "ndcg@0", "recall@10", "MRR"):
        with pytest.raises(ValueError, match="expected 'mrr', 'hr@K' or 'ndcg@K'"):
            per_user_metric(bad)


def test_rank_batches_feed_evaluate_model(tiny_model):
    """Catches `evaluate_model` averaging something else than the per-user ranks of `rank_batches`, and (B,)
    targets of hand-made batches being refused."""
    batches = [dict(input_ids=torch.tensor([[1, 2, 3], [4, 5, 0]]), attention_mask=torch.tensor([[1, 1, 1], [1, 1, 0]]),
                    target_ids=torch.tensor([7, 9]), exclude_ids=torch.tensor([[1, 2, 3], [4, 5, 0]]))]
    ranks = rank_batches(tiny_model, batches)
    assert ranks.shape == (2, 1) and (ranks >= 1).all()
    metrics = evaluate_model(tiny_model, batches)
    assert metrics["mrr"] == pytest.approx((1.0 / ranks.double()).mean().item())


def test_peft_model_ranks_with_its_active_adapter():
    """Catches the loop scoring a PeftModel with the frozen base instead of its active adapter (or failing on it)."""
    from genrec_hf.adapters import attach_adapter, lora_config

    model = _tiny_model()
    batches = _batches(num_batches=2)
    base_metrics = evaluate_model(model, batches)
    peft = attach_adapter(model, lora_config(r=2))
    with torch.no_grad():
        for name, parameter in peft.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)  # a trained-looking adapter: scores differ from the base
    peft.train()
    got = evaluate_model(peft, batches)
    assert peft.training
    assert got == pytest.approx(_brute_force(peft, batches))
    assert got["mrr"] != pytest.approx(base_metrics["mrr"])


def test_gather_receives_each_batch_and_its_output_is_used():
    """Catches `gather` (the cross-process collector) being skipped or its result ignored."""
    model = _tiny_model()
    batches = _batches(num_batches=2)
    seen = []

    def gather(ranks):
        seen.append(ranks.shape)
        return torch.cat([ranks, ranks])  # as if a second process held the same users

    ranks = rank_batches(model, batches, gather=gather)
    assert seen == [(5, 1), (5, 1)] and ranks.shape == (20, 1)


def test_protocol_availability_needs_target_time_and_both_fields():
    """Catches an availability protocol silently ranking the whole catalog when rows lack `target_time`."""
    protocol = RankingProtocol(available_since=torch.tensor([0, 5, 10]), availability_window=6)
    with pytest.raises(ValueError, match="target_time"):
        protocol.allowed({"target_ids": torch.tensor([[1]])})
    allowed = protocol.allowed({"target_time": torch.tensor([10, 5])})
    assert allowed(0, 3).tolist() == [[False, True, True], [True, True, False]]
    with pytest.raises(ValueError, match="together"):
        RankingProtocol(available_since=torch.tensor([0, 1]))
