"""Checking the CUDA kernels (or launchers with their signatures, e.g. the CPU emulator's)
against the fp64 oracle, with the error rule of tests/ops/test_condensation.py."""

from __future__ import annotations

import math

import torch

from btok_kernels.condensation import cuda
from tests.helpers.layouts import edge_layouts, make_inputs, random_layout
from tests.helpers.numerics import CEILING, FLOOR, rel_err
from tests.helpers.oracle import dense_attention

# the shared edge cases, sized past the CUDA kernels' 64-row tiles where size matters
CUDA_EDGE_LAYOUTS = {
    "one_long": ([397], 16, [158]),  # several tiles, boundaries off the tile grid
    **edge_layouts("query_len_1"),
    "no_target": ([23, 140], 4, [0, 0]),
    "K1": ([130, 5], 1, [12, 200]),
    "no_btoks": ([12, 70], 0, [121, 3]),  # b == t: target rows see only the target
    "no_query": ([0, 0], [3, 16], [120, 1]),  # b == 0: plain causal
    **edge_layouts("shorter_than_tile"),
    "tile_aligned": ([64, 128], 64, [128, 64]),
    **edge_layouts("many_tiny"),
    "empty_sequences": ([0, 210, 0, 0, 5], [0, 2, 0, 0, 3], [0, 17, 0, 0, 0]),
}


def cuda_random_layout(seed: int, max_seqs: int = 6, max_query: int = 600, max_target: int = 200):
    """A random layout sized for the CUDA kernels' tiles (up to 16 BToks a sequence)."""
    return random_layout(seed, max_seqs, max_query, max_btoks=16, max_target=max_target)


def poison_allocator():
    """Leaves NaN in the CUDA caching allocator's free blocks, so that an output element a
    kernel forgets to write is likely to read as NaN (the ops allocate in C++, out of reach
    of a dispatch mode)."""
    blocks = [torch.full((n,), float("nan"), device="cuda") for n in (1 << 24, 1 << 20, 1 << 17, 1 << 14, 1 << 11)]
    del blocks


def check_cuda_kernels(layout, hq, hkv, d, dtype, seed=0, q_scale=1.0, logits=None, causal=True, launchers=None):
    """Forward and backward against the fp64 oracle. ``launchers``: (fwd, bwd) with the
    signatures of cuda.condensation_fwd_cuda / condensation_bwd_cuda (the default); the
    tensors live on the layout's device."""
    fwd, bwd = launchers or (cuda.condensation_fwd_cuda, cuda.condensation_bwd_cuda)
    device = layout.device
    exact, lowp = make_inputs(layout, hq, hkv, d, dtype, device, seed, q_scale, logits)
    scale = 1.0 / math.sqrt(d)
    refs = []
    for q, k, v, do in (exact, lowp):
        q, k, v = (x.detach().clone().requires_grad_() for x in (q, k, v))
        out, lse = dense_attention(q, k, v, layout, scale, return_lse=True, causal=causal)
        refs.append((out.detach(), *torch.autograd.grad(out, (q, k, v), do), lse))
    (o_ref, *g_ref, lse_ref), (o_low, *g_low, _) = refs
    q, k, v, do = lowp
    args = (layout.cu_seqlens, layout.btok_start, layout.target_start, scale, causal)
    if device.type == "cuda":
        poison_allocator()
    out, lse = fwd(q, k, v, *args)
    if device.type == "cuda":
        poison_allocator()
    grads = bwd(do, q, k, v, out, lse, *args)
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
    for name, got, ref, low in zip(("out", "dq", "dk", "dv"), (out, *grads), (o_ref, *g_ref), (o_low, *g_low)):
        assert not torch.isnan(got).any(), f"{name}: NaN in the result (an element was never written?)"
        err, bound = rel_err(got, ref), 2 * rel_err(low, ref) + FLOOR[dtype]
        # With every key near one direction, dQ = scale * sum_j dS_j k_j cancels that large
        # common part (sum_j dS_j = 0), which amplifies the rounding of dS to the tensor-core
        # dtype; the ceilings assume well-conditioned inputs, so there dQ has the 2x rule only.
        if not (logits is not None and name == "dq"):
            bound = min(bound, CEILING[dtype])
        assert err <= bound, f"{name}: relative L2 error {err:.3e} > bound {bound:.3e}"
    assert lse.dtype == torch.float32 and lse.shape == (hq, layout.total_tokens)
    # the LSE comes from fp32 scores of the same rounded inputs: close to the oracle's
    assert rel_err(lse, lse_ref) <= 1e-4, f"lse: relative L2 error {rel_err(lse, lse_ref):.3e}"
