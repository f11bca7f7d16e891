"""The float64 oracle every benchmark row is checked against (btok's rows included).

Independent of btok's backends: per sequence, per block of query rows, dense fp64 scores
over all keys of the sequence, the mask from :func:`btok_kernels.mask.allowed_pairs` (the
package's one definition of the mask), a plain softmax, and the textbook backward

    dV = P^T dO,  dP = dO V^T,  dS = P * (dP - rowsum(dO * O)),  dQ = s dS K,  dK = s dS^T Q

Memory stays at one ``[Hq, rows, L]`` block of scores (fp64) and its few companions at a
time, so it runs on every workload of the GPU configuration too (a 16k-token sequence at 24
heads: 24 x 512 x 16384 x 8 B = 1.6 GB per block).
"""

from __future__ import annotations

import torch

from btok_kernels import CondensationLayout
from btok_kernels.mask import allowed_pairs

__all__ = ["oracle"]

ROW_BLOCK = 512


def oracle(q, k, v, do, layout: CondensationLayout, scale: float) -> dict[str, torch.Tensor]:
    """fp64 ``out``, ``dq``, ``dk``, ``dv`` of condensation attention (plain causal for a
    layout from :meth:`CondensationLayout.causal`).

    Args:
        q, do: ``[T, Hq, D]``; k, v: ``[T, Hkv, D]`` (any float dtype, on one device).
        layout: the pack, on that device.
        scale: the softmax scale.
    """
    q, k, v, do = (x.detach().double() for x in (q, k, v, do))
    hq, hkv = q.shape[1], k.shape[1]
    group = hq // hkv
    out, dq = torch.empty_like(q), torch.empty_like(q)
    dk, dv = torch.zeros_like(k), torch.zeros_like(v)
    cu = layout.host_cu_seqlens
    for s, (b, t) in enumerate(zip(layout.host_btok_start, layout.host_target_start)):
        a, e = cu[s], cu[s + 1]
        if e == a:
            continue
        # [Hkv, group, rows, D] views of the sequence, query heads grouped by their KV head
        for r0 in range(0, e - a, ROW_BLOCK):
            r1 = min(r0 + ROW_BLOCK, e - a)  # rows [r0, r1) see keys before r1 at most
            rows = slice(a + r0, a + r1)
            ks, vs = k[a : a + r1].transpose(0, 1)[:, None], v[a : a + r1].transpose(0, 1)[:, None]
            qs = q[rows].transpose(0, 1).reshape(hkv, group, r1 - r0, -1)
            dos = do[rows].transpose(0, 1).reshape(hkv, group, r1 - r0, -1)
            positions = torch.arange(r1, device=q.device)
            allowed = allowed_pairs(positions[r0:, None], positions[None, :], b, t)  # [rows, r1]
            p = ((qs @ ks.transpose(-1, -2)) * scale).masked_fill(~allowed, float("-inf")).softmax(-1)
            o = p @ vs
            ds = p * (dos @ vs.transpose(-1, -2) - (dos * o).sum(-1, keepdim=True))
            out[rows] = o.reshape(hq, r1 - r0, -1).transpose(0, 1)
            dq[rows] = (scale * ds @ ks).reshape(hq, r1 - r0, -1).transpose(0, 1)
            dk[a : a + r1] += (scale * ds.transpose(-1, -2) @ qs).sum(1).transpose(0, 1)
            dv[a : a + r1] += (p.transpose(-1, -2) @ dos).sum(1).transpose(0, 1)
    return {"out": out, "dq": dq, "dk": dk, "dv": dv}
