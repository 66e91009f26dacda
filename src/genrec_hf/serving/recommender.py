"""Recommendations in raw item ids: a saved model folder + its `item_vocab.json`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data import ItemVocab
from ..models.genrec import GenRecForNextItemPrediction


@dataclass
class Recommendation:
    item_id: str
    score: float
    title: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"item_id": self.item_id, "score": self.score, "title": self.title}


class Recommender:
    """A model and its vocabulary: everything in, everything out, in the raw ids the user knows."""

    def __init__(self, model: GenRecForNextItemPrediction, vocab: ItemVocab) -> None:
        if len(vocab) != model.config.vocab_size:
            raise ValueError(f"item_vocab.json has {len(vocab)} entries but the model was built for vocab_size="
                             f"{model.config.vocab_size}; the vocabulary belongs to another model.")
        self.model = model.eval()
        self.vocab = vocab

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, *, base: str | Path | None = None, verify: bool = True,
                        **kwargs: Any) -> "Recommender":
        """Load `model_dir` (weights, config and `item_vocab.json`).

        An adapter folder loads merged onto the base it names (or `base`); weights are verified first
        (`genrec_hf.integrity`; `verify=False` skips it).
        """
        from ..adapters import is_adapter_folder
        from ..integrity import verify_weights

        model_dir = Path(model_dir)
        if is_adapter_folder(model_dir):
            from ..evaluation.saved_models import load_saved_model

            merged, base_vocab = load_saved_model(model_dir, base=base, verify=verify)
            return cls(merged, base_vocab)
        if not (model_dir / "config.json").is_file():
            raise FileNotFoundError(f"{model_dir} is not a saved genrec_hf model (no config.json).")
        vocab = ItemVocab.load(model_dir)
        verify_weights(model_dir, verify)
        return cls(GenRecForNextItemPrediction.from_pretrained(model_dir, **kwargs), vocab)

    def recommend(
        self,
        history: list[str],
        k: int = 10,
        *,
        timestamps: list[int] | None = None,
        exclude_seen: bool = True,
    ) -> list[Recommendation]:
        """Top-k next items after a history of raw item ids (oldest first). Unknown ids raise a clear error."""
        if not history:
            raise ValueError("The history is empty: give at least one raw item id the model knows.")
        indices = [self.vocab.encode(str(item)) for item in history]
        top = self.model.recommend([indices], k, timestamps=[timestamps] if timestamps else None,
                                   exclude_seen=exclude_seen)
        out = []
        for index, score in zip(top.items[0].tolist(), top.scores[0].tolist()):
            if index == 0:  # fewer rankable items than k
                continue
            raw = self.vocab.decode(index)
            info = self.vocab.item_info.get(raw, {})
            out.append(Recommendation(item_id=raw, score=float(score), title=info.get("title")))
        return out

    @torch.no_grad()
    def user_embedding(self, history: list[str]) -> torch.Tensor:
        """The (d_out,) query vector of a history, scorable against `model.item_vectors`."""
        if not history:
            raise ValueError("The history is empty: give at least one raw item id the model knows.")
        indices = torch.tensor([[self.vocab.encode(str(item)) for item in history]])
        return self.model(indices[:, -self.model.config.max_position_embeddings:]).user_embeddings[0]
