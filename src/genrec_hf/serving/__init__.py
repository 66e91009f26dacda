"""Serving: a `Recommender` over a saved model folder (raw item ids in, raw ids + scores + titles out).

`recommender` (the object a service holds: model, task adapters, vocabulary, top-k), `state` (cached per-user
backbone states, extended event by event), `index` (approximate top-k with faiss, optional extra `ann`), `export`
(item and user vectors as safetensors + Parquet with a manifest) and `server` (FastAPI app, optional extra `serve`).
The optional libraries are imported only when those modules are used.
"""

from .recommender import Recommendation, Recommender, UnknownItemError, UnknownTaskError
from .state import UnknownUserError, UserStateStore

__all__ = ["Recommendation", "Recommender", "UnknownItemError", "UnknownTaskError", "UnknownUserError",
           "UserStateStore"]
