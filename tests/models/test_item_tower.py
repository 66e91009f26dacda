"""Cold-start item tower: config round trip, OOV / masking semantics, fusion choices, add_items, remote code.

The common model battery (save/load, causality, padding, packing, export, compile, resize) runs the tower variants
through `tests/models/test_modeling_common.py`; these tests pin what is specific to cold start. Each docstring names
the bug it would catch.
"""

from __future__ import annotations

import logging
import textwrap

import pytest
import torch

from genrec_hf import GenRecConfig, GenRecForNextItemPrediction
from genrec_hf.data import ItemVocab
from genrec_hf.models.genrec.configuration_item_tower import GenRecItemTowerConfig

from tests.helpers import run_without_genrec_hf, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")

SCHEMA = [dict(name="genres", kind="multi_hot", dim=3, categories=["drama", "comedy", "horror"]),
          dict(name="year", kind="numeric", dim=1, mean=1990.0, std=10.0),
          dict(name="text", kind="dense", dim=4)]


def tower_model(seed: int = 0, **tower) -> GenRecForNextItemPrediction:
    options = dict(feature_schema=SCHEMA, **tower)
    overrides = {k: options.pop(k) for k in ("head_projection_ratio", "tie_word_embeddings", "loss_type",
                                             "num_negatives") if k in options}
    torch.manual_seed(seed)
    model = GenRecForNextItemPrediction(tiny_config(item_tower_config=options, **overrides)).eval()
    g = torch.Generator().manual_seed(seed)
    model.item_tower.set_item_features(torch.randn(41, 8, generator=g), known=torch.arange(41) >= 5)
    return model


def test_config_round_trips_as_a_sub_config(tmp_path):
    """A tower config saved as a plain dict (or dropped) by to_dict / save_pretrained makes a reloaded model an
    ID-only one, or one with another schema."""
    config = tiny_config(item_tower_config=dict(feature_schema=SCHEMA, fusion="gate", mask_prob=0.25))
    assert isinstance(config.item_tower_config, GenRecItemTowerConfig)
    as_dict = config.to_dict()["item_tower_config"]
    assert as_dict["fusion"] == "gate" and as_dict["feature_schema"] == SCHEMA
    config.save_pretrained(tmp_path)
    loaded = GenRecConfig.from_pretrained(tmp_path)
    assert isinstance(loaded.item_tower_config, GenRecItemTowerConfig)
    assert loaded.item_tower_config.feature_dim == 8 and loaded.item_tower_config.mask_prob == 0.25
    assert GenRecConfig.from_dict(config.to_dict()).item_tower_config.feature_schema == SCHEMA
    assert tiny_config().item_tower_config is None  # ID-only stays ID-only


@pytest.mark.parametrize(("options", "message"), [
    (dict(fusion="concat"), "fusion"),
    (dict(mask_prob=1.5), "mask_prob"),
    (dict(feature_schema=[dict(name="g", kind="multi_hot", dim=2, categories=["a"])]), "categories"),
    (dict(feature_schema=[dict(name="y", kind="numeric", dim=2)]), "dim"),
    (dict(feature_schema=[dict(name="t", kind="dense", dim=2), dict(name="t", kind="dense", dim=2)]), "distinct"),
    (dict(fusion="semantic"), "feature_schema"),
])
def test_bad_tower_config_names_the_field(options, message):
    """An invalid tower setting accepted silently surfaces later as a shape error deep in the forward."""
    with pytest.raises(ValueError, match=message):
        GenRecItemTowerConfig(**options)


