"""PEFT LoRA adapters on a frozen GenRec base: frozen weights, save/load, switching, mixed batches, wrong base."""

from __future__ import annotations

import pytest
import torch

from genrec_hf import GenRecForNextItemPrediction
from genrec_hf.adapters import (
    adapter_item_vectors,
    attach_adapter,
    load_adapters,
    lora_config,
    merge_adapter,
    save_adapter,
    score_mixed_batch,
    trainable_parameters,
)

from tests.helpers import tiny_config


def _batch(seed: int = 0, batch: int = 4, length: int = 6) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 41, (batch, length), generator=g)
    ids[0, :2] = 0  # left padding on one row
    return {"input_ids": ids, "attention_mask": (ids != 0).long(),
            "timestamps": torch.arange(length).expand(batch, -1) * 3600 * (ids != 0),
            "action_ids": torch.randint(0, 3, (batch, length), generator=g) * (ids != 0)}


def _base(tmp_path, **overrides) -> tuple[GenRecForNextItemPrediction, str]:
    torch.manual_seed(0)
    model = GenRecForNextItemPrediction(tiny_config(**overrides)).eval()
    path = tmp_path / ("base" + "".join(f"-{k}{v}" for k, v in overrides.items()))
    model.save_pretrained(path)
    return model, str(path)


def _perturb(model, adapter: str, seed: int) -> None:
    """Give an adapter non-trivial weights (LoRA B starts at zero, so a fresh adapter is the identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if f".{adapter}." in f"{name}." and ("lora_" in name or "modules_to_save" in name):
                param.add_(0.3 * torch.randn(param.shape, generator=g))


def _train_steps(model, steps: int = 3) -> None:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for step in range(steps):
        batch = _batch(step)
        labels = torch.roll(batch["input_ids"], -1, dims=1)
        labels[:, -1] = -100
        labels[batch["input_ids"] == 0] = -100
        labels[labels == 0] = -100
        loss = model(**batch, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


@pytest.mark.parametrize("overrides,train_head", [
    ({}, True),  # tied, no projection: LoRA only
    ({}, "item_vectors"),  # tied: the adapter's own output vectors (input embeddings stay frozen)
    ({"head_projection_ratio": 2, "tie_word_embeddings": False}, "all"),
])
def test_base_frozen_and_save_load_identical(tmp_path, overrides, train_head):
    base, base_dir = _base(tmp_path, **overrides)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    model = attach_adapter(base, lora_config(r=4, alpha=8, train_head=train_head))
    trainable, total = trainable_parameters(model)
    assert 0 < trainable < total
    _train_steps(model)
    after = model.get_base_model()
    for name, param in after.named_parameters():  # every original (wrapped) base weight is bit-identical
        key = name.replace("base_layer.", "").replace("original_module.", "")
        if "lora_" in name or "modules_to_save" in name:
            continue
        assert torch.equal(param, before[key]), name
    batch = _batch(7)
    tuned = model(**batch).user_embeddings
    with model.disable_adapter():
        assert torch.allclose(model(**batch).user_embeddings, base.__class__.from_pretrained(base_dir)(**batch)
                              .user_embeddings, atol=1e-6)
    out = save_adapter(model, tmp_path / "adapter", base_dir=base_dir)
    assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()
    assert not (out / "model.safetensors").exists()
    loaded = load_adapters(base_dir, {"task": out})
    assert torch.allclose(loaded(**batch).user_embeddings, tuned, atol=1e-6)
    assert torch.allclose(adapter_item_vectors(loaded, "task"), adapter_item_vectors(model, "default"))
    # The served scores (through the adapter's item vectors) match too.
    top = score_mixed_batch(loaded, batch, ["task"] * 4, k=5)
    ref = GenRecForNextItemPrediction.topk(model.get_base_model(), tuned, 5)
    assert torch.equal(top.items, ref.items)
    if train_head == "item_vectors":  # the input embeddings are still the frozen base table
        emb = loaded.get_base_model().model.embeddings.item_embeddings.weight
        assert torch.equal(emb, before["model.embeddings.item_embeddings.weight"])
        assert not torch.equal(adapter_item_vectors(loaded, "task"), emb)


def test_two_adapters_switch_and_mixed_batch(tmp_path):
    base, base_dir = _base(tmp_path, head_projection_ratio=2, tie_word_embeddings=False)
    model = attach_adapter(base, lora_config(r=4, train_head="all"), adapter_name="task_a")
    _perturb(model, "task_a", 1)
    model = attach_adapter(model, lora_config(r=2, target_modules=("q_proj", "down_proj"), layers=[1]),
                           adapter_name="task_b")
    _perturb(model, "task_b", 2)
    save_adapter(model, tmp_path / "a", adapter_name="task_a", base_dir=base_dir)
    save_adapter(model, tmp_path / "b", adapter_name="task_b", base_dir=base_dir)
    served = load_adapters(base_dir, {"a": tmp_path / "a", "b": tmp_path / "b"})
    batch = _batch(3)
    per_task = {}
    for name in ("a", "b"):
        served.set_adapter(name)
        per_task[name] = served(**batch).user_embeddings
    with served.disable_adapter():
        per_task["__base__"] = served(**batch).user_embeddings
    assert not torch.allclose(per_task["a"], per_task["b"])
    assert not torch.allclose(per_task["a"], per_task["__base__"])
    names = ["a", "b", "__base__", "b"]
    served.train()
    items, scores = score_mixed_batch(served, batch, names, k=5)
    assert served.training, "score_mixed_batch must put the model back in the mode it found it in"
    served.eval()
    queries = served(**batch, adapter_names=names).user_embeddings
    for i, name in enumerate(names):
        assert torch.allclose(queries[i], per_task[name][i], atol=1e-5)
        ref_items = torch.topk(_scores(served, name, per_task[name][i:i + 1]), 5).indices
        assert torch.equal(items[i], ref_items[0]), name


def _scores(model, name, queries):
    scores = queries @ adapter_item_vectors(model, name).T
    scores[:, 0] = float("-inf")
    return scores


def test_merge_and_unload_export(tmp_path):
    base, base_dir = _base(tmp_path)
    model = attach_adapter(base, lora_config(r=4, train_head="item_vectors"))
    _perturb(model, "default", 5)
    batch = _batch(1)
    expected = model(**batch).user_embeddings
    expected_vectors = adapter_item_vectors(model, "default").clone()
    merged = merge_adapter(model)
    assert not merged.config.tie_word_embeddings
    merged.save_pretrained(tmp_path / "merged")
    reloaded = GenRecForNextItemPrediction.from_pretrained(tmp_path / "merged").eval()
    assert torch.allclose(reloaded(**batch).user_embeddings, expected, atol=1e-5)
    assert torch.allclose(reloaded.item_vectors, expected_vectors)
    # The shared base in the PeftModel was not merged into.
    with model.disable_adapter():
        assert torch.allclose(model(**batch).user_embeddings, base.__class__.from_pretrained(base_dir)(**batch)
                              .user_embeddings, atol=1e-6)


@pytest.mark.parametrize("overrides,needle", [({"hidden_size": 48}, "hidden_size"), ({"vocab_size": 51}, "vocab_size")])
def test_wrong_base_fails_clearly(tmp_path, overrides, needle):
    base, base_dir = _base(tmp_path)
    model = attach_adapter(base, lora_config(r=2))
    save_adapter(model, tmp_path / "adapter", base_dir=base_dir)
    _, other_dir = _base(tmp_path, **overrides)
    with pytest.raises(ValueError, match=needle) as info:
        load_adapters(other_dir, {"task": tmp_path / "adapter"})
    assert base_dir in str(info.value) and other_dir in str(info.value)


def test_lora_config_validation():
    with pytest.raises(ValueError, match="not GenRec projection"):
        lora_config(target_modules=("query",))
    with pytest.raises(ValueError, match="head part"):
        lora_config(train_head="bias")
    assert lora_config(train_head=False).modules_to_save is None


def test_trained_adapter_changes_the_output(tmp_path):
    """Catches an adapter that trains nothing (e.g. LoRA B left at zero, no target module wrapped): after a few
    steps its output must differ from the base's, and a saved + reloaded copy must keep the difference."""
    base, base_dir = _base(tmp_path)
    batch = _batch(7)
    reference = base(**batch).user_embeddings.detach().clone()
    model = attach_adapter(base, lora_config(r=4, train_head=False))
    _train_steps(model)
    tuned = model(**batch).user_embeddings
    assert not torch.allclose(tuned, reference, atol=1e-4)
    loaded = load_adapters(base_dir, {"task": save_adapter(model, tmp_path / "adapter", base_dir=base_dir)})
    assert not torch.allclose(loaded(**batch).user_embeddings, reference, atol=1e-4)


