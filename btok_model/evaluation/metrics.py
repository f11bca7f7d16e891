"""Retrieval metrics, exact under score ties.

Ties are broken uniformly at random and every metric's *expected* value is reported: with
``g`` candidates scoring strictly higher than a relevant candidate and ``e`` other candidates
scoring exactly the same, its rank is uniform on ``{g + 1, ..., g + e + 1}``. This keeps
scorers with many exact ties (TF-IDF on queries sharing no word with any candidate, a
collapsed embedder) from being credited with a lucky order, and needs no sort of the
candidates: only counts, which a scorer can accumulate block by block over a corpus.

Two families:

* one relevant candidate per query (:func:`rank_counts`, :func:`expected_metrics`):
  Recall@1/5/10, MRR@10, nDCG@10;
* several relevant candidates with graded gains (:func:`tie_counts`,
  :func:`expected_graded_metrics`), as MMEB-V2 scores its tasks: Hit@k (a relevant candidate
  among the first k) and nDCG@k with the qrels' gains (linear gain, ``1 / log2(rank + 1)``
  discount, the ideal DCG from the gains sorted).
"""

from __future__ import annotations

import math

import torch

from ..inference.scoring import rank_counts, tie_counts

__all__ = [
    "METRIC_NAMES",
    "expected_graded_metrics",
    "expected_metrics",
    "graded_metrics_from_scores",
    "metrics_from_scores",
    "paired_bootstrap",
    "rank_counts",
    "tie_counts",
]

RECALL_KS = (1, 5, 10)
CUTOFF = 10  # MRR@10 and nDCG@10
METRIC_NAMES = tuple(f"recall@{k}" for k in RECALL_KS) + (f"mrr@{CUTOFF}", f"ndcg@{CUTOFF}")