def test_unknown_items_use_the_oov_vector_and_known_items_their_id():
    """A cold item read through its (untrained) ID row, or a known item forced to OOV at eval, breaks the
    `ẽ_i = e_i if known else OOV` rule the whole cold-start method rests on."""
    model = tower_model(fusion="sum")
    tower = model.item_tower
    ids = torch.tensor([[1, 2, 7, 9]])  # 1, 2 cold; 7, 9 known
    fused = tower.input_vectors(ids, model.get_input_embeddings()(ids))
    with torch.no_grad():
        model.get_input_embeddings().weight[1:3] += 100.0  # cold rows change: must not matter
        model.get_input_embeddings().weight[7] += 100.0  # a known row changes: must matter
    again = tower.input_vectors(ids, model.get_input_embeddings()(ids))
    torch.testing.assert_close(again[0, :2], fused[0, :2])
    assert not torch.allclose(again[0, 2], fused[0, 2])
    torch.testing.assert_close(again[0, 3], fused[0, 3])
    # output side: the same rule on the catalog table
    assert torch.equal(model.item_vectors[1], model.item_vectors[1])
    table = model.item_vectors
    assert not torch.allclose(table[1], table[7])
    assert torch.equal(table[0], torch.zeros_like(table[0]))  # padding row


def test_masking_replaces_ids_only_in_training_and_at_the_configured_rate():
    """Masking left on at eval (random recommendations), never applied (no semantics-only training signal), or at
    another rate than configured (the cold-start-rate estimate would mean nothing)."""
    model = tower_model(mask_prob=0.3)
    tower = model.item_tower
    ids = torch.randint(5, 41, (64, 16))
    emb = model.get_input_embeddings()(ids)
    eval_out = tower.input_vectors(ids, emb)
    assert torch.equal(eval_out, tower.input_vectors(ids, emb))  # deterministic at eval
    tower.train()
    tower.semantic_mlp.eval()  # keep dropout out of the comparison
    torch.manual_seed(0)
    train_out = tower.input_vectors(ids, emb)
    oov_out = tower.input_fusion(tower.oov_input.expand_as(emb), tower._semantic_table(False)[ids])
    masked = torch.isclose(train_out, oov_out, atol=1e-6).all(-1) & ~torch.isclose(eval_out, oov_out, atol=1e-6).all(-1)
    assert 0.25 < masked.float().mean().item() < 0.35
    torch.manual_seed(0)
    rows_masked = ~torch.isclose(tower.output_vectors(model.head.item_vectors)[5:],
                                 model.eval().item_vectors[5:]).all(-1)
    assert 0.1 < rows_masked.float().mean().item() < 0.55  # 36 rows at p=0.3


@pytest.mark.parametrize("fusion", ["sum", "gate", "semantic"])
def test_every_fusion_trains_the_tower_through_both_sides(fusion):
    """A fusion that drops z (tower never trained), or an output side that bypasses the tower (negatives scored
    without their fused vectors), leaves φ_sem without gradient from the loss."""
    for extra in ({}, dict(head_projection_ratio=4, tie_word_embeddings=False, loss_type="sampled", num_negatives=8)):
        model = tower_model(fusion=fusion, **extra).train()
        ids = torch.randint(1, 41, (3, 8))
        labels = torch.randint(1, 41, (3, 8))
        model(ids, labels=labels).loss.backward()
        tower = model.item_tower
        assert tower.semantic_input_proj.weight.grad.abs().sum() > 0
        if tower.semantic_output_proj is not None:
            assert tower.semantic_output_proj.weight.grad.abs().sum() > 0
        if fusion == "semantic":
            assert model.get_input_embeddings().weight.grad is None or \
                model.get_input_embeddings().weight.grad.abs().sum() == 0


