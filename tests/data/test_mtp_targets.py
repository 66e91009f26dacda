"""Multi-token targets: the vectorised builder against a per-position loop, the collator (padded and packed) and the
bad-input errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from genrec_hf import GenRecConfig
from genrec_hf.data import NextItemCollator, generate_synthetic, time_split
from genrec_hf.data.collators import TaskCollator
from genrec_hf.data.mtp import MultiTokenTargets, check_reward_column


def _naive(targets: MultiTokenTargets, items, times, rewards, positions):
    """Position by position: scan the future events in order, keep the qualifying ones, weight them."""
    out = []
    for t in range(positions):
        chosen = []
        for j in range(t + 1, len(items)):
            r = 1.0 if rewards is None else rewards[j]
            if r <= 0 or (targets.min_reward is not None and r < targets.min_reward):
                continue
            if targets.horizon_seconds is not None and times[j] - times[t] > targets.horizon_seconds:
                break
            if targets.num_targets is not None and len(chosen) == targets.num_targets:
                break
            w = r
            if targets.half_life_seconds is not None:
                w *= math.exp(-math.log(2) * (times[j] - times[t]) / targets.half_life_seconds)
            chosen.append((items[j], w))
        if targets.weight_normalization == "position" and chosen:
            total = sum(w for _, w in chosen)
            chosen = [(y, w / total) for y, w in chosen]
        out.append(chosen)
    return out


CASES = [
    dict(num_targets=3, half_life_seconds=3600.0),
    dict(num_targets=1, half_life_seconds=None),
    dict(num_targets=None, horizon_seconds=5000.0, half_life_seconds=1800.0),
    dict(num_targets=4, horizon_seconds=3000.0, half_life_seconds=None, weight_normalization="none"),
    dict(num_targets=5, half_life_seconds=7200.0, reward_column="ratings", min_reward=3.0, weight_normalization="none"),
    dict(num_targets=2, half_life_seconds=600.0, reward_column="ratings"),
]


@pytest.mark.parametrize("case", CASES, ids=[str(i) for i in range(len(CASES))])
def test_vectorised_targets_match_a_loop(case):
    """Off-by-one in the first future event, a horizon measured from the wrong event, the count applied before
    the reward threshold, decay from the previous target instead of t_context, or weights normalised over the
    wrong axis."""
    rng = np.random.default_rng(0)
    targets = MultiTokenTargets(**case)
    for _ in range(20):
        n = int(rng.integers(1, 14))
        items = rng.integers(1, 50, n).tolist()
        times = np.cumsum(rng.choice([5, 60, 900, 3600, 40000], n)).tolist()
        rewards = rng.choice([0.0, 1.0, 2.0, 3.0, 4.0, 5.0], n).tolist() if case.get("reward_column") else None
        positions = int(rng.integers(0, n)) if n > 1 else 0
        ids, weights = targets(items, times, rewards, num_positions=positions)
        assert ids.shape[0] == positions and weights.shape == ids.shape
        expected = _naive(targets, items, times, rewards, positions)
        for t in range(positions):
            got = [(int(y), float(w)) for y, w in zip(ids[t], weights[t]) if y > 0]
            assert [y for y, _ in got] == [y for y, _ in expected[t]], (case, t)
            np.testing.assert_allclose([w for _, w in got], [w for _, w in expected[t]], rtol=1e-5, atol=1e-30)
            assert (weights[t][ids[t] == 0] == 0).all()


def test_decay_is_measured_from_the_context_last_event_and_does_not_underflow():
    """t_context taken as the first target's time (so the next event always weighs 1), or a decay of hundreds of
    half-lives underflowing to 0/0 = NaN under per-position normalisation."""
    plain = MultiTokenTargets(num_targets=2, half_life_seconds=3600.0, weight_normalization="none")
    ids, weights = plain([1, 2, 3], [0, 3600, 7200])
    assert ids[0].tolist() == [2, 3]
    np.testing.assert_allclose(weights[0], [0.5, 0.25])
    far = MultiTokenTargets(num_targets=2, half_life_seconds=1.0)
    _, weights = far([1, 2, 3], [0, 10**6, 10**6 + 1])
    assert np.isfinite(weights).all()
    np.testing.assert_allclose(weights[0], [2 / 3, 1 / 3], rtol=1e-6)


def _rows():
    return [dict(item_ids=[1, 2, 3, 4, 5, 6, 7], timestamps=[0, 10, 20, 4000, 4010, 9000, 9001],
                 action_ids=[0] * 7, ratings=[5.0, 1.0, 4.0, 4.0, 2.0, 5.0, 3.0]),
            dict(item_ids=[8, 9, 10], timestamps=[100, 200, 300], action_ids=[0] * 3, ratings=[1.0, 5.0, 5.0]),
            dict(item_ids=[11, 12, 13, 14], timestamps=[0, 1, 2, 3], action_ids=[0] * 4, ratings=[4.0] * 4)]


def test_collator_targets_never_cross_users_when_packed():
    """Targets built after packing would give a user's last positions the next user's first events as targets;
    labels must be each position's first target so `num_items_in_batch` counts the MTP-supervised positions."""
    targets = MultiTokenTargets(num_targets=3, half_life_seconds=3600.0, reward_column="ratings", min_reward=3.0)
    rows = _rows()
    padded = NextItemCollator(10, targets=targets)(rows)
    packed = NextItemCollator(10, targets=targets, packing=True)(rows)
    assert packed["input_ids"].shape[0] < len(rows)
    assert (padded["labels"] != -100).sum() == (packed["labels"] != -100).sum()
    # every packed history's targets are items of its own row, and labels are the first target
    for r in range(packed["input_ids"].shape[0]):
        starts = (packed["position_ids"][r] == 0) & (packed["attention_mask"][r] == 1)
        segment = starts.long().cumsum(0)
        for s in segment.unique().tolist():
            if s == 0:
                continue
            where = (segment == s) & (packed["attention_mask"][r] == 1)
            own = set(packed["input_ids"][r][where].tolist())
            row = next(x for x in rows if set(x["item_ids"][:-1]) == own)
            future = set(row["item_ids"])
            assert set(packed["mtp_labels"][r][where].flatten().tolist()) - {0} <= future
    for batch in (padded, packed):
        has = batch["mtp_labels"][..., 0] > 0
        assert torch.equal(batch["labels"] != -100, has)
        assert torch.equal(batch["labels"][has], batch["mtp_labels"][..., 0][has])
        assert batch["mtp_labels"].shape == batch["mtp_weights"].shape
    # user 1 (ratings 1, 5, 5): position 0 has targets 9, 10; its last input position (item 9) only 10
    row1 = padded["mtp_labels"][1, -2:]
    assert row1.tolist() == [[9, 10, 0], [10, 0, 0]]
    torch.testing.assert_close(padded["mtp_weights"][1, -1], torch.tensor([1.0, 0.0, 0.0]))


