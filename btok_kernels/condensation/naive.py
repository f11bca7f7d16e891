"""PyTorch reference for condensation-mask attention.

Per sequence and per chunk of query rows, in fp32 (fp64 for fp64 inputs), so that memory
stays linear in the number of tokens: no tensor is ever ``[L, L]``. It is the CPU backend
and, with the dense oracle in the tests, the yardstick of the Triton kernels.
"""

from __future__ import annotations

import torch

from ..mask import allowed_pairs

__all__ = ["condensation_fwd_naive", "condensation_bwd_naive"]

# rows per chunk: each chunk holds [Hq, CHUNK, L] scores, linear in L
CHUNK = 128


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _sequences(cu_seqlens: torch.Tensor, btok_start: torch.Tensor, target_start: torch.Tensor):
    host = torch.stack([cu_seqlens[:-1], cu_seqlens[1:], btok_start, target_start]).cpu().tolist()
    return zip(*host)


def _chunk_mask(r0: int, r1: int, kend: int, b: int, t: int, causal: bool, device) -> torch.Tensor:
    """allowed(i, j) for rows i in [r0, r1), keys j in [0, kend) of one sequence."""
    i = torch.arange(r0, r1, device=device)[:, None]
    j = torch.arange(0, kend, device=device)[None, :]
    return allowed_pairs(i, j, b, t, causal)  # [C, kend]


def _grouped(x: torch.Tensor, hkv: int) -> torch.Tensor:
    """[rows, Hq, D] -> [Hkv, G, rows, D]: query heads grouped by the KV head they share."""
    rows, hq, d = x.shape
    return x.permute(1, 0, 2).reshape(hkv, hq // hkv, rows, d)


def _ungrouped(x: torch.Tensor) -> torch.Tensor:
    """[Hkv, G, rows, D] -> [rows, Hq, D]."""
    hkv, g, rows, d = x.shape
    return x.reshape(hkv * g, rows, d).permute(1, 0, 2)


def condensation_fwd_naive(q, k, v, cu_seqlens, btok_start, target_start, softmax_scale: float, causal: bool = True):
    """Reference forward.

    Args:
        q: ``[T, Hq, D]``; k, v: ``[T, Hkv, D]`` (any floating dtype).
        cu_seqlens, btok_start, target_start: the layout's int32 tensors.
        softmax_scale: scale of the scores.
        causal: False for a bidirectional layout (every key of the row's sequence).

    Returns:
        ``out`` [T, Hq, D] in q's dtype and ``lse`` [Hq, T] (natural log, fp32; fp64 for
        fp64 inputs).
    """
    acc = _acc_dtype(q.dtype)
    total, hq, _ = q.shape
    hkv = k.shape[1]
    out = torch.zeros(total, hq, v.shape[2], dtype=q.dtype, device=q.device)
    lse = torch.zeros(hq, total, dtype=acc, device=q.device)
    for start, end, b, t in _sequences(cu_seqlens, btok_start, target_start):
        ks = k[start:end].to(acc).permute(1, 0, 2)[:, None]  # [Hkv, 1, L, D]
        vs = v[start:end].to(acc).permute(1, 0, 2)[:, None]
        for r0 in range(0, end - start, CHUNK):
            r1 = min(r0 + CHUNK, end - start)
            kend = r1 if causal else end - start  # keys past the chunk's last row are masked when causal
            qc = _grouped(q[start + r0 : start + r1].to(acc), hkv)  # [Hkv, G, C, D]
            s = (qc @ ks[..., :kend, :].transpose(-1, -2)) * softmax_scale  # [Hkv, G, C, kend]
            s = s.masked_fill(~_chunk_mask(r0, r1, kend, b, t, causal, q.device), float("-inf"))
            m = s.amax(-1, keepdim=True)
            p = torch.exp(s - m)
            denom = p.sum(-1, keepdim=True)
            o = (p @ vs[..., :kend, :]) / denom
            out[start + r0 : start + r1] = _ungrouped(o).to(q.dtype)
            lse[:, start + r0 : start + r1] = (m + torch.log(denom)).reshape(hq, r1 - r0)
    return out, lse


def condensation_bwd_naive(
    do, q, k, v, out, lse, cu_seqlens, btok_start, target_start, softmax_scale: float, causal: bool = True
):
    """Reference backward from the saved ``lse`` (recomputes the probabilities per chunk).

    Args:
        do: ``[T, Hq, D]``, the gradient of ``out``; out, lse: the forward's results.
        q, k, v, cu_seqlens, btok_start, target_start, softmax_scale, causal: as in
            :func:`condensation_fwd_naive`.

    Returns:
        ``dq, dk, dv`` in the dtypes of ``q, k, v``.
    """
    acc = _acc_dtype(q.dtype)
    hkv = k.shape[1]
    dq = torch.zeros(q.shape, dtype=acc, device=q.device)
    dk = torch.zeros(k.shape, dtype=acc, device=q.device)
    dv = torch.zeros(v.shape, dtype=acc, device=q.device)
    delta = (do.to(acc) * out.to(acc)).sum(-1)  # [T, Hq]
    for start, end, b, t in _sequences(cu_seqlens, btok_start, target_start):
        ks = k[start:end].to(acc).permute(1, 0, 2)[:, None]  # [Hkv, 1, L, D]
        vs = v[start:end].to(acc).permute(1, 0, 2)[:, None]
        dks = torch.zeros_like(ks.expand(-1, q.shape[1] // hkv, -1, -1))  # [Hkv, G, L, D]
        dvs = torch.zeros_like(vs.expand(-1, q.shape[1] // hkv, -1, -1))
        for r0 in range(0, end - start, CHUNK):
            r1 = min(r0 + CHUNK, end - start)
            kend = r1 if causal else end - start
            rows = slice(start + r0, start + r1)
            qc = _grouped(q[rows].to(acc), hkv)  # [Hkv, G, C, D]
            doc = _grouped(do[rows].to(acc), hkv)
            lse_c = _grouped(lse[:, rows].T[..., None], hkv)  # [Hkv, G, C, 1]
            delta_c = _grouped(delta[rows][..., None], hkv)
            s = (qc @ ks[..., :kend, :].transpose(-1, -2)) * softmax_scale
            # masked before the exponent: a hidden score far above the row's LSE would overflow
            p = torch.exp(s.masked_fill(~_chunk_mask(r0, r1, kend, b, t, causal, q.device), float("-inf")) - lse_c)
            dvs[..., :kend, :] += p.transpose(-1, -2) @ doc
            dp = doc @ vs[..., :kend, :].transpose(-1, -2)
            ds = p * (dp - delta_c) * softmax_scale  # [Hkv, G, C, kend]
            dq[rows] = _ungrouped(ds @ ks[..., :kend, :])
            dks[..., :kend, :] += ds.transpose(-1, -2) @ qc
        dk[start:end] = dks.sum(1).permute(1, 0, 2)
        dv[start:end] = dvs.sum(1).permute(1, 0, 2)
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)
