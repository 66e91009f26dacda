"""Cold start end to end: feature store, cold-start rate, cold-start splits, cold / warm metrics through the one
ranking path, the CLI (train → add-items → recommend) and adapters trained before a catalog extension.

Each docstring names the bug the test would catch.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from genrec_hf import GenRecForNextItemPrediction
from genrec_hf.data import ItemVocab, NextItemCollator, generate_synthetic
from genrec_hf.data.item_features import (ItemFeatureStore, check_schema, estimate_cold_start_rate, hashed_tfidf,
                                          metadata_features, resolve_text_encoder)
from genrec_hf.evaluation import metrics_from_ranks
from genrec_hf.data.cold_splits import cold_time_split, hold_out_items
from genrec_hf.data.protocol import RankingProtocol
from genrec_hf.evaluation.cold_slices import (cold_warm_metrics, cold_warm_ranks, load_cold_start_ranks,
                                              save_cold_start_ranks, slice_ranks)
from genrec_hf.evaluation.protocols import rank_batches
from genrec_hf.training.item_tower import extend_catalog

from tests.helpers import REPO_ROOT, benchmark_module, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data():
    return generate_synthetic(num_users=150, num_items=80, seed=1)


def test_feature_store_builds_caches_and_aligns_to_the_vocab(data, tmp_path):
    """Rows in store order handed to a model in vocab order (features of the wrong items), or a cache that does not
    round-trip, make every semantic vector belong to another item."""
    raw = list(reversed(data.vocab.raw_ids))
    store = ItemFeatureStore.build(raw, data.item_info, text_encoder="hashing", hashing_dim=32)
    assert store.feature_names == ["genres", "year", "title_text"]
    assert store.schema[2]["source"] == "hashing" and len(store.schema[2]["idf"]) == 32
    store.save(tmp_path)
    again = ItemFeatureStore.load(tmp_path)
    assert again.raw_ids == raw and torch.equal(again.matrix, store.matrix) and again.schema == store.schema
    matrix = store.matrix_for(data.vocab)
    assert matrix.shape == (len(data.vocab), store.feature_dim) and matrix[0].abs().sum() == 0
    first = data.vocab.raw_ids[0]
    torch.testing.assert_close(matrix[1], store.matrix[raw.index(first)])
    genres = data.item_info[first]["genres"]
    block = store.schema[0]
    assert {block["categories"][i] for i in torch.nonzero(matrix[1, :block["dim"]]).flatten().tolist()} == set(genres)


def test_a_new_title_encodes_like_the_catalog_titles(data):
    """A new item's title encoded with other IDF weights (recomputed over the new items only) lands elsewhere in
    the space the tower was trained on."""
    store = ItemFeatureStore.build(data.vocab.raw_ids, data.item_info, blocks=["title_text"], hashing_dim=64)
    raw = data.vocab.raw_ids[3]
    features = metadata_features(store.schema, {"title": data.item_info[raw]["title"]})
    torch.testing.assert_close(features["title_text"], store.matrix[3])
    assert hashed_tfidf([""], store.schema[0]["idf"]).abs().sum() == 0


def test_feature_store_bad_input_names_the_value(data, tmp_path):
    """Unknown blocks, a missing encoder folder or KG, or a schema that differs from the model's would otherwise
    build silently wrong features (or fail deep inside torch)."""
    with pytest.raises(ValueError, match="unknown feature block 'colour'"):
        ItemFeatureStore.build(data.vocab.raw_ids, data.item_info, blocks=["colour"])
    with pytest.raises(ValueError, match="'attributes' was asked for"):
        ItemFeatureStore.build(data.vocab.raw_ids, data.item_info, blocks=["attributes"])
    with pytest.raises(FileNotFoundError, match="no-such-encoder"):
        resolve_text_encoder(tmp_path / "no-such-encoder")
    with pytest.raises(FileNotFoundError, match="knowledge graph"):
        ItemFeatureStore.build(data.vocab.raw_ids, data.item_info, blocks=["kg"], kg_path=tmp_path / "none.kg")
    with pytest.raises(FileNotFoundError, match="item_features.json"):
        ItemFeatureStore.load(tmp_path)
    a = [dict(name="g", kind="multi_hot", dim=2, categories=["x", "y"])]
    with pytest.raises(ValueError, match="categories"):
        check_schema(a, [dict(name="g", kind="multi_hot", dim=2, categories=["y", "x"])])
    with pytest.raises(ValueError, match=r"blocks \['g'\].*\['h'\]"):
        check_schema(a, [dict(name="h", kind="multi_hot", dim=2, categories=["x", "y"])])
    with pytest.raises(ValueError, match="unknown feature name 'colour'"):
        metadata_features(a, {"colour": "red"})
    store = ItemFeatureStore.build(data.vocab.raw_ids, data.item_info, blocks=["genres"])
    model = GenRecForNextItemPrediction(tiny_config(vocab_size=len(data.vocab), item_tower_config=dict(
        feature_schema=[dict(name="genres", kind="multi_hot", dim=1, categories=["other"])])))
    with pytest.raises(ValueError, match="feature schema mismatch in block 'genres'"):
        store.apply_to(model, data.vocab)


def test_kg_features_message_passing(tmp_path):
    """Items sharing knowledge-graph neighbours (a director, an actor) should get close vectors, unrelated items
    far ones; unlinked items get zero rows rather than another item's vector."""
    (tmp_path / "toy.kg").write_text("head_id:token\trelation_id:token\ttail_id:token\n"
                                     "m.a\tdirected_by\tm.dir1\nm.b\tdirected_by\tm.dir1\nm.a\tstars\tm.act1\n"
                                     "m.b\tstars\tm.act1\nm.c\tdirected_by\tm.dir2\nm.c\tstars\tm.act2\n")
    (tmp_path / "toy.link").write_text("item_id:token\tentity_id:token\n1\tm.a\n2\tm.b\n3\tm.c\n")
    store = ItemFeatureStore.build(["1", "2", "3", "4"], {"1": {}, "2": {}, "3": {}}, blocks=["kg"],
                                   kg_path=tmp_path, kg_dim=32, kg_rounds=2)
    m = store.matrix
    assert torch.cosine_similarity(m[0], m[1], dim=0) > torch.cosine_similarity(m[0], m[2], dim=0) + 0.2
    assert m[3].abs().sum() == 0
    assert not store.has_metadata[3]


