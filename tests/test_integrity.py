"""Weights integrity (sha256 manifest, non-finite tensors) at every load through the package, and the small loading /
serving errors that used to fail deep in torch or print nothing."""

from __future__ import annotations

import hashlib
import json
import logging

import pytest
import torch

from genrec_hf import GenRecForNextItemPrediction
from genrec_hf.cli import main
from genrec_hf.data import ItemVocab
from genrec_hf.evaluation.saved_models import evaluate_saved_model
from genrec_hf.integrity import (
    MANIFEST_FILE,
    WeightsIntegrityError,
    check_finite,
    verify_weights,
    write_manifest,
)
from genrec_hf.serving import Recommender

from tests.helpers import tiny_config

TINY_DATA = "synthetic:num_users=30,num_items=40,num_clusters=3"

pytestmark = pytest.mark.usefixtures("one_thread")


def _save(folder, manifest: bool = True, **overrides):
    """A tiny untrained model folder (weights + item_vocab.json of the 40 synthetic ids), with a manifest."""
    torch.manual_seed(0)
    model = GenRecForNextItemPrediction(tiny_config(**{"num_action_types": 8, **overrides})).eval()
    model.save_pretrained(folder)
    ItemVocab([str(i) for i in range(1, 41)]).save(folder)
    if manifest:
        write_manifest(folder)
    return model


def _overwrite_last_float(path, value: float) -> None:
    """Change the last float32 of a safetensors payload in place (the file stays a valid safetensors file)."""
    data = bytearray(path.read_bytes())
    data[-4:] = torch.tensor([value], dtype=torch.float32).numpy().tobytes()
    path.write_bytes(bytes(data))


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_manifest_records_every_file_a_load_reads(tmp_path):
    _save(tmp_path / "m")
    manifest = json.loads((tmp_path / "m" / MANIFEST_FILE).read_text())
    names = ("model.safetensors", "config.json", "generation_config.json", "item_vocab.json")
    assert manifest["files"] == {n: {"sha256": _sha(tmp_path / "m" / n), "size": (tmp_path / "m" / n).stat().st_size}
                                 for n in names if (tmp_path / "m" / n).is_file()}
    assert {"model.safetensors", "config.json", "item_vocab.json"} <= set(manifest["files"])
    assert manifest["format"] == 2 and manifest["genrec_hf_version"] and manifest["created_at"]


@pytest.mark.parametrize("change", ["item_vocab.json reversed", "config.json score_temperature"])
def test_a_changed_vocabulary_or_config_is_refused(tmp_path, change):
    """Issue 27 item 3: reversing the item list of item_vocab.json in a copy of a run made `recommend` return
    another list with no warning (the manifest covered only the weights). Every file a load reads is covered now."""
    folder = tmp_path / "m"
    _save(folder)
    name = change.split()[0]
    data = json.loads((folder / name).read_text())
    if name == "item_vocab.json":
        key = next(k for k, v in data.items() if isinstance(v, list) and len(v) == 40)
        data[key] = data[key][::-1]
    else:
        data["score_temperature"] = 0.5
    (folder / name).write_text(json.dumps(data))
    with pytest.raises(WeightsIntegrityError, match=f"{folder / name} does not match {MANIFEST_FILE}"):
        Recommender.from_pretrained(folder)
    assert main(["recommend", str(folder), "--history", "1,2"]) == 2
    Recommender.from_pretrained(folder, verify=False)


def test_an_old_weights_only_manifest_loads_with_a_warning_naming_what_it_cannot_vouch_for(tmp_path, caplog):
    """Old run folders (manifest of the weights only) must keep loading; the warning says which files are not
    covered, so a user knows to re-save."""
    folder = tmp_path / "m"
    _save(folder)
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    manifest.pop("format")
    manifest["files"] = {"model.safetensors": manifest["files"]["model.safetensors"]}
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING, logger="genrec_hf.integrity"):
        Recommender.from_pretrained(folder)
    (record,) = [r for r in caplog.records if MANIFEST_FILE in r.getMessage()]
    assert "config.json" in record.getMessage() and "item_vocab.json" in record.getMessage()
    assert "written before manifests covered more than the weights" in record.getMessage()


