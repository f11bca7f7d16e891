"""The CUDA kernels' tile plan (csrc/tile_plan.h), compiled for the host and walked pair by
pair against the mask by :mod:`tests.helpers.tile_plans` (the walk the Triton plan takes in
tests/ops/test_tile_plan.py), for causal condensation layouts and bidirectional ones, with the
kernels' tile shapes and others. The header's own C++ unit test (the one csrc/check_build.sh
runs) runs here too.
"""

from __future__ import annotations

import ctypes
import itertools
import subprocess

import pytest
import torch

from tests.helpers.host_build import host_build
from tests.helpers.layouts import random_sequences
from tests.helpers.tile_plans import (
    LAYOUT_CASES,
    PROGRAM_LENGTHS,
    check_tile_plans,
    check_tile_programs,
    launch_grid,
)

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
    binary = host_build(
        "tile_plan_test", ["host/tile_plan_test.cpp"], ["-std=c++17", "-O2", "-Wall", "-Werror"], shared=False
    )
    run = subprocess.run([str(binary)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("tile_plan_test: OK"), run.stdout


CASES = LAYOUT_CASES + random_sequences(16, seed=1, max_length=260)
# (BLOCK_M, BLOCK_N): every shape in csrc/kernels/config.h, then odd ones
TILES = [(64, 64), (64, 32), (64, 16), (32, 64), (16, 16), (16, 128), (128, 32)]


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("block_m,block_n", TILES, ids=[f"m{m}n{n}" for m, n in TILES])
def test_tile_plan_covers_the_mask(block_m, block_n, causal, plan_lib):
    for rows_as_tile in (True, False):  # query tiles (forward, dQ), then key tiles (dK/dV)
        tile, step = (block_m, block_n) if rows_as_tile else (block_n, block_m)
        cases = [(s, n, b, t) for n, b, t in CASES for s in range(0, n, tile)]
        c = torch.tensor(cases, dtype=torch.int32)
        out = torch.zeros(len(cases), 4, dtype=torch.int32)
        plan_lib.btok_plan_blocks(_ptr(c), len(cases), block_m, block_n, int(causal), int(rows_as_tile), _ptr(out))
        plans: dict[tuple, list] = {}
        for (start, *key), plan in zip(cases, out.tolist()):
            plans.setdefault(tuple(key), []).append((start, *plan))
        for (seqlen, b, t), tile_plans in plans.items():
            check_tile_plans(seqlen, b, t, causal, tile_plans, tile, step, rows_as_tile)


@pytest.mark.parametrize("block", [16, 32, 64])
@pytest.mark.parametrize("lens", list(PROGRAM_LENGTHS.values()), ids=list(PROGRAM_LENGTHS))
def test_every_tile_gets_one_program(lens, block, plan_lib):
    cu = torch.tensor([0, *itertools.accumulate(lens)], dtype=torch.int32)
    got = torch.zeros(5, dtype=torch.int32)
    programs = []
    for slot in range(launch_grid(lens, block)):
        plan_lib.btok_plan_find_tile(_ptr(cu), len(lens), slot, block, _ptr(got))
        s, m, n_m, bos, seqlen = got.tolist()
        assert (bos, seqlen) == (int(cu[s]), lens[s])
        programs.append((s, m, n_m))
    check_tile_programs(lens, block, programs)
