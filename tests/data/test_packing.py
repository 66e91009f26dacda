"""Packed training batches (`NextItemCollator(packing=True)` + `position_ids`) against the padded reference, and
length grouping (`with_lengths` + Trainer's `LengthGroupedSampler`)."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset
from torch.utils.data import RandomSampler
from transformers.trainer_pt_utils import LengthGroupedSampler

from genrec_hf import GenRecForNextItemPrediction
from genrec_hf.data import IGNORE_INDEX, NextItemCollator
from genrec_hf.data.collators import LENGTH_COLUMN, TaskCollator, first_fit_decreasing, with_lengths
from genrec_hf.data.interactions import SEQUENCE_FEATURES
from genrec_hf.models.genrec import modeling_genrec
from genrec_hf.models.genrec.modeling_genrec import time_gap_buckets

from tests.helpers import tiny_config

MAX_LENGTH = 12
LENGTHS = [1, 2, 13, 3, 1, 5, 20, 0, 2, 7, 1, 4]  # input events per row (0 = a single-event row, nothing to learn)


def event_rows(lengths: list[int] = LENGTHS, seed: int = 0) -> list[dict]:
    """Rows of `n + 1` events (n inputs), random items, gaps from seconds to months, and action types."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for u, n in enumerate(lengths):
        gaps = (10 ** torch.randint(0, 8, (n + 1,), generator=g)) * torch.randint(1, 9, (n + 1,), generator=g)
        rows.append({"user_id": str(u), "item_ids": torch.randint(1, 41, (n + 1,), generator=g).tolist(),
                     "timestamps": torch.cumsum(gaps, 0).tolist(),
                     "action_ids": torch.randint(0, 3, (n + 1,), generator=g).tolist(),
                     "ratings": [1.0] * (n + 1)})
    return rows


def segments(packed: dict[str, torch.Tensor], rows: list[dict], max_length: int) -> list[tuple[int, int, int, int]]:
    """(example, packed row, start, length) of every non-empty example, in `first_fit_decreasing` order."""
    lengths = [min(len(r["item_ids"]), max_length + 1) - 1 for r in rows]
    starts = (packed["position_ids"] == 0) & packed["attention_mask"].bool()
    out = []
    for r, indices in enumerate(first_fit_decreasing(lengths, max_length)):
        row_starts = starts[r].nonzero().flatten().tolist()
        assert len(row_starts) == len(indices)
        out.extend((i, r, s, lengths[i]) for i, s in zip(indices, row_starts))
    return out


# ---------------------------------------------------------------------------------------------------------------------
# The packer and the packed batch


def test_first_fit_decreasing_bins():
    """Catches a bin over capacity, an example dropped or packed twice, or an order that depends on anything but
    the lengths (the packed batch must be reproducible)."""
    lengths = [3, 1, 4, 0, 2, 5, 5, 1]
    bins = first_fit_decreasing(lengths, 5)
    assert bins == [[5], [6], [2, 1], [0, 4], [7]]
    assert sorted(i for b in bins for i in b) == [i for i, n in enumerate(lengths) if n]
    assert all(sum(lengths[i] for i in b) <= 5 for b in bins)
    assert first_fit_decreasing([0, 0], 3) == []
    with pytest.raises(ValueError, match="does not fit"):
        first_fit_decreasing([4], 3)


@pytest.mark.parametrize("side", ["left", "right"])
def test_packed_batch_layout(side):
    """Catches packed rows whose labels drift from their inputs, positions that do not restart at each history,
    or a batch that supervises other positions (or another count, i.e. another `num_items_in_batch`) than the
    padded batch of the same rows."""
    rows = [{"item_ids": list(range(10 * u + 1, 10 * u + n + 2)), "timestamps": [100 * i for i in range(n + 1)]}
            for u, n in enumerate([3, 1, 4, 2, 0])]
    packed = NextItemCollator(5, padding_side=side, packing=True)(rows)
    assert set(packed) == {"input_ids", "attention_mask", "timestamps", "action_ids", "labels", "position_ids"}
    assert all(t.dtype == torch.long and t.shape == (2, 5) for t in packed.values())
    assert packed["input_ids"].tolist() == [[21, 22, 23, 24, 11], [1, 2, 3, 31, 32]]
    assert packed["labels"].tolist() == [[22, 23, 24, 25, 12], [2, 3, 4, 32, 33]]
    assert packed["position_ids"].tolist() == [[0, 1, 2, 3, 0], [0, 1, 2, 0, 1]]
    assert packed["timestamps"].tolist() == [[0, 100, 200, 300, 0], [0, 100, 200, 0, 100]]
    padded = NextItemCollator(5, padding_side=side)(rows)
    assert sorted(packed["labels"][packed["labels"] != IGNORE_INDEX].tolist()) == \
        sorted(padded["labels"][padded["labels"] != IGNORE_INDEX].tolist())
    assert int(packed["attention_mask"].sum()) == int(padded["attention_mask"].sum()) == 10

    short = NextItemCollator(5, padding_side=side, packing=True)([rows[0], rows[2]])
    expected = [[1, 1, 1, 1], [1, 1, 1, 0]] if side == "right" else [[1, 1, 1, 1], [0, 1, 1, 1]]
    assert short["attention_mask"].tolist() == expected  # as wide as the fullest row, not max_length
    pad = short["attention_mask"] == 0
    assert (short["position_ids"][pad] == 0).all() and (short["labels"][pad] == IGNORE_INDEX).all()
    empty = NextItemCollator(5, packing=True)([rows[4]])
    assert empty["input_ids"].tolist() == [[0]] and empty["labels"].tolist() == [[IGNORE_INDEX]]


