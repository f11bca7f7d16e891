"""Retrieval metrics on hand-made score matrices with known answers."""

import math

import pytest
import torch

from btok_model.evaluation.metrics import (
    METRIC_NAMES,
    expected_metrics,
    metrics_from_scores,
    paired_bootstrap,
    rank_counts,
)


def _metrics_of_rank(rank: int) -> dict[str, float]:
    """The metrics of one query whose positive sits at ``rank`` (1-based), no ties."""
    return {
        "recall@1": float(rank <= 1),
        "recall@5": float(rank <= 5),
        "recall@10": float(rank <= 10),
        "mrr@10": 1.0 / rank if rank <= 10 else 0.0,
        "ndcg@10": 1.0 / math.log2(rank + 1) if rank <= 10 else 0.0,
    }


def test_known_ranks():
    # 4 queries x 12 candidates; the positives land at ranks 1, 3, 7 and 12.
    scores = torch.arange(12, 0, -1, dtype=torch.float32).repeat(4, 1)  # candidate j scores 12 - j
    positive_index = torch.tensor([0, 2, 6, 11])
    greater, equal = rank_counts(scores, positive_index)
    assert greater.tolist() == [0, 2, 6, 11] and equal.tolist() == [0, 0, 0, 0]
    got = metrics_from_scores(scores, positive_index)
    want = {name: sum(_metrics_of_rank(r)[name] for r in (1, 3, 7, 12)) / 4 for name in METRIC_NAMES}
    assert got == pytest.approx(want, abs=1e-12)
    assert got["recall@1"] == 0.25 and got["recall@5"] == 0.5 and got["recall@10"] == 0.75
    assert got["mrr@10"] == pytest.approx((1 + 1 / 3 + 1 / 7) / 4)


def test_column_order_does_not_matter():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(6, 9, generator=g)
    positive_index = torch.randint(0, 9, (6,), generator=g)
    perm = torch.randperm(9, generator=g)
    inverse = torch.argsort(perm)
    assert metrics_from_scores(scores[:, perm], inverse[positive_index]) == metrics_from_scores(scores, positive_index)


def test_ties_count_as_random_order():
    # Query 0: positive ties with 3 others at the top -> uniform rank in 1..4.
    # Query 1: every score equal (a collapsed scorer) among 20 candidates -> uniform in 1..20.
    scores = torch.zeros(2, 20)
    scores[0, :4] = 1.0
    got = expected_metrics(*rank_counts(scores, torch.tensor([2, 5])))
    assert got["recall@1"].tolist() == pytest.approx([1 / 4, 1 / 20])
    assert got["recall@5"].tolist() == pytest.approx([1.0, 5 / 20])
    assert got["recall@10"].tolist() == pytest.approx([1.0, 10 / 20])
    assert got["mrr@10"].tolist() == pytest.approx(
        [sum(1 / r for r in range(1, 5)) / 4, sum(1 / r for r in range(1, 11)) / 20]
    )
    assert got["ndcg@10"][0].item() == pytest.approx(sum(1 / math.log2(r + 1) for r in range(1, 5)) / 4)


def test_partial_tie_below_others():
    # 2 candidates beat the positive, 2 tie with it: rank uniform in 3..5.
    scores = torch.tensor([[5.0, 4.0, 1.0, 1.0, 1.0, 0.0]])
    got = metrics_from_scores(scores, torch.tensor([3]))
    assert got["recall@1"] == 0.0 and got["recall@5"] == 1.0
    assert got["mrr@10"] == pytest.approx((1 / 3 + 1 / 4 + 1 / 5) / 3)


def test_bad_inputs():
    with pytest.raises(ValueError, match="NaN"):
        metrics_from_scores(torch.tensor([[0.0, float("nan")]]), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"positive_index must lie in \[0, 2\)"):
        metrics_from_scores(torch.zeros(1, 2), torch.tensor([2]))
    with pytest.raises(ValueError, match="one entry per query"):
        metrics_from_scores(torch.zeros(2, 2), torch.tensor([0]))
    with pytest.raises(ValueError, match="no queries"):
        metrics_from_scores(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long))


def test_paired_bootstrap_known_cases():
    a = torch.tensor([1.0, 0.0, 1.0, 1.0])
    same = paired_bootstrap(a, a)
    assert same == {"difference": 0.0, "low": 0.0, "high": 0.0}
    shifted = paired_bootstrap(a + 0.25, a)  # every query gains the same: no spread at all
    assert shifted["difference"] == pytest.approx(0.25) and shifted["low"] == pytest.approx(0.25)
    assert shifted["high"] == pytest.approx(0.25)
    assert paired_bootstrap(a, 1 - a, seed=3) == paired_bootstrap(a, 1 - a, seed=3)


def test_paired_bootstrap_matches_the_normal_interval():
    # 0/1 outcomes, a wins 30 % of the queries, b 20 %, independently: the interval of the mean
    # difference is about mean +- 1.96 sd / sqrt(n), and it is paired (b's query difficulty cancels).
    g = torch.Generator().manual_seed(1)
    n = 4000
    a = (torch.rand(n, generator=g) < 0.3).double()
    b = (torch.rand(n, generator=g) < 0.2).double()
    got = paired_bootstrap(a, b, samples=4000)
    diff = a - b
    half = 1.96 * float(diff.std()) / n**0.5
    assert got["difference"] == pytest.approx(float(diff.mean()))
    assert got["low"] == pytest.approx(float(diff.mean()) - half, abs=0.15 * half)
    assert got["high"] == pytest.approx(float(diff.mean()) + half, abs=0.15 * half)
    # the same systems with a shared per-query difficulty: unpaired intervals would widen, paired ones do not
    hard = (torch.rand(n, generator=g) < 0.5).double()
    assert paired_bootstrap(a + hard, b + hard, samples=4000) == pytest.approx(got)


def test_paired_bootstrap_bad_inputs():
    with pytest.raises(ValueError, match="same number"):
        paired_bootstrap(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="same number"):
        paired_bootstrap(torch.zeros(0), torch.zeros(0))
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap(torch.zeros(3), torch.zeros(3), confidence=1.0)
    with pytest.raises(ValueError, match="samples"):
        paired_bootstrap(torch.zeros(3), torch.zeros(3), samples=0)