def test_a_garbled_manifest_entry_is_one_clear_error(tmp_path):
    folder = tmp_path / "m"
    _save(folder)
    (folder / MANIFEST_FILE).write_text(json.dumps({"files": {"model.safetensors": "abc"}}))
    with pytest.raises(WeightsIntegrityError, match="is not a valid weights manifest"):
        Recommender.from_pretrained(folder)


def test_changed_payload_is_refused_naming_file_and_both_hashes(tmp_path):
    """Bug: a model.safetensors whose payload changed after saving (bit rot, a bad copy) loaded silently and served;
    every package load now compares it with the recorded sha256."""
    folder = tmp_path / "m"
    _save(folder)
    weights = folder / "model.safetensors"
    recorded = _sha(weights)
    _overwrite_last_float(weights, 1.5)  # finite: only the hash can tell
    actual = _sha(weights)
    for load in (lambda: Recommender.from_pretrained(folder),
                 lambda: evaluate_saved_model(folder, TINY_DATA),
                 lambda: __import__("genrec_hf.adapters.io", fromlist=["x"])._load_base(folder)):
        with pytest.raises(WeightsIntegrityError) as info:
            load()
        message = str(info.value)
        assert str(weights) in message and recorded in message and actual in message
    Recommender.from_pretrained(folder, verify=False)  # the opt-out loads it


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path, value):
    """Bug: NaN / inf item embeddings (a diverged run, a corrupted payload) loaded and served NaN scores."""
    torch.manual_seed(0)
    model = GenRecForNextItemPrediction(tiny_config()).eval()
    with torch.no_grad():
        model.model.embeddings.item_embeddings.weight[3, 1] = value
    model.save_pretrained(tmp_path / "m")
    ItemVocab([str(i) for i in range(1, 41)]).save(tmp_path / "m")  # no manifest: the finite check runs anyway
    with pytest.raises(WeightsIntegrityError, match=r"item_embeddings\.weight.*non-finite"):
        Recommender.from_pretrained(tmp_path / "m")


def test_item_log_q_may_hold_minus_inf_but_not_nan(tmp_path):
    """Catches the finite check refusing the sampler's log q (-inf at padding) or letting NaN through there."""
    model = _save(tmp_path / "m", manifest=False, loss_type="sampled", num_negatives=5)
    assert torch.isneginf(model.head.item_log_q).any()
    check_finite(tmp_path / "m")
    Recommender.from_pretrained(tmp_path / "m")
    with torch.no_grad():
        model.head.item_log_q[2] = float("nan")
    model.save_pretrained(tmp_path / "nan")
    with pytest.raises(WeightsIntegrityError, match=r"head\.item_log_q"):
        check_finite(tmp_path / "nan")


def test_folder_without_manifest_loads_with_a_debug_log(tmp_path, caplog):
    """Catches runs saved before the manifest existed becoming unloadable."""
    _save(tmp_path / "m", manifest=False)
    with caplog.at_level(logging.DEBUG, logger="genrec_hf.integrity"):
        verify_weights(tmp_path / "m")
        Recommender.from_pretrained(tmp_path / "m")
    assert any(MANIFEST_FILE in r.getMessage() and r.levelno == logging.DEBUG for r in caplog.records)


def test_adapter_weights_are_recorded_and_checked(tmp_path):
    """Bug: a corrupted adapter_model.safetensors loaded silently onto a healthy base."""
    from genrec_hf.adapters import attach_adapter, load_adapters, lora_config, save_adapter

    base = _save(tmp_path / "base")
    out = save_adapter(attach_adapter(base, lora_config(r=2)), tmp_path / "adapter", base_dir=tmp_path / "base")
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert set(manifest["files"]) == {"adapter_model.safetensors", "adapter_config.json", "genrec_base.json"}
    load_adapters(tmp_path / "base", {"task": out})
    _overwrite_last_float(out / "adapter_model.safetensors", 2.5)
    with pytest.raises(WeightsIntegrityError, match="adapter_model.safetensors"):
        load_adapters(tmp_path / "base", {"task": out})
    load_adapters(tmp_path / "base", {"task": out}, verify=False)


