"""Invariants every GenRec model variant must keep, in the spirit of transformers' `ModelTesterMixin`.

`GenRecModelTester` builds a tiny config and inputs for one `Variant`; every test runs over every entry of
`VARIANTS`. A new variant (another head, another loss, another input feature) joins the whole battery by adding
one entry there. Each test's docstring names the bug it would catch.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from transformers import AutoModel
from transformers.utils import ModelOutput

from genrec_hf import GenRecForNextItemPrediction, GenRecModel
from genrec_hf.models.genrec import modeling_genrec
from genrec_hf.data.collators import first_fit_decreasing
from genrec_hf.models.genrec.losses import item_log_probabilities

from tests.helpers import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


TOWER_SCHEMA = [dict(name="genres", kind="multi_hot", dim=4, categories=["a", "b", "c", "d"]),
                dict(name="year", kind="numeric", dim=1, mean=0.0, std=1.0),
                dict(name="text", kind="dense", dim=3)]


@dataclass(frozen=True)
class Variant:
    """One model class + config overrides (on top of `tests.helpers.tiny_config`)."""

    name: str
    model_class: type
    overrides: dict[str, Any] = field(default_factory=dict)
    mtp_targets: int = 0  # > 0: training batches carry this many weighted targets per position (multi-token)

    @property
    def has_head(self) -> bool:
        return self.model_class is not GenRecModel


VARIANTS = [
    Variant("full_softmax", GenRecForNextItemPrediction),
    Variant("sampled_batch_negatives", GenRecForNextItemPrediction,
            dict(loss_type="sampled", num_negatives=8, negative_sharing="batch")),
    Variant("sampled_position_in_batch", GenRecForNextItemPrediction,
            dict(loss_type="sampled", num_negatives=8, negative_sharing="position", in_batch_negatives=True)),
    Variant("projected_head", GenRecForNextItemPrediction, dict(head_projection_ratio=4, tie_word_embeddings=False)),
    Variant("learned_positions", GenRecForNextItemPrediction, dict(position_encoding="learned")),
    Variant("no_positions", GenRecForNextItemPrediction, dict(position_encoding="none")),
    Variant("no_time_no_action", GenRecForNextItemPrediction, dict(num_time_buckets=0, num_action_types=0)),
    # Multi-token prediction: the same head trained on (B, T, K) weighted targets (`mtp_labels` / `mtp_weights`).
    Variant("mtp_full_softmax", GenRecForNextItemPrediction, mtp_targets=3),
    Variant("mtp_sampled_in_batch", GenRecForNextItemPrediction,
            dict(loss_type="sampled", num_negatives=8, in_batch_negatives=True), mtp_targets=3),
    Variant("backbone", GenRecModel),
    # Cold start (item_tower.py): fused ID/OOV + semantic vectors on both sides, masking in training.
    Variant("item_tower_sum_masked", GenRecForNextItemPrediction,
            dict(item_tower_config=dict(feature_schema=TOWER_SCHEMA, mask_prob=0.3))),
    Variant("item_tower_gate_projected_sampled", GenRecForNextItemPrediction,
            dict(head_projection_ratio=4, tie_word_embeddings=False, loss_type="sampled", num_negatives=8,
                 item_tower_config=dict(feature_schema=TOWER_SCHEMA, fusion="gate", mask_prob=0.3))),
    Variant("item_tower_backbone", GenRecModel, dict(item_tower_config=dict(feature_schema=TOWER_SCHEMA))),
]
HEAD_VARIANTS = [v for v in VARIANTS if v.has_head]


def over(variants: list[Variant]):
    return pytest.mark.parametrize("variant", variants, ids=[v.name for v in variants])


class GenRecModelTester:
    """Tiny config, model and inputs of one variant (batch 3 × 10 events unless told otherwise)."""

    def __init__(self, variant: Variant, batch_size: int = 3, seq_length: int = 10) -> None:
        self.variant = variant
        self.batch_size = batch_size
        self.seq_length = seq_length

    def get_config(self, **overrides: Any):
        return tiny_config(**{**self.variant.overrides, **overrides})

    def create_model(self, seed: int = 0, **overrides: Any):
        torch.manual_seed(seed)
        model = self.variant.model_class(self.get_config(**overrides)).eval()
        if model.item_tower is not None:  # real feature rows, and every 4th item cold (OOV + features only)
            vocab = model.config.vocab_size
            g = torch.Generator().manual_seed(seed)
            model.item_tower.set_item_features(torch.randn(vocab, model.item_tower.feature_dim, generator=g),
                                               known=torch.arange(vocab) % 4 != 0)
        return model

    def prepare_inputs(self, seed: int = 0, batch_size: int | None = None, seq_length: int | None = None,
                       labels: bool = False) -> dict[str, torch.Tensor]:
        """Per-event inputs the config uses (+ next-item labels when asked and the model has a head)."""
        config = self.get_config()
        shape = (batch_size or self.batch_size, seq_length or self.seq_length)
        g = torch.Generator().manual_seed(seed)
        inputs = dict(input_ids=torch.randint(1, config.vocab_size, shape, generator=g),
                      attention_mask=torch.ones(shape, dtype=torch.long))
        if config.num_time_buckets:
            inputs["timestamps"] = torch.cumsum(torch.randint(0, 100_000, shape, generator=g), dim=1)
        if config.num_action_types:
            inputs["action_ids"] = torch.randint(0, config.num_action_types, shape, generator=g)
        if labels and self.variant.has_head:
            inputs["labels"] = torch.randint(1, config.vocab_size, shape, generator=g)
            inputs["labels"][:, 0] = -100
            if self.variant.mtp_targets:  # K weighted targets per position, some slots empty, slot 0 = labels
                k = self.variant.mtp_targets
                inputs["mtp_labels"] = torch.randint(1, config.vocab_size, (*shape, k), generator=g)
                inputs["mtp_labels"][..., 0] = inputs["labels"].clamp(min=0)
                inputs["mtp_labels"][:, ::2, k - 1] = 0
                inputs["mtp_weights"] = torch.rand(*shape, k, generator=g) * (inputs["mtp_labels"] > 0)
        return inputs

    def loss(self, model, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """A scalar to backpropagate: the next-item loss, or a fixed projection of the backbone's output."""
        torch.manual_seed(123)  # the same sampled negatives on every call
        outputs = model(**inputs)
        if self.variant.has_head:
            return outputs.loss
        return (outputs.last_hidden_state * torch.linspace(-1, 1, outputs.last_hidden_state.shape[-1])).sum()


