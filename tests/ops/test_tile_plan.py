"""The tile schedule of the Triton kernels: which blocks are visited, and which are masked.

The device helpers that the kernels use to plan their loops (``_find_tile``, ``_key_plan``,
``_row_plan``) run here through small Triton kernels over many layouts, and the plans are walked
pair by pair against the mask by :mod:`tests.helpers.tile_plans` (the walk the CUDA plan takes
in tests/ops/test_cuda_plan.py). The mask ranges of the masked blocks (``_key_range``,
``_row_range``) must be the mask exactly.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import triton
import triton.language as tl

from btok_kernels.condensation.parallel import _find_tile, _key_plan, _key_range, _row_plan, _row_range
from tests.helpers.layouts import random_sequences
from tests.helpers.oracle import allowed
from tests.helpers.tile_plans import (
    LAYOUT_CASES,
    PROGRAM_LENGTHS,
    check_tile_plans,
    check_tile_programs,
    launch_grid,
)

pytestmark = pytest.mark.interpret


@triton.jit
def _find_tile_probe(cu_seqlens, n_seqs, Out, BLOCK: tl.constexpr):
    i_t = tl.program_id(0)
    i_s, i_m, n_m, _bos, _seqlen = _find_tile(cu_seqlens, n_seqs, i_t, BLOCK)
    tl.store(Out + i_t * 3 + 0, i_s)
    tl.store(Out + i_t * 3 + 1, i_m)
    tl.store(Out + i_t * 3 + 2, n_m)


@triton.jit
def _plan_probe(
    Cases, Out, n_cases, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr, CASES: tl.constexpr
):
    """Cases [n, 4]: (tile start, seqlen, b, t). Out [n, 8]: the query-tile plan
    (lo, cut_hi, full_hi, hi) with the tile as rows, and the key-tile plan
    (lo, diag_hi, full_hi, hi) with the tile as keys, all positions. The helpers work
    elementwise, so each program plans CASES cases at once (the interpreter's cost is per
    program)."""
    o_c = tl.program_id(0) * CASES + tl.arange(0, CASES)
    m_c = o_c < n_cases
    start = tl.load(Cases + o_c * 4 + 0, mask=m_c, other=0)
    seqlen = tl.load(Cases + o_c * 4 + 1, mask=m_c, other=1)
    b = tl.load(Cases + o_c * 4 + 2, mask=m_c, other=0)
    t = tl.load(Cases + o_c * 4 + 3, mask=m_c, other=0)
    q1 = tl.minimum(start + BLOCK_M, seqlen)
    lo, cut_hi, full_hi, hi = _key_plan(start, q1, b, t, seqlen, BLOCK_N, CAUSAL)
    tl.store(Out + o_c * 8 + 0, lo, mask=m_c)
    tl.store(Out + o_c * 8 + 1, cut_hi, mask=m_c)
    tl.store(Out + o_c * 8 + 2, full_hi, mask=m_c)
    tl.store(Out + o_c * 8 + 3, hi, mask=m_c)
    n1 = tl.minimum(start + BLOCK_N, seqlen)
    r_lo, diag_hi, r_full_hi, r_hi = _row_plan(start, n1, b, t, seqlen, BLOCK_M, BLOCK_N, CAUSAL)
    tl.store(Out + o_c * 8 + 4, r_lo, mask=m_c)
    tl.store(Out + o_c * 8 + 5, diag_hi, mask=m_c)
    tl.store(Out + o_c * 8 + 6, r_full_hi, mask=m_c)
    tl.store(Out + o_c * 8 + 7, r_hi, mask=m_c)


@triton.jit
def _range_probe(Pos, Out, n, seqlen, b, t, CAUSAL: tl.constexpr, BLOCK: tl.constexpr):
    """Out [4, n]: the key range of each row position and the row range of each key position."""
    o = tl.arange(0, BLOCK)
    pos = tl.load(Pos + o, mask=o < n, other=0)
    k_first, k_last = _key_range(pos, seqlen, b, t, CAUSAL)
    r_first, r_last = _row_range(pos, seqlen, b, t, CAUSAL)
    tl.store(Out + 0 * n + o, k_first, mask=o < n)
    tl.store(Out + 1 * n + o, k_last, mask=o < n)
    tl.store(Out + 2 * n + o, r_first, mask=o < n)
    tl.store(Out + 3 * n + o, r_last, mask=o < n)


CASES = LAYOUT_CASES + random_sequences(24, seed=0, max_length=300)
TILES = [(16, 16), (16, 32), (32, 16), (64, 16), (16, 128), (128, 32)]


# a bidirectional layout has b = 0 and t = len
BIDIRECTIONAL_CASES = sorted({(seqlen, 0, seqlen) for seqlen, _, _ in CASES})


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("block_m,block_n", TILES, ids=[f"m{m}n{n}" for m, n in TILES])
def test_query_and_key_tile_plans(block_m, block_n, causal, device):
    layout_cases = CASES if causal else BIDIRECTIONAL_CASES
    for rows_as_tile in (True, False):  # query tiles (forward, dQ), then key tiles (dK/dV)
        tile, step = (block_m, block_n) if rows_as_tile else (block_n, block_m)
        cases = [(s, seqlen, b, t) for seqlen, b, t in layout_cases for s in range(0, seqlen, tile)]
        c = torch.tensor(cases, dtype=torch.int32, device=device)
        out = torch.zeros(len(cases), 8, dtype=torch.int32, device=device)
        _plan_probe[(triton.cdiv(len(cases), 64),)](
            c, out, len(cases), BLOCK_M=block_m, BLOCK_N=block_n, CAUSAL=causal, CASES=64
        )
        plans: dict[tuple, list] = {}
        for (start, *key), plan in zip(cases, out.cpu().tolist()):
            # the kernels' three loops over positions: masked [lo, a), unmasked [a, z), masked [z, hi)
            lo, a, z, hi = plan[:4] if rows_as_tile else plan[4:]
            assert lo <= a <= z <= hi and all((x - lo) % step == 0 for x in (a, z, hi)), plan
            plans.setdefault(tuple(key), []).append((start, lo, (a - lo) // step, (z - lo) // step, (hi - lo) // step))
        for (seqlen, b, t), tile_plans in plans.items():
            check_tile_plans(seqlen, b, t, causal, tile_plans, tile, step, rows_as_tile)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_mask_ranges_are_the_mask(causal, device):
    """A masked block keeps key j for row i iff k_first[i] <= j <= k_last[i] (forward, dQ)
    and iff r_first[j] <= i <= r_last[j] (dK/dV): both must be the mask exactly, rows and
    keys past the sequence end included (padding of a tile)."""
    for seqlen, b, t in CASES if causal else BIDIRECTIONAL_CASES:
        n = seqlen + 20  # positions past the end, as in a sequence's last tile
        pos = torch.arange(n, dtype=torch.int32, device=device)
        out = torch.zeros(4, n, dtype=torch.int32, device=device)
        _range_probe[(1,)](pos, out, n, seqlen, b, t, CAUSAL=causal, BLOCK=triton.next_power_of_2(n))
        k_first, k_last, r_first, r_last = out.cpu().long()
        i = torch.arange(n)[:, None]
        j = torch.arange(n)[None, :]
        want = allowed(i, j, b, t, causal, seqlen)
        by_row = (j >= k_first[:, None]) & (j <= k_last[:, None])
        by_key = (i >= r_first[None, :]) & (i <= r_last[None, :])
        where = f"(len {seqlen}, b {b}, t {t})"
        assert torch.equal(by_row[:seqlen], want[:seqlen]), f"key ranges of the rows {where}"
        assert (k_last[seqlen:] < seqlen).all(), f"rows past the end read keys past the end {where}"
        assert torch.equal(by_key, want), f"row ranges of the keys {where}"


@pytest.mark.parametrize("block", [16, 64])
@pytest.mark.parametrize("lens", list(PROGRAM_LENGTHS.values()), ids=list(PROGRAM_LENGTHS))
def test_every_tile_gets_one_program(lens, block, device):
    cu = torch.tensor([0, *itertools.accumulate(lens)], dtype=torch.int32, device=device)
    grid = launch_grid(lens, block)
    out = torch.full((grid, 3), -1, dtype=torch.int32, device=device)
    _find_tile_probe[(grid,)](cu, len(lens), out, BLOCK=block)
    check_tile_programs(lens, block, [tuple(p) for p in out.cpu().tolist()])