def test_cold_start_rate():
    """A rate counting the log's first week (where every item looks new) or not counting items introduced later
    gives a masking probability far from what serving sees."""
    day = 24 * 3600
    items = [[1, 2, 1, 3], [2, 3, 4]]
    times = [[0, 0, 10 * day, 10 * day], [20 * day, 21 * day, 22 * day]]
    # counted (after day 7): (1,10d) old, (3,10d) new, (2,20d) old, (3,21d) old (first 10d), (4,22d) new
    assert estimate_cold_start_rate(items, times, serving_gap=7 * day) == pytest.approx(2 / 5)
    with pytest.raises(ValueError, match="spans less than"):
        estimate_cold_start_rate([[1, 2]], [[0, 1]], serving_gap=7 * day)


def test_hold_out_items_keeps_cold_items_out_of_training(data):
    """A held-out item left in a training window or a test history leaks collaborative signal into the 'cold'
    slice; cold items indexed among the warm ones break `add_items` (which appends)."""
    split = hold_out_items(data, 0.2, seed=3)
    cold = split.num_warm
    for name in ("train", "validation"):
        assert max(max(row) for row in split.splits[name]["item_ids"]) <= cold
    test_rows = split.splits["test"]["item_ids"]
    assert all(max(row[:-1]) <= cold for row in test_rows)
    targets = np.array([row[-1] for row in test_rows])
    assert (targets > cold).any() and (targets <= cold).any()
    assert sorted(split.vocab.raw_ids) == sorted(data.vocab.raw_ids)
    assert split.warm_vocab.raw_ids == split.vocab.raw_ids[:cold]
    assert len(split.cold_raw_ids) == round(0.2 * data.num_items)
    summary = split.summary()
    assert summary["test_users_cold_target"] == int((targets > cold).sum())


def test_cold_time_split_marks_items_first_seen_after_the_cut(data):
    """Items first seen before the cut counted as cold (or the reverse) mix the slices; post-cut events in the
    training rows leak the future."""
    split = cold_time_split(data, quantile=0.8)
    times = np.concatenate([np.asarray(t) for t in data.sequences["timestamps"]])
    cut = int(np.quantile(times, 0.8))
    assert all(max(t) < cut for t in split.splits["train"]["timestamps"])
    first = {}
    for items, stamps in zip(data.sequences["item_ids"], data.sequences["timestamps"]):
        for i, t in zip(items, stamps):
            first[data.vocab.decode(i)] = min(first.get(data.vocab.decode(i), t), t)
    assert set(split.cold_raw_ids) == {raw for raw, t in first.items() if t >= cut}
    for row, stamps in zip(split.splits["test"]["item_ids"], split.splits["test"]["timestamps"]):
        assert stamps[-1] >= cut > stamps[-2] and max(row[:-1]) <= split.num_warm


