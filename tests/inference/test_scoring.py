"""The blocked scorer: running and merged top-k lists, rank counts, against brute force."""

import math

import pytest
import torch

from btok_model.embedder.encode import EncodedShard, shard_blocks
from btok_model.embedder.similarity import maxsim
from btok_model.inference.scoring import RunningTopK, TopK, count_ranks, merge_topk, rank_counts, topk


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


# -- exact top-k and rank counts against brute force ------------------------------------------------


def _vectors(n: int, seed: int, multi: bool = False) -> torch.Tensor:
    """Small integer vectors / 4 (exact fp32 dot products, many ties), L2 norm not needed."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(-2, 3, (n, 3, 5) if multi else (n, 5), generator=gen).float() / 4


def _dense(q, c, similarity):
    return maxsim(q, c) if similarity == "maxsim" else q @ c.T


def _shards(c: torch.Tensor, block: int, world: int) -> list[EncodedShard]:
    """The shards ``world`` ranks would hold (whole blocks, contiguous)."""
    n, blocks = c.shape[0], -(-c.shape[0] // block)
    out = []
    for r in range(world):
        run = shard_blocks(blocks, r, world)
        lo, hi = min(run.start * block, n), min(run.stop * block, n)
        out.append(EncodedShard(c[lo:hi], lo, hi, n, block))
    return out


@pytest.mark.parametrize("similarity", ["cosine", "maxsim"])
@pytest.mark.parametrize("k", [1, 4, 50])
@pytest.mark.parametrize("blocks", [(1024, 16384), (3, 4), (1, 7)], ids=lambda b: f"q{b[0]}-c{b[1]}")
def test_topk_equals_brute_force(similarity, k, blocks):
    multi = similarity == "maxsim"
    q, c = _vectors(9, 1, multi), _vectors(31, 2, multi)
    got = topk(q, c, k, similarity=similarity, query_block=blocks[0], candidate_block=blocks[1])
    values, indices = _reference(_dense(q, c, similarity), k)
    assert got.values.tolist() == values and got.indices.tolist() == indices
    # per-shard lists merged give the same
    for world in (2, 3):
        parts = [topk(q, s, k, similarity=similarity, candidate_block=blocks[1]) for s in _shards(c, 4, world)]
        merged = merge_topk(parts, k)
        assert merged.values.tolist() == values and merged.indices.tolist() == indices


def test_merge_topk_pads_and_breaks_ties_by_index():
    a = TopK(torch.tensor([[1.0, 0.5]]), torch.tensor([[7, 9]]))
    b = TopK(torch.tensor([[1.0, -math.inf]]), torch.tensor([[3, -1]]))
    merged = merge_topk([a, b], 5)
    assert merged.indices.tolist() == [[3, 7, 9, -1, -1]]
    assert merged.values.tolist() == [[1.0, 1.0, 0.5, -math.inf, -math.inf]]


@pytest.mark.parametrize("similarity", ["cosine", "maxsim"])
@pytest.mark.parametrize("blocks", [(1024, 16384), (2, 3)], ids=lambda b: f"q{b[0]}-c{b[1]}")
def test_rank_counts_equal_a_direct_computation(similarity, blocks):
    multi = similarity == "maxsim"
    q, c = _vectors(11, 3, multi), _vectors(23, 4, multi)
    scores = _dense(q, c, similarity)
    positive = torch.randint(0, 23, (11,), generator=torch.Generator().manual_seed(5))
    counts = count_ranks(
        q, c, positive[:, None], similarity=similarity, query_block=blocks[0], candidate_block=blocks[1]
    )
    greater, equal = rank_counts(scores, positive)
    assert counts.greater[:, 0].tolist() == greater.tolist() and (counts.equal[:, 0] - 1).tolist() == equal.tolist()
    assert counts.targets[:, 0].tolist() == scores.gather(1, positive[:, None])[:, 0].tolist()
    assert equal.sum() > 0  # the data has ties: they are counted, not broken
    # own lists (some queries against all), several relevant candidates with padding
    lists = [None if i % 3 == 0 else sorted({(i * j) % 23 for j in range(1, 8)}) for i in range(11)]
    relevant = torch.full((11, 2), -1, dtype=torch.long)
    for i, members in enumerate(lists):
        pool = members if members is not None else list(range(23))
        relevant[i, 0] = pool[i % len(pool)]
        if i % 2:
            relevant[i, 1] = pool[(i + 1) % len(pool)]
    counts = count_ranks(
        q, c, relevant, lists=lists, similarity=similarity, query_block=blocks[0], candidate_block=blocks[1]
    )
    for i, members in enumerate(lists):
        pool = torch.tensor(members if members is not None else list(range(23)))
        row = scores[i, pool]
        for j in range(2):
            if relevant[i, j] < 0:
                assert counts.greater[i, j] == 0 and counts.equal[i, j] == 0 and counts.targets[i, j] == math.inf
                continue
            target = scores[i, relevant[i, j]]
            assert counts.targets[i, j] == pytest.approx(float(target), abs=1e-6)
            assert counts.greater[i, j] == int((row > target).sum()) and counts.equal[i, j] == int(
                (row == target).sum()
            )


def test_rank_counts_refuse_a_relevant_candidate_outside_its_list():
    q, c = _vectors(2, 1), _vectors(5, 2)
    with pytest.raises(ValueError, match=r"query 1: relevant candidate\(s\) \[4\] are not in its list"):
        count_ranks(q, c, torch.tensor([[0], [4]]), lists=[[0, 1], [2, 3]])
