from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoConfig, AutoModel

from genrec_hf import GenRecConfig, GenRecForNextItemPrediction, GenRecModel
from genrec_hf.models.genrec.modeling_genrec import history_inputs, time_gap_buckets
from genrec_hf.models.genrec.scoring import TopItems

from tests.helpers import tiny_config


def _batch(seed: int = 0, batch: int = 3, length: int = 10, vocab: int = 41):
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1, vocab, (batch, length), generator=g)
    timestamps = torch.cumsum(torch.randint(0, 100_000, (batch, length), generator=g), dim=1)
    action_ids = torch.randint(0, 3, (batch, length), generator=g)
    return dict(input_ids=input_ids, timestamps=timestamps, action_ids=action_ids)


def test_tied_weights_share_storage(tmp_path):
    model = GenRecForNextItemPrediction(tiny_config(tie_word_embeddings=True))
    assert model.head.item_embeddings.weight is model.model.embeddings.item_embeddings.weight
    model.save_pretrained(tmp_path)
    loaded = GenRecForNextItemPrediction.from_pretrained(tmp_path)
    assert loaded.head.item_embeddings.weight is loaded.model.embeddings.item_embeddings.weight
    untied = GenRecForNextItemPrediction(tiny_config(tie_word_embeddings=False))
    assert untied.head.item_embeddings.weight is not untied.model.embeddings.item_embeddings.weight


def test_auto_classes():
    config = AutoConfig.for_model("genrec", vocab_size=20, hidden_size=16, num_attention_heads=2,
                                  intermediate_size=32, num_hidden_layers=1)
    assert isinstance(config, GenRecConfig)
    assert isinstance(AutoModel.from_config(config), GenRecModel)


