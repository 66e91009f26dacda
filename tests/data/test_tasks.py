"""Downstream tasks: builders on synthetic and real data, task protocols ranked vs brute force, custom tasks."""

from __future__ import annotations

import math

import pytest
import torch

from torch.utils.data import DataLoader

from genrec_hf.data.collators import TaskCollator
from genrec_hf.data.tasks import TASKS, build_task, register_task, single_target_task
from genrec_hf.evaluation import RankingProtocol, evaluate_model, metrics_from_ranks, rank_batches

from tests.helpers import require_shared_data, tiny_config

BUILTIN = ("short_horizon", "long_horizon", "availability", "high_engagement")


@pytest.fixture(scope="module")
def synthetic():
    from genrec_hf.data import load_interactions

    return load_interactions("synthetic:num_users=150,num_items=80,num_clusters=5,seed=1")


def _brute_positions(scores, targets, exclude, allowed):
    """Position of each target in the fully sorted list of rankable items (ties and NaN: target last)."""
    out = torch.zeros_like(targets)
    for b in range(scores.shape[0]):
        for t in range(targets.shape[1]):
            y = int(targets[b, t])
            if y == 0:
                continue
            tset = set(targets[b].tolist()) - {0}
            rankable = [j for j in range(1, scores.shape[1])
                        if j in tset or (j not in set(exclude[b].tolist()) and bool(allowed[b, j]))]
            s_y = float(scores[b, y])
            out[b, t] = 1 + sum(1 for j in rankable if j != y and (float(scores[b, j]) >= s_y
                                                                  or math.isnan(float(scores[b, j]))
                                                                  or math.isnan(s_y)))
    return out


def _model(synthetic):
    from genrec_hf import GenRecForNextItemPrediction

    torch.manual_seed(0)
    return GenRecForNextItemPrediction(tiny_config(vocab_size=len(synthetic.vocab), num_action_types=6)).eval()


def _task_brute_force(model, task, rows, max_length=16):
    """Ranks of `rows` from the model's dense logits, the protocol applied in Python (history, availability)."""
    batch = TaskCollator(max_length, mode="eval", exclude_history=task.protocol.exclude_history)(rows)
    with torch.no_grad():
        logits = model(batch["input_ids"], attention_mask=batch["attention_mask"], timestamps=batch["timestamps"],
                       action_ids=batch["action_ids"], output_logits=True).logits
    vocab = logits.shape[1]
    exclude = batch.get("exclude_ids", torch.zeros(len(rows), 1, dtype=torch.long))
    allowed = torch.ones(len(rows), vocab, dtype=torch.bool)
    if task.protocol.available_since is not None:
        since, window = task.protocol.available_since, task.protocol.availability_window
        for b, row in enumerate(rows):
            t = row["target_time"]
            allowed[b] = torch.tensor([t - window < int(since[j]) <= t for j in range(vocab)])
    return _brute_positions(logits, batch["target_ids"], exclude, allowed)


@pytest.mark.parametrize("name", ["long_horizon", "availability"])
def test_task_protocol_ranks_equal_brute_force(synthetic, name):
    """Catches the task path (set-valued targets, availability window, history) drifting from the protocol's
    rule: the numbers fine-tuning reports must be the brute-force ones for the same model and rows."""
    model = _model(synthetic)
    task = build_task(name, synthetic)
    rows = [task.test[i] for i in range(min(24, len(task.test)))]
    expected = _task_brute_force(model, task, rows)
    loader = DataLoader(rows, batch_size=7, collate_fn=TaskCollator(16, mode="eval"))
    got = rank_batches(model, loader, task.protocol, chunk_size=9)
    assert torch.equal(got, torch.nn.functional.pad(expected, (0, got.shape[1] - expected.shape[1])))
    if name == "long_horizon":
        assert (expected > 0).sum(dim=1).max() > 1  # really several targets per row
    assert evaluate_model(model, loader, task.protocol, ks=(1, 10)) == metrics_from_ranks(expected, ks=(1, 10))


def test_nan_target_is_ranked_last_not_dropped(synthetic):
    """Catches the old `tasks.multi_target_ranks` bug: a NaN target score gave rank 0, so the user silently left
    the task metrics and NaN items never counted against a target (a diverged model looked better)."""
    model = _model(synthetic)
    task = build_task("long_horizon", synthetic)
    rows = [task.test[i] for i in range(8)]
    broken = rows[0]["target_ids"][0]
    with torch.no_grad():
        model.item_vectors[broken] = float("nan")
    ranks = rank_batches(model, [TaskCollator(16, mode="eval")(rows)], task.protocol)
    assert (ranks[:, 0] > 0).all()  # every user keeps a rank
    assert torch.equal(ranks, _task_brute_force(model, task, rows))
    assert metrics_from_ranks(ranks)["num_users"] == 8


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
    """Catches a builder leaking future events into contexts or training rows, a wrong protocol
    (set-valued / availability window), or targets outside the task's definition."""
    task = build_task(name, synthetic)
    _check_task(task, synthetic)
    assert task.protocol.set_valued == (name == "long_horizon")
    if name == "availability":
        since, window = task.protocol.available_since, task.protocol.availability_window
        for row in task.test.select(range(10)):
            t = row["target_time"]
            assert all(t - window < int(since[y]) <= t for y in row["target_ids"])
    if name == "high_engagement":
        for row in task.test.select(range(10)):
            full = next(r for r in synthetic.sequences if str(r["user_id"]) == row["user_id"])
            assert full["ratings"][len(row["item_ids"])] >= 4