def _held_out_model_and_test_batches(data):
    """20% of the items held out (seed 3), an untrained tiny model over the grown catalog, the test rows in batches."""
    split = hold_out_items(data, 0.2, seed=3)
    torch.manual_seed(0)
    model = GenRecForNextItemPrediction(tiny_config(vocab_size=len(split.vocab), max_position_embeddings=50,
                                                    num_action_types=data.num_action_types)).eval()
    collator = NextItemCollator(50, mode="eval")
    rows = split.splits["test"]
    batches = [collator([rows[i] for i in range(s, min(s + 64, len(rows)))]) for s in range(0, len(rows), 64)]
    return split, model, rows, batches


def test_cold_warm_metrics_are_slices_of_the_one_ranking_path(data):
    """Cold / warm metrics computed by a second ranking loop (or with cold items removed from the catalog) would
    not be comparable to the overall number; they must be the same ranks, split by target."""
    split, model, rows, batches = _held_out_model_and_test_batches(data)
    mask = split.cold_mask()
    out = cold_warm_metrics(model, batches, mask, ks=(10,))
    ranks = rank_batches(model, batches)[:, 0]
    targets = torch.tensor([row[-1] for row in rows["item_ids"]])
    assert out["all"]["mrr"] == pytest.approx(metrics_from_ranks(ranks, (10,))["mrr"])
    for name, keep in (("cold", mask[targets]), ("warm", ~mask[targets])):
        expected = metrics_from_ranks(ranks[keep], (10,))
        assert out[name]["mrr"] == pytest.approx(expected["mrr"]) and out[name]["num_users"] == int(keep.sum())
        assert out[name]["num_users_without_target"] == int((~keep).sum())
    with pytest.raises(ValueError, match="another catalog"):
        RankingProtocol(target_items=torch.ones(3, dtype=torch.bool)).targets(torch.tensor([5]))


def test_per_user_cold_start_ranks_match_a_sliced_pass_and_round_trip(data, tmp_path):
    """Paired intervals read per-user ranks: ranks sliced after one pass that differ from a `target_items` pass,
    rows out of test-split order, or a saved file that loses which users have a cold target would pair or count the
    wrong users."""
    split, model, rows, batches = _held_out_model_and_test_batches(data)
    ranks, targets = cold_warm_ranks(model, batches)
    assert targets[:, 0].tolist() == [row[-1] for row in rows["item_ids"]]
    cold = split.cold_mask()
    warm = ~cold
    warm[0] = False
    for mask in (cold, warm):
        assert torch.equal(slice_ranks(ranks, targets, mask),
                           rank_batches(model, batches, RankingProtocol(target_items=mask)))
    loaded = load_cold_start_ranks(save_cold_start_ranks(tmp_path / "ranks.json", ranks, targets, split.num_warm))
    assert torch.equal(loaded["ranks"], ranks) and torch.equal(loaded["targets"], targets)
    assert torch.equal(loaded["cold"], cold[targets[:, 0]]) and 0 < int(loaded["cold"].sum()) < len(rows)
    with pytest.raises(ValueError, match="another catalog"):
        slice_ranks(ranks, targets, cold[:5])


