"""The blocked scorer: running and merged top-k lists, rank counts, against brute force."""

import math

import pytest
import torch

from btok_model.inference.scoring import RunningTopK


def _reference(scores: torch.Tensor, k: int) -> tuple[list, list]:
    """Per row: the k best (score, index) by score descending then index ascending; -inf -> index -1."""
    values, indices = [], []
    for row in scores.tolist():
        order = sorted(range(len(row)), key=lambda i: (-row[i], i))[:k]
        order += [None] * (k - len(order))
        values.append([row[i] if i is not None else -math.inf for i in order])
        indices.append([i if i is not None and row[i] != -math.inf else -1 for i in order])
    return values, indices


def _run(scores: torch.Tensor, k: int, row_block: int, col_block: int) -> RunningTopK:
    top = RunningTopK(scores.shape[0], k)
    for lo in range(0, scores.shape[1], col_block):
        for r in range(0, scores.shape[0], row_block):
            rows = slice(r, min(r + row_block, scores.shape[0]))
            top.update(rows, scores[rows, lo : lo + col_block], lo)
    return top


@pytest.mark.parametrize("k", [1, 3, 7, 40])
@pytest.mark.parametrize("blocks", [(5, 1), (2, 3), (9, 64)], ids=lambda b: f"rows{b[0]}-cols{b[1]}")
def test_blocks_equal_a_sort_with_ties(k, blocks):
    torch.manual_seed(k)
    # few distinct values (many ties, some across blocks) and excluded (-inf) candidates
    scores = torch.randint(0, 4, (7, 23)).float() / 4
    scores[torch.rand(scores.shape) < 0.2] = -math.inf
    top = _run(scores, k, *blocks)
    values, indices = _reference(scores, k)
    assert top.values.tolist() == values
    assert top.indices.tolist() == indices


def test_fewer_candidates_than_k_pad_with_minus_one():
    top = _run(torch.tensor([[0.5, -math.inf, 0.25]]), 4, 1, 2)
    assert top.indices.tolist() == [[0, 2, -1, -1]]
    assert top.values.tolist() == [[0.5, 0.25, -math.inf, -math.inf]]


def test_bad_input():
    top = RunningTopK(2, 2)
    with pytest.raises(ValueError, match="NaN"):
        top.update(slice(0, 2), torch.tensor([[0.0], [math.nan]]), 0)
    top.update(slice(0, 2), torch.zeros(2, 3), 0)
    with pytest.raises(ValueError, match="index order"):
        top.update(slice(0, 2), torch.zeros(2, 3), 1)
    with pytest.raises(ValueError, match="rows"):
        top.update(slice(0, 1), torch.zeros(2, 3), 3)