def expected_metrics(greater: torch.Tensor, equal: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-query expected Recall@1/5/10, MRR@10 and nDCG@10 under random tie-breaking.

    Args:
        greater, equal: long ``[Nq]`` from :func:`rank_counts`.

    Returns:
        ``{name: float64 [Nq]}`` for every name in :data:`METRIC_NAMES`.
    """
    greater, equal = greater.double().cpu(), equal.double().cpu()
    width = equal + 1  # number of equally likely ranks
    out = {}
    for k in RECALL_KS:
        out[f"recall@{k}"] = torch.minimum((k - greater).clamp(min=0), width) / width
    # Rank-weighted metrics: average the gain over the ranks g+1 .. g+e+1 that fall within the cutoff.
    ranks = torch.arange(1, CUTOFF + 1, dtype=torch.float64)
    inside = (ranks[None, :] > greater[:, None]) & (ranks[None, :] <= (greater + width)[:, None])
    reciprocal = 1.0 / ranks
    discount = 1.0 / torch.log2(ranks + 1.0)
    out[f"mrr@{CUTOFF}"] = (inside * reciprocal).sum(1) / width
    out[f"ndcg@{CUTOFF}"] = (inside * discount).sum(1) / width  # one relevant item: the ideal DCG is 1
    return out


def metrics_from_scores(scores: torch.Tensor, positive_index: torch.Tensor) -> dict[str, float]:
    """Mean expected metrics of a score matrix (see the module docstring for ties).

    Args:
        scores: float ``[Nq, Nc]``, higher is better.
        positive_index: long ``[Nq]``.

    Returns:
        ``{name: float}`` for every name in :data:`METRIC_NAMES`, averaged over queries.
    """
    if scores.shape[0] == 0:
        raise ValueError("no queries to evaluate")
    per_query = expected_metrics(*rank_counts(scores, positive_index))
    return {name: float(values.mean()) for name, values in per_query.items()}


def expected_graded_metrics(
    gains: torch.Tensor,
    targets: torch.Tensor,
    greater: torch.Tensor,
    ties: torch.Tensor,
    hit_ks: tuple[int, ...] = (1, 5, 10),
    ndcg_ks: tuple[int, ...] = (5, 10),
) -> dict[str, torch.Tensor]:
    """Per-query expected Hit@k and nDCG@k with several graded relevant candidates per query.

    Slot ``j`` of a query describes one of its relevant candidates (or padding).

    Args:
        gains: float ``[Nq, R]``, the relevant candidates' gains (> 0); 0 marks padding. A
            query without any relevant candidate scores 0 on every metric (as the authors'
            MMEB-V2 evaluation counts it).
        targets: float ``[Nq, R]``, their scores.
        greater: long ``[Nq, R]``, candidates of the query's pool scoring strictly higher.
        ties: long ``[Nq, R]``, OTHER candidates of the pool scoring exactly the same (other
            relevant ones included).
        hit_ks, ndcg_ks: the cutoffs.

    Returns:
        ``{"hit@k": float64 [Nq], ..., "ndcg@k": float64 [Nq], ...}``: expectations over a
        uniformly random order of tied candidates. Hit@k depends only on the best-scoring
        relevant candidates: with ``g`` candidates above them and a tie group of ``e``
        candidates holding ``r`` relevant ones, ``k - g`` slots are drawn from the group, so
        Hit@k = ``1 - C(e - r, k - g) / C(e, k - g)``. nDCG@k is linear in each relevant
        candidate's discount, whose rank is uniform over its tie group.
    """
    if gains.dim() != 2 or gains.shape[1] == 0 or not gains.shape == targets.shape == greater.shape == ties.shape:
        raise ValueError(
            "gains, targets, greater and ties must share one [num_queries, R >= 1] shape, got "
            f"{[tuple(t.shape) for t in (gains, targets, greater, ties)]}"
        )
    gains = gains.double().cpu()
    targets, greater, ties = targets.double().cpu(), greater.double().cpu(), ties.double().cpu()
    valid = gains > 0
    out = {}
    # Hit@k: the best-scoring relevant candidates and the tie group they share.
    masked = torch.where(valid, targets, torch.tensor(-math.inf, dtype=torch.float64))
    at_best = valid & (masked == masked.max(1, keepdim=True).values)
    first = at_best.double().argmax(1, keepdim=True)  # one of them: they share g and the group
    has = at_best.any(1)
    relevant_in_group = at_best.sum(1).double()
    above = greater.gather(1, first)[:, 0]
    group = ties.gather(1, first)[:, 0] + 1
    for k in hit_ks:
        slots = k - above
        miss = torch.ones_like(slots)  # P(no relevant candidate among the slots drawn from the group)
        for i in range(k):
            term = ((group - relevant_in_group - i).clamp(min=0) / (group - i).clamp(min=1)).clamp(max=1)
            miss = miss * torch.where(i < slots, term, torch.ones_like(term))
        hit = torch.where(slots >= group, torch.ones_like(slots), 1 - miss)
        out[f"hit@{k}"] = torch.where(has & (slots > 0), hit, torch.zeros_like(hit))
    # nDCG@k: each relevant candidate's expected discount over the ranks of its tie group.
    for k in ndcg_ks:
        ranks = torch.arange(1, k + 1, dtype=torch.float64)
        cumulative = torch.cat([torch.zeros(1, dtype=torch.float64), (1.0 / torch.log2(ranks + 1)).cumsum(0)])
        lo = greater.clamp(max=k).long()
        hi = (greater + ties + 1).clamp(max=k).long()
        discount = (cumulative[hi] - cumulative[lo]) / (ties + 1).clamp(min=1)
        dcg = torch.where(valid, gains * discount, torch.zeros_like(discount)).sum(1)
        ideal = gains.sort(1, descending=True).values[:, :k]
        idcg = (ideal / torch.log2(torch.arange(2, ideal.shape[1] + 2, dtype=torch.float64))).sum(1)
        out[f"ndcg@{k}"] = torch.where(idcg > 0, dcg / idcg.clamp(min=1e-300), torch.zeros_like(dcg))
    return out


def graded_metrics_from_scores(
    scores: torch.Tensor, gains: torch.Tensor, hit_ks: tuple[int, ...] = (1, 5, 10), ndcg_ks: tuple[int, ...] = (5, 10)
) -> dict[str, float]:
    """Mean expected Hit@k and nDCG@k of a dense score matrix (small problems, tests).

    Args:
        scores: float ``[Nq, Nc]``, higher is better.
        gains: float ``[Nq, Nc]``, each candidate's gain for each query (> 0: relevant).

    Returns:
        ``{"hit@k": float, "ndcg@k": float}`` averaged over queries.
    """
    if scores.shape != gains.shape or scores.dim() != 2 or scores.shape[0] == 0:
        raise ValueError(
            "scores and gains must be the same [num_queries > 0, num_candidates], got "
            f"{tuple(scores.shape)} and {tuple(gains.shape)}"
        )
    width = max(int((gains > 0).sum(1).max()), 1)
    # the relevant columns first
    order = torch.argsort((gains > 0).double(), dim=1, descending=True, stable=True)[:, :width]
    slot_gains = gains.double().gather(1, order).clamp(min=0)
    targets = scores.gather(1, order)
    greater, equal = tie_counts(scores, targets)
    per_query = expected_graded_metrics(slot_gains, targets, greater, equal - 1, hit_ks, ndcg_ks)
    return {name: float(values.mean()) for name, values in per_query.items()}


def paired_bootstrap(
    a: torch.Tensor, b: torch.Tensor, samples: int = 10_000, confidence: float = 0.95, seed: int = 0
) -> dict[str, float]:
    """The mean difference ``a - b`` of two systems' per-query metrics on the same queries, and
    its percentile bootstrap interval: queries are resampled with replacement, the same draw
    for both systems, so what the queries share (how hard each one is) cancels out.

    Args:
        a, b: float ``[Nq]``, per-query values (e.g. one entry of :func:`expected_metrics`).
        samples: bootstrap resamples.
        confidence: the interval's coverage, in (0, 1).
        seed: seeds the resampling (the same inputs and seed give the same interval).

    Returns:
        ``{"difference", "low", "high"}``.
    """
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    if a.dim() != 1 or a.shape != b.shape or a.numel() == 0:
        raise ValueError(
            f"a and b must be 1-D with the same number (> 0) of queries, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    diff = a - b
    generator = torch.Generator().manual_seed(seed)
    means = torch.empty(samples, dtype=torch.float64)
    for lo in range(0, samples, 1000):  # a block of resamples at a time: [block, Nq] indices
        index = torch.randint(0, diff.numel(), (min(1000, samples - lo), diff.numel()), generator=generator)
        means[lo : lo + index.shape[0]] = diff[index].mean(1)
    tail = (1 - confidence) / 2
    low, high = torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=torch.float64)).tolist()
    return {"difference": float(diff.mean()), "low": low, "high": high}