def test_packed_training_batch_gives_the_same_mtp_loss_as_padded():
    """A packed batch whose targets or weights are misaligned with its positions trains a different model than
    the padded batch of the same users."""
    from genrec_hf import GenRecForNextItemPrediction

    from tests.helpers import tiny_config

    targets = MultiTokenTargets(num_targets=3, half_life_seconds=60.0)
    model = GenRecForNextItemPrediction(tiny_config()).eval()
    padded = NextItemCollator(10, targets=targets)(_rows())
    packed = NextItemCollator(10, targets=targets, packing=True)(_rows())
    torch.testing.assert_close(model(**packed).loss, model(**padded).loss, rtol=1e-5, atol=1e-6)


def test_horizon_only_batches_pad_to_the_widest_example():
    """With only a horizon the slot count varies per example: stacking them without padding crashes the
    collator (padded or packed) on the first uneven batch."""
    targets = MultiTokenTargets(num_targets=None, horizon_seconds=100.0, half_life_seconds=None)
    for packing in (False, True):
        batch = NextItemCollator(10, targets=targets, packing=packing)(_rows())
        assert batch["mtp_labels"].shape[-1] == 3  # user 2: events 1 s apart, three within 100 s
        assert batch["mtp_labels"].shape == batch["mtp_weights"].shape


@pytest.mark.parametrize(("fields", "message"), [
    (dict(num_targets=0), r"num_targets=0 is invalid"),
    (dict(num_targets=-3), r"num_targets=-3 is invalid"),
    (dict(half_life_seconds=-3600.0), r"half_life_seconds=-3600.0 is invalid"),
    (dict(horizon_seconds=0), r"horizon_seconds=0 is invalid"),
    (dict(num_targets=None), r"num_targets=None is invalid.*at least one"),
    (dict(min_reward=3.0), r"min_reward=3.0 is invalid.*reward_column"),
    (dict(weight_normalization="sum"), r"weight_normalization='sum' is invalid"),
])
def test_bad_mtp_targets_name_the_value(fields, message):
    """A bad K, a negative half-life or a threshold without a reward column accepted, then failing (or training
    nonsense) deep inside a run."""
    with pytest.raises(ValueError, match=message):
        MultiTokenTargets(**fields)