def test_add_items_scores_new_items_from_features_saves_and_reloads(tmp_path, caplog):
    """New rows left at random ID values (not OOV), features not written, vocab not extended, or the grown model
    not round-tripping through save/load: a new item cannot be recommended, or is recommended differently after a
    restart."""
    model = tower_model()
    vocab = ItemVocab([str(i) for i in range(1, 41)])
    features = {"n1": {"genres": ["drama"], "year": 2001, "text": [1.0, 0.0, 0.0, 0.0]},
                "n2": {"genres": "comedy"}, "n3": {}}
    with caplog.at_level(logging.WARNING):
        indices = model.add_items(["n1", "n2", "n3"], features, vocab=vocab)
    assert indices == [41, 42, 43] and model.config.vocab_size == 44 and len(vocab) == 44
    assert "1 of 3 new items have no metadata" in caplog.text and "n3" in caplog.text
    tower = model.item_tower
    assert not tower.item_known[41:].any()
    torch.testing.assert_close(tower.item_features[41], torch.tensor([1.0, 0.0, 0.0, 1.1, 1.0, 0.0, 0.0, 0.0]))
    assert tower.item_features[43].abs().sum() == 0
    # scored from features alone: the new ID rows are irrelevant
    vectors = model.item_vectors.detach().clone()
    with torch.no_grad():
        model.get_input_embeddings().weight[41:] = 1e3
    torch.testing.assert_close(model.item_vectors, vectors)
    # recommendable
    top = model.recommend([[7, 9, 11]], k=44 - 4)
    assert {41, 42, 43} <= set(top.items[0].tolist())
    model.save_pretrained(tmp_path)
    vocab.save(tmp_path)
    loaded = GenRecForNextItemPrediction.from_pretrained(tmp_path).eval()
    assert loaded.config.vocab_size == 44
    torch.testing.assert_close(loaded.item_vectors, model.item_vectors)
    assert ItemVocab.load(tmp_path).encode("n2") == 42


@pytest.mark.parametrize(("raw_ids", "features", "message"), [
    (["a", "a"], None, "duplicate raw item id 'a'"),
    (["5"], None, "'5' is already in the catalog"),
    (["a"], torch.zeros(1, 7), r"shape \(1, 7\); expected \(1, 8\)"),
    (["a"], {"a": {"colour": "red"}}, "unknown feature name 'colour'"),
    (["a"], {"a": {"text": [1.0, 2.0]}}, "'text' has dimension 2; the schema expects 4"),
    (["a"], {"a": {"year": "soon"}}, "'year'='soon' is not a finite number"),
    # issue 27 C7: NaN / Infinity / 1e400 (or NaN text) were added and every later load failed as "corrupted weights"
    (["a"], {"a": {"year": float("nan")}}, "'year'=nan is not a finite number"),
    (["a"], {"a": {"year": float("inf")}}, "'year'=inf is not a finite number"),
    (["a"], {"a": {"year": "NaN"}}, "'year'='NaN' is not a finite number"),
    (["a"], {"a": {"text": [1.0, float("nan"), 0.0, 0.0]}}, "'text' holds a non-finite value"),
    (["a"], torch.tensor([[0.0] * 7 + [float("inf")]]), "row 0 \\(item 'a'\\), column 7 is inf"),
    # C8: a number where categories go was a TypeError traceback; C9: `"year": true` was read as year 1
    (["a"], {"a": {"genres": 1.5}}, "'genres'=1.5 is not a category name or a list of category names"),
    (["a"], {"a": {"genres": [True]}}, "'genres'=\\[True\\] is not a category name"),
    (["a"], {"a": {"year": True}}, "'year'=True is not a finite number"),
    (["a"], {"a": {"text": "abcd"}}, "'text'='abcd' is not a vector of numbers"),
    (["a"], {"b": {"year": 1}}, "not among the raw_ids"),
    ([], None, "at least one raw item id"),
])
def test_add_items_bad_input_names_the_value(raw_ids, features, message):
    """Bad new-item input accepted silently corrupts the catalog (two indices for one id, shifted feature columns)
    instead of failing with the value named."""
    model = tower_model()
    vocab = ItemVocab([str(i) for i in range(1, 41)])
    with pytest.raises(ValueError, match=message):
        model.add_items(raw_ids, features, vocab=vocab)
    assert model.config.vocab_size == 41 and len(vocab) == 41  # nothing half-added


