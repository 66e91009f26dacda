"""genrec_ranking: full-catalog ranking metrics (MRR, HR@K, NDCG@K) as an `evaluate` module.

Load it by path, offline:

    import evaluate
    from genrec_hf.evaluation import RANKING_METRIC_PATH
    evaluate.load(RANKING_METRIC_PATH, "ranks").compute(ranks=[1, 3, 12])      # 1-based, ties already pessimistic
    evaluate.load(RANKING_METRIC_PATH).compute(predictions=[[...scores over the catalog...]], references=[target])

Scores follow the genrec_hf protocol: index 0 is padding and never ranked; ties count pessimistically. The numbers
are exactly `genrec_hf.evaluation.metrics_from_ranks` (this file only adapts the interface).
"""

from __future__ import annotations

import datasets
import evaluate
import torch

_CITATION = """Xu, Hsiao, Bhattacharya. Towards Generalizable and Efficient Large-Scale Generative Recommenders.
arXiv 2605.23312, 2026."""
_DESCRIPTION = "Mean reciprocal rank, hit rate@K and NDCG@K of one held-out item per user, full-catalog ranking."
_KWARGS_DESCRIPTION = """
Args:
    ranks: 1-based rank of each user's held-out item (config "ranks"), or
    predictions: per user, the scores of every item of the catalog (index 0 = padding).
    references: per user, the index of the held-out item.
    ks: cut-offs (default 1, 5, 10, 50, 200).
Returns:
    dict with mrr, hr@K, ndcg@K.
"""


class GenrecRanking(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation=_CITATION, inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"ranks": datasets.Value("int64")}) if self.config_name == "ranks" else
            datasets.Features({"predictions": datasets.Sequence(datasets.Value("float32")),
                               "references": datasets.Value("int64")}),
        )

    def _compute(self, ranks=None, predictions=None, references=None, ks=(1, 5, 10, 50, 200)):
        from genrec_hf.evaluation import dense_target_ranks, metrics_from_ranks

        if ranks is None:
            ranks = dense_target_ranks(torch.tensor(predictions), torch.tensor(references))
        return metrics_from_ranks(torch.as_tensor(ranks), ks)
