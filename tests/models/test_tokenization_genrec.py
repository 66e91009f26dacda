"""The item tokenizer: raw ids → exactly the inputs the model reads, indices → raw ids, unknown ids as the model can
handle them, and the files that let `AutoTokenizer` load it from any run folder, with or without genrec_hf."""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
from transformers import AutoProcessor, AutoTokenizer

from genrec_hf import GenRecForNextItemPrediction, GenRecItemTokenizer
from genrec_hf.data import ItemVocab, save_item_tokenizer
from genrec_hf.models.genrec.modeling_genrec import history_inputs
from genrec_hf.models.genrec.tokenization_genrec import UnknownItemError

from tests.helpers import run_without_genrec_hf, tiny_config

RAW = [f"m{100 + i}" for i in range(40)]  # raw id "m100" is index 1: ids and indices never coincide


def tokenizer(max_length: int = 16, **kwargs) -> GenRecItemTokenizer:
    return GenRecItemTokenizer(items=RAW, item_info={"m101": {"title": "One"}}, model_max_length=max_length, **kwargs)


def test_inputs_are_the_models_left_padded_most_recent_events():
    """Catches right padding, keeping the oldest events, or timestamps / actions drifting from their events: the
    tokenizer must give what `history_inputs` (the rule of `model.recommend` and serving) gives."""
    histories = [["m105", "m101", "m139", "m102", "m110", "m111"], ["m103"], ["m120", "m121"]]
    times = [[10, 20, 30, 40, 50, 60], [5], [1, 2]]
    actions = [[1, 2, 1, 2, 1, 2], [2], [1, 1]]
    indices = [[RAW.index(raw) + 1 for raw in row] for row in histories]
    expected = history_inputs(indices, 4, timestamps=times, action_ids=actions)
    got = tokenizer(max_length=4)(histories, timestamps=times, action_ids=actions, return_tensors="pt")
    for name in ("input_ids", "attention_mask", "timestamps", "action_ids"):
        assert torch.equal(got[name], expected[name]), name
    assert got["input_ids"][0].tolist() == [40, 3, 11, 12]  # the 4 most recent, "m139" = index 40
    # one history: flat lists; padding to max_length; no truncation
    one = tokenizer(max_length=4)(["m101", "m102"], padding="max_length")
    assert one["input_ids"] == [0, 0, 2, 3] and one["attention_mask"] == [0, 0, 1, 1]
    assert len(tokenizer(max_length=4)(histories[0], truncation=False)["input_ids"]) == 6


def test_indices_back_to_raw_ids_and_titles():
    """Catches an off-by-one between index and raw id (index 1 is the first item, 0 is padding)."""
    tok = tokenizer()
    assert tok.convert_ids_to_tokens([1, 2, 40]) == ["m100", "m101", "m139"]
    assert tok.decode([0, 2, 3], skip_special_tokens=True) == ["m101", "m102"]
    assert tok.decode([[1], [2]]) == [["m100"], ["m101"]]
    assert tok.convert_tokens_to_ids(["m101", "<pad>"]) == [2, 0] and tok.pad_token_id == 0
    assert tok.title("m101") == "One" and tok.title("m102") is None
    assert len(tok) == tok.vocab_size == 41
    with pytest.raises(ValueError, match="Item index 41 is outside 1..40"):
        tok.convert_ids_to_tokens([41])


def test_unknown_ids_error_or_skip():
    """Catches an unknown id silently becoming padding (a shorter history that looks fine) in an ID-only model."""
    with pytest.raises(UnknownItemError, match="Unknown item id 'zzz' in history"):
        tokenizer()(["m101", "zzz"])
    skipped = tokenizer(unknown_items="skip")(["m101", "zzz", "m102"], timestamps=[1, 2, 3])
    assert skipped["input_ids"] == [2, 3] and skipped["timestamps"] == [1, 3]
    with pytest.raises(ValueError, match="unknown_items='drop'"):
        tokenizer(unknown_items="drop")


