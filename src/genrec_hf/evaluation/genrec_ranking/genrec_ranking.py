"""genrec_ranking: full-catalog ranking metrics (MRR, HR@K, NDCG@K) as an `evaluate` module.

Load it by path, offline:

    import evaluate
    from genrec_hf.evaluation import RANKING_METRIC_PATH
    evaluate.load(RANKING_METRIC_PATH, "ranks").compute(ranks=[1, 3, 12])      # 1-based, ties already pessimistic
    evaluate.load(RANKING_METRIC_PATH, "set_ranks").compute(ranks=[[1, 7], [4, 0]])   # several targets, 0 = padding
    evaluate.load(RANKING_METRIC_PATH).compute(predictions=[[...scores over the catalog...]], references=[target])

Scores follow the genrec_hf protocol: index 0 is padding and never ranked; ties and NaN count pessimistically. The
numbers are exactly `genrec_hf.evaluation.metrics_from_ranks` over `dense_target_ranks` (this file only adapts the
interface).
"""

from __future__ import annotations

import datasets
import evaluate
import torch

_CITATION = """Xu, Hsiao, Bhattacharya. Towards Generalizable and Efficient Large-Scale Generative Recommenders.
arXiv 2605.23312, 2026."""
_DESCRIPTION = ("Mean reciprocal rank, hit rate@K, NDCG@K and recall@K of the held-out item(s) of each user, "
                "full-catalog ranking.")
_KWARGS_DESCRIPTION = """
Args:
    ranks: 1-based rank of each user's held-out item (config "ranks"), or per user the 1-based ranks of its
        targets, 0 = padding (config "set_ranks"), or
    predictions: per user, the scores of every item of the catalog (index 0 = padding).
    references: per user, the index of the held-out item.
    ks: cut-offs (default genrec_hf.evaluation.DEFAULT_KS).
Returns:
    dict with mrr, hr@K, ndcg@K, recall@K, num_users, num_users_without_target.
"""


_FEATURES = {
    "ranks": datasets.Features({"ranks": datasets.Value("int64")}),
    "set_ranks": datasets.Features({"ranks": datasets.Sequence(datasets.Value("int64"))}),
    "default": datasets.Features({"predictions": datasets.Sequence(datasets.Value("float32")),
                                  "references": datasets.Value("int64")}),
}


class GenrecRanking(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation=_CITATION, inputs_description=_KWARGS_DESCRIPTION,
            features=_FEATURES.get(self.config_name, _FEATURES["default"]),
        )

    def _compute(self, ranks=None, predictions=None, references=None, ks=None):
        from genrec_hf.evaluation import DEFAULT_KS, dense_target_ranks, metrics_from_ranks, pad_ranks

        if ranks is None:
            ranks = dense_target_ranks(torch.tensor(predictions), torch.tensor(references))
        elif self.config_name == "set_ranks":
            ranks = pad_ranks([torch.as_tensor(row, dtype=torch.long)[None] for row in ranks])
        return metrics_from_ranks(torch.as_tensor(ranks), DEFAULT_KS if ks is None else ks)
