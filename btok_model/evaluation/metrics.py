"""Retrieval metrics with one relevant candidate per query, exact under score ties.

Every metric here is a function of the positive's rank. Ties are broken uniformly at random
and the metric's *expected* value is reported: with ``g`` candidates scoring strictly higher
than the positive and ``e`` other candidates scoring exactly the same, the positive's rank is
uniform on ``{g + 1, ..., g + e + 1}``. This keeps scorers with many exact ties (TF-IDF on
queries sharing no word with any candidate, a collapsed embedder) from being credited with a
lucky order, and needs no sort: only counts.
"""

from __future__ import annotations

import torch

__all__ = [
    "METRIC_NAMES",
    "expected_metrics",
    "metrics_from_scores",
    "paired_bootstrap",
    "rank_counts",
]

RECALL_KS = (1, 5, 10)
CUTOFF = 10  # MRR@10 and nDCG@10
METRIC_NAMES = tuple(f"recall@{k}" for k in RECALL_KS) + (f"mrr@{CUTOFF}", f"ndcg@{CUTOFF}")


def rank_counts(scores: torch.Tensor, positive_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """How many candidates beat and tie each query's positive.

    Args:
        scores: float ``[Nq, Nc]``, higher is better. NaN is refused.
        positive_index: long ``[Nq]``, the column of each query's single relevant candidate.

    Returns:
        ``(greater, equal)``: long ``[Nq]`` each -- candidates scoring strictly higher than the
        positive, and other candidates scoring exactly the same.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be [num_queries, num_candidates], got shape {tuple(scores.shape)}")
    positive_index = torch.as_tensor(positive_index, dtype=torch.long, device=scores.device)
    if positive_index.shape != (scores.shape[0],):
        raise ValueError(
            f"positive_index must have one entry per query ({scores.shape[0]}), got shape {tuple(positive_index.shape)}"
        )
    if scores.shape[0] and (positive_index.min() < 0 or positive_index.max() >= scores.shape[1]):
        raise ValueError(f"positive_index must lie in [0, {scores.shape[1]}), got {positive_index.tolist()[:8]}...")
    if torch.isnan(scores).any():
        raise ValueError("scores contain NaN: the embeddings or the scorer produced invalid values")
    positive = scores.gather(1, positive_index[:, None])
    greater = (scores > positive).sum(1)
    equal = (scores == positive).sum(1) - 1  # the positive ties with itself
    return greater, equal


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