def tensors_of(outputs: ModelOutput) -> dict[str, torch.Tensor]:
    """Every tensor of an output, nested tuples flattened with their index (loss excluded)."""
    flat = {}
    for key, value in outputs.items():
        if key == "loss":
            continue
        if isinstance(value, tuple):
            flat.update({f"{key}.{i}": v for i, v in enumerate(value)})
        elif isinstance(value, torch.Tensor):
            flat[key] = value
    return flat


def assert_outputs_equal(got: ModelOutput, expected: ModelOutput, atol: float = 0.0) -> None:
    got, expected = tensors_of(got), tensors_of(expected)
    assert got.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0 if atol == 0 else atol, atol=atol, msg=key)


# ---------------------------------------------------------------------------------------------------------------------
# Serialisation


@over(VARIANTS)
def test_save_load_bit_exact(tmp_path, variant):
    """A weight that is not saved, saved under a name the loader does not map, or re-initialised on load (e.g. the
    sampler's log q buffer, an untied or projected head table) changes outputs after `from_pretrained`."""
    tester = GenRecModelTester(variant)
    model = tester.create_model()
    if variant.has_head and model.head.item_log_q is not None:
        model.set_item_frequencies(torch.arange(model.config.vocab_size, dtype=torch.float64))
    inputs = tester.prepare_inputs()
    kwargs = dict(output_logits=True) if variant.has_head else {}
    expected = model(**inputs, output_hidden_states=True, **kwargs)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "config.json").exists()
    loaded = variant.model_class.from_pretrained(tmp_path).eval()
    assert_outputs_equal(loaded(**inputs, output_hidden_states=True, **kwargs), expected)
    if variant.has_head:
        if model.config.tie_word_embeddings:
            assert loaded.get_output_embeddings().weight is loaded.get_input_embeddings().weight
        if model.head.item_log_q is not None:
            assert torch.equal(loaded.head.item_log_q, model.head.item_log_q)
        assert type(AutoModel.from_pretrained(tmp_path)) is variant.model_class  # the class that was saved
        backbone = GenRecModel.from_pretrained(tmp_path).eval()  # the backbone alone, out of a head checkpoint
        assert type(backbone) is GenRecModel
        assert torch.equal(backbone(**inputs).last_hidden_state, expected.last_hidden_state)


