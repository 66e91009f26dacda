"""Next-item losses as small pure functions: full softmax and sampled softmax.

Every function takes query vectors (N × d, one per supervised position), the item vector table (V × d, row 0 =
padding) and targets (N,), and returns the **sum** of the per-position losses; the caller divides by the number of
supervised positions of the whole (accumulated, multi-process) batch, which is what makes the loss exact under
gradient accumulation and data parallelism.

Torch only (no genrec_hf imports): copied next to saved checkpoints for `trust_remote_code` loading.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .scoring import score_items


def full_softmax_loss(
    queries: torch.Tensor,
    item_vectors: torch.Tensor,
    targets: torch.Tensor,
    *,
    temperature: float = 1.0,
    l2_normalize: bool = False,
) -> torch.Tensor:
    """Summed cross-entropy of the targets under a softmax over the whole catalog (padding excluded)."""
    logits = score_items(queries, item_vectors, temperature=temperature, l2_normalize=l2_normalize).float()
    logits[:, 0] = float("-inf")
    return F.cross_entropy(logits, targets, reduction="sum")


def sample_negatives(
    num_items: int,
    shape: tuple[int, ...],
    *,
    item_log_q: torch.Tensor | None = None,
    device: torch.device | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Item indices from 1..num_items-1 (never padding), drawn with replacement.

    Uniformly when `item_log_q` is None; otherwise with probability ∝ exp(item_log_q[i]) (entry 0 is ignored), by
    inverse-CDF lookup so that catalogs beyond `torch.multinomial`'s 2**24 categories work too.
    """
    if item_log_q is None:
        return torch.randint(1, num_items, shape, device=device, generator=generator)
    log_q = item_log_q[1:num_items].double()
    cdf = torch.cumsum(torch.exp(log_q - log_q.max()), dim=0)
    draws = torch.rand(shape, device=cdf.device, dtype=torch.float64, generator=generator) * cdf[-1]
    indices = torch.searchsorted(cdf, draws, right=True).clamp_(max=num_items - 2) + 1
    return indices.to(device) if device is not None else indices