@pytest.mark.parametrize(("section", "message"), [
    ({"type": "nxt"}, r"objective.type='nxt'; expected one of \['mtp', 'ntp'\]"),
    ({"type": "mtp", "num_targets": 0}, r"objective: num_targets=0 is invalid"),
    ({"type": "mtp", "min_reward": 3.0}, r"objective: min_reward=3.0 is invalid"),
    ({"type": "ntp", "num_targets": 0}, r"objective: num_targets=0 is invalid"),  # checked whatever the type
])
def test_the_recipe_objective_section_is_checked_before_any_work(section, message):
    """The objective section reaching the collator unchecked: a typo in `type` silently training NTP, or a bad K
    of an NTP recipe waiting until someone switches it to MTP."""
    from genrec_hf.training.recipes import recipe_from_dict

    with pytest.raises(ValueError, match=message):
        recipe_from_dict({"objective": section})


def test_old_checkpoints_with_objective_fields_still_load(tmp_path):
    """Configs saved before the objective left the model config carry `objective` / `mtp_*`: they must load (and
    re-save without them), not fail on unknown fields or keep training-only keys forever."""
    import json

    config = GenRecConfig(vocab_size=11)
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    saved.update(objective="mtp", mtp_num_targets=3, mtp_reward_column="ratings")
    (tmp_path / "config.json").write_text(json.dumps(saved))
    loaded = GenRecConfig.from_pretrained(tmp_path)
    assert loaded.vocab_size == 11 and not hasattr(loaded, "objective") and not hasattr(loaded, "mtp_num_targets")
    loaded.save_pretrained(tmp_path / "again")
    assert "objective" not in json.loads((tmp_path / "again" / "config.json").read_text())


def test_reward_column_absent_non_numeric_or_negative():
    """A reward column that is missing, text or negative reaching the weights as NaN or a KeyError mid-epoch."""
    from datasets import Dataset, Features, Sequence, Value

    data = generate_synthetic(num_users=20, num_items=30, num_clusters=3)
    with pytest.raises(ValueError, match=r"reward_column='watch_time' is not a column.*'ratings'"):
        check_reward_column(data.sequences, "watch_time")
    text = Dataset.from_dict({"item_ids": [[1, 2]], "labels_text": [["a", "b"]]},
                             features=Features({"item_ids": Sequence(Value("int64")),
                                                "labels_text": Sequence(Value("string"))}))
    with pytest.raises(ValueError, match=r"reward_column='labels_text' is not a per-event numeric column"):
        check_reward_column(text, "labels_text")
    negative = Dataset.from_dict({"item_ids": [[1, 2]], "score": [[1.0, -2.0]]})
    with pytest.raises(ValueError, match=r"reward_column='score' holds -2.0"):
        check_reward_column(negative, "score")
    check_reward_column(data.sequences, "ratings")  # fine


def test_collator_refuses_targets_for_eval_and_task_rows():
    """Multi-token targets silently ignored in eval batches, or built from a task row's labels, train or rank
    something other than what the recipe says."""
    targets = MultiTokenTargets()
    with pytest.raises(ValueError, match="training batches only"):
        NextItemCollator(10, mode="eval", targets=targets)
    with pytest.raises(ValueError, match="NextItemCollator"):
        TaskCollator(10, targets=targets)([dict(item_ids=[1, 2], labels=[2, -100])])


def test_pretrain_refuses_a_horizon_without_timestamps(tmp_path):
    """Data without timestamps (event order 0, 1, 2, ...) would make a 1-hour half-life or horizon silently mean
    'one event', so it is an error naming the values."""
    import dataclasses

    from genrec_hf.training.pipeline import RunData, multi_token_targets
    from genrec_hf.training.recipes import recipe_from_dict

    data = generate_synthetic(num_users=20, num_items=30, num_clusters=3)
    data = dataclasses.replace(data, has_timestamps=False)
    splits = time_split(generate_synthetic(num_users=20, num_items=30, num_clusters=3), quantile=0.9)
    run = RunData(data=data, splits=splits, train_windows=splits["train"])
    recipe = lambda **objective: recipe_from_dict({"objective": objective})  # noqa: E731
    with pytest.raises(ValueError, match=r"half_life_seconds=3600.0 needs timestamps"):
        multi_token_targets(recipe(type="mtp"), run)
    assert multi_token_targets(recipe(type="mtp", half_life_seconds=None), run) is not None
    assert multi_token_targets(recipe(), run) is None
    with pytest.raises(ValueError, match=r"reward_column='rating' is not a column"):
        multi_token_targets(recipe(type="mtp", half_life_seconds=None, reward_column="rating"), run)
