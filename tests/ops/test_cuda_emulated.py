"""The CUDA kernels of csrc/, run on the CPU in the host SIMT emulator (csrc/host/emulator.cpp)
and checked against the float64 oracle with tests/ops/test_cuda_backend.py's rule.

The emulator compiles the kernels' own source (BTOK_EMULATE) with a host compiler and runs
every CUDA thread as a fiber: the tile plan, fragment layouts of mma.sync and ldmatrix, the
online softmax, masking, GQA and the cp.async double buffering are the real code; it also
fails a launch on a warp whose lanes diverge at a collective, a barrier some thread never
reaches, or an access outside the shared memory or the tensors. Runs use both cp.async
timings (landing at issue, or only at the wait) and a shuffled thread order. What it cannot
show: the PTX instructions themselves and speed (tests/ops/test_cuda_backend.py on a GPU).
"""

from __future__ import annotations

import ctypes
import functools
import math

import pytest
import torch

from btok_kernels import CondensationLayout
from tests.helpers.cuda_kernels import CUDA_EDGE_LAYOUTS, check_cuda_kernels, cuda_random_layout
from tests.helpers.host_build import host_build

# mode bits of btok_emu_configure
EAGER, DEFERRED, SHUFFLED = 0, 1, 2


# Small tensors only: one intra-op thread (a second one mostly waits, and on a busy machine
# waits for long).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def emu():
    path = host_build(
        "btok_emu",
        ["host/emulator.cpp"],
        ["-std=c++17", "-O2", "-DBTOK_EMULATE", "-Wall", "-Wno-unknown-pragmas", "-Werror"],
        shared=True,
    )
    lib = ctypes.CDLL(str(path))
    vp, i64p, i32p, f32p = ctypes.c_void_p, ctypes.POINTER(ctypes.c_int64), ctypes.c_void_p, ctypes.c_void_p
    ints = [ctypes.c_int] * 5  # n_seqs, total, hq, hkv, d
    lib.btok_emu_configure.argtypes = [ctypes.c_int, ctypes.c_uint64]
    lib.btok_emu_add_buffer.argtypes = [vp, ctypes.c_int64, ctypes.c_int]
    lib.btok_emu_fwd.argtypes = [
        vp,
        vp,
        vp,
        i64p,
        i32p,
        i32p,
        i32p,
        *ints,
        ctypes.c_float,
        ctypes.c_int,
        ctypes.c_int,
        vp,
        f32p,
    ]
    lib.btok_emu_fwd.restype = ctypes.c_char_p
    lib.btok_emu_bwd.argtypes = [
        vp,
        vp,
        vp,
        vp,
        vp,
        f32p,
        i64p,
        i32p,
        i32p,
        i32p,
        *ints,
        ctypes.c_float,
        ctypes.c_int,
        ctypes.c_int,
        f32p,
        vp,
        vp,
        vp,
    ]
    lib.btok_emu_bwd.restype = ctypes.c_char_p
    lib.btok_emu_convert.argtypes = [f32p, ctypes.c_int, ctypes.c_int, vp, f32p]
    return lib


def _register(lib, mode: int, seed: int, inputs, outputs):
    """The memory the kernels may touch: every element of each tensor (views included)."""
    lib.btok_emu_configure(mode, seed)
    for tensors, writable in ((inputs, 0), (outputs, 1)):
        for x in tensors:
            if x.numel():
                extent = (sum((n - 1) * s for n, s in zip(x.shape, x.stride())) + 1) * x.element_size()
                lib.btok_emu_add_buffer(x.data_ptr(), extent, writable)


def _strides(*tensors) -> ctypes.Array:
    return (ctypes.c_int64 * (2 * len(tensors)))(*[s for x in tensors for s in (x.stride(0), x.stride(1))])


def _check_args(q, k, v, cu_seqlens):
    assert q.dtype in (torch.float16, torch.bfloat16) and q.device.type == "cpu"
    assert all(x.stride(-1) == 1 for x in (q, k, v)) and cu_seqlens.dtype == torch.int32