def item_log_probabilities(counts: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """(V,) log q of the popularity sampler: q(i) ∝ (counts[i] + 1) ** alpha over items 1..V-1; entry 0 (padding)
    is -inf. The +1 keeps every item reachable, so items unseen in training are still pushed down sometimes."""
    weights = (counts.double().clamp(min=0) + 1.0) ** alpha
    weights[0] = 0.0
    return torch.log(weights / weights.sum()).float()


def _negative_logits(queries: torch.Tensor, negative_vectors: torch.Tensor, negatives: torch.Tensor,
                     temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) ids and logits of each query's negatives: shared (K,) negatives, or per-position (N, K) ones."""
    n = queries.shape[0]
    if negatives.dim() == 1:
        return negatives.unsqueeze(0).expand(n, -1), score_items(queries, negative_vectors, temperature=temperature)
    per_position = negative_vectors.view(n, negatives.shape[1], negative_vectors.shape[-1])
    return negatives, score_items(queries.unsqueeze(1), per_position, temperature=temperature).squeeze(1)


def sampled_softmax_loss(
    queries: torch.Tensor,
    item_vectors: torch.Tensor,
    targets: torch.Tensor,
    negatives: torch.Tensor,
    *,
    in_batch_negatives: bool = False,
    item_log_q: torch.Tensor | None = None,
    remove_accidental_hits: bool = True,
    temperature: float = 1.0,
    l2_normalize: bool = False,
) -> torch.Tensor:
    """Summed cross-entropy of each target against its positive + sampled negatives (+ other positives): the
    one-target case of `sampled_softmax_multi_target_loss` (one implementation of the sampled softmax).

    Args:
        queries: (N, d) query vectors; targets: (N,) positive item indices.
        negatives: (K,) negatives shared by every position, or (N, K) per-position negatives.
        in_batch_negatives: Also score every query against the other positions' positives.
        item_log_q: Optional (V,) log sampling probability of each item; subtracted from every candidate's logit
            (logQ correction, Yi et al. 2019). With a uniform sampler it is a constant and changes nothing.
        remove_accidental_hits: Mask candidates equal to the position's own positive (they are not negatives).
    """
    return sampled_softmax_multi_target_loss(
        queries, item_vectors, targets[:, None], torch.ones(targets.shape[0], 1, device=queries.device), negatives,
        in_batch_negatives=in_batch_negatives, item_log_q=item_log_q, remove_accidental_hits=remove_accidental_hits,
        temperature=temperature, l2_normalize=l2_normalize)


# --- multi-token prediction (paper §4): a weighted set of future targets per position ------------------------------
#
# Targets are (N, K) item indices, 0 = no target in that slot, with (N, K) non-negative weights (ignored at 0 slots).
# Each returns sum_n sum_k w_nk * (-log p(y_nk | x_n)); the caller divides by the number of supervised positions of
# the whole batch, as for next-token prediction. Vectorised over positions and targets: the (N, V) or (N, S) logits
# of a position are computed once and shared by its K targets, so memory is that of next-token prediction plus
# O(N * K).


def full_softmax_multi_target_loss(
    queries: torch.Tensor,
    item_vectors: torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor,
    *,
    temperature: float = 1.0,
    l2_normalize: bool = False,
) -> torch.Tensor:
    """Weighted summed cross-entropy of every target of a position under one softmax over the catalog.

    A target's probability is its share of the whole catalog's softmax (the other targets of the position are in
    the denominator like any item), so K = 1 with weight 1 is `full_softmax_loss` exactly.
    """
    logits = score_items(queries, item_vectors, temperature=temperature, l2_normalize=l2_normalize).float()
    logits[:, 0] = float("-inf")
    log_probs = torch.log_softmax(logits, dim=1).gather(1, targets)
    real = targets > 0
    return -torch.where(real, log_probs * weights.to(log_probs.dtype), torch.zeros_like(log_probs)).sum()


def sampled_softmax_multi_target_loss(
    queries: torch.Tensor,
    item_vectors: torch.Tensor,
    targets: torch.Tensor,
    weights: torch.Tensor,
    negatives: torch.Tensor,
    *,
    in_batch_negatives: bool = False,
    item_log_q: torch.Tensor | None = None,
    remove_accidental_hits: bool = True,
    temperature: float = 1.0,
    l2_normalize: bool = False,
) -> torch.Tensor:
    """Weighted summed sampled-softmax loss: each target of a position against that position's negatives.

    Every positive y_nk is scored against the position's candidates: the shared (S,) or per-position (N, S)
    negatives, plus, with `in_batch_negatives`, the first target of every position of the batch (its next-token
    label; all N * K targets would make the block N x NK). The other targets of the position are not its negatives:
    a candidate equal to ANY target of the position is an accidental hit and is masked (`remove_accidental_hits`).
    `item_log_q` (logQ correction) is subtracted from every logit, the positive's too. K = 1 with weight 1 is the
    next-token sampled softmax (`sampled_softmax_loss` is exactly that call).
    """
    n, k = targets.shape
    real = targets > 0
    first = targets[:, 0]
    # One gather for positives and negatives: each gather's backward materialises a dense (V, d) gradient, so
    # separate gathers would double the item-table gradient memory and time of every step.
    candidate_vectors = item_vectors[torch.cat([targets.reshape(-1), negatives.reshape(-1)])]
    if l2_normalize:
        queries = F.normalize(queries, dim=-1)
        candidate_vectors = F.normalize(candidate_vectors, dim=-1)
    positive_vectors = candidate_vectors[:n * k].view(n, k, -1)
    negative_vectors = candidate_vectors[n * k:]
    positive = score_items(queries.unsqueeze(1), positive_vectors, temperature=temperature).reshape(n, k)
    negative_ids, negative = _negative_logits(queries, negative_vectors, negatives, temperature)
    candidate_ids, logits = [negative_ids], [negative]
    if in_batch_negatives:
        logits.append(score_items(queries, positive_vectors[:, 0], temperature=temperature))
        candidate_ids.append(first.unsqueeze(0).expand(n, -1))
    logits = torch.cat(logits, dim=1).float()
    candidate_ids = torch.cat(candidate_ids, dim=1)
    positive = positive.float()
    if item_log_q is not None:
        logits = logits - item_log_q[candidate_ids].float()
        positive = positive - item_log_q[targets].float()
    if remove_accidental_hits:
        # (N, C): the candidate is one of the position's own targets (K comparisons, never an (N, C, K) tensor).
        hits = torch.zeros_like(candidate_ids, dtype=torch.bool)
        for slot in range(k):
            hits |= (candidate_ids == targets[:, slot:slot + 1]) & real[:, slot:slot + 1]
        logits = logits.masked_fill(hits, float("-inf"))
    # (N, 1) log-sum-exp of the negatives; a row whose candidates are all hits has none (-inf), computed on zeros
    # so that its backward stays finite.
    none_left = (logits == float("-inf")).all(dim=1, keepdim=True)
    negatives_lse = torch.logsumexp(torch.where(none_left, torch.zeros_like(logits), logits), dim=1, keepdim=True)
    negatives_lse = torch.where(none_left, torch.full_like(negatives_lse, float("-inf")), negatives_lse)
    losses = torch.logaddexp(positive, negatives_lse) - positive
    return torch.where(real, losses * weights.to(losses.dtype), torch.zeros_like(losses)).sum()
