"""The CUDA kernels' tile plan (csrc/tile_plan.h), compiled for the host and checked pair by
pair against the mask, as tests/ops/test_schedule.py checks the Triton plan:

- a visited block holds at least one allowed pair (masked tiles are skipped),
- an unmasked block holds only allowed, in-bounds pairs (only partial tiles pay a mask),
- the visited blocks cover every allowed pair exactly once,
- every (sequence, tile) gets exactly one program, at most one program per sequence none;

for causal condensation layouts and bidirectional ones, with the kernels' tile shapes and
others. The header's own C++ unit test (the one csrc/check_build.sh runs) runs here too.
"""

from __future__ import annotations

import ctypes
import itertools
import subprocess

import pytest
import torch

from tests.helpers.host_build import host_build
from tests.helpers.layouts import random_sequences
from tests.helpers.oracle import allowed

# Small tensors only: one intra-op thread (a second one mostly waits, and on a busy machine
# waits for long).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def plan_lib():
    lib = ctypes.CDLL(str(host_build("btok_plan", ["host/tile_plan_capi.cpp"], ["-std=c++17", "-O2"], shared=True)))
    i32p = ctypes.POINTER(ctypes.c_int32)
    lib.btok_plan_find_tile.argtypes = [i32p, ctypes.c_int, ctypes.c_int, ctypes.c_int, i32p]
    lib.btok_plan_blocks.argtypes = [i32p, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int, i32p]
    return lib


def _ptr(t: torch.Tensor):
    assert t.dtype == torch.int32 and t.is_contiguous()
    return ctypes.cast(t.data_ptr(), ctypes.POINTER(ctypes.c_int32))


def test_header_unit_test():
    binary = host_build("tile_plan_test", ["host/tile_plan_test.cpp"], ["-std=c++17", "-O2", "-Wall", "-Werror"],
                        shared=False)
    run = subprocess.run([str(binary)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("tile_plan_test: OK"), run.stdout


LAYOUT_CASES = [
    # (seqlen, b, t)
    (1, 0, 1), (1, 0, 0), (1, 1, 1), (7, 3, 5), (16, 8, 16), (17, 4, 10), (40, 0, 40),
    (40, 40, 40), (50, 13, 29), (64, 32, 48), (65, 33, 49), (97, 70, 74), (97, 5, 6),
    (100, 0, 0), (100, 99, 99), (33, 16, 16), (48, 31, 33), (150, 64, 130), (129, 128, 129),
]


LAYOUT_CASES += random_sequences(16, seed=1, max_length=260)
# (BLOCK_M, BLOCK_N): every shape in csrc/kernels/config.h, then odd ones
TILES = [(64, 64), (64, 32), (64, 16), (32, 64), (16, 16), (16, 128), (128, 32)]


def _walk(seqlen: int, b: int, t: int, causal: bool, plans, tile: int, step: int, rows_as_tile: bool):
    """Checks the blocks of every tile of one sequence; ``plans``: (tile start, lo,
    first_full, end_full, num) per tile."""
    pad = seqlen + 2 * max(tile, step)
    idx = torch.arange(pad)
    ok_all = allowed(idx[:, None], idx[None, :], b, t, causal, seqlen)  # [pad, pad], views per block below
    cover = torch.zeros(pad, pad, dtype=torch.int32)
    for start, lo, first_full, end_full, num in plans:
        for i_blk in range(num):
            o0 = lo + i_blk * step
            r0, r1, c0, c1 = (start, start + tile, o0, o0 + step) if rows_as_tile else (o0, o0 + step, start, start + tile)
            where = f"rows [{r0}, {r1}) keys [{c0}, {c1}) (len {seqlen}, b {b}, t {t})"
            assert o0 >= 0, f"block starts before the sequence: {where}"
            ok = ok_all[r0:r1, c0:c1]
            assert ok.any(), f"visited block with no allowed pair: {where}"
            # the own tile's padding is never stored; the other axis is read without a mask
            # in an unmasked block, so it must stay inside the sequence
            own = ok[: max(0, seqlen - r0)] if rows_as_tile else ok[:, : max(0, seqlen - c0)]
            other_inside = (c1 if rows_as_tile else r1) <= seqlen
            if first_full <= i_blk < end_full:
                assert other_inside, f"unmasked block reads past the sequence end: {where}"
                assert own.all(), f"unmasked block holds a masked pair: {where}"
            else:
                assert not (own.all() and other_inside), f"masked block that needs no mask: {where}"
            cover[r0:r1, c0:c1] += ok.int()
    assert torch.equal(cover, ok_all.int()), f"pairs not covered exactly once (len {seqlen}, b {b}, t {t})"


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("block_m,block_n", TILES, ids=[f"m{m}n{n}" for m, n in TILES])
def test_tile_plan_covers_the_mask(block_m, block_n, causal, plan_lib):
    for rows_as_tile in (True, False):  # query tiles (forward, dQ), then key tiles (dK/dV)
        tile, step = (block_m, block_n) if rows_as_tile else (block_n, block_m)
        cases = [(s, n, b, t) for n, b, t in LAYOUT_CASES for s in range(0, n, tile)]
        c = torch.tensor(cases, dtype=torch.int32)
        out = torch.zeros(len(cases), 4, dtype=torch.int32)
        plan_lib.btok_plan_blocks(_ptr(c), len(cases), block_m, block_n, int(causal), int(rows_as_tile), _ptr(out))
        plans: dict[tuple, list] = {}
        for (start, *key), plan in zip(cases, out.tolist()):
            plans.setdefault(tuple(key), []).append((start, *plan))
        for (seqlen, b, t), tile_plans in plans.items():
            _walk(seqlen, b, t, causal, tile_plans, tile, step, rows_as_tile)


@pytest.mark.parametrize("block", [16, 32, 64])
@pytest.mark.parametrize(
    "lens",
    [[1], [1000], [16, 16, 16], [0, 5, 0, 0, 17], [1] * 50, [3, 200, 1, 64, 65, 15, 0, 31]],
    ids=["one_token", "one_long", "aligned", "empties", "many_tiny", "mixed"],
)
def test_every_tile_gets_one_program(lens, block, plan_lib):
    cu = torch.tensor([0, *itertools.accumulate(lens)], dtype=torch.int32)
    n = len(lens)
    grid = int(cu[-1]) // block + n  # what the launchers launch
    got = torch.zeros(5, dtype=torch.int32)
    seen, empty_per_seq = set(), [0] * n
    for slot in range(grid):
        plan_lib.btok_plan_find_tile(_ptr(cu), n, slot, block, _ptr(got))
        s, m, n_m, bos, seqlen = got.tolist()
        assert (n_m, bos, seqlen) == (-(-lens[s] // block), int(cu[s]), lens[s])
        if m >= n_m:
            empty_per_seq[s] += 1
            continue
        assert 0 <= m and (s, m) not in seen
        seen.add((s, m))
    assert seen == {(s, m) for s in range(n) for m in range(-(-lens[s] // block))}
    assert max(empty_per_seq) <= 1