def emulated_fwd(lib, mode, seed, q, k, v, cu_seqlens, btok_start, target_start, softmax_scale, causal=True):
    """condensation_fwd_cuda's contract, computed by the emulated kernels (CPU tensors)."""
    _check_args(q, k, v, cu_seqlens)
    total, hq, d = q.shape
    out = torch.full_like(q, float("nan"), memory_format=torch.contiguous_format)  # unwritten -> NaN
    lse = torch.full((hq, total), float("nan"), dtype=torch.float32)
    _register(lib, mode, seed, (q, k, v, cu_seqlens, btok_start, target_start), (out, lse))
    err = lib.btok_emu_fwd(
        q.data_ptr(),
        k.data_ptr(),
        v.data_ptr(),
        _strides(q, k, v),
        cu_seqlens.data_ptr(),
        btok_start.data_ptr(),
        target_start.data_ptr(),
        cu_seqlens.numel() - 1,
        total,
        hq,
        k.shape[1],
        d,
        softmax_scale,
        int(causal),
        int(q.dtype == torch.bfloat16),
        out.data_ptr(),
        lse.data_ptr(),
    )
    assert err is None, f"emulated forward: {err.decode()}"
    return out, lse


def emulated_bwd(
    lib, mode, seed, do, q, k, v, out, lse, cu_seqlens, btok_start, target_start, softmax_scale, causal=True
):
    _check_args(q, k, v, cu_seqlens)
    total, hq, d = q.shape
    dq, dk, dv = (torch.full_like(x, float("nan"), memory_format=torch.contiguous_format) for x in (q, k, v))
    delta = torch.full((hq, total), float("nan"), dtype=torch.float32)
    lse = lse.contiguous()
    _register(lib, mode, seed, (do, q, k, v, out, lse, cu_seqlens, btok_start, target_start), (delta, dq, dk, dv))
    err = lib.btok_emu_bwd(
        do.data_ptr(),
        q.data_ptr(),
        k.data_ptr(),
        v.data_ptr(),
        out.data_ptr(),
        lse.data_ptr(),
        _strides(q, k, v, out, do),
        cu_seqlens.data_ptr(),
        btok_start.data_ptr(),
        target_start.data_ptr(),
        cu_seqlens.numel() - 1,
        total,
        hq,
        k.shape[1],
        d,
        softmax_scale,
        int(causal),
        int(q.dtype == torch.bfloat16),
        delta.data_ptr(),
        dq.data_ptr(),
        dk.data_ptr(),
        dv.data_ptr(),
    )
    assert err is None, f"emulated backward: {err.decode()}"
    return dq, dk, dv


def launchers(lib, mode=EAGER, seed=0):
    return (functools.partial(emulated_fwd, lib, mode, seed), functools.partial(emulated_bwd, lib, mode, seed))


@pytest.mark.parametrize("bf16", [False, True], ids=["fp16", "bf16"])
def test_emulated_conversions_round_like_torch(bf16, emu):
    g = torch.Generator().manual_seed(0)
    x = torch.cat(
        [
            torch.randn(20000, generator=g) * torch.logspace(-10, 6, 20000),
            torch.tensor(
                [
                    0.0,
                    -0.0,
                    float("inf"),
                    -float("inf"),
                    65504.0,
                    65519.0,
                    65520.0,
                    2.0**-24,
                    2.0**-25,
                    1.5 * 2.0**-25,
                    2.0**-14,
                    3e38,
                    1e-40,
                ]
            ),
        ]
    ).float()
    dtype = torch.bfloat16 if bf16 else torch.float16
    bits = torch.empty(x.numel(), dtype=torch.int16)
    back = torch.empty_like(x)
    emu.btok_emu_convert(x.data_ptr(), x.numel(), int(bf16), bits.data_ptr(), back.data_ptr())
    assert torch.equal(bits, x.to(dtype).view(torch.int16))
    assert torch.equal(back, x.to(dtype).float())