def test_bench_cold_start_intervals_pair_the_users_of_each_slice(tmp_path):
    """The ablation's intervals: resampling all users (not the slice's), unpaired arms, a reference other than the
    seed's best ID-only arm (by cold MRR), or arms ranked on different test rows paired silently."""
    bench = benchmark_module("bench_cold_start")
    targets = torch.tensor([[1], [2], [9], [10], [3], [11]])  # num_warm 8: rows 2, 3, 5 have a cold target
    arms = {"id_mean": [1, 2, 100, 100, 1, 100], "id_knn": [1, 2, 50, 50, 1, 25],
            "fused": [1, 1, 10, 20, 1, 20], "fused_mask_a": [2, 2, 5, 5, 2, 5]}
    runs = []
    for variant, ranks in arms.items():
        (tmp_path / variant).mkdir()
        save_cold_start_ranks(tmp_path / variant / "r.json", torch.tensor(ranks)[:, None], targets, 8)
        reciprocal = 1.0 / torch.tensor(ranks, dtype=torch.float64)
        runs.append({"dataset": "d", "seed": 0, "variant": variant, "epochs": 1.0,
                     "cold": {"mrr": reciprocal[[2, 3, 5]].mean().item()},
                     "warm": {"mrr": reciprocal[[0, 1, 4]].mean().item()},
                     "ranks": f"{variant}/r.json", "base": str(tmp_path)})
    entries = bench.paired_intervals({"runs": runs}, samples=200)
    assert [e["variant"] for e in entries] == ["fused", "fused_mask_a"]
    entry = entries[1]
    assert entry["best_id"] == "id_knn" and (entry["cold_users"], entry["warm_users"]) == (3, 3)
    cold = entry["cold_vs_best_id"]
    assert cold["a"] == pytest.approx((1 / 50 + 1 / 50 + 1 / 25) / 3) and cold["b"] == pytest.approx(1 / 5)
    assert cold["relative_low"] <= cold["relative"] <= cold["relative_high"]
    assert entry["warm_vs_id_mean"]["a"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert entry["warm_vs_fused"]["a"] == pytest.approx(1.0) and entry["warm_vs_fused"]["b"] == pytest.approx(0.5)
    assert "fused_mask_a" in bench.interval_table({"runs": runs}, samples=50)
    (tmp_path / "other").mkdir()
    save_cold_start_ranks(tmp_path / "other" / "r.json", torch.ones(6, 1, dtype=torch.long), targets.flip(0), 8)
    runs.append({**runs[-1], "variant": "gate_mask_a", "ranks": "other/r.json"})
    with pytest.raises(ValueError, match="other test rows"):
        bench.paired_intervals({"runs": runs}, samples=10)


def test_id_only_models_get_mean_rows_for_new_items():
    """The ID-only baseline must serve new items with the mean trained embedding (not random rows), or the
    cold-start comparison is against a strawman."""
    torch.manual_seed(0)
    model = GenRecForNextItemPrediction(tiny_config(vocab_size=11))
    vocab = ItemVocab([str(i) for i in range(1, 11)])
    full = ItemVocab(vocab.raw_ids + ["x", "y"])
    grown = extend_catalog(model, vocab, full, None)
    assert len(grown) == 13 and model.config.vocab_size == 13
    table = model.get_input_embeddings().weight
    torch.testing.assert_close(table[11], table[1:11].mean(0))
    torch.testing.assert_close(table[12], table[1:11].mean(0))


def _cli(*argv: str) -> int:
    from genrec_hf.cli import main

    return main(list(argv))


def test_cli_trains_adds_items_recommends_and_keeps_adapters(tmp_path, capsys):
    """The CLI path of cold start: a cold-start run without cold/warm metrics, a saved model that cannot take new
    items, new items that cannot be recommended, or an adapter of the old catalog refused (or a per-item adapter
    silently accepted) on the grown one."""
    from genrec_hf.adapters import attach_adapter, load_adapters, lora_config, save_adapter
    from genrec_hf.serving import Recommender

    run = tmp_path / "run"
    recipe = REPO_ROOT / "recipes" / "cold_start" / "genrec-100k.yaml"
    assert _cli("train", str(recipe), "--output_dir", str(run), "--data.source",
                "synthetic:num_users=120,num_items=60,seed=2", "--data.max_length", "20",
                "--training.num_train_epochs", "1", "--training.disable_tqdm", "true",
                "--model.item_tower.mask_prob", "0.1") == 0
    metrics = json.loads((run / "metrics.json").read_text())
    cold = metrics["cold_start"]
    assert cold["cold"]["num_users"] == cold["test_users_cold_target"] > 0
    assert cold["warm"]["num_users"] == cold["test_users_warm_target"] > 0
    assert (run / "item_feature_store" / "item_features.json").is_file()
    saved = load_cold_start_ranks(run / "cold_start_ranks.json")  # per-user ranks, for paired intervals
    assert int(saved["cold"].sum()) == cold["cold"]["num_users"]
    assert metrics_from_ranks(saved["ranks"][saved["cold"]], (10,))["mrr"] == pytest.approx(cold["cold"]["mrr"])
    vocab = ItemVocab.load(run)
    model = GenRecForNextItemPrediction.from_pretrained(run)
    assert len(vocab) == model.config.vocab_size
    assert not model.item_tower.item_known[-cold["cold_items"]:].any()  # held-out items stay OOV after training

    adapter = attach_adapter(model, lora_config(r=2))
    save_adapter(adapter, tmp_path / "lora", base_dir=run)
    head_adapter = attach_adapter(GenRecForNextItemPrediction.from_pretrained(run),
                                  lora_config(r=2, train_head="item_vectors"))
    save_adapter(head_adapter, tmp_path / "lora_head", base_dir=run)

    genre = next(g for info in vocab.item_info.values() for g in info.get("genres", []))
    items = tmp_path / "new.jsonl"
    items.write_text(json.dumps({"item_id": "brand-new", "title": "A New Title", "genres": [genre],
                                 "year": 2020}) + "\n" + json.dumps({"item_id": "bare"}) + "\n")
    grown = tmp_path / "grown"
    assert _cli("add-items", str(run), str(items), "--output_dir", str(grown)) == 0
    assert "now serves" in capsys.readouterr().out
    assert _cli("add-items", str(run), str(items), "--output_dir", str(grown)) != 0  # not empty, no --overwrite
    recommender = Recommender.from_pretrained(grown)
    assert recommender.num_items == vocab.num_items + 2
    recs = recommender.recommend([vocab.raw_ids[0], vocab.raw_ids[1]], k=recommender.num_items - 2)
    assert {"brand-new", "bare"} <= {r.item_id for r in recs}

    loaded = load_adapters(grown, {"task": tmp_path / "lora"})  # LoRA on the projections: still fits
    assert loaded.get_base_model().config.vocab_size == len(vocab) + 2
    with pytest.raises(ValueError, match="holds per-item tables"):
        load_adapters(grown, {"task": tmp_path / "lora_head"})
    dup = tmp_path / "dup.jsonl"
    dup.write_text(json.dumps({"item_id": vocab.raw_ids[0]}) + "\n")
    assert _cli("add-items", str(run), str(dup), "--output_dir", str(tmp_path / "g2")) != 0
    assert "already in the catalog" in capsys.readouterr().err


def test_text_encoder_mean_pooling_when_installed(data):
    """The optional encoder path (AutoModel + mean pooling over the attention mask) returning pad-polluted or
    unnormalised vectors, or failing on an empty title."""
    try:
        folder = resolve_text_encoder("minilm")
    except FileNotFoundError as error:
        pytest.skip(f"optional text encoder not installed: {error}")
    from genrec_hf.data.item_features import encode_texts

    vectors = encode_texts(["Toy Story", "Toy Story 2", "GoldenEye", ""], folder)
    assert vectors.shape == (4, 384) and vectors[3].abs().sum() == 0
    torch.testing.assert_close(vectors[:3].norm(dim=1), torch.ones(3))
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]
    alone = encode_texts(["Toy Story"], folder)  # padding in the batch must not change a row
    torch.testing.assert_close(alone[0], vectors[0], atol=1e-5, rtol=0)


def test_shipped_cold_start_recipe_is_valid_and_commented():
    """A shipped recipe that does not load (a renamed key) or has an unexplained key."""
    from genrec_hf.training.recipes import load_recipe

    path = REPO_ROOT / "recipes" / "cold_start" / "genrec-100k.yaml"
    recipe = load_recipe(path)
    assert recipe.model.item_tower.fusion == "sum" and recipe.data.split == "cold_items"
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#") and ":" in line:
            assert "#" in line, f"key without a comment: {line!r}"


def test_every_cold_start_benchmark_variant_is_a_valid_recipe(tmp_path):
    """A typo in one ablation arm's recipe would surface half an hour into bench_cold_start, not in CI."""
    from genrec_hf.training.recipes import recipe_from_dict

    bench = benchmark_module("bench_cold_start")
    for dataset in bench.DATASETS:
        for variant in bench.VARIANTS:
            raw = bench.recipe_for(dataset, variant, 0, 1.0, tmp_path, {"a": 0.1, "b": 0.3}, "hashing")
            recipe = recipe_from_dict(raw)
            assert recipe.data.split == "cold_items"
            assert (recipe.model.item_tower is None) == variant.startswith(("id_mean", "id_knn"))
