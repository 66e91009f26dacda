"""The `next-item-recommendation` pipeline against genrec_hf's `Recommender` (the reference): same items, same
scores, titles, batches, and adapters chosen by folder or by name."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import pipeline

from genrec_hf import GenRecForNextItemPrediction, NextItemRecommendationPipeline
from genrec_hf.adapters import attach_adapter, lora_config, save_adapter
from genrec_hf.data import ItemVocab, save_item_tokenizer
from genrec_hf.serving import Recommender

from tests.helpers import tiny_config

RAW = [f"m{100 + i}" for i in range(40)]
HISTORY = ["m105", "m101", "m139", "m105"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A base run folder (tokenizer with titles) and two adapters: `a` trains the item vectors, `b` only LoRA."""
    root = tmp_path_factory.mktemp("pipeline")
    torch.manual_seed(0)
    base = GenRecForNextItemPrediction(tiny_config(vocab_size=41)).eval()
    base.save_pretrained(root / "base")
    save_item_tokenizer(root / "base", ItemVocab(RAW, {raw: {"title": f"T{raw}"} for raw in RAW}), base.config)
    for seed, (name, head) in enumerate((("a", "item_vectors"), ("b", False)), 1):
        model = attach_adapter(GenRecForNextItemPrediction.from_pretrained(root / "base"),
                               lora_config(r=4, train_head=head))
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for param in (p for p in model.parameters() if p.requires_grad):
                param.add_(0.5 * torch.randn(param.shape, generator=g))
        save_adapter(model, root / name, base_dir=root / "base")
    return root


def _pairs(recommendations) -> list[tuple[str, float, str | None]]:
    return [(r.item_id, round(r.score, 5), r.title) for r in recommendations]


def _rows(results) -> list[tuple[str, float, str | None]]:
    return [(r["item_id"], round(r["score"], 5), r["title"]) for r in results]


def test_task_is_inferred_and_matches_the_recommender(folders):
    """Catches a folder whose config does not name the pipeline (task not inferable), a pipeline scoring another
    way than serving (history exclusion, truncation, padding side), or titles lost."""
    assert set(json.loads((folders / "base" / "config.json").read_text())["custom_pipelines"]) == \
        {"next-item-recommendation"}
    recommend = pipeline(model=str(folders / "base"), trust_remote_code=True)
    assert type(recommend).__name__ == "NextItemRecommendationPipeline"
    reference = Recommender.from_pretrained(folders / "base")
    expected = _pairs(reference.recommend(HISTORY, k=7))
    assert _rows(recommend(HISTORY, top_k=7)) == expected
    assert expected[0][2] == f"T{expected[0][0]}" and "m105" not in [e[0] for e in expected]
    included = _rows(recommend(HISTORY, top_k=40, exclude_seen=False))
    assert {"m105", "m101", "m139"} <= {row[0] for row in included}
    with pytest.raises(ValueError, match="top_k=0"):
        recommend(HISTORY, top_k=0)


def test_batches_equal_single_calls(folders):
    """Catches batched histories padded on the wrong side or exclusions mixed between rows (`batch_size` > 1)."""
    recommend = pipeline("next-item-recommendation", model=str(folders / "base"), trust_remote_code=True)
    histories = [HISTORY, ["m110"], ["m120", "m121", "m122"]]
    singles = [_rows(recommend(h, top_k=4)) for h in histories]
    assert [_rows(r) for r in recommend(histories, top_k=4)] == singles
    assert [_rows(r) for r in recommend(histories, top_k=4, batch_size=2)] == singles
    timed = recommend({"history": ["m110", "m111"], "timestamps": [1700000000, 1700003600]}, top_k=3)
    assert len(timed) == 3


def test_adapters_by_name_and_by_folder(folders):
    """Catches the pipeline serving the wrong adapter (or the base) after a switch, an adapter without a
    modules_to_save copy breaking the switch, or an adapter folder given as the model not being applied."""
    reference = Recommender.from_pretrained(folders / "base", adapters={"a": folders / "a", "b": folders / "b"})
    recommend = pipeline(model=str(folders / "base"), trust_remote_code=True,
                         adapters={"a": str(folders / "a"), "b": str(folders / "b")})
    for task in ("a", None, "b", "a"):
        assert _rows(recommend(HISTORY, top_k=5, adapter=task)) == _pairs(reference.recommend(HISTORY, k=5,
                                                                                             task=task)), task
    assert _rows(recommend(HISTORY, top_k=5, adapter="a")) != _rows(recommend(HISTORY, top_k=5))
    with pytest.raises(ValueError, match="Unknown adapter 'c'"):
        recommend(HISTORY, adapter="c")
    from_folder = pipeline(model=str(folders / "a"), trust_remote_code=True)
    assert _rows(from_folder(HISTORY, top_k=5)) == _pairs(reference.recommend(HISTORY, k=5, task="a"))


def test_registered_task_for_a_model_object(folders):
    """With genrec_hf imported the task is in transformers' registry: a model object (no folder, so no
    custom_pipelines) gets the pipeline too, and it runs in eval mode (no dropout noise)."""
    model = GenRecForNextItemPrediction.from_pretrained(folders / "base").train()
    tok = ItemVocab.load(folders / "base").tokenizer(model.config)
    recommend = pipeline("next-item-recommendation", model=model, tokenizer=tok)
    assert isinstance(recommend, NextItemRecommendationPipeline)
    expected = _pairs(Recommender.from_pretrained(folders / "base").recommend(HISTORY, k=3))
    assert _rows(recommend(HISTORY, top_k=3)) == expected