@pytest.mark.parametrize("name", ["one_long", "query_len_1", "no_btoks", "many_tiny", "empty_sequences"])
def test_emulated_edge_layouts(name, emu):
    query, btoks, target = CUDA_EDGE_LAYOUTS[name]
    layout = CondensationLayout.from_lengths(query, btoks, target)
    dtype = torch.bfloat16 if len(name) % 2 else torch.float16
    check_cuda_kernels(layout, hq=2, hkv=1, d=64, dtype=dtype, launchers=launchers(emu))


@pytest.mark.parametrize("mode", [DEFERRED, SHUFFLED, DEFERRED | SHUFFLED], ids=["deferred", "shuffled", "both"])
def test_emulated_copy_timing_and_thread_order(mode, emu):
    """cp.async landing as late as allowed, and threads in a random order: a missing wait or
    barrier reads stale or poisoned shared memory."""
    layout = CondensationLayout.from_lengths([150, 9], [16, 4], [70, 3])
    check_cuda_kernels(layout, hq=2, hkv=1, d=64, dtype=torch.float16, launchers=launchers(emu, mode, seed=mode))


@pytest.mark.parametrize("seed", range(3))
def test_emulated_random_layouts(seed, emu):
    layout = CondensationLayout.from_lengths(*cuda_random_layout(seed, max_seqs=3, max_query=150, max_target=60))
    dtype = (torch.bfloat16, torch.float16)[seed % 2]
    check_cuda_kernels(layout, hq=3, hkv=1, d=64, dtype=dtype, seed=seed, launchers=launchers(emu))


@pytest.mark.parametrize(
    "d,hq,hkv",
    [(8, 2, 2), (80, 4, 2), (128, 2, 1), (192, 2, 1), (256, 2, 1)],
    ids=["d8", "d80_gqa2", "d128", "d192", "d256"],
)
def test_emulated_head_dim_tiers(d, hq, hkv, emu):
    """Every padded tier (64, 128, 256; at 256 two warps share the keys of the dK/dV tile)."""
    layout = CondensationLayout.from_lengths([70, 5], [16, 2], [41, 3])
    check_cuda_kernels(layout, hq=hq, hkv=hkv, d=d, dtype=torch.bfloat16, seed=d, launchers=launchers(emu))


@pytest.mark.parametrize("logits", [-30.0, 70.0, "mixed"], ids=["negative", "positive", "mixed"])
def test_emulated_extreme_logits(logits, emu):
    layout = CondensationLayout.from_lengths([37, 20], [16, 2], [29, 30])
    check_cuda_kernels(layout, hq=2, hkv=1, d=64, dtype=torch.float16, logits=logits, launchers=launchers(emu))


def test_emulated_bidirectional(emu):
    layout = CondensationLayout.causal([0, 1, 64, 175])
    check_cuda_kernels(layout, hq=2, hkv=1, d=64, dtype=torch.float16, causal=False, launchers=launchers(emu))


def test_emulated_strided_inputs(emu):
    """q, k, v as views of one fused projection: the kernels read them in place."""
    layout = CondensationLayout.from_lengths([40], 4, [21])
    total, hq, hkv, d = layout.total_tokens, 2, 1, 64
    qkv = torch.randn(total, hq + 2 * hkv, d, dtype=torch.float16)
    q, k, v = qkv[:, :hq], qkv[:, hq : hq + hkv], qkv[:, hq + hkv :]
    fwd, _ = launchers(emu)
    args = (layout.cu_seqlens, layout.btok_start, layout.target_start, 1 / math.sqrt(d))
    out, lse = fwd(q, k, v, *args)
    want, lse_want = fwd(q.contiguous(), k.contiguous(), v.contiguous(), *args)
    assert torch.equal(out, want) and torch.equal(lse, lse_want)