def test_oov_event_is_the_towers_new_item_without_metadata():
    """An unknown id in a tower model's history must be embedded as the model embeds a new item it knows nothing
    about: the OOV vector over a zero feature row (`add_items` without metadata). Catches OOV as padding (the event
    vanishes from attention) or as some real item."""
    from tests.models.test_item_tower import tower_model

    model = tower_model(fusion="gate")
    vocab = ItemVocab(RAW)
    tok = vocab.tokenizer(model.config)
    assert tok.unknown_items == "oov"
    oov = tok(["m101", "zzz", "m102"], return_tensors="pt")
    assert oov["input_ids"].tolist() == [[2, 0, 3]] and oov["attention_mask"].tolist() == [[1, 1, 1]]
    with torch.no_grad():
        got = model(**oov).user_embeddings
        model.add_items(["zzz"], vocab=vocab)  # no metadata: OOV + zero features
        added = model(**history_inputs([[2, 41, 3]], 16)).user_embeddings
    torch.testing.assert_close(got, added)
    assert ItemVocab(RAW).tokenizer(tiny_config()).unknown_items == "error"  # an ID-only model cannot


def test_saved_with_the_model_and_loaded_by_auto_classes(tmp_path):
    """Catches a folder whose tokenizer AutoTokenizer / AutoProcessor cannot load, or an item_vocab.json the
    tokenizer writes differently from ItemVocab (the adapter fingerprint hashes that file)."""
    config = tiny_config()
    vocab = ItemVocab(RAW, {"m101": {"title": "One", "year": float("nan")}})
    GenRecForNextItemPrediction(config).save_pretrained(tmp_path / "run")
    save_item_tokenizer(tmp_path / "run", vocab, config)
    vocab.save(tmp_path / "plain")
    assert (tmp_path / "run" / "item_vocab.json").read_bytes() == (tmp_path / "plain" / "item_vocab.json").read_bytes()
    saved = json.loads((tmp_path / "run" / "tokenizer_config.json").read_text())
    assert saved["auto_map"]["AutoTokenizer"][0] == "tokenization_genrec.GenRecItemTokenizer"
    assert (tmp_path / "run" / "tokenization_genrec.py").is_file()
    assert "items" not in saved and saved["model_max_length"] == config.max_position_embeddings
    for loader in (AutoTokenizer, AutoProcessor):
        loaded = loader.from_pretrained(tmp_path / "run")  # genrec_hf imported: no trust_remote_code needed
        assert isinstance(loaded, GenRecItemTokenizer) and loaded.raw_ids == RAW and loaded.title("m101") == "One"
        assert loaded.padding_side == "left" and loaded(["m139"])["input_ids"] == [40]


def test_an_old_folder_without_tokenizer_files_still_loads(tmp_path):
    """Folders saved before the tokenizer existed have item_vocab.json alone: serving and the tokenizer class must
    still read them."""
    from genrec_hf.serving import Recommender

    GenRecForNextItemPrediction(tiny_config()).save_pretrained(tmp_path)
    ItemVocab(RAW).save(tmp_path)
    assert not (tmp_path / "tokenizer_config.json").exists()
    assert GenRecItemTokenizer.from_pretrained(tmp_path).raw_ids == RAW
    recommender = Recommender.from_pretrained(tmp_path)
    assert len(recommender.recommend(["m101"], k=3)) == 3


def test_remote_code_tokenizer_and_pipeline_without_genrec_hf(tmp_path):
    """A Hub user with trust_remote_code and no genrec_hf: AutoTokenizer maps raw ids, and the pipeline (task
    inferred from the folder) recommends what genrec_hf's Recommender recommends. Catches a closure file that
    imports genrec_hf, a tokenizer or pipeline file not copied, or `custom_pipelines` missing from config.json."""
    from genrec_hf.serving import Recommender

    torch.manual_seed(0)
    GenRecForNextItemPrediction(tiny_config()).save_pretrained(tmp_path)
    save_item_tokenizer(tmp_path, ItemVocab(RAW, {"m101": {"title": "One"}}), tiny_config())
    history = ["m105", "m101", "m139"]
    expected = [(r.item_id, round(r.score, 5)) for r in Recommender.from_pretrained(tmp_path).recommend(history, k=5)]
    run_without_genrec_hf(textwrap.dedent(f"""
        from transformers import AutoTokenizer, pipeline
        tok = AutoTokenizer.from_pretrained({str(tmp_path)!r}, trust_remote_code=True)
        assert "genrec_hf" not in type(tok).__module__
        assert tok({history!r})["input_ids"] == [6, 2, 40], tok({history!r})
        recommend = pipeline(model={str(tmp_path)!r}, trust_remote_code=True)
        got = [(r["item_id"], round(r["score"], 5)) for r in recommend({history!r}, top_k=5)]
        assert got == {expected!r}, got
        print("ok")
    """), tmp_path)