# ---------------------------------------------------------------------------------------------------------------------
# What a position may see


@over(VARIANTS)
def test_causality(variant):
    """A future-leaking mask (e.g. a dropped `tril`, a time-gap feature read from the next event) lets later events
    change earlier hidden states, which the next-item loss then rewards."""
    tester = GenRecModelTester(variant)
    model = tester.create_model()
    inputs = tester.prepare_inputs()
    changed = {k: v.clone() for k, v in inputs.items()}
    changed["input_ids"][:, 6:] = (changed["input_ids"][:, 6:] % 40) + 1
    if "timestamps" in changed:
        changed["timestamps"][:, 7:] += 999_999
    if "action_ids" in changed:
        changed["action_ids"][:, 6:] = (changed["action_ids"][:, 6:] + 1) % 3
    a = model(**inputs).last_hidden_state
    b = model(**changed).last_hidden_state
    torch.testing.assert_close(a[:, :6], b[:, :6], rtol=0, atol=0)
    assert not torch.allclose(a[:, 6:], b[:, 6:])


def _pad(x: torch.Tensor, left: int, right: int) -> torch.Tensor:
    return torch.cat([x.new_zeros(x.shape[0], left), x, x.new_zeros(x.shape[0], right)], dim=1)


@over(VARIANTS)
@pytest.mark.parametrize(("left", "right"), [(3, 0), (0, 4), (2, 5)], ids=["left", "right", "both"])
def test_padding_invariance(variant, left, right):
    """Positions counted from the tensor start instead of the history start, padding keys left unmasked, or an
    all-masked padding query row (NaN) make the same history score differently depending on its padding."""
    tester = GenRecModelTester(variant)
    model = tester.create_model()
    inputs = tester.prepare_inputs(batch_size=1, seq_length=6)
    padded = {k: _pad(v, left, right) for k, v in inputs.items()}
    got, expected = model(**padded), model(**inputs)
    assert torch.isfinite(got.last_hidden_state).all()
    torch.testing.assert_close(got.last_hidden_state[:, left:left + 6], expected.last_hidden_state,
                               rtol=1e-5, atol=1e-5)
    if variant.has_head:
        torch.testing.assert_close(got.user_embeddings, expected.user_embeddings, rtol=1e-5, atol=1e-5)


@over(VARIANTS)
def test_batching_equivalence(variant):
    """Any cross-row leak (a mask broadcast over the wrong axis, a batch-level statistic) makes a user's
    recommendations depend on who else is in the batch."""
    tester = GenRecModelTester(variant)
    model = tester.create_model()
    inputs = tester.prepare_inputs(batch_size=4, seq_length=8)
    lengths = [8, 5, 3, 7]
    for row, length in enumerate(lengths):  # left-padded histories of different lengths
        for key in inputs:
            inputs[key][row, :8 - length] = 0
    batched = model(**inputs)
    for row in range(4):
        alone = model(**{k: v[row:row + 1] for k, v in inputs.items()})
        torch.testing.assert_close(alone.last_hidden_state, batched.last_hidden_state[row:row + 1],
                                   rtol=1e-5, atol=1e-5)
        if variant.has_head:
            torch.testing.assert_close(alone.user_embeddings, batched.user_embeddings[row:row + 1],
                                       rtol=1e-5, atol=1e-5)


def left_padded(inputs: dict[str, torch.Tensor], lengths: list[int]) -> dict[str, torch.Tensor]:
    """`inputs` with row i cut to its last `lengths[i]` events (left padding)."""
    out = {k: v.clone() for k, v in inputs.items()}
    for row, length in enumerate(lengths):
        for key in out:
            out[key][row, :out[key].shape[1] - length] = -100 if key == "labels" else 0
    return out


def pack(inputs: dict[str, torch.Tensor], lengths: list[int], capacity: int
         ) -> tuple[dict[str, torch.Tensor], list[tuple[int, int, int]]]:
    """Left-padded rows laid end to end into rows of `capacity` (first-fit decreasing, right padding), as
    `NextItemCollator(packing=True)` packs them, with `position_ids`; and (padded row, packed row, start) per row."""
    bins = first_fit_decreasing(lengths, capacity)
    width = max(sum(lengths[i] for i in b) for b in bins)
    packed = {k: torch.full((len(bins), width, *v.shape[2:]), -100 if k == "labels" else 0, dtype=v.dtype)
              for k, v in inputs.items()}
    packed["position_ids"] = torch.zeros(len(bins), width, dtype=torch.long)
    places = []
    for r, indices in enumerate(bins):
        start = 0
        for i in indices:
            n = lengths[i]
            for key, value in inputs.items():
                packed[key][r, start:start + n] = value[i, value.shape[1] - n:]
            packed["position_ids"][r, start:start + n] = torch.arange(n)
            places.append((i, r, start))
            start += n
    return packed, places


