"""Downstream tasks: builders on synthetic and real data, set-valued metrics vs brute force, custom tasks."""

from __future__ import annotations

import math

import pytest
import torch

from genrec_hf.data.tasks import (
    TASKS,
    EvalSpec,
    TaskCollator,
    build_task,
    evaluate_task,
    multi_target_ranks,
    register_task,
    set_metrics_from_ranks,
    single_target_task,
    task_ranks,
)

from tests.helpers import require_shared_data, tiny_config

BUILTIN = ("short_horizon", "long_horizon", "availability", "high_engagement")


@pytest.fixture(scope="module")
def synthetic():
    from genrec_hf.data import load_interactions

    return load_interactions("synthetic:num_users=150,num_items=80,num_clusters=5,seed=1")


def _brute_positions(scores, targets, exclude, allowed):
    """Position of each target in the fully sorted list of rankable items (ties: target last)."""
    out = torch.zeros_like(targets)
    for b in range(scores.shape[0]):
        for t in range(targets.shape[1]):
            y = int(targets[b, t])
            if y == 0:
                continue
            tset = set(targets[b].tolist()) - {0}
            rankable = [j for j in range(1, scores.shape[1])
                        if j in tset or (j not in set(exclude[b].tolist()) and bool(allowed[b, j]))]
            out[b, t] = 1 + sum(1 for j in rankable if j != y and scores[b, j] >= scores[b, y])
    return out


@pytest.mark.parametrize("chunk", [3, 7, 100])
def test_multi_target_ranks_match_brute_force(chunk):
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 5, (6, 20), generator=g).float()  # many ties
    targets = torch.tensor([[3, 0, 0], [5, 6, 7], [1, 2, 0], [19, 4, 0], [8, 0, 0], [2, 9, 11]])
    exclude = torch.tensor([[3, 4, 0], [1, 6, 0], [0, 0, 0], [5, 6, 7], [9, 10, 11], [2, 0, 0]])
    allowed = torch.rand(6, 20, generator=g) > 0.3
    ranks = multi_target_ranks(lambda a, b: scores[:, a:b], 20, targets, exclude_ids=exclude,
                               allowed_fn=lambda a, b: allowed[:, a:b], chunk_size=chunk)
    assert torch.equal(ranks, _brute_positions(scores, targets, exclude, allowed))


def test_set_metrics_definitions():
    ranks = torch.tensor([[3, 1, 12], [4, 0, 0], [20, 30, 0]])
    m = set_metrics_from_ranks(ranks, ks=(1, 10))
    assert m["num_users"] == 3
    assert math.isclose(m["mrr"], (1 / 1 + 1 / 4 + 1 / 20) / 3)
    assert math.isclose(m["hr@1"], 1 / 3) and math.isclose(m["hr@10"], 2 / 3)
    assert math.isclose(m["recall@10"], (2 / 3 + 1 + 0) / 3)
    ndcg_u0 = (1 / math.log2(4) + 1 / math.log2(2)) / (1 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4))
    assert math.isclose(m["ndcg@10"], (ndcg_u0 + 1 / math.log2(5) + 0) / 3)


def test_single_target_metrics_are_the_standard_ones():
    ranks = torch.tensor([1, 3, 11, 2, 50])
    m = set_metrics_from_ranks(ranks[:, None], ks=(10,))
    assert math.isclose(m["mrr"], float((1.0 / ranks.double()).mean()))
    assert math.isclose(m["hr@10"], 0.6) and math.isclose(m["recall@10"], 0.6)
    assert math.isclose(m["ndcg@10"], float((1 / torch.log2(ranks[ranks <= 10].double() + 1)).sum() / 5))
    try:
        from genrec_hf.evaluation import metrics_from_ranks
    except ImportError:
        return
    ref = metrics_from_ranks(ranks, ks=(10,))
    for key in ("mrr", "hr@10", "ndcg@10"):
        assert math.isclose(m[key], float(ref[key]), rel_tol=1e-6), key