def test_pretraining_verifies_its_init_from_checkpoint(tmp_path):
    """Catches continued pre-training silently starting from a corrupted `model.init_from` checkpoint."""
    from genrec_hf.training import recipe_from_dict, train

    _save(tmp_path / "start")
    _overwrite_last_float(tmp_path / "start" / "model.safetensors", 0.25)
    recipe = recipe_from_dict({"output_dir": str(tmp_path / "out"), "model": {"init_from": str(tmp_path / "start")},
                               "data": {"source": TINY_DATA, "max_length": 8}})
    with pytest.raises(WeightsIntegrityError, match="model.safetensors"):
        train(recipe)


def test_finetune_verifies_its_base(tmp_path):
    """Catches fine-tuning (hours of compute) starting from a corrupted base."""
    from genrec_hf.training import FinetuneRecipe, finetune, recipe_from_dict

    _save(tmp_path / "base")
    _overwrite_last_float(tmp_path / "base" / "model.safetensors", 0.25)
    recipe = recipe_from_dict(kind=FinetuneRecipe, raw={"output_dir": str(tmp_path / "out"),
                                                         "data": {"source": TINY_DATA, "max_length": 8}})
    with pytest.raises(WeightsIntegrityError, match="model.safetensors"):
        finetune(recipe, tmp_path / "base")


def test_cli_refuses_a_changed_payload_in_one_line_and_no_verify_loads(tmp_path, capsys):
    """Bug: `genrec-hf evaluate` / `recommend` served a model whose weights no longer matched what was saved."""
    folder = tmp_path / "m"
    _save(folder)
    _overwrite_last_float(folder / "model.safetensors", 1.5)
    capsys.readouterr()
    assert main(["evaluate", str(folder), "--data", TINY_DATA, "--output", str(tmp_path / "e.json")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and MANIFEST_FILE in err[0] and "recorded sha256" in err[0], err
    assert main(["recommend", str(folder), "--history", "1,2"]) == 2
    assert MANIFEST_FILE in capsys.readouterr().err
    assert main(["evaluate", str(folder), "--data", TINY_DATA, "--output", str(tmp_path / "e.json"),
                 "--no_verify"]) == 0
    assert main(["recommend", str(folder), "--history", "1,2", "--no_verify"]) == 0


# ------------------------------------------------------------------------------------------- serving / load errors


def test_user_embedding_refuses_empty_and_unknown_histories(tmp_path):
    """Bug: `Recommender.user_embedding([])` failed deep in torch; an unknown id must be named."""
    _save(tmp_path / "m")
    recommender = Recommender.from_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match="empty"):
        recommender.user_embedding([])
    with pytest.raises(ValueError, match="'nope'"):
        recommender.user_embedding(["1", "nope"])
    assert recommender.user_embedding(["1", "2"]).shape == (32,)


def test_history_covering_the_catalog_says_nothing_is_left(tmp_path, capsys):
    """Bug: `recommend` with a history covering the whole catalog printed nothing at all; now the CLI says why on
    stderr (exit 0: the request was valid, the answer is empty), and the Python API returns an empty list."""
    _save(tmp_path / "m")
    everything = [str(i) for i in range(1, 41)]
    capsys.readouterr()
    assert Recommender.from_pretrained(tmp_path / "m").recommend(everything, k=5) == []
    assert main(["recommend", str(tmp_path / "m"), "--history", ",".join(everything)]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == ""
    assert "no item left to recommend" in captured.err and "40 items" in captured.err
    assert main(["recommend", str(tmp_path / "m"), "--history", ",".join(everything), "--include_seen"]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 10