@over(VARIANTS)
def test_packed_rows_equal_padded_rows(variant):
    """Attention crossing from one packed history into the next, positions or time gaps not restarting at a
    history's start, or a loss counting packed padding: the optimised packed batch trains differently from the
    padded batch of the same users. Position-shared sampled negatives are drawn in row-major order of supervised
    positions, which packing permutes, so only their hidden states are compared."""
    tester = GenRecModelTester(variant)
    model = tester.create_model()
    lengths = [8, 5, 3, 7, 1]
    padded = left_padded(tester.prepare_inputs(batch_size=5, seq_length=8, labels=True), lengths)
    packed, places = pack(padded, lengths, capacity=model.config.max_position_embeddings)
    assert packed["input_ids"].shape[0] < 5
    torch.manual_seed(0)
    a = model(**padded)
    torch.manual_seed(0)
    b = model(**packed)
    for i, r, start in places:
        n = lengths[i]
        torch.testing.assert_close(b.last_hidden_state[r, start:start + n], a.last_hidden_state[i, 8 - n:],
                                   rtol=1e-5, atol=1e-5)
    config = model.config
    if variant.has_head and not (config.loss_type == "sampled" and config.negative_sharing == "position"):
        torch.testing.assert_close(b.loss, a.loss, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------------------
# Training


@over(VARIANTS)
def test_gradient_checkpointing_same_gradients(variant):
    """A layer whose recomputation differs from its first pass (state kept outside the checkpointed call, extra
    outputs dropped on the recompute) trains a different model under `gradient_checkpointing=True`."""
    tester = GenRecModelTester(variant)
    model = tester.create_model().train()
    inputs = tester.prepare_inputs(labels=True)

    def grads():
        model.zero_grad()
        tester.loss(model, inputs).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain = grads()
    model.activation_checkpointing_enable()
    assert model.is_activation_checkpointing
    checkpointed = grads()
    assert plain and plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(plain[name], checkpointed[name], msg=name)


# ---------------------------------------------------------------------------------------------------------------------
# Growing and shrinking the catalog


@over(VARIANTS)
def test_resize_token_embeddings(tmp_path, variant):
    """A table left at the old size (the untied or the d/r-wide projected head, the sampler's log q), a
    `config.vocab_size` left stale (so the new ids are rejected), a head untied by the resize, or old rows
    changed: adding items to the catalog breaks."""
    tester = GenRecModelTester(variant)
    model = tester.create_model()
    old_vocab = model.config.vocab_size
    inputs = tester.prepare_inputs()
    before = model.get_input_embeddings().weight.detach().clone()
    tied = variant.has_head and model.config.tie_word_embeddings
    out_before = model.get_output_embeddings().weight.detach().clone() if variant.has_head else None

    returned = model.resize_token_embeddings(old_vocab + 10)
    new_vocab = old_vocab + 10
    assert returned is model.get_input_embeddings()
    assert model.config.vocab_size == new_vocab
    assert returned.weight.shape == (new_vocab, model.config.hidden_size)
    assert returned.padding_idx == 0
    assert torch.equal(returned.weight[:old_vocab], before)
    if variant.has_head:
        head_table = model.get_output_embeddings()
        assert model.item_vectors.shape == (new_vocab, model.config.head_output_size)
        assert torch.equal(head_table.weight[:old_vocab], out_before)
        assert (head_table.weight is returned.weight) == tied
        if model.head.item_log_q is not None:
            assert model.head.item_log_q.shape == (new_vocab,)
            # the uniform sampler stays uniform over the grown catalog
            torch.testing.assert_close(model.head.item_log_q, item_log_probabilities(torch.zeros(new_vocab)))

    # new ids are usable right away, as inputs and as targets
    grown = dict(tester.prepare_inputs(labels=True))
    grown["input_ids"][:, -2] = new_vocab - 1
    if variant.has_head:
        grown["labels"][:, 1] = new_vocab - 1
        out = model(**grown, output_logits=True)
        assert torch.isfinite(out.loss) and out.logits.shape == (3, new_vocab)
        assert (model.topk(out.user_embeddings, new_vocab).items.max() == new_vocab - 1).all()
    else:
        assert torch.isfinite(model(**grown).last_hidden_state).all()

    expected = model(**grown)
    model.save_pretrained(tmp_path)
    loaded = variant.model_class.from_pretrained(tmp_path).eval()
    assert loaded.config.vocab_size == new_vocab
    assert_outputs_equal(loaded(**grown), expected)

    model.resize_token_embeddings(old_vocab - 5)
    assert model.config.vocab_size == old_vocab - 5
    assert torch.equal(model.get_input_embeddings().weight, before[:old_vocab - 5])
    if variant.has_head:
        assert model.item_vectors.shape[0] == old_vocab - 5
        assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) == tied
    small = {k: v.clamp(max=old_vocab - 6) for k, v in inputs.items()}
    assert torch.isfinite(model(**small).last_hidden_state).all()


