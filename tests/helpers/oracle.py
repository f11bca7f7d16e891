"""The test oracle of condensation attention: the mask's definition and dense fp64 attention.

This is the one place the tests write the mask's formula; every test that needs a dense mask
takes it from here (or from btok_kernels' public dense-mask functions, which tests/ops/test_mask.py
checks against this module). Independent of btok_kernels' reference (which is chunked and has
its own backward): the mask is built literally from its definition and autograd does the
backward.
"""

from __future__ import annotations

import torch

from btok_kernels import CondensationLayout


def allowed(i, j, b: int, t: int, causal: bool = True, seqlen: int | None = None):
    """May row ``i`` attend key ``j`` of one sequence ``[query | BToks | target]``?

    Causal: ``(j <= i) and not (i >= t and j < b)`` (target rows never see the query);
    bidirectional (``causal=False``): every pair.

    Args:
        i, j: integer row / key positions relative to the sequence start, torch tensors or
            NumPy arrays that broadcast against each other (e.g. ``[R, 1]`` and ``[1, C]``).
        b, t: the sequence's BTok start and target start.
        seqlen: if given, positions at or past it (padding of a tile) are never allowed.

    Returns:
        bool array of the broadcast shape (torch or NumPy, as the inputs), True = attend.
    """
    keep = (j <= i) & ~((i >= t) & (j < b))
    if not causal:
        keep = keep | True  # every pair, in the broadcast shape
    if seqlen is not None:
        keep = keep & (i < seqlen) & (j < seqlen)
    return keep


def dense_mask(length: int, b: int, t: int, causal: bool = True) -> torch.Tensor:
    """:func:`allowed` over one whole sequence: bool ``[length, length]`` on the CPU."""
    pos = torch.arange(length)
    return allowed(pos[:, None], pos[None, :], b, t, causal)


def dense_layout_mask(layout: CondensationLayout) -> torch.Tensor:
    """The mask of a packed batch, block-diagonal over its sequences: bool ``[T, T]`` on the
    CPU, ``T = layout.total_tokens`` (never across sequences)."""
    blocks = [
        dense_mask(n, b, t, layout.is_causal)
        for n, b, t in zip(layout.seqlens, layout.host_btok_start, layout.host_target_start)
    ]
    return torch.block_diag(*blocks) if blocks else torch.zeros(0, 0, dtype=torch.bool)


def dense_attention(
    q, k, v, layout: CondensationLayout, scale: float, return_lse: bool = False, causal: bool | None = None
):
    """Per-sequence dense attention in the inputs' own dtype (fp64 inputs: the oracle;
    bf16/fp16 inputs: what a plain same-dtype PyTorch implementation achieves).

    ``q [T, Hq, D]``, ``k, v [T, Hkv, D]``; returns ``out [T, Hq, D]`` (and the LSE
    ``[Hq, T]``, fp32 or fp64, with ``return_lse``). ``causal``: None for the layout's own
    kind, False to run every sequence bidirectionally (a kernel's ``causal`` flag)."""
    hq, hkv = q.shape[1], k.shape[1]
    outs, lses = [], []
    cu = layout.host_cu_seqlens
    for s, (b, t) in enumerate(zip(layout.host_btok_start, layout.host_target_start)):
        a, e = cu[s], cu[s + 1]
        mask = dense_mask(e - a, b, t, layout.is_causal if causal is None else causal).to(q.device)
        qs = q[a:e].transpose(0, 1)  # [Hq, L, D]
        ks = k[a:e].transpose(0, 1).repeat_interleave(hq // hkv, 0)
        vs = v[a:e].transpose(0, 1).repeat_interleave(hq // hkv, 0)
        scores = (qs @ ks.transpose(-1, -2)) * scale
        scores = scores.masked_fill(~mask, float("-inf"))
        outs.append((scores.softmax(-1) @ vs).transpose(0, 1))
        lses.append(scores.float().logsumexp(-1) if scores.dtype != torch.float64 else scores.logsumexp(-1))
    out = torch.cat(outs, 0)
    return (out, torch.cat(lses, 1)) if return_lse else out
