"""Serving: a `Recommender` over a saved model folder (raw item ids in, raw ids + titles out).

Cached user state, approximate top-k, embedding export and the HTTP server join this room.
"""

from .recommender import Recommendation, Recommender

__all__ = ["Recommendation", "Recommender"]
