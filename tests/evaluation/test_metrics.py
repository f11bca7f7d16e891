"""Retrieval metrics on hand-made score matrices with known answers."""

import itertools
import math

import pytest
import torch

from btok_model.evaluation.metrics import (
    METRIC_NAMES,
    expected_graded_metrics,
    expected_metrics,
    graded_metrics_from_scores,
    metrics_from_scores,
    paired_bootstrap,
    rank_counts,
    tie_counts,
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


# -- several relevant candidates with graded gains (MMEB-V2's Hit@k and nDCG@k) -----------------


def _ordered_metrics(order, gains, k_hit, k_ndcg):
    """Hit@k and nDCG@k of one ranked list (``order``: candidate indices, best first), as the
    authors define them: any relevant in the first k; linear gains, 1/log2(rank+1) discount."""
    hit = float(any(gains[c] > 0 for c in order[:k_hit]))
    dcg = sum(gains[c] / math.log2(r + 2) for r, c in enumerate(order[:k_ndcg]))
    ideal = sorted((g for g in gains if g > 0), reverse=True)[:k_ndcg]
    idcg = sum(g / math.log2(r + 2) for r, g in enumerate(ideal))
    return hit, (dcg / idcg if idcg > 0 else 0.0)


def _brute_force(scores, gains, k_hit, k_ndcg):
    """Mean over queries of the metrics averaged over every order a random tie-break can give:
    all permutations of the candidates that sort the scores in descending order."""
    totals = [0.0, 0.0]
    for row, row_gains in zip(scores.tolist(), gains.tolist()):
        orders = [
            p
            for p in itertools.permutations(range(len(row)))
            if all(row[a] >= row[b] for a, b in itertools.pairwise(p))
        ]
        for i in range(2):
            totals[i] += sum(_ordered_metrics(o, row_gains, k_hit, k_ndcg)[i] for o in orders) / len(orders)
    return totals[0] / scores.shape[0], totals[1] / scores.shape[0]


def test_graded_known_ranks():
    # Relevant candidates at ranks 2 (gain 2) and 5 (gain 1), no ties.
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3]])
    gains = torch.tensor([[0.0, 2.0, 0.0, 0.0, 1.0, 0.0, 0.0]])
    got = graded_metrics_from_scores(scores, gains, hit_ks=(1, 2, 5), ndcg_ks=(1, 5))
    ideal5 = 2 / math.log2(2) + 1 / math.log2(3)
    assert got["hit@1"] == 0.0 and got["hit@2"] == 1.0 and got["hit@5"] == 1.0
    assert got["ndcg@5"] == pytest.approx((2 / math.log2(3) + 1 / math.log2(6)) / ideal5, abs=1e-15)
    assert got["ndcg@1"] == 0.0


def test_graded_one_relevant_matches_single_positive_metrics():
    g = torch.Generator().manual_seed(2)
    scores = torch.randint(0, 4, (16, 9), generator=g).float()  # many ties
    positive = torch.randint(0, 9, (16,), generator=g)
    gains = torch.zeros(16, 9)
    gains[torch.arange(16), positive] = 1.0
    single = expected_metrics(*rank_counts(scores, positive))
    graded = graded_metrics_from_scores(scores, gains, hit_ks=(1, 5, 10), ndcg_ks=(10,))
    for k in (1, 5, 10):
        assert graded[f"hit@{k}"] == pytest.approx(float(single[f"recall@{k}"].mean()), abs=1e-12)
    assert graded["ndcg@10"] == pytest.approx(float(single["ndcg@10"].mean()), abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_graded_ties_equal_the_mean_over_tie_breaks(seed):
    # 7 candidates, integer scores (ties within and across relevant / non-relevant ones),
    # graded gains 0-3: the expectation must equal the average over every admissible order.
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, 3, (5, 7), generator=g).double()
    gains = torch.randint(0, 4, (5, 7), generator=g).double() * (torch.rand(5, 7, generator=g) < 0.4)
    gains[0] = 0.0  # a query without a relevant candidate counts 0
    for k_hit, k_ndcg in [(1, 1), (2, 3), (3, 5), (6, 8)]:
        got = graded_metrics_from_scores(scores, gains, hit_ks=(k_hit,), ndcg_ks=(k_ndcg,))
        hit, ndcg = _brute_force(scores, gains, k_hit, k_ndcg)
        assert got[f"hit@{k_hit}"] == pytest.approx(hit, abs=1e-12)
        assert got[f"ndcg@{k_ndcg}"] == pytest.approx(ndcg, abs=1e-12)


def test_graded_collapsed_scorer():
    # Every score equal among 1000 candidates, 3 relevant: Hit@1 = 3/1000, Hit@10 = 1 - C(997,10)/C(1000,10).
    scores = torch.zeros(1, 1000)
    gains = torch.zeros(1, 1000)
    gains[0, [10, 500, 999]] = torch.tensor([1.0, 2.0, 3.0])
    got = graded_metrics_from_scores(scores, gains, hit_ks=(1, 10), ndcg_ks=(5,))
    assert got["hit@1"] == pytest.approx(3 / 1000, abs=1e-15)
    assert got["hit@10"] == pytest.approx(1 - math.comb(997, 10) / math.comb(1000, 10), abs=1e-12)
    mean_discount = sum(1 / math.log2(r + 1) for r in range(1, 6)) / 1000
    ideal = 3 / math.log2(2) + 2 / math.log2(3) + 1 / math.log2(4)
    assert got["ndcg@5"] == pytest.approx(6 * mean_discount / ideal, abs=1e-12)


def test_tie_counts_with_padding():
    scores = torch.tensor([[3.0, 1.0, 1.0, -math.inf], [2.0, 2.0, 0.0, 5.0]])
    targets = torch.tensor([[1.0, math.inf], [2.0, 0.0]])
    greater, equal = tie_counts(scores, targets)
    assert greater.tolist() == [[1, 0], [1, 3]] and equal.tolist() == [[2, 0], [2, 1]]
    with pytest.raises(ValueError, match="NaN"):
        tie_counts(torch.tensor([[float("nan")]]), torch.zeros(1, 1))
    with pytest.raises(ValueError, match="same number of queries"):
        tie_counts(torch.zeros(2, 3), torch.zeros(1, 1))
    with pytest.raises(ValueError, match="R >= 1"):
        expected_graded_metrics(*(torch.zeros(2, 0) for _ in range(4)))