def test_packing_is_train_only():
    """Catches eval batches being packed: each eval row's user embedding is read at its last event, which a packed
    row shares among users."""
    with pytest.raises(ValueError, match="training batches only"):
        NextItemCollator(5, mode="eval", packing=True)


def test_task_rows_pack_like_event_rows():
    """Catches task rows (labels with -100 gaps, e.g. fine-tuning) losing or shifting labels when packed."""
    rows = [{"user_id": "a", "item_ids": [1, 2, 3], "labels": [-100, 7, 8]},
            {"user_id": "b", "item_ids": [4, 5], "labels": [9, -100]}]
    packed = TaskCollator(6, padding_side="right", packing=True)(rows)
    assert packed["input_ids"].tolist() == [[1, 2, 3, 4, 5]]
    assert packed["labels"].tolist() == [[-100, 7, 8, 9, -100]]
    assert packed["position_ids"].tolist() == [[0, 1, 2, 0, 1]]


def test_segment_start_has_no_time_gap():
    """Catches the first event of a packed history getting the gap since the previous user's last event."""
    timestamps = torch.tensor([[0, 10, 10**6, 10**6 + 5]])
    mask = torch.ones_like(timestamps)
    plain = time_gap_buckets(timestamps, mask, 8, 10**7)
    starts = torch.tensor([[True, False, True, False]])
    packed = time_gap_buckets(timestamps, mask, 8, 10**7, segment_starts=starts)
    assert plain[0, 2] > 0 and packed[0, 2] == 0
    assert packed[0, 0] == 0 and torch.equal(packed[0, [1, 3]], plain[0, [1, 3]])


# ---------------------------------------------------------------------------------------------------------------------
# Packed == padded through the model


def _both(model, rows, seed: int = 0, **collator):
    padded = NextItemCollator(MAX_LENGTH, **collator)(rows)
    packed = NextItemCollator(MAX_LENGTH, packing=True, **collator)(rows)
    count = int((padded["labels"] != IGNORE_INDEX).sum())
    assert count == int((packed["labels"] != IGNORE_INDEX).sum())
    assert packed["input_ids"].shape[0] < padded["input_ids"].shape[0]
    outputs = []
    for batch in (padded, packed):
        torch.manual_seed(seed)  # the same sampled negatives for both
        outputs.append(model(**batch, num_items_in_batch=count))
    return padded, packed, outputs