def _with_vocab(tmp_path, name: str, raw_ids: list[str], seed: int = 0) -> str:
    from genrec_hf.data import ItemVocab

    torch.manual_seed(seed)
    path = tmp_path / name
    GenRecForNextItemPrediction(tiny_config(num_action_types=8)).save_pretrained(path)
    ItemVocab(raw_ids).save(path)
    return str(path)


def test_other_item_vocab_is_refused_and_other_weights_warn(tmp_path):
    """Catches check_base letting an adapter run on a re-indexed catalog (same vocab_size, other items: every
    index means another item), and not warning when only the base weights differ."""
    ids = [str(i) for i in range(1, 41)]
    base_dir = _with_vocab(tmp_path, "base", ids)
    model = attach_adapter(GenRecForNextItemPrediction.from_pretrained(base_dir), lora_config(r=2))
    save_adapter(model, tmp_path / "adapter", base_dir=base_dir)
    reindexed = _with_vocab(tmp_path, "reindexed", ids[::-1])
    with pytest.raises(ValueError, match="item_vocab.json differs"):
        load_adapters(reindexed, {"task": tmp_path / "adapter"})
    retrained = _with_vocab(tmp_path, "retrained", ids, seed=1)
    with pytest.warns(UserWarning, match="trained on base weights"):
        load_adapters(retrained, {"task": tmp_path / "adapter"})