def test_resize_gives_new_items_the_unseen_item_share_of_the_popularity_sampler():
    """New items left out of the sampler (log q = -inf: never drawn as negatives), or given a made-up probability
    that does not renormalise, skew the sampled softmax after a catalog grows."""
    model = GenRecForNextItemPrediction(tiny_config(loss_type="sampled", num_negatives=8,
                                                    negative_sampler="popularity", sampler_alpha=0.5))
    counts = torch.arange(41, dtype=torch.float64) % 7  # some items were never seen (count 0)
    model.set_item_frequencies(counts)
    model.resize_token_embeddings(46)
    expected = item_log_probabilities(torch.cat([counts, torch.zeros(5, dtype=torch.float64)]), 0.5)
    torch.testing.assert_close(model.head.item_log_q, expected)
    model.resize_token_embeddings(30)
    torch.testing.assert_close(model.head.item_log_q, item_log_probabilities(counts[:30], 0.5))


@over(VARIANTS)
def test_get_set_embeddings(variant):
    """Accessors reading a module the forward pass does not use (or `set_*` writing one) make resizing, PEFT and
    weight tying act on the wrong table."""
    tester = GenRecModelTester(variant)
    model = tester.create_model()
    inputs = tester.prepare_inputs()
    expected = model(**inputs).last_hidden_state
    new_input = torch.nn.Embedding(model.config.vocab_size, model.config.hidden_size, padding_idx=0)
    with torch.no_grad():
        new_input.weight.copy_(model.get_input_embeddings().weight)
    model.set_input_embeddings(new_input)
    assert model.get_input_embeddings() is new_input
    assert torch.equal(model(**inputs).last_hidden_state, expected)
    with torch.no_grad():
        new_input.weight.mul_(2.0)
    assert not torch.allclose(model(**inputs).last_hidden_state, expected)  # the forward reads the new table
    if not variant.has_head:
        assert model.get_output_embeddings() is None
        return
    new_output = torch.nn.Linear(model.config.head_output_size, model.config.vocab_size, bias=False)
    model.set_output_embeddings(new_output)
    assert model.get_output_embeddings() is new_output
    if model.item_tower is None:
        assert model.item_vectors is new_output.weight
    else:  # fused vectors are computed from the table the head holds
        assert model.head.item_vectors is new_output.weight
        with torch.no_grad():
            new_output.weight.mul_(2.0)
        assert not torch.allclose(model.item_vectors, model.item_tower.output_vectors(new_output.weight / 2))


# ---------------------------------------------------------------------------------------------------------------------
# Outputs and attention implementations


@over(VARIANTS)
def test_output_attentions_and_hidden_states(variant):
    """`output_attentions` swallowed by **kwargs (attentions None), probabilities that are not causal or do not sum
    to one, or a hidden-state tuple missing the embedding output."""
    tester = GenRecModelTester(variant)
    model = tester.create_model()
    config = model.config
    inputs = tester.prepare_inputs()
    out = model(**inputs, output_attentions=True, output_hidden_states=True)
    assert len(out.hidden_states) == config.num_hidden_layers + 1
    assert all(h.shape == (3, 10, config.hidden_size) for h in out.hidden_states)
    assert len(out.attentions) == config.num_hidden_layers
    for weights in out.attentions:
        assert weights.shape == (3, config.num_attention_heads, 10, 10)
        torch.testing.assert_close(weights.sum(-1), torch.ones(3, config.num_attention_heads, 10))
        assert (weights.triu(diagonal=1) == 0).all()
    plain = model(**inputs)
    assert plain.attentions is None and plain.hidden_states is None
    torch.testing.assert_close(out.last_hidden_state, plain.last_hidden_state, rtol=1e-5, atol=1e-5)