def _per_position_losses(model, hidden, labels):
    logits = model.score(model.head(hidden))
    return torch.nn.functional.cross_entropy(logits, labels, reduction="none")


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("positions", ["rope", "learned", "none"])
def test_packed_losses_and_gradients_equal_padded(positions, side):
    """Catches any leak between packed histories (attention across a segment boundary, positions or time gaps
    carried over from the previous user, padding supervised): per-position hidden states and losses, the summed
    loss and every gradient after one backward must equal those of the padded batch of the same rows."""
    torch.manual_seed(0)
    model = GenRecForNextItemPrediction(tiny_config(position_encoding=positions)).train()  # dropout is 0
    rows = event_rows()
    padded, packed, (a, b) = _both(model, rows, padding_side=side)
    width = padded["input_ids"].shape[1]
    checked = 0
    for i, r, start, n in segments(packed, rows, MAX_LENGTH):
        at = slice(width - n, width) if side == "left" else slice(0, n)
        torch.testing.assert_close(b.last_hidden_state[r, start:start + n], a.last_hidden_state[i, at],
                                   rtol=1e-5, atol=1e-5)
        labels = padded["labels"][i, at]
        assert torch.equal(packed["labels"][r, start:start + n], labels)
        torch.testing.assert_close(_per_position_losses(model, b.last_hidden_state[r, start:start + n], labels),
                                   _per_position_losses(model, a.last_hidden_state[i, at], labels),
                                   rtol=1e-5, atol=1e-5)
        checked += n
    assert checked == int(padded["attention_mask"].sum())
    torch.testing.assert_close(b.loss, a.loss, rtol=1e-5, atol=1e-6)

    grads = []
    for out in (a, b):
        model.zero_grad()
        out.loss.backward()
        grads.append({name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("overrides", [
    dict(negative_sharing="batch", in_batch_negatives=True, negative_sampler="popularity"),
    dict(negative_sharing="batch", remove_accidental_hits=False, l2_normalize_scores=True, score_temperature=0.1),
], ids=["batch_inbatch_popularity_logq", "batch_cosine"])
def test_packed_sampled_softmax_equals_padded(overrides):
    """Catches the sampled head seeing another set of candidates in a packed batch: batch-shared negatives drawn
    from the same seed and in-batch negatives (the batch's positives, whatever their order) must give the padded
    batch's loss and gradients."""
    torch.manual_seed(0)
    model = GenRecForNextItemPrediction(tiny_config(loss_type="sampled", num_negatives=8, **overrides)).train()
    model.set_item_frequencies(torch.arange(41, dtype=torch.float64) % 5)
    _, _, (a, b) = _both(model, event_rows(seed=1), seed=7)
    torch.testing.assert_close(b.loss, a.loss, rtol=1e-5, atol=1e-6)
    grads = []
    for out in (a, b):
        model.zero_grad()
        out.loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)


def test_packed_position_negatives_equal_padded_when_draws_match(monkeypatch):
    """Catches the per-position sampled path mis-pairing queries and negatives in a packed batch. Real per-position
    draws come in row-major order of supervised positions, which packing permutes (equal only in distribution), so
    the sampler is replaced by one giving every position the same negatives."""
    monkeypatch.setattr(modeling_genrec, "sample_negatives",
                        lambda num_items, shape, **_: (torch.arange(shape[-1]) % (num_items - 1) + 1).expand(shape))
    torch.manual_seed(0)
    model = GenRecForNextItemPrediction(tiny_config(loss_type="sampled", num_negatives=8,
                                                    negative_sharing="position", in_batch_negatives=True)).train()
    _, _, (a, b) = _both(model, event_rows(seed=2))
    torch.testing.assert_close(b.loss, a.loss, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------------
# Length grouping


def _windows(lengths: list[int]) -> Dataset:
    rows = event_rows(lengths)
    return Dataset.from_list(rows, features=SEQUENCE_FEATURES)


def test_with_lengths_counts_collated_inputs():
    """Catches a length column that disagrees with what the collator feeds (off by the label event, or not capped at
    `max_length`), which would group rows by the wrong size."""
    dataset = with_lengths(_windows(LENGTHS), MAX_LENGTH)
    assert dataset[LENGTH_COLUMN] == [min(n, MAX_LENGTH) for n in LENGTHS]
    collator = NextItemCollator(MAX_LENGTH)
    assert [int(collator([r])["attention_mask"].sum()) for r in dataset] == dataset[LENGTH_COLUMN]
    again = with_lengths(dataset, 4)  # replaces an existing column
    assert again[LENGTH_COLUMN] == [min(n, 4) for n in LENGTHS]
    tasks = Dataset.from_list([{"item_ids": [1] * n, "labels": [2] * n} for n in (0, 3, 9)])
    assert with_lengths(tasks, 5, labelled=True)[LENGTH_COLUMN] == [0, 3, 5]


def test_length_grouped_batches_pad_less_and_score_the_same():
    """Catches grouping that does not reduce padding on heavy-tailed histories, drops or repeats rows, loses its
    randomness across epochs, or changes a row's loss (padding invariance: a row scores the same in any batch)."""
    g = torch.Generator().manual_seed(0)
    lengths = torch.clamp(torch.distributions.Pareto(1.0, 1.2).sample((400,)).long(), max=40).tolist()
    dataset = with_lengths(_windows(lengths), MAX_LENGTH)
    collator = NextItemCollator(MAX_LENGTH)

    def padding_fraction(order: list[int]) -> float:
        real = total = 0
        for start in range(0, len(order), 32):
            mask = collator([dataset[i] for i in order[start:start + 32]])["attention_mask"]
            real, total = real + int(mask.sum()), total + mask.numel()
        return 1 - real / total

    grouped = LengthGroupedSampler(32, lengths=dataset[LENGTH_COLUMN])
    order, order_again = list(grouped), list(grouped)
    assert sorted(order) == list(range(400)) and order != order_again  # a new grouping every epoch
    shuffled = list(RandomSampler(dataset, generator=g))
    assert padding_fraction(order) < 0.7 * padding_fraction(shuffled)

    torch.manual_seed(0)
    model = GenRecForNextItemPrediction(tiny_config()).eval()

    def row_losses(order: list[int]) -> dict[int, torch.Tensor]:
        losses = {}
        for start in range(0, 96, 32):
            ids = order[start:start + 32]
            batch = collator([dataset[i] for i in ids])
            out = model(**batch)
            for k, i in enumerate(ids):
                labels = batch["labels"][k]
                keep = labels != IGNORE_INDEX
                losses[i] = _per_position_losses(model, out.last_hidden_state[k][keep], labels[keep])
        return losses

    in_groups, at_random = row_losses(order), row_losses(shuffled)
    common = set(in_groups) & set(at_random)
    assert common
    for i in common:
        torch.testing.assert_close(in_groups[i], at_random[i], rtol=1e-5, atol=1e-5)