def test_layers_outside_the_base_are_named(tmp_path):
    """Bug: `--lora.layers '[7]'` on a 2-layer base failed in PEFT with 'target modules not found'."""
    base, _ = _base(tmp_path)
    with pytest.raises(ValueError, match=r"lora.layers=\[7\].*num_hidden_layers=2.*0\.\.1"):
        attach_adapter(base, lora_config(r=2, layers=[7]))
    attach_adapter(base, lora_config(r=2, layers=[1]))
    from genrec_hf.training import FinetuneRecipe, finetune, recipe_from_dict

    recipe = recipe_from_dict(kind=FinetuneRecipe, raw={"output_dir": str(tmp_path / "out"), "lora": {"layers": [7]},
                                                         "data": {"source": "synthetic", "max_length": 8}})
    with pytest.raises(ValueError, match=r"lora.layers=\[7\]"):  # before any data is loaded
        finetune(recipe, _with_vocab(tmp_path, "base-for-finetune", [str(i) for i in range(1, 41)]))


def test_unknown_task_parameter_is_named_at_validation():
    """Bug: `--task.params '{bogus: 1}'` surfaced as a TypeError from the task builder after the data was loaded."""
    from genrec_hf.training import FinetuneRecipe, recipe_from_dict

    with pytest.raises(ValueError, match=r"'high_engagement'.*\['bogus'\].*'threshold'"):
        recipe_from_dict(kind=FinetuneRecipe, raw={"task": {"name": "high_engagement", "params": {"bogus": 1}}})
    recipe_from_dict(kind=FinetuneRecipe, raw={"task": {"name": "high_engagement", "params": {"threshold": 3}}})


# ------------------------------------------------------------------------------ adapter folders in evaluate / recommend
TINY_DATA = "synthetic:num_users=30,num_items=40,num_clusters=3"


def _adapter_on_base(tmp_path):
    """A base folder with the synthetic vocabulary and a perturbed LoRA adapter trained on it."""
    from genrec_hf.integrity import write_manifest

    ids = [str(i) for i in range(1, 41)]
    base_dir = _with_vocab(tmp_path, "base", ids)
    write_manifest(base_dir)
    model = attach_adapter(GenRecForNextItemPrediction.from_pretrained(base_dir), lora_config(r=2))
    _perturb(model, "default", 3)
    save_adapter(model, tmp_path / "adapter", base_dir=base_dir)
    return base_dir, tmp_path / "adapter", ids


def test_evaluate_adapter_folder_checks_the_base_it_names(tmp_path, caplog):
    """Bug: `genrec-hf evaluate ADAPTER` loaded through PEFT's auto path and skipped the base check, so an adapter
    over a retrained base with another item vocabulary evaluated silently."""
    import logging

    from genrec_hf.data import ItemVocab
    from genrec_hf.evaluation.saved_models import evaluate_saved_model
    from genrec_hf.serving import Recommender

    base_dir, adapter_dir, ids = _adapter_on_base(tmp_path)
    with caplog.at_level(logging.INFO, logger="genrec_hf.adapters"):
        metrics = evaluate_saved_model(adapter_dir, TINY_DATA)
    assert 0 < metrics["mrr"] <= 1
    assert any("LoRA adapter" in r.getMessage() and base_dir in r.getMessage() for r in caplog.records)
    # The served model is the adapter's, not the base's.
    served = Recommender.from_pretrained(adapter_dir)
    plain = Recommender.from_pretrained(base_dir)
    assert not torch.allclose(served.user_embedding(["1", "2"]), plain.user_embedding(["1", "2"]), atol=1e-4)
    from genrec_hf.integrity import write_manifest

    ItemVocab(ids[::-1]).save(base_dir)  # the base folder was retrained on a re-indexed catalog (and re-saved)
    write_manifest(base_dir)
    with pytest.raises(ValueError, match="item_vocab.json differs"):
        evaluate_saved_model(adapter_dir, TINY_DATA)
    with pytest.raises(ValueError, match="item_vocab.json differs"):
        Recommender.from_pretrained(adapter_dir)


def test_cli_adapter_folder_needs_its_base(tmp_path, capsys):
    """Bug: an adapter folder whose base is gone failed inside PEFT / the Hub client; the CLI now says that an
    adapter needs its base and how to pass it, and `--base` loads it."""
    import shutil

    from genrec_hf.cli import main

    base_dir, adapter_dir, _ = _adapter_on_base(tmp_path)
    moved = tmp_path / "moved_base"
    shutil.move(base_dir, moved)
    capsys.readouterr()
    assert main(["recommend", str(adapter_dir), "--history", "1,2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs its base model" in err[0] and "--base DIR" in err[0], err
    assert main(["evaluate", str(adapter_dir), "--data", TINY_DATA, "--output", str(tmp_path / "e.json")]) == 2
    assert "--base DIR" in capsys.readouterr().err
    assert main(["recommend", str(adapter_dir), "--history", "1,2", "--base", str(moved)]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 10
    assert main(["evaluate", str(adapter_dir), "--data", TINY_DATA, "--output", str(tmp_path / "e.json"),
                 "--base", str(moved)]) == 0