@over(VARIANTS)
def test_config_output_flags_are_the_fallback(variant):
    """`config.output_hidden_states` / `output_attentions` / `return_dict` ignored when the forward argument is left
    as None (or overriding an explicit argument)."""
    tester = GenRecModelTester(variant)
    model = tester.create_model(output_hidden_states=True, output_attentions=True)
    inputs = tester.prepare_inputs()
    out = model(**inputs)
    assert out.hidden_states is not None and out.attentions is not None
    out = model(**inputs, output_hidden_states=False, output_attentions=False)
    assert out.hidden_states is None and out.attentions is None
    model.config.return_dict = False
    assert isinstance(model(**inputs), tuple)
    assert isinstance(model(**inputs, return_dict=True), ModelOutput)


@over(VARIANTS)
def test_return_dict_false_gives_the_same_tuple(variant):
    """A tuple output whose order or content drifts from the ModelOutput (a field forgotten, a None kept) breaks
    positional callers such as `torch.jit` / ONNX export paths and `Trainer` with `return_dict=False`."""
    tester = GenRecModelTester(variant)
    model = tester.create_model()
    inputs = tester.prepare_inputs(labels=True)
    torch.manual_seed(5)
    as_dict = model(**inputs, output_attentions=True, output_hidden_states=True)
    torch.manual_seed(5)
    as_tuple = model(**inputs, output_attentions=True, output_hidden_states=True, return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == len(as_dict.to_tuple())
    for got, expected in zip(as_tuple, as_dict.to_tuple()):
        if isinstance(expected, tuple):
            assert len(got) == len(expected) and all(torch.equal(a, b) for a, b in zip(got, expected))
        else:
            assert torch.equal(got, expected)


@over(VARIANTS)
def test_eager_matches_sdpa(variant):
    """The eager path (the only one with attention probabilities) drifting from the fused SDPA path: a wrong scale,
    an additive mask of the wrong sign, a padding row handled differently."""
    tester = GenRecModelTester(variant)
    sdpa = tester.create_model(attn_implementation="sdpa")
    eager = tester.create_model(attn_implementation="eager")
    assert sdpa.config._attn_implementation == "sdpa" and eager.config._attn_implementation == "eager"
    inputs = tester.prepare_inputs()
    for key in inputs:  # left padding on one row, right padding on another
        inputs[key][0, :3] = 0
        inputs[key][1, -2:] = 0
    a, b = sdpa(**inputs), eager(**inputs)
    torch.testing.assert_close(a.last_hidden_state, b.last_hidden_state, rtol=1e-5, atol=1e-5)
    if variant.has_head:
        torch.testing.assert_close(a.user_embeddings, b.user_embeddings, rtol=1e-5, atol=1e-5)


def test_attn_implementation_is_honoured(monkeypatch):
    """`attn_implementation="eager"` accepted but ignored (always SDPA), or not switchable after loading."""
    calls = []
    real = modeling_genrec.eager_attention_forward

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(modeling_genrec, "eager_attention_forward", spy)
    inputs = GenRecModelTester(VARIANTS[0]).prepare_inputs()
    model = GenRecForNextItemPrediction(tiny_config(attn_implementation="eager")).eval()
    model(**inputs)
    assert len(calls) == model.config.num_hidden_layers
    model.set_attn_implementation("sdpa")
    model(**inputs)
    assert len(calls) == model.config.num_hidden_layers
    model(**inputs, output_attentions=True)  # probabilities exist only on the eager path
    assert len(calls) == 2 * model.config.num_hidden_layers


# ---------------------------------------------------------------------------------------------------------------------
# Graph capture


@over(VARIANTS)
def test_torch_export_static_and_dynamic_shapes(variant):
    """A data-dependent Python branch in forward (e.g. the input range check reading tensor values) makes
    `torch.export` fail; a shape baked into the graph makes the exported model wrong at other batch sizes."""
    tester = GenRecModelTester(variant)
    model = tester.create_model()
    inputs = tester.prepare_inputs()
    exported = torch.export.export(model, (), kwargs=inputs, strict=False)
    assert_outputs_equal(exported.module()(**inputs), model(**inputs), atol=1e-6)

    batch, time = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("time", min=2, max=16)
    dynamic = torch.export.export(model, (), kwargs=inputs, strict=False,
                                  dynamic_shapes={key: {0: batch, 1: time} for key in inputs})
    for batch_size, seq_length in [(2, 7), (1, 2), (5, 16)]:
        other = tester.prepare_inputs(seed=3, batch_size=batch_size, seq_length=seq_length)
        other["attention_mask"][0, :1] = 0
        other["input_ids"][0, :1] = 0
        assert_outputs_equal(dynamic.module()(**other), model(**other), atol=1e-6)


@over(VARIANTS)
def test_torch_export_packed_rows(variant):
    """A packed-row mask or position path that branches on tensor values (segment counts, `.item()`) breaks
    `torch.export`; one baked to the traced shapes is wrong at other row counts and widths."""
    tester = GenRecModelTester(variant)
    model = tester.create_model()
    packed, _ = pack(tester.prepare_inputs(batch_size=4, seq_length=8), [8, 5, 3, 7], capacity=16)
    batch, time = torch.export.Dim("batch", min=1, max=64), torch.export.Dim("time", min=2, max=16)
    exported = torch.export.export(model, (), kwargs=packed, strict=False,
                                   dynamic_shapes={key: {0: batch, 1: time} for key in packed})
    other, _ = pack(tester.prepare_inputs(seed=3, batch_size=6, seq_length=6), [6, 2, 1, 4, 6, 3], capacity=9)
    assert_outputs_equal(exported.module()(**other), model(**other), atol=1e-6)


@over(VARIANTS)
def test_torch_compile_fullgraph(variant):
    """A graph break in forward (the range check's `.item()`, a Python branch on tensor values) fails
    `torch.compile(fullgraph=True)`. Dynamo + AOT autograd without Inductor code generation keeps this cheap;
    `test_torch_compile_inductor` runs the real backend."""
    torch._dynamo.reset()
    tester = GenRecModelTester(variant)
    model = tester.create_model()
    inputs = tester.prepare_inputs()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    assert_outputs_equal(compiled(**inputs), model(**inputs), atol=1e-6)


def test_torch_compile_fullgraph_packed_rows():
    """A graph break on the packed-row path (segments computed with a Python loop or `.item()`) fails
    `torch.compile(fullgraph=True)` for packed training batches."""
    torch._dynamo.reset()
    tester = GenRecModelTester(VARIANTS[0])
    model = tester.create_model()
    packed, _ = pack(tester.prepare_inputs(batch_size=4, seq_length=8, labels=True), [8, 5, 3, 7], capacity=16)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    got, expected = compiled(**packed), model(**packed)
    assert_outputs_equal(got, expected, atol=1e-6)
    torch.testing.assert_close(got.loss, expected.loss, rtol=1e-6, atol=1e-6)


@pytest.mark.slow  # Inductor code generation: ~40 s per class on the shared 2-core CPU with a cold cache
@pytest.mark.skipif(not os.environ.get("RUN_SLOW"), reason="Inductor compile is slow; set RUN_SLOW=1 to run it")
@pytest.mark.parametrize("variant", [VARIANTS[0], VARIANTS[-1]], ids=[VARIANTS[0].name, VARIANTS[-1].name])
def test_torch_compile_inductor(variant):
    """Same as `test_torch_compile_fullgraph`, through the default (Inductor) backend."""
    torch._dynamo.reset()
    tester = GenRecModelTester(variant)
    model = tester.create_model()
    inputs = tester.prepare_inputs()
    compiled = torch.compile(model, fullgraph=True)
    assert_outputs_equal(compiled(**inputs), model(**inputs), atol=1e-5)


def test_eager_calls_still_validate_inputs():
    """Moving the range check out of the traced graph must not drop it from eager calls (out-of-range ids would
    otherwise surface as an opaque index error, or silently read another row on some devices)."""
    model = GenRecForNextItemPrediction(tiny_config()).eval()
    with pytest.raises(ValueError, match=r"input_ids contains 41"):
        model(torch.tensor([[1, 41]]))
    exported = torch.export.export(copy.deepcopy(model), (torch.tensor([[1, 2]]),), strict=False)
    assert exported.module()(torch.tensor([[3, 4]])).user_embeddings.shape == (1, 32)