def _check_task(task, data):
    assert len(task.train) > 0 and len(task.validation) > 0 and len(task.test) > 0
    by_user = {str(r["user_id"]): list(r["item_ids"]) for r in data.sequences}
    vals = {r["user_id"]: r for r in task.validation}
    for row in task.test.select(range(min(30, len(task.test)))):
        full = by_user[row["user_id"]]
        assert row["item_ids"] == full[:len(row["item_ids"])]  # context is a prefix of the history
        assert row["target_ids"] and all(0 < t < len(data.vocab) for t in row["target_ids"])
        val = vals[row["user_id"]]
        assert len(val["item_ids"]) < len(row["item_ids"])  # validation strictly earlier than test
    for row in task.train.select(range(min(30, len(task.train)))):
        assert len(row["labels"]) == len(row["item_ids"])
        assert any(label != -100 for label in row["labels"])
        cut = len(vals[row["user_id"]]["item_ids"])
        assert len(row["item_ids"]) <= cut  # training never sees the validation target or later


@pytest.mark.parametrize("name", BUILTIN)
def test_task_builds_on_synthetic(synthetic, name):
    task = build_task(name, synthetic)
    _check_task(task, synthetic)
    assert task.spec.set_valued == (name == "long_horizon")
    if name == "availability":
        since, window = task.spec.available_since, task.spec.availability_window
        for row in task.test.select(range(10)):
            t = row["target_time"]
            assert all(t - window < int(since[y]) <= t for y in row["target_ids"])
    if name == "high_engagement":
        ratings = {(str(r["user_id"]), len(r["item_ids"])): r["ratings"] for r in synthetic.sequences}
        for row in task.test.select(range(10)):
            full = next(r for r in synthetic.sequences if str(r["user_id"]) == row["user_id"])
            assert full["ratings"][len(row["item_ids"])] >= 4


@pytest.mark.parametrize("name", BUILTIN)
def test_task_builds_on_ml100k(name):
    from genrec_hf.data import load_interactions

    data = load_interactions(require_shared_data("ml-100k"))
    _check_task(build_task(name, data), data)


def test_custom_task_registration(synthetic):
    @register_task("every_third_test")
    def every_third(data, offset: int = 0):
        return single_target_task(data, lambda row, i: (i + offset) % 3 == 0, name="every_third_test",
                                  params={"offset": offset})

    try:
        task = build_task("every_third_test", synthetic, offset=1)
        assert task.params == {"offset": 1}
        assert all((len(r["item_ids"]) + 1) % 3 == 0 for r in task.test)
        _check_task(task, synthetic)
    finally:
        TASKS.pop("every_third_test")
    with pytest.raises(ValueError, match="Unknown task"):
        build_task("every_third_test", synthetic)


def test_evaluate_task_end_to_end(synthetic):
    from genrec_hf import GenRecForNextItemPrediction

    torch.manual_seed(0)
    model = GenRecForNextItemPrediction(tiny_config(vocab_size=len(synthetic.vocab), num_action_types=6)).eval()
    for name in ("long_horizon", "availability"):
        task = build_task(name, synthetic)
        metrics = evaluate_task(model, task.test, task.spec, max_length=16, batch_size=64, ks=(10,))
        assert metrics["num_users"] == len(task.test) and 0 < metrics["mrr"] <= 1
    # Availability restricts the ranked set: ranks never exceed the number of items new at the target time.
    task = build_task("availability", synthetic)
    batch = TaskCollator(16, mode="eval")([task.test[i] for i in range(8)])
    ranks = task_ranks(model, batch, task.spec)
    since = task.spec.available_since
    for b in range(8):
        t = int(batch["target_time"][b])
        new = int(((since > t - task.spec.availability_window) & (since <= t)).sum())
        assert 1 <= int(ranks[b, 0]) <= new
    unrestricted = task_ranks(model, batch, EvalSpec())
    assert (unrestricted[:, 0] >= ranks[:, 0]).all()
