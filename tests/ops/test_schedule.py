"""The tile schedule of the kernels: which blocks are visited, and which are masked.

The device helpers that the kernels use to plan their loops (``_find_tile``,
``_key_plan``, ``_row_plan``) and the mask ranges of their masked blocks (``_key_range``,
``_row_range``) are run here through small Triton kernels over many layouts, and the plan
is checked pair by pair against the mask:

- a visited block holds at least one allowed pair (masked tiles are skipped),
- an unmasked block holds only allowed, in-bounds pairs (only partial tiles pay a mask),
- the visited blocks cover every allowed pair exactly once,
- a masked block keeps exactly the allowed pairs (the ranges are the mask),
- every (sequence, tile) gets exactly one program, and at most one program per sequence
  has no tile.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import triton
import triton.language as tl

from btok_kernels.condensation.parallel import _find_tile, _key_plan, _key_range, _row_plan, _row_range
from tests.helpers.layouts import random_sequences
from tests.helpers.oracle import allowed

pytestmark = pytest.mark.interpret


@triton.jit
def _find_tile_probe(cu_seqlens, n_seqs, Out, BLOCK: tl.constexpr):
    i_t = tl.program_id(0)
    i_s, i_m, n_m, bos, seqlen = _find_tile(cu_seqlens, n_seqs, i_t, BLOCK)
    tl.store(Out + i_t * 3 + 0, i_s)
    tl.store(Out + i_t * 3 + 1, i_m)
    tl.store(Out + i_t * 3 + 2, n_m)


@triton.jit
def _plan_probe(Cases, Out, n_cases, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
                CASES: tl.constexpr):
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


def check_block(rows: range, cols: range, seqlen, b, t, masked: bool, tile_axis: str, causal: bool) -> np.ndarray:
    """Checks one visited block and returns its allowed pairs. ``tile_axis`` is the axis
    of the program's own tile ("rows" in the forward and dQ, "cols" in dK/dV): padding
    past the sequence end on that axis is harmless (never stored), but the other axis is
    loaded without a mask in an unmasked block, so it must stay in bounds."""
    i = np.arange(rows.start, rows.stop)[:, None]
    j = np.arange(cols.start, cols.stop)[None, :]
    ok = allowed(i, j, b, t, causal, seqlen)
    where = f"rows [{rows.start}, {rows.stop}) keys [{cols.start}, {cols.stop}) (len {seqlen}, b {b}, t {t})"
    assert ok.any(), f"visited block with no allowed pair: {where}"
    valid = (i < seqlen) if tile_axis == "rows" else (j < seqlen)
    if masked:
        assert not ok[np.broadcast_to(valid, ok.shape)].all(), f"masked block that needs no mask: {where}"
    else:
        other = j if tile_axis == "rows" else i
        assert (other < seqlen).all(), f"unmasked block reads past the sequence end: {where}"
        assert ok[np.broadcast_to(valid, ok.shape)].all(), f"unmasked block holds a masked pair: {where}"
    return ok


LAYOUT_CASES = [
    # (seqlen, b, t)
    (1, 0, 1), (1, 0, 0), (1, 1, 1), (7, 3, 5), (16, 8, 16), (17, 4, 10), (40, 0, 40),
    (40, 40, 40), (50, 13, 29), (64, 32, 48), (65, 33, 49), (97, 70, 74), (97, 5, 6),
    (100, 0, 0), (100, 99, 99), (33, 16, 16), (48, 31, 33),
]

LAYOUT_CASES += random_sequences(24, seed=0, max_length=300)
TILES = [(16, 16), (16, 32), (32, 16), (64, 16), (16, 128), (128, 32)]


# a bidirectional layout has b = 0 and t = len
BIDIRECTIONAL_CASES = sorted({(seqlen, 0, seqlen) for seqlen, _, _ in LAYOUT_CASES})


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("block_m,block_n", TILES, ids=[f"m{m}n{n}" for m, n in TILES])
def test_query_and_key_tile_plans(block_m, block_n, causal, device):
    layout_cases = LAYOUT_CASES if causal else BIDIRECTIONAL_CASES
    cases = []
    for seqlen, b, t in layout_cases:
        cases += [(s, seqlen, b, t) for s in range(0, seqlen, block_m)]
    # the key-tile plan walks key tiles of BLOCK_N; run it on key-tile starts too
    key_cases = []
    for seqlen, b, t in layout_cases:
        key_cases += [(s, seqlen, b, t) for s in range(0, seqlen, block_n)]
    for rows_as_tiles, case_list in ((True, cases), (False, key_cases)):
        c = torch.tensor(case_list, dtype=torch.int32, device=device)
        out = torch.zeros(len(case_list), 8, dtype=torch.int32, device=device)
        _plan_probe[(triton.cdiv(len(case_list), 64),)](c, out, len(case_list), BLOCK_M=block_m, BLOCK_N=block_n,
                                                       CAUSAL=causal, CASES=64)
        out = out.cpu()
        covered: dict[tuple, np.ndarray] = {}
        for (start, seqlen, b, t), plan in zip(case_list, out.tolist()):
            key = (seqlen, b, t)
            if key not in covered:
                covered[key] = np.zeros((seqlen, seqlen), dtype=np.int32)
            # the kernels' three loops over positions: masked [lo, a), unmasked [a, z), masked [z, hi)
            if rows_as_tiles:  # forward / dQ: key blocks of BLOCK_N
                lo, a, z, hi = plan[:4]
                tile, step, axis = range(start, start + block_m), block_n, "rows"
            else:  # dK/dV: row blocks of BLOCK_M
                lo, a, z, hi = plan[4:8]
                tile, step, axis = range(start, start + block_n), block_m, "cols"
            assert lo <= a <= z <= hi and all((x - lo) % step == 0 for x in (a, z, hi)), plan
            for blk in range(lo, hi, step):
                other = range(blk, blk + step)
                rows, cols = (tile, other) if rows_as_tiles else (other, tile)
                ok = check_block(rows, cols, seqlen, b, t, masked=not a <= blk < z, tile_axis=axis, causal=causal)
                add_cover(covered[key], rows, cols, ok)
        for (seqlen, b, t), cover in covered.items():
            i = np.arange(seqlen)[:, None]
            j = np.arange(seqlen)[None, :]
            want = allowed(i, j, b, t, causal, seqlen)
            assert np.array_equal(cover, want), f"pairs not covered exactly once (len {seqlen}, b {b}, t {t})"


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_mask_ranges_are_the_mask(causal, device):
    """A masked block keeps key j for row i iff k_first[i] <= j <= k_last[i] (forward, dQ)
    and iff r_first[j] <= i <= r_last[j] (dK/dV): both must be the mask exactly, rows and
    keys past the sequence end included (padding of a tile)."""
    for seqlen, b, t in LAYOUT_CASES if causal else BIDIRECTIONAL_CASES:
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


def add_cover(cover: np.ndarray, rows: range, cols: range, ok: np.ndarray):
    """Counts the block's allowed pairs inside the sequence into ``cover`` [L, L]."""
    seqlen = cover.shape[0]
    n_r, n_c = min(rows.stop, seqlen) - rows.start, min(cols.stop, seqlen) - cols.start
    cover[rows.start : rows.start + n_r, cols.start : cols.start + n_c] += ok[:n_r, :n_c]


@pytest.mark.parametrize("block", [16, 64])
@pytest.mark.parametrize(
    "lens",
    [[1], [1000], [16, 16, 16], [0, 5, 0, 0, 17], [1] * 50, [3, 200, 1, 64, 65, 15, 0, 31]],
    ids=["one_token", "one_long", "aligned", "empties", "many_tiny", "mixed"],
)
def test_every_tile_gets_one_program(lens, block, device):
    cu = torch.tensor([0] + list(itertools.accumulate(lens)), dtype=torch.int32, device=device)
    n = len(lens)
    grid = int(cu[-1]) // block + n  # what the launchers launch
    out = torch.full((grid, 3), -1, dtype=torch.int32, device=device)
    _find_tile_probe[(grid,)](cu, n, out, BLOCK=block)
    out = out.cpu()
    seen = set()
    empty_per_seq = [0] * n
    for s, m, n_m in out.tolist():
        assert n_m == -(-lens[s] // block)
        if m >= n_m:
            empty_per_seq[s] += 1
            continue
        assert 0 <= m and (s, m) not in seen
        seen.add((s, m))
    assert seen == {(s, m) for s in range(n) for m in range(-(-lens[s] // block))}
    assert max(empty_per_seq) <= 1
