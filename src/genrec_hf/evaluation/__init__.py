"""Evaluation: one ranking rule (full-catalog, chunked, ties and NaN pessimistic, history excluded), one metrics
function, protocols as data, baselines and statistics."""

from pathlib import Path

from ..data.protocol import LEAVE_ONE_OUT, AllowedItems, RankingProtocol
from .metrics import DEFAULT_KS, metrics_from_ranks, pad_ranks
from .protocols import evaluate_model, rank_batches
from .ranking import dense_target_ranks, rank_targets
from .statistics import paired_bootstrap, per_user_metric, per_user_values

# The `evaluate` module shipped inside the package, loadable by path and offline.
RANKING_METRIC_PATH = str(Path(__file__).parent / "genrec_ranking" / "genrec_ranking.py")

__all__ = [
    "DEFAULT_KS",
    "LEAVE_ONE_OUT",
    "RANKING_METRIC_PATH",
    "AllowedItems",
    "RankingProtocol",
    "dense_target_ranks",
    "evaluate_model",
    "metrics_from_ranks",
    "pad_ranks",
    "paired_bootstrap",
    "per_user_metric",
    "per_user_values",
    "rank_batches",
    "rank_targets",
]