def test_trust_remote_code_without_genrec_hf(tmp_path):
    """A saved folder loads with AutoModel + trust_remote_code where genrec_hf cannot be imported (Hub users)."""
    torch.manual_seed(0)
    model = GenRecForNextItemPrediction(tiny_config()).eval()
    model.save_pretrained(tmp_path)
    for name in ("configuration_genrec.py", "modeling_genrec.py", "losses.py", "scoring.py"):
        assert (tmp_path / name).exists(), name
    batch = _batch()
    torch.save(batch, tmp_path / "batch.pt")
    expected = model(**batch).user_embeddings
    torch.save(expected, tmp_path / "expected.pt")
    script = textwrap.dedent(f"""
        import sys, torch
        sys.modules["genrec_hf"] = None  # any import of genrec_hf now fails
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(tmp_path)!r}, trust_remote_code=True).eval()
        assert type(model).__name__ == "GenRecForNextItemPrediction", type(model)
        assert "genrec_hf" not in type(model).__module__, type(model).__module__
        batch = torch.load({str(tmp_path / 'batch.pt')!r})
        out = model(**batch).user_embeddings
        assert torch.equal(out, torch.load({str(tmp_path / 'expected.pt')!r}))
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                            env={"HF_HUB_OFFLINE": "1", "PATH": "", "HF_HOME": str(tmp_path / "hf_home")})
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ok" in result.stdout


def test_logits_only_when_asked(tiny_model):
    batch = _batch()
    out = tiny_model(**batch)
    assert out.logits is None
    out = tiny_model(**batch, output_logits=True)
    assert out.logits.shape == (3, 41)
    assert torch.isinf(out.logits[:, 0]).all()
    torch.testing.assert_close(out.logits[:, 1:], out.user_embeddings @ tiny_model.item_vectors[1:].T)


def test_time_gap_buckets():
    ts = torch.tensor([[0, 0, 10, 0, 5, 100_000_000_000]])
    mask = torch.tensor([[0, 1, 1, 1, 1, 1]])
    buckets = time_gap_buckets(ts, mask, num_buckets=32, max_seconds=365 * 24 * 3600)
    assert buckets[0, 0] == 0 and buckets[0, 1] == 0  # padding, then first event: no previous event
    assert buckets[0, 3] == 1  # negative gap counts as 0 s
    assert buckets[0, 2] > buckets[0, 4] > 1  # 10 s is a longer gap than 5 s
    assert buckets[0, 5] == 31  # beyond the largest edge: last bucket


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(input_ids=torch.tensor([[1, 2, 41]])), r"input_ids contains 41, outside the valid range \[0, 40\]"),
        (dict(input_ids=torch.tensor([[1, -2, 4]])), r"input_ids contains -2"),
        (dict(labels=torch.tensor([[1, 2, 99]])), r"labels contains 99, outside the valid range \[1, 40\]"),
        (dict(labels=torch.tensor([[1, 2]])), r"labels has shape \(1, 2\) but input_ids has shape \(1, 3\)"),
        (dict(timestamps=torch.tensor([[1, 2]])), r"timestamps has shape"),
        (dict(action_ids=torch.tensor([[0, 1, 7]])), r"action_ids contains 7"),
        (dict(input_ids=torch.ones(1, 17, dtype=torch.long)), r"History length 17 exceeds max_position_embeddings"),
        (dict(input_ids=torch.ones(3, dtype=torch.long)), r"input_ids must be 2-D"),
    ],
)
def test_bad_inputs_raise_clear_errors(tiny_model, change, message):
    inputs = dict(input_ids=torch.tensor([[1, 2, 3]]))
    inputs.update(change)
    with pytest.raises(ValueError, match=message):
        tiny_model(**inputs)


def test_sampled_and_projected_heads_train():
    torch.manual_seed(0)
    config = tiny_config(loss_type="sampled", num_negatives=8, head_projection_ratio=2, tie_word_embeddings=False)
    model = GenRecForNextItemPrediction(config).train()
    batch = _batch()
    labels = torch.roll(batch["input_ids"], -1, dims=1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = model(**batch, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert model(**batch).user_embeddings.shape == (3, 16)


def test_popularity_sampler_uses_saved_frequencies_and_logq(tmp_path):
    from genrec_hf.models.genrec.losses import item_log_probabilities, sample_negatives, sampled_softmax_loss

    config = tiny_config(loss_type="sampled", num_negatives=16, negative_sampler="popularity", sampler_alpha=0.5)
    assert config.uses_logq_correction and not tiny_config(loss_type="sampled").uses_logq_correction
    model = GenRecForNextItemPrediction(config).eval()
    counts = torch.arange(41, dtype=torch.float64) ** 2
    model.set_item_frequencies(counts)
    torch.testing.assert_close(model.head.item_log_q, item_log_probabilities(counts, 0.5))
    model.save_pretrained(tmp_path)
    loaded = GenRecForNextItemPrediction.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(loaded.head.item_log_q, model.head.item_log_q)

    queries, targets = torch.randn(5, 32), torch.randint(1, 41, (5,))
    torch.manual_seed(11)
    got = loaded.loss_sum(queries, targets)
    torch.manual_seed(11)
    negatives = sample_negatives(41, (16,), item_log_q=model.head.item_log_q)
    expected = sampled_softmax_loss(queries, model.item_vectors, targets, negatives, item_log_q=model.head.item_log_q)
    torch.testing.assert_close(got, expected)
    with pytest.raises(ValueError, match=r"expected \(41,\)"):
        model.set_item_frequencies(torch.ones(40))


def test_full_softmax_model_has_no_sampler_state():
    model = GenRecForNextItemPrediction(tiny_config())
    assert model.head.item_log_q is None
    model.set_item_frequencies(torch.ones(41))  # nothing to do, no error
    assert "head.item_log_q" not in model.state_dict()


@pytest.mark.parametrize("field,value,message", [
    ("negative_sampler", "zipf", "one of"), ("sampler_alpha", -1.0, r"\[0, 2\]"), ("logq_correction", "yes", "None"),
])
def test_sampler_config_errors(field, value, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(loss_type="sampled", **{field: value})


# ---------------------------------------------------------------------------------------------------------------------
# Top-k and recommend: one return type, the caller's train/eval mode kept, k validated


def test_topk_and_recommend_return_top_items(tiny_model):
    """`topk` and `recommend` returning their tensors in opposite orders (scores first vs items first) let a caller
    treat scores as item ids without any error."""
    batch = _batch()
    user = tiny_model(**batch).user_embeddings
    top = tiny_model.topk(user, 5)
    assert isinstance(top, TopItems)
    items, scores = top
    assert items is top.items and scores is top.scores
    assert items.dtype == torch.long and scores.dtype == torch.float32
    dense = tiny_model.score(user)
    assert torch.equal(dense.gather(1, items), scores)
    assert torch.equal(scores, dense.topk(5, dim=1).values)
    rec = tiny_model.recommend([[3, 4, 5], [7]], k=4)
    assert isinstance(rec, TopItems) and rec.items.shape == rec.scores.shape == (2, 4)
    assert not set(rec.items[0].tolist()) & {3, 4, 5} and 7 not in rec.items[1].tolist()


@pytest.mark.parametrize("training", [True, False])
def test_recommend_restores_train_mode(tiny_model, training):
    """`recommend` switching the model to eval and leaving it there silently turns dropout off for the rest of a
    training loop that calls it (e.g. for a qualitative check)."""
    tiny_model.train(training)
    tiny_model.recommend([[1, 2, 3]], k=3)
    assert tiny_model.training is training
    assert all(m.training is training for m in tiny_model.modules())


@pytest.mark.parametrize("k", [0, -1, 2.5, "3", True])
def test_recommend_rejects_bad_k(tiny_model, k):
    """k=0 or a negative k returning empty tensors (or a float k failing deep inside torch.topk)."""
    with pytest.raises(ValueError, match=r"k=.* is invalid: expected a positive integer"):
        tiny_model.recommend([[1, 2, 3]], k=k)


def test_history_inputs_left_pad_the_most_recent_events():
    """The one history → model inputs step of `recommend`, `Recommender` and the export: catches right padding
    (the last event then is not the last position), the oldest events kept instead of the most recent, timestamps /
    actions out of step with their items, and a length mismatch passing silently."""
    inputs = history_inputs([[1, 2, 3], (4,)], 2, timestamps=[[10, 20, 30], [40]], action_ids=None)
    assert inputs["input_ids"].tolist() == [[2, 3], [0, 4]]
    assert inputs["attention_mask"].tolist() == [[1, 1], [0, 1]]
    assert inputs["timestamps"].tolist() == [[20, 30], [0, 40]] and inputs["action_ids"] is None
    assert history_inputs([[5, 6]], 16)["input_ids"].tolist() == [[5, 6]]  # no padding beyond the longest
    with pytest.raises(ValueError, match="action_ids must have one value per event"):
        history_inputs([[1, 2]], 4, action_ids=[[1]])


@pytest.mark.parametrize("sampler", ["uniform", "popularity"])
def test_position_negatives_and_in_batch_negatives_reach_the_loss(sampler):
    """Catches the model-level wiring of the README's recommended head dropping `negative_sharing="position"` (one
    (N, K) draw per position) or `in_batch_negatives`: the forward loss × supervised count must equal the pure
    `sampled_softmax_loss` with the same seeded negatives, and differ from the shared / no-in-batch variants."""
    from genrec_hf.models.genrec.losses import sample_negatives, sampled_softmax_loss

    torch.manual_seed(0)
    config = tiny_config(loss_type="sampled", num_negatives=6, negative_sharing="position", in_batch_negatives=True,
                         negative_sampler=sampler)
    model = GenRecForNextItemPrediction(config).eval()
    if sampler == "popularity":
        model.set_item_frequencies(torch.arange(41) % 7)
    batch = _batch()
    labels = torch.roll(batch["input_ids"], -1, dims=1)
    labels[:, -1] = -100
    labels[0, :4] = -100
    supervised = labels != -100
    torch.manual_seed(123)
    loss = model(**batch, labels=labels).loss
    with torch.no_grad():
        queries = model.head(model.model(**batch).last_hidden_state[supervised])
    targets = labels[supervised]
    log_q = model.head.item_log_q if sampler == "popularity" else None
    torch.manual_seed(123)
    negatives = sample_negatives(41, (targets.shape[0], 6), item_log_q=log_q)

    def reference(negatives, in_batch):
        return sampled_softmax_loss(queries, model.item_vectors, targets, negatives, in_batch_negatives=in_batch,
                                    item_log_q=model.head.item_log_q if config.uses_logq_correction else None)

    expected = reference(negatives, True)
    torch.testing.assert_close(loss * supervised.sum(), expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(expected, reference(negatives, False), atol=1e-4)
    assert not torch.allclose(expected, reference(negatives[0], True), atol=1e-4)


def test_auto_model_returns_the_saved_class_with_and_without_genrec_hf(tmp_path):
    """Bug: `AutoModel.from_pretrained(dir, trust_remote_code=True)` gave `GenRecModel` (the head dropped) when
    genrec_hf was installed, but the saved `GenRecForNextItemPrediction` from `auto_map` otherwise."""
    torch.manual_seed(0)
    GenRecForNextItemPrediction(tiny_config()).save_pretrained(tmp_path / "head")
    GenRecModel(tiny_config()).save_pretrained(tmp_path / "backbone")
    expected = {"head": "GenRecForNextItemPrediction", "backbone": "GenRecModel"}
    for name, cls_name in expected.items():
        for remote in (False, True):
            assert type(AutoModel.from_pretrained(tmp_path / name, trust_remote_code=remote)).__name__ == cls_name
    assert type(AutoModel.from_config(tiny_config())) is GenRecModel
    script = textwrap.dedent(f"""
        import sys
        sys.modules["genrec_hf"] = None
        from transformers import AutoModel
        for name in ("head", "backbone"):
            model = AutoModel.from_pretrained({str(tmp_path)!r} + "/" + name, trust_remote_code=True)
            print(name, type(model).__name__)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path,
                            env={"HF_HUB_OFFLINE": "1", "PATH": "", "HF_HOME": str(tmp_path / "hf_home")})
    assert result.returncode == 0, result.stderr[-3000:]
    assert dict(line.split() for line in result.stdout.strip().splitlines()) == expected