def test_add_items_needs_a_tower():
    """An ID-only model 'adding' items gives them random untrained rows that look like real recommendations."""
    model = GenRecForNextItemPrediction(tiny_config())
    with pytest.raises(ValueError, match="item tower"):
        model.add_items(["x"])


def test_trust_remote_code_loads_the_tower_without_genrec_hf(tmp_path):
    """The tower's files not copied next to the checkpoint (or importing genrec_hf) make a cold-start model
    unloadable for Hub users."""
    model = tower_model(fusion="gate")
    model.save_pretrained(tmp_path)
    assert (tmp_path / "item_tower.py").exists() and (tmp_path / "configuration_item_tower.py").exists()
    ids = torch.randint(1, 41, (2, 6))
    torch.save(ids, tmp_path / "ids.pt")
    torch.save(model(ids).user_embeddings, tmp_path / "expected.pt")
    torch.save(model.item_vectors.detach(), tmp_path / "vectors.pt")
    run_without_genrec_hf(textwrap.dedent(f"""
        import torch
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(tmp_path)!r}, trust_remote_code=True).eval()
        assert "genrec_hf" not in type(model).__module__
        ids = torch.load({str(tmp_path / 'ids.pt')!r})
        assert torch.equal(model(ids).user_embeddings, torch.load({str(tmp_path / 'expected.pt')!r}))
        assert torch.equal(model.item_vectors, torch.load({str(tmp_path / 'vectors.pt')!r}))
        new = model.add_items(["z"], {{"z": {{"genres": ["horror"]}}}})
        assert new == [41] and model.config.vocab_size == 42
        print("ok")
    """), tmp_path)


def test_set_item_features_rejects_wrong_shapes_and_nan():
    """Features of another catalog size or with NaN (a missing year) silently poison every item's vector."""
    tower = tower_model().item_tower
    with pytest.raises(ValueError, match=r"shape \(40, 8\)"):
        tower.set_item_features(torch.zeros(40, 8))
    with pytest.raises(ValueError, match="NaN"):
        tower.set_item_features(torch.full((41, 8), float("nan")))
    with pytest.raises(ValueError, match="known-items mask"):
        tower.set_item_features(known=torch.ones(3, dtype=torch.bool))


def _train_adapter(model, steps: int = 4) -> None:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    model.train()
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        ids = torch.randint(1, 41, (6, 8), generator=g)
        model(input_ids=ids[:, :-1], labels=ids[:, 1:]).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


@pytest.mark.parametrize("fusion", ["sum", "gate"])
def test_lora_adapter_keeps_the_item_tower_frozen(fusion):
    """The default adapter (item_tower="frozen") must leave the tower alone. Caught bug: the LoRA target names are
    suffixes, and the gate fusion's `gate_proj` shares the MLP projection's name, so an adapter meant for the
    backbone silently put LoRA on the tower's gate and changed every item's vector."""
    from genrec_hf.adapters import adapter_item_vectors, attach_adapter, lora_config

    model = tower_model(fusion=fusion)
    state = {k: v.clone() for k, v in model.item_tower.state_dict().items()}
    vectors = model.item_vectors.detach().clone()
    adapter = attach_adapter(model, lora_config(r=2))
    assert not [n for n, _ in adapter.named_modules() if "item_tower" in n and "lora_" in n]
    assert not [n for n, p in adapter.named_parameters() if p.requires_grad and "item_tower" in n]
    assert any("layers.0" in n and "lora_" in n for n, _ in adapter.named_modules())  # the backbone is adapted
    _train_adapter(adapter)
    tower = adapter.get_base_model().item_tower
    for key, value in tower.state_dict().items():
        assert torch.equal(value, state[key]), key
    torch.testing.assert_close(adapter.get_base_model().item_vectors, vectors, rtol=0, atol=0)  # adapter active
    # Served (Recommender tasks, mixed batches) with the fused vectors too, not the raw ID table.
    torch.testing.assert_close(adapter_item_vectors(adapter, "default"), vectors)


