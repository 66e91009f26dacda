"""Evaluation: one ranking path (full-catalog, pessimistic ties, history excluded), metrics, protocols,
baselines and statistics."""

from pathlib import Path

from .metrics import DEFAULT_KS, RankingAccumulator, metrics_from_ranks
from .protocols import dense_target_ranks, evaluate_model, ranking_metrics, target_ranks
from .statistics import paired_bootstrap

# The `evaluate` module shipped inside the package, loadable by path and offline.
RANKING_METRIC_PATH = str(Path(__file__).parent / "genrec_ranking" / "genrec_ranking.py")

__all__ = [
    "DEFAULT_KS",
    "RANKING_METRIC_PATH",
    "RankingAccumulator",
    "dense_target_ranks",
    "evaluate_model",
    "metrics_from_ranks",
    "paired_bootstrap",
    "ranking_metrics",
    "target_ranks",
]