@pytest.mark.parametrize("name", BUILTIN)
def test_task_builds_on_ml100k(name):
    """Catches builders that only work on synthetic data (real ratings, timestamps, release dates)."""
    from genrec_hf.data import load_interactions

    data = load_interactions(require_shared_data("ml-100k"))
    _check_task(build_task(name, data), data)


def test_custom_task_registration(synthetic):
    """Catches `register_task` / `build_task` / `single_target_task` (the public extension API) breaking."""
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


def test_documented_custom_task_example_runs(synthetic):
    """Catches the module docstring's "register your own task" example going stale against the API."""
    import genrec_hf.data.tasks as tasks_module

    doc = tasks_module.__doc__
    code = doc[doc.index("Registering your own task::") + len("Registering your own task::"):]
    code = "\n".join(line[4:] for line in code.splitlines())
    namespace = {"data": synthetic}
    try:
        exec(compile(code, "tasks-docstring", "exec"), namespace)
        task = namespace["task"]
        assert task.name == "weekend" and len(task.test) > 0 and isinstance(task.protocol, RankingProtocol)
    finally:
        TASKS.pop("weekend", None)


def test_task_evaluation_end_to_end(synthetic):
    """Catches the availability window not restricting the ranked set, or a task protocol losing users."""
    model = _model(synthetic)
    for name in ("long_horizon", "availability"):
        task = build_task(name, synthetic)
        loader = DataLoader(task.test, batch_size=64, collate_fn=TaskCollator(16, mode="eval"))
        metrics = evaluate_model(model, loader, task.protocol, ks=(10,))
        assert metrics["num_users"] == len(task.test) and 0 < metrics["mrr"] <= 1
    # Availability restricts the ranked set: ranks never exceed the number of items new at the target time.
    task = build_task("availability", synthetic)
    batch = TaskCollator(16, mode="eval")([task.test[i] for i in range(8)])
    ranks = rank_batches(model, [batch], task.protocol)
    since = task.protocol.available_since
    for b in range(8):
        t = int(batch["target_time"][b])
        new = int(((since > t - task.protocol.availability_window) & (since <= t)).sum())
        assert 1 <= int(ranks[b, 0]) <= new
    unrestricted = rank_batches(model, [batch], RankingProtocol())
    assert (unrestricted[:, 0] >= ranks[:, 0]).all()


@pytest.mark.parametrize(("name", "params", "message"), [
    ("long_horizon", {"start_days": 30, "end_days": 7},
     r"task long_horizon: start_days=30 must be less than end_days=7"),
    ("long_horizon", {"start_events": 5, "end_events": 5}, r"start_events=5 must be less than end_events=5"),
    ("availability", {"window_days": 0}, r"window_days=0 and window_events=2000 must be > 0"),
])
def test_task_parameters_that_select_nothing_name_the_parameter(synthetic, name, params, message):
    """Issue 27 A3/A4: a fine-tune task selecting nobody (`threshold: 99`, `start_days > end_days`) trained on
    nothing and failed at evaluation with "No ranks to average", naming neither the task nor the parameter."""
    with pytest.raises(ValueError, match=message):
        build_task(name, synthetic, **params)


def test_a_task_selecting_nobody_is_named_before_training(synthetic):
    from genrec_hf.data.tasks import require_eligible_users

    task = build_task("high_engagement", synthetic, threshold=99)  # building it is fine (a validation cut may use it)
    with pytest.raises(ValueError, match=r"task 'high_engagement' \(threshold=99, exclude_history=True\) has no "
                                         r"eligible user in synthetic: its train and validation and test rows"):
        require_eligible_users(task, "synthetic")


def test_task_parameters_are_checked_with_the_recipe_before_any_data(tmp_path):
    from genrec_hf.training import FinetuneRecipe, recipe_from_dict

    raw = {"data": {"source": str(tmp_path / "not-read-yet.csv")},
           "task": {"name": "long_horizon", "params": {"start_days": 30, "end_days": 7}}}
    with pytest.raises(ValueError, match=r"recipe: task.params: task long_horizon: start_days=30 must be less"):
        recipe_from_dict(raw, kind=FinetuneRecipe)