def test_lora_on_the_item_tower_adapts_it_and_round_trips(tmp_path):
    """item_tower="lora" must put LoRA on the tower's Linear layers (φ_sem's, the projection, the gate) and nothing
    else of it, keep `layers` for the backbone only, change the item vectors, leave the base untouched and reload
    to the same scores. Caught bugs: a pattern that misses φ_sem's layers (nothing adapted) or picks its GELU /
    Dropout (PEFT refuses), `layers` dropping the tower (PEFT's layers_to_transform needs `layers.N.` in a name),
    tower LoRA weights not saved with the adapter, served item vectors (`adapter_item_vectors`, mixed batches)
    without the adapter's tower; and an ID-only base accepting item_tower="lora" silently."""
    from genrec_hf.adapters import (adapter_item_vectors, attach_adapter, load_adapters, lora_config, save_adapter,
                                    score_mixed_batch)

    model = tower_model(fusion="gate", num_tower_layers=3)
    model.save_pretrained(tmp_path / "base")
    vectors = model.item_vectors.detach().clone()
    adapter = attach_adapter(model, lora_config(r=2, item_tower="lora", layers=[1]))
    adapted = {n.split(".lora_A")[0] for n, _ in adapter.named_modules() if n.endswith("lora_A")}
    tower = {n.split("item_tower.")[1] for n in adapted if "item_tower" in n}
    assert tower == {"semantic_mlp.0", "semantic_mlp.3", "semantic_input_proj", "input_fusion.gate_proj"}
    backbone = adapted - {n for n in adapted if "item_tower" in n}
    assert backbone and all(".layers.1." in n for n in backbone)  # `layers` still restricts the backbone
    assert any(n.endswith("mlp.gate_proj") for n in backbone)
    _train_adapter(adapter)
    base = adapter.get_base_model()
    assert (base.item_vectors - vectors).abs().max() > 1e-4  # the tower is adapted
    with adapter.disable_adapter():
        torch.testing.assert_close(base.item_vectors, vectors, rtol=0, atol=0)  # the base is not
    ids = torch.randint(1, 41, (4, 7), generator=torch.Generator().manual_seed(5))
    logits = adapter(input_ids=ids, output_logits=True).logits
    save_adapter(adapter, tmp_path / "lora", base_dir=tmp_path / "base")
    loaded = load_adapters(GenRecForNextItemPrediction.from_pretrained(tmp_path / "base"), {"task": tmp_path / "lora"})
    torch.testing.assert_close(loaded(input_ids=ids, output_logits=True).logits, logits)
    torch.testing.assert_close(adapter_item_vectors(loaded, "task"), loaded.get_base_model().item_vectors)
    torch.testing.assert_close(adapter_item_vectors(loaded, "__base__"), vectors)
    top = score_mixed_batch(loaded, {"input_ids": ids}, ["task", "__base__", "task", "__base__"], k=40)
    torch.testing.assert_close(top.scores[0], logits[0, 1:].sort(descending=True).values)
    with loaded.disable_adapter():
        base_logits = loaded(input_ids=ids, output_logits=True).logits
    torch.testing.assert_close(top.scores[1], base_logits[1, 1:].sort(descending=True).values)
    from genrec_hf.serving import Recommender

    recommender = Recommender(loaded, ItemVocab([f"i{i}" for i in range(1, 41)]))
    query = recommender.encode_queries([ids[0].tolist()], task="task")
    torch.testing.assert_close(query @ recommender.item_vectors("task")[1:].T, logits[:1, 1:])
    with pytest.raises(ValueError, match="has none"):
        attach_adapter(GenRecForNextItemPrediction(tiny_config()), lora_config(r=2, item_tower="lora"))
    with pytest.raises(ValueError, match="item_tower='fine'"):
        lora_config(item_tower="fine")
