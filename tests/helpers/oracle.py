"""Test oracles for condensation attention: the mask written out densely, per sequence.

Independent of btok_kernels' reference (which is chunked and has its own backward): here
the mask is built literally from its definition and autograd does the backward.
"""

from __future__ import annotations

import torch

from btok_kernels import CondensationLayout


def dense_mask(length: int, b: int, t: int, causal: bool = True) -> torch.Tensor:
    """allowed(i, j) = (j <= i) and not (i >= t and j < b), as a bool [L, L]; every pair
    when not ``causal`` (a bidirectional layout)."""
    if not causal:
        return torch.ones(length, length, dtype=torch.bool)
    i = torch.arange(length)[:, None]
    j = torch.arange(length)[None, :]
    return (j <= i) & ~((i >= t) & (j < b))


def dense_attention(q, k, v, layout: CondensationLayout, scale: float, return_lse: bool = False):
    """Per-sequence dense attention in the inputs' own dtype (fp64 inputs: the oracle;
    bf16/fp16 inputs: what a plain same-dtype PyTorch implementation achieves)."""
    hq, hkv = q.shape[1], k.shape[1]
    outs, lses = [], []
    cu = layout.host_cu_seqlens
    for s, (b, t) in enumerate(zip(layout.host_btok_start, layout.host_target_start)):
        a, e = cu[s], cu[s + 1]
        mask = dense_mask(e - a, b, t, layout.is_causal).to(q.device)
        qs = q[a:e].transpose(0, 1)  # [Hq, L, D]
        ks = k[a:e].transpose(0, 1).repeat_interleave(hq // hkv, 0)
        vs = v[a:e].transpose(0, 1).repeat_interleave(hq // hkv, 0)
        scores = (qs @ ks.transpose(-1, -2)) * scale
        scores = scores.masked_fill(~mask, float("-inf"))
        outs.append((scores.softmax(-1) @ vs).transpose(0, 1))
        lses.append(scores.float().logsumexp(-1) if scores.dtype != torch.float64 else scores.logsumexp(-1))
    out = torch.cat(outs, 0)
    return (out, torch.cat(lses, 1)) if return_lse else out
