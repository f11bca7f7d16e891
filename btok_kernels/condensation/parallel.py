"""Triton kernels for condensation-mask attention on packed varlen sequences.

The tile schedule is computed inside the kernels from ``cu_seqlens``, ``btok_start`` and
``target_start``; nothing is precomputed per batch.

Programs. A pack of ``n`` sequences and ``T`` tokens launches ``T // BLOCK + n`` programs
per head along axis 0. Sequence ``s`` owns the program slots starting at
``cu_seqlens[s] // BLOCK + s``, which always leaves room for its ``cdiv(len_s, BLOCK)``
tiles; a program finds its sequence by binary search over ``cu_seqlens`` and at most one
slot per sequence has no tile and returns at once. No host synchronisation, no padding to
``max_seqlen``.

Tiles. For a query tile with rows ``[q0, q1)`` of a sequence (``b`` = BTok start, ``t`` =
target start), the keys visited are ``[lo, q1)`` with ``lo = b`` when every row is a target
row (``q0 >= t``) and ``lo = 0`` otherwise, in blocks of ``BLOCK_N`` starting at ``lo``:

    blocks [0, n_cut)       hold keys < b for a tile that mixes target and other rows:
                            per-element mask (the cut)
    blocks [n_cut, n_diag)  every key <= q0 and no cut applies: no mask at all
    blocks [n_diag, end)    cross the diagonal: per-element mask

The backward's dK/dV programs mirror this per key tile: rows ``[n0, t)`` see keys that all
lie before ``b`` and rows ``[n0, len)`` the others, with the same three kinds of blocks.

Bidirectional layouts (``CAUSAL=False``): every query tile visits every key block of its
sequence and every key tile every row block; all blocks but the last, partial one
(``len % BLOCK != 0``) run without a mask.
"""

from __future__ import annotations

import functools
import os
import time

import torch
import triton
import triton.language as tl

__all__ = ["condensation_fwd_triton", "condensation_bwd_triton"]

# kernels may read only constexpr globals
LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)


# ----------------------------------------------------------------------------------------
# device helpers
# ----------------------------------------------------------------------------------------
@triton.jit
def _find_tile(cu_seqlens, n_seqs, i_t, BLOCK: tl.constexpr):
    """Program slot ``i_t`` -> (sequence, tile index within it, tile count of the sequence).
    Sequence ``s`` owns the slots from ``cu_seqlens[s] // BLOCK + s``."""
    lo = 0
    hi = n_seqs - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        slot = tl.load(cu_seqlens + mid) // BLOCK + mid
        lo = tl.where(slot <= i_t, mid, lo)
        hi = tl.where(slot <= i_t, hi, mid - 1)
    bos = tl.load(cu_seqlens + lo)
    eos = tl.load(cu_seqlens + lo + 1)
    return lo, i_t - (bos // BLOCK + lo), tl.cdiv(eos - bos, BLOCK), bos, eos - bos


@triton.jit
def _dot(a, b, UPCAST: tl.constexpr, PRECISION: tl.constexpr):
    # UPCAST: the Triton interpreter multiplies bf16 blocks wrongly; fp32 products of
    # bf16 values are exact, so the result matches a bf16 tensor-core dot with fp32 acc.
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def _allowed(rows, keys, seqlen, b, t, CAUSAL: tl.constexpr):
    """The mask on broadcastable row and key positions of one sequence, in bounds:
    causal ``(j <= i) and not (i >= t and j < b)``, bidirectional every pair."""
    m_ok = (rows < seqlen) & (keys < seqlen)
    if CAUSAL:
        m_ok = m_ok & (keys <= rows) & ~((rows >= t) & (keys < b))
    return m_ok


@triton.jit
def _key_blocks(q0, q1, b, t, seqlen, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr):
    """Key blocks of the query tile with rows [q0, q1): (lo, n_cut, n_diag, n_blocks)."""
    if not CAUSAL:  # every key of the sequence; only the last, partial block is masked
        return 0, 0, seqlen // BLOCK_N, tl.cdiv(seqlen, BLOCK_N)
    has_plain = q0 < t  # rows that see the query segment
    has_target = q1 > t  # rows that do not
    lo = tl.where(has_plain, 0, b)
    n_blocks = tl.cdiv(q1 - lo, BLOCK_N)
    n_diag = (q0 + 1 - lo) // BLOCK_N
    n_cut = tl.where(has_plain & has_target, tl.cdiv(b, BLOCK_N), 0)
    return lo, tl.minimum(n_cut, n_diag), n_diag, n_blocks


@triton.jit
def _row_blocks(n0, n1, b, t, seqlen, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr):
    """Query-row blocks that see the key tile [n0, n1): (lo, n_diag, n_full, n_blocks), rows
    starting at lo. Causal: from n0, and keys all before b are seen by rows < t only."""
    if not CAUSAL:  # every row of the sequence; only the last, partial block is masked
        return 0, 0, seqlen // BLOCK_M, tl.cdiv(seqlen, BLOCK_M)
    row_hi = tl.where(n1 <= b, t, seqlen)
    full_hi = tl.where(n0 < b, t, seqlen)
    n_blocks = tl.cdiv(row_hi - n0, BLOCK_M)
    n_diag = tl.minimum(tl.cdiv(BLOCK_N - 1, BLOCK_M), n_blocks)
    n_full = tl.maximum((full_hi - n0) // BLOCK_M, n_diag)
    return n0, n_diag, n_full, n_blocks


# ----------------------------------------------------------------------------------------
# forward
# ----------------------------------------------------------------------------------------
@triton.jit
def _fwd_block(
    acc, l_i, m_i, b_q, p_k, p_v, o_m, start_n, seqlen, b, t, qk_scale,
    stride_kt, stride_vt,
    MASKED: tl.constexpr, EVEN_D: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr,
):
    o_n = start_n + tl.arange(0, BLOCK_N)
    o_d = tl.arange(0, BLOCK_D)
    m_kv = o_d[None, :] < HEAD_DIM
    if MASKED:
        m_kv = m_kv & (o_n[:, None] < seqlen)
    if MASKED or not EVEN_D:
        b_k = tl.load(p_k + o_n[:, None].to(tl.int64) * stride_kt, mask=m_kv, other=0.0)  # [BLOCK_N, BLOCK_D]
        b_v = tl.load(p_v + o_n[:, None].to(tl.int64) * stride_vt, mask=m_kv, other=0.0)
    else:
        b_k = tl.load(p_k + o_n[:, None].to(tl.int64) * stride_kt)
        b_v = tl.load(p_v + o_n[:, None].to(tl.int64) * stride_vt)
    b_s = _dot(b_q, tl.trans(b_k), UPCAST, PRECISION) * qk_scale  # [BLOCK_M, BLOCK_N], log2 units
    if MASKED:
        b_s = tl.where(_allowed(o_m[:, None], o_n[None, :], seqlen, b, t, CAUSAL), b_s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(b_s, 1))
    m_shift = m_new
    if MASKED:
        # A row that has seen no key yet keeps m = -inf as its state: a finite stand-in
        # would become its max and make exp2(s - m) underflow (to 0 once P is fp16) when
        # all its later scores lie far below it. Only the exponent's shift needs to be
        # finite (-inf - -inf is NaN): exp2(-inf - 0) = 0 for the masked scores.
        m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
    b_p = tl.math.exp2(b_s - m_shift[:, None])
    alpha = tl.math.exp2(m_i - m_shift)
    l_i = l_i * alpha + tl.sum(b_p, 1)
    acc = acc * alpha[:, None] + _dot(b_p.to(b_v.dtype), b_v, UPCAST, PRECISION)
    return acc, l_i, m_new


@triton.heuristics({"EVEN_D": lambda args: args["HEAD_DIM"] == args["BLOCK_D"]})
@triton.jit
def condensation_fwd_kernel(
    Q, K, V, O, LSE, cu_seqlens, btok_start, target_start, n_seqs, qk_scale,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
    stride_lse_h,
    G: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    EVEN_D: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr, CAUSAL: tl.constexpr,
):
    i_t, i_h = tl.program_id(0), tl.program_id(1)
    i_s, i_m, n_m, bos, seqlen = _find_tile(cu_seqlens, n_seqs, i_t, BLOCK_M)
    if i_m >= n_m:
        return
    # the last tiles of a sequence see the most keys: run them first
    i_m = n_m - 1 - i_m
    b = tl.load(btok_start + i_s)
    t = tl.load(target_start + i_s)
    q0 = i_m * BLOCK_M
    q1 = tl.minimum(q0 + BLOCK_M, seqlen)

    o_m = q0 + tl.arange(0, BLOCK_M)
    o_d = tl.arange(0, BLOCK_D)
    m_q = (o_m[:, None] < seqlen) & (o_d[None, :] < HEAD_DIM)
    p_q = Q + (bos + o_m[:, None]).to(tl.int64) * stride_qt + i_h * stride_qh + o_d[None, :]
    b_q = tl.load(p_q, mask=m_q, other=0.0)  # [BLOCK_M, BLOCK_D]
    p_k = K + bos.to(tl.int64) * stride_kt + (i_h // G) * stride_kh + o_d[None, :]
    p_v = V + bos.to(tl.int64) * stride_vt + (i_h // G) * stride_vh + o_d[None, :]

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    lo, n_cut, n_diag, n_blocks = _key_blocks(q0, q1, b, t, seqlen, BLOCK_N, CAUSAL)
    for i_n in range(0, n_cut):
        acc, l_i, m_i = _fwd_block(
            acc, l_i, m_i, b_q, p_k, p_v, o_m, lo + i_n * BLOCK_N, seqlen, b, t, qk_scale,
            stride_kt, stride_vt, True, EVEN_D, UPCAST, PRECISION, BLOCK_N, BLOCK_D, HEAD_DIM, CAUSAL)
    for i_n in range(n_cut, n_diag):
        acc, l_i, m_i = _fwd_block(
            acc, l_i, m_i, b_q, p_k, p_v, o_m, lo + i_n * BLOCK_N, seqlen, b, t, qk_scale,
            stride_kt, stride_vt, False, EVEN_D, UPCAST, PRECISION, BLOCK_N, BLOCK_D, HEAD_DIM, CAUSAL)
    for i_n in range(n_diag, n_blocks):
        acc, l_i, m_i = _fwd_block(
            acc, l_i, m_i, b_q, p_k, p_v, o_m, lo + i_n * BLOCK_N, seqlen, b, t, qk_scale,
            stride_kt, stride_vt, True, EVEN_D, UPCAST, PRECISION, BLOCK_N, BLOCK_D, HEAD_DIM, CAUSAL)

    # rows past the sequence end have l = 0; they are not stored
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    acc = acc / l_safe[:, None]
    b_lse = (m_i + tl.math.log2(l_safe)) * LN2  # natural log
    p_o = O + (bos + o_m[:, None]).to(tl.int64) * stride_ot + i_h * stride_oh + o_d[None, :]
    tl.store(p_o, acc.to(O.dtype.element_ty), mask=m_q)
    tl.store(LSE + i_h.to(tl.int64) * stride_lse_h + bos + o_m, b_lse, mask=o_m < seqlen)


# ----------------------------------------------------------------------------------------
# backward
# ----------------------------------------------------------------------------------------
@triton.jit
def condensation_bwd_preprocess_kernel(
    O, DO, DELTA, total, stride_ot, stride_oh, stride_dot, stride_doh, stride_delta_h,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """delta = rowsum(dO * O), fp32 [Hq, T]."""
    i_m, i_h = tl.program_id(0), tl.program_id(1)
    o_m = i_m * BLOCK_M + tl.arange(0, BLOCK_M)
    o_d = tl.arange(0, BLOCK_D)
    m = (o_m[:, None] < total) & (o_d[None, :] < HEAD_DIM)
    b_o = tl.load(O + o_m[:, None].to(tl.int64) * stride_ot + i_h * stride_oh + o_d[None, :], mask=m, other=0.0)
    b_do = tl.load(DO + o_m[:, None].to(tl.int64) * stride_dot + i_h * stride_doh + o_d[None, :], mask=m, other=0.0)
    b_delta = tl.sum(b_o.to(tl.float32) * b_do.to(tl.float32), 1)
    tl.store(DELTA + i_h.to(tl.int64) * stride_delta_h + o_m, b_delta, mask=o_m < total)


@triton.jit
def _bwd_dkdv_block(
    b_dk, b_dv, b_k, b_v, p_q, p_do, p_lse, p_delta, p_dq, o_n, start_m, seqlen, b, t, sm_scale, qk_scale,
    stride_qt, stride_dot, stride_dqt,
    MASKED: tl.constexpr, EVEN_D: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    FUSED_DQ: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr,
    CAUSAL: tl.constexpr,
):
    o_m = start_m + tl.arange(0, BLOCK_M)
    o_d = tl.arange(0, BLOCK_D)
    m_q = o_d[None, :] < HEAD_DIM
    if MASKED:
        m_q = m_q & (o_m[:, None] < seqlen)
    if MASKED or not EVEN_D:
        b_q = tl.load(p_q + o_m[:, None].to(tl.int64) * stride_qt, mask=m_q, other=0.0)  # [BLOCK_M, BLOCK_D]
        b_do = tl.load(p_do + o_m[:, None].to(tl.int64) * stride_dot, mask=m_q, other=0.0)
    else:
        b_q = tl.load(p_q + o_m[:, None].to(tl.int64) * stride_qt)
        b_do = tl.load(p_do + o_m[:, None].to(tl.int64) * stride_dot)
    if MASKED:
        b_lse = tl.load(p_lse + o_m, mask=o_m < seqlen, other=0.0)  # [BLOCK_M], natural log
        b_delta = tl.load(p_delta + o_m, mask=o_m < seqlen, other=0.0)
    else:
        b_lse = tl.load(p_lse + o_m)
        b_delta = tl.load(p_delta + o_m)
    b_sT = _dot(b_k, tl.trans(b_q), UPCAST, PRECISION) * qk_scale  # [BLOCK_N, BLOCK_M]
    if MASKED:
        # masked before the exponent: a hidden score far above the row's LSE would overflow
        b_sT = tl.where(_allowed(o_m[None, :], o_n[:, None], seqlen, b, t, CAUSAL), b_sT, float("-inf"))
    b_pT = tl.math.exp2(b_sT - b_lse[None, :] * LOG2E)
    b_dv += _dot(b_pT.to(b_do.dtype), b_do, UPCAST, PRECISION)
    b_dpT = _dot(b_v, tl.trans(b_do), UPCAST, PRECISION)  # [BLOCK_N, BLOCK_M]
    b_dsT = b_pT * (b_dpT - b_delta[None, :])
    b_dk += _dot(b_dsT.to(b_q.dtype), b_q, UPCAST, PRECISION)
    if FUSED_DQ:
        # this key tile's share of dQ for these rows; other key tiles add theirs
        b_dq = _dot(tl.trans(b_dsT.to(b_k.dtype)), b_k, UPCAST, PRECISION) * sm_scale  # [BLOCK_M, BLOCK_D]
        m_dq = (o_m[:, None] < seqlen) & (o_d[None, :] < HEAD_DIM)
        tl.atomic_add(p_dq + o_m[:, None].to(tl.int64) * stride_dqt, b_dq, mask=m_dq)
    return b_dk, b_dv


@triton.heuristics({"EVEN_D": lambda args: args["HEAD_DIM"] == args["BLOCK_D"]})
@triton.jit
def condensation_bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV, DQ_ACC, cu_seqlens, btok_start, target_start, n_seqs,
    sm_scale, qk_scale,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dot, stride_doh,
    stride_dkt, stride_dkh, stride_dvt, stride_dvh, stride_dqt, stride_dqh, stride_lse_h,
    G: tl.constexpr, HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    EVEN_D: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr, FUSED_DQ: tl.constexpr,
    CAUSAL: tl.constexpr,
):
    """One program per (key tile, group of HEADS query heads sharing one KV head): sums dK,
    dV over those heads and over the row blocks that see the tile. No atomics.

    HEADS == G: one program per KV head, DK/DV are the [T, Hkv, D] results. HEADS < G (few
    key tiles, long sequences): G // HEADS programs share a KV head and each writes its
    partial sums to DK/DV of shape [T, Hq // HEADS, D], reduced by the launcher.

    FUSED_DQ: also add each block's dQ share into the fp32 DQ_ACC [T, Hq, D] with atomics
    (5 matmuls per block pair instead of the 7 of a separate dQ kernel)."""
    i_t, i_hg = tl.program_id(0), tl.program_id(1)
    i_kvh = (i_hg * HEADS) // G
    i_s, i_n, n_n, bos, seqlen = _find_tile(cu_seqlens, n_seqs, i_t, BLOCK_N)
    if i_n >= n_n:
        return
    b = tl.load(btok_start + i_s)
    t = tl.load(target_start + i_s)
    n0 = i_n * BLOCK_N
    n1 = tl.minimum(n0 + BLOCK_N, seqlen)

    o_n = n0 + tl.arange(0, BLOCK_N)
    o_d = tl.arange(0, BLOCK_D)
    m_kv = (o_n[:, None] < seqlen) & (o_d[None, :] < HEAD_DIM)
    p_k = K + (bos + o_n[:, None]).to(tl.int64) * stride_kt + i_kvh * stride_kh + o_d[None, :]
    p_v = V + (bos + o_n[:, None]).to(tl.int64) * stride_vt + i_kvh * stride_vh + o_d[None, :]
    b_k = tl.load(p_k, mask=m_kv, other=0.0)  # [BLOCK_N, BLOCK_D]
    b_v = tl.load(p_v, mask=m_kv, other=0.0)
    b_dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    b_dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)

    row_lo, n_diag, n_full, n_blocks = _row_blocks(n0, n1, b, t, seqlen, BLOCK_M, BLOCK_N, CAUSAL)
    for g in range(0, HEADS):
        i_h = i_hg * HEADS + g
        p_q = Q + bos.to(tl.int64) * stride_qt + i_h * stride_qh + o_d[None, :]
        p_do = DO + bos.to(tl.int64) * stride_dot + i_h * stride_doh + o_d[None, :]
        p_lse = LSE + i_h.to(tl.int64) * stride_lse_h + bos
        p_delta = DELTA + i_h.to(tl.int64) * stride_lse_h + bos
        p_dq = DQ_ACC + bos.to(tl.int64) * stride_dqt + i_h * stride_dqh + o_d[None, :]
        for i_m in range(0, n_diag):
            b_dk, b_dv = _bwd_dkdv_block(
                b_dk, b_dv, b_k, b_v, p_q, p_do, p_lse, p_delta, p_dq, o_n, row_lo + i_m * BLOCK_M, seqlen, b, t,
                sm_scale, qk_scale, stride_qt, stride_dot, stride_dqt,
                True, EVEN_D, UPCAST, PRECISION, FUSED_DQ, BLOCK_M, BLOCK_D, HEAD_DIM, CAUSAL)
        for i_m in range(n_diag, n_full):
            b_dk, b_dv = _bwd_dkdv_block(
                b_dk, b_dv, b_k, b_v, p_q, p_do, p_lse, p_delta, p_dq, o_n, row_lo + i_m * BLOCK_M, seqlen, b, t,
                sm_scale, qk_scale, stride_qt, stride_dot, stride_dqt,
                False, EVEN_D, UPCAST, PRECISION, FUSED_DQ, BLOCK_M, BLOCK_D, HEAD_DIM, CAUSAL)
        for i_m in range(n_full, n_blocks):
            b_dk, b_dv = _bwd_dkdv_block(
                b_dk, b_dv, b_k, b_v, p_q, p_do, p_lse, p_delta, p_dq, o_n, row_lo + i_m * BLOCK_M, seqlen, b, t,
                sm_scale, qk_scale, stride_qt, stride_dot, stride_dqt,
                True, EVEN_D, UPCAST, PRECISION, FUSED_DQ, BLOCK_M, BLOCK_D, HEAD_DIM, CAUSAL)

    p_dk = DK + (bos + o_n[:, None]).to(tl.int64) * stride_dkt + i_hg * stride_dkh + o_d[None, :]
    p_dv = DV + (bos + o_n[:, None]).to(tl.int64) * stride_dvt + i_hg * stride_dvh + o_d[None, :]
    tl.store(p_dk, (b_dk * sm_scale).to(DK.dtype.element_ty), mask=m_kv)
    tl.store(p_dv, b_dv.to(DV.dtype.element_ty), mask=m_kv)


@triton.jit
def _bwd_dq_block(
    b_dq, b_q, b_do, b_lse, b_delta, p_k, p_v, o_m, start_n, seqlen, b, t, qk_scale,
    stride_kt, stride_vt,
    MASKED: tl.constexpr, EVEN_D: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr,
):
    o_n = start_n + tl.arange(0, BLOCK_N)
    o_d = tl.arange(0, BLOCK_D)
    m_kv = o_d[None, :] < HEAD_DIM
    if MASKED:
        m_kv = m_kv & (o_n[:, None] < seqlen)
    if MASKED or not EVEN_D:
        b_k = tl.load(p_k + o_n[:, None].to(tl.int64) * stride_kt, mask=m_kv, other=0.0)  # [BLOCK_N, BLOCK_D]
        b_v = tl.load(p_v + o_n[:, None].to(tl.int64) * stride_vt, mask=m_kv, other=0.0)
    else:
        b_k = tl.load(p_k + o_n[:, None].to(tl.int64) * stride_kt)
        b_v = tl.load(p_v + o_n[:, None].to(tl.int64) * stride_vt)
    b_s = _dot(b_q, tl.trans(b_k), UPCAST, PRECISION) * qk_scale  # [BLOCK_M, BLOCK_N]
    if MASKED:
        # masked before the exponent: a hidden score far above the row's LSE would overflow
        b_s = tl.where(_allowed(o_m[:, None], o_n[None, :], seqlen, b, t, CAUSAL), b_s, float("-inf"))
    b_p = tl.math.exp2(b_s - b_lse[:, None])
    b_dp = _dot(b_do, tl.trans(b_v), UPCAST, PRECISION)  # [BLOCK_M, BLOCK_N]
    b_ds = b_p * (b_dp - b_delta[:, None])
    b_dq += _dot(b_ds.to(b_k.dtype), b_k, UPCAST, PRECISION)
    return b_dq


@triton.heuristics({"EVEN_D": lambda args: args["HEAD_DIM"] == args["BLOCK_D"]})
@triton.jit
def condensation_bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ, cu_seqlens, btok_start, target_start, n_seqs,
    sm_scale, qk_scale,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_dot, stride_doh,
    stride_dqt, stride_dqh, stride_lse_h,
    G: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    EVEN_D: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr, CAUSAL: tl.constexpr,
):
    """One program per (query tile, query head), visiting the same key blocks as the forward."""
    i_t, i_h = tl.program_id(0), tl.program_id(1)
    i_s, i_m, n_m, bos, seqlen = _find_tile(cu_seqlens, n_seqs, i_t, BLOCK_M)
    if i_m >= n_m:
        return
    i_m = n_m - 1 - i_m
    b = tl.load(btok_start + i_s)
    t = tl.load(target_start + i_s)
    q0 = i_m * BLOCK_M
    q1 = tl.minimum(q0 + BLOCK_M, seqlen)

    o_m = q0 + tl.arange(0, BLOCK_M)
    o_d = tl.arange(0, BLOCK_D)
    m_row = o_m < seqlen
    m_q = m_row[:, None] & (o_d[None, :] < HEAD_DIM)
    p_q = Q + (bos + o_m[:, None]).to(tl.int64) * stride_qt + i_h * stride_qh + o_d[None, :]
    p_do = DO + (bos + o_m[:, None]).to(tl.int64) * stride_dot + i_h * stride_doh + o_d[None, :]
    b_q = tl.load(p_q, mask=m_q, other=0.0)  # [BLOCK_M, BLOCK_D]
    b_do = tl.load(p_do, mask=m_q, other=0.0)
    b_lse = tl.load(LSE + i_h.to(tl.int64) * stride_lse_h + bos + o_m, mask=m_row, other=0.0) * LOG2E
    b_delta = tl.load(DELTA + i_h.to(tl.int64) * stride_lse_h + bos + o_m, mask=m_row, other=0.0)
    p_k = K + bos.to(tl.int64) * stride_kt + (i_h // G) * stride_kh + o_d[None, :]
    p_v = V + bos.to(tl.int64) * stride_vt + (i_h // G) * stride_vh + o_d[None, :]
    b_dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    lo, n_cut, n_diag, n_blocks = _key_blocks(q0, q1, b, t, seqlen, BLOCK_N, CAUSAL)
    for i_n in range(0, n_cut):
        b_dq = _bwd_dq_block(
            b_dq, b_q, b_do, b_lse, b_delta, p_k, p_v, o_m, lo + i_n * BLOCK_N, seqlen, b, t, qk_scale,
            stride_kt, stride_vt, True, EVEN_D, UPCAST, PRECISION, BLOCK_N, BLOCK_D, HEAD_DIM, CAUSAL)
    for i_n in range(n_cut, n_diag):
        b_dq = _bwd_dq_block(
            b_dq, b_q, b_do, b_lse, b_delta, p_k, p_v, o_m, lo + i_n * BLOCK_N, seqlen, b, t, qk_scale,
            stride_kt, stride_vt, False, EVEN_D, UPCAST, PRECISION, BLOCK_N, BLOCK_D, HEAD_DIM, CAUSAL)
    for i_n in range(n_diag, n_blocks):
        b_dq = _bwd_dq_block(
            b_dq, b_q, b_do, b_lse, b_delta, p_k, p_v, o_m, lo + i_n * BLOCK_N, seqlen, b, t, qk_scale,
            stride_kt, stride_vt, True, EVEN_D, UPCAST, PRECISION, BLOCK_N, BLOCK_D, HEAD_DIM, CAUSAL)

    p_dq = DQ + (bos + o_m[:, None]).to(tl.int64) * stride_dqt + i_h * stride_dqh + o_d[None, :]
    tl.store(p_dq, (b_dq * sm_scale).to(DQ.dtype.element_ty), mask=m_q)


# ----------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------
def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _dot_flags(dtype: torch.dtype, interpreting: bool | None = None) -> tuple[bool, str]:
    if interpreting is None:
        interpreting = _interpreting()
    upcast = interpreting and dtype == torch.bfloat16
    precision = "ieee" if (dtype == torch.float32 or upcast) else "tf32"
    return upcast, precision


def _block_d(head_dim: int) -> int:
    return max(16, triton.next_power_of_2(head_dim))


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


# dK/dV programs per SM below which the GQA group is split across programs
GQA_SPLIT_WAVES = 4


def choose_gqa_split(programs: int, group: int, device: torch.device) -> int:
    """How many dK/dV programs share one KV head (a divisor of the GQA group size).

    One program per KV head needs no reduction, but a pack of few long sequences then
    launches about as many programs as the GPU has SMs (long_8k: 130 on 132), and the first
    key tile of a causal sequence carries the most rows. The group is split into the fewest
    parts that give ``GQA_SPLIT_WAVES`` programs per SM; the parts' fp32 partial sums are
    added by the launcher. The threshold is a prediction, to be tuned on a GPU
    (benchmarks/NOTES.md)."""
    if group == 1 or device.type != "cuda":
        return 1
    target = GQA_SPLIT_WAVES * _sm_count(device.index if device.index is not None else torch.cuda.current_device())
    for split in range(1, group + 1):
        if group % split == 0 and programs * split >= target:
            return split
    return group


def _launch(block_m: int, block_n: int, num_warps: int, num_stages: int) -> dict:
    return dict(BLOCK_M=block_m, BLOCK_N=block_n, num_warps=num_warps, num_stages=num_stages)


# Default tiles on a GPU per kernel, by padded head dim: (fwd, dkdv, dq). Chosen from sm_90
# compiler figures (benchmarks/kernel_resources.py: large tiles that compile without
# register spills), not yet from timings; autotune=True times the candidates below instead.
_DEFAULTS = {
    64: (_launch(128, 64, 8, 3), _launch(32, 128, 8, 2), _launch(128, 32, 8, 2)),
    128: (_launch(128, 64, 8, 2), _launch(16, 128, 8, 2), _launch(128, 32, 8, 2)),
    256: (_launch(64, 32, 8, 2), _launch(32, 32, 8, 1), _launch(64, 16, 4, 1)),
}
# fp32 runs the dots in IEEE precision (no tensor cores): smaller tiles
_DEFAULTS_FP32 = {
    64: (_launch(64, 32, 8, 2), _launch(16, 32, 4, 2), _launch(64, 32, 8, 2)),
    128: (_launch(32, 32, 8, 2), _launch(16, 64, 8, 2), _launch(64, 16, 8, 2)),  # fwd, dq spill a little
    256: (_launch(32, 16, 8, 1), _launch(16, 16, 4, 1), _launch(32, 16, 8, 1)),
}
# under the interpreter: small tiles keep tests fast and put many tile boundaries in small inputs
_INTERPRETER = _launch(16, 16, 4, 1)
KERNEL_NAMES = ("fwd", "dkdv", "dq")


def gpu_configs(head_dim: int, dtype: torch.dtype) -> dict[str, dict]:
    """Launch configuration of each kernel ("fwd", "dkdv", "dq") on a GPU for this head dim
    and dtype: ``BLOCK_M`` query rows and ``BLOCK_N`` keys per block, ``num_warps``, ``num_stages``."""
    table = _DEFAULTS_FP32 if dtype == torch.float32 else _DEFAULTS
    return {name: dict(c) for name, c in zip(KERNEL_NAMES, table[max(64, _block_d(head_dim))])}


def default_configs(head_dim: int, dtype: torch.dtype) -> dict[str, dict]:
    """What the launchers use: :func:`gpu_configs`, or the small tiles under the interpreter."""
    if _interpreting():
        return {name: dict(_INTERPRETER) for name in KERNEL_NAMES}
    return gpu_configs(head_dim, dtype)


def _candidates(tiles) -> list:
    return [triton.Config(dict(BLOCK_M=m, BLOCK_N=n), num_warps=w, num_stages=s) for m, n, w, s in tiles]


def _prune_large_tiles(configs, named_args, **kwargs):
    # at head dim 256 a 128-row or 128-key tile does not fit the register file
    if named_args.get("BLOCK_D", kwargs.get("BLOCK_D")) == 256:
        configs = [c for c in configs if max(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) <= 64] or configs[-1:]
    return configs


def _wall_clock(kernel_call, quantiles=None):
    """Autotuner timing under the interpreter, where there are no CUDA events."""
    start = time.perf_counter()
    kernel_call()
    ms = (time.perf_counter() - start) * 1e3
    return [ms] * len(quantiles) if quantiles else ms


# Autotuning candidates (BLOCK_M, BLOCK_N, num_warps, num_stages) per kernel, and the
# kernel arguments the choice depends on besides the shape bucket.
_TUNE_CANDIDATES = {
    "fwd": [(128, 64, 8, 2), (128, 64, 8, 3), (128, 128, 8, 2), (128, 32, 8, 3), (64, 64, 4, 3), (64, 32, 8, 2)],
    "dkdv": [(16, 128, 8, 2), (32, 128, 8, 2), (32, 64, 8, 2), (64, 64, 8, 2), (16, 64, 4, 2), (16, 64, 8, 1)],
    "dq": [(128, 32, 8, 2), (64, 32, 4, 2), (128, 64, 8, 2), (64, 64, 4, 2), (64, 16, 8, 1)],
}
_TUNE_KEYS = {
    "fwd": ["HEAD_DIM", "G", "CAUSAL"],
    "dkdv": ["HEAD_DIM", "G", "HEADS", "FUSED_DQ", "CAUSAL"],
    "dq": ["HEAD_DIM", "G", "CAUSAL"],
}
_FIXED = {"fwd": condensation_fwd_kernel, "dkdv": condensation_bwd_dkdv_kernel, "dq": condensation_bwd_dq_kernel}


def shape_bucket(total: int, n_seqs: int) -> tuple[int, int]:
    """The pack shape an autotuned choice is kept for: the next powers of two of the token
    count and of the mean sequence length (known on the host without a device read)."""
    return triton.next_power_of_2(total), triton.next_power_of_2(triton.cdiv(total, max(n_seqs, 1)))


@functools.lru_cache(maxsize=None)
def autotuned_kernel(name: str, bucket: tuple[int, int]):
    """Kernel ``name`` ("fwd", "dkdv", "dq") wrapped in a Triton autotuner for packs of one
    :func:`shape_bucket`: it times its candidate tiles on its first launch for each (head
    dim, GQA group, dtypes, ...) and keeps the fastest. Tiles tuned on a short pack are not
    reused for a long one: each bucket has its own tuner."""
    reset = ["DQ_ACC"] if name == "dkdv" else None  # timing runs add into the fused-dQ accumulator
    return triton.autotune(configs=_candidates(_TUNE_CANDIDATES[name]), key=_TUNE_KEYS[name], reset_to_zero=reset,
                           prune_configs_by={"early_config_prune": _prune_large_tiles},
                           do_bench=_wall_clock if _interpreting() else None)(_FIXED[name])


def _kernel_and_meta(name: str, head_dim: int, dtype: torch.dtype, bucket: tuple[int, int], autotune: bool,
                     tiles: dict | None):
    """The kernel to launch and its launch kwargs: with ``autotune`` and no explicit tiles for
    it, the autotuned kernel of this shape bucket (which picks its own tiles); else the
    default tiles, updated by ``tiles[name]``."""
    override = (tiles or {}).get(name)
    if autotune and not override:
        return autotuned_kernel(name, bucket), {}
    cfg = default_configs(head_dim, dtype)[name]
    cfg.update(override or {})
    return _FIXED[name], cfg


def condensation_fwd_triton(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    cu_seqlens: torch.Tensor, btok_start: torch.Tensor, target_start: torch.Tensor,
    softmax_scale: float, *, causal: bool = True, autotune: bool = False, tiles: dict | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward launcher.

    Args:
        q: ``[T, Hq, D]``; k, v: ``[T, Hkv, D]`` (fp16/bf16/fp32, last dim contiguous).
        cu_seqlens, btok_start, target_start: int32 ``[n + 1]``, ``[n]``, ``[n]`` (the layout).
        softmax_scale: scale of the scores.
        causal: False for a bidirectional layout (every row attends every key of its
            sequence; ``btok_start`` and ``target_start`` are then not read).
        autotune: time candidate tiles per shape bucket (:func:`autotuned_kernel`).
        tiles: per-kernel overrides of the launch configuration,
            e.g. ``{"fwd": {"BLOCK_M": 64, "BLOCK_N": 32}}``; only "fwd" is read here.

    Returns:
        ``out [T, Hq, D]`` in q's dtype and ``lse [Hq, T]`` (fp32, natural log).
    """
    total, hq, head_dim = q.shape
    hkv = k.shape[1]
    n_seqs = cu_seqlens.numel() - 1
    out = torch.empty_like(q)
    lse = torch.empty(hq, total, dtype=torch.float32, device=q.device)
    if total == 0:
        return out, lse
    upcast, precision = _dot_flags(q.dtype)
    kernel, meta = _kernel_and_meta("fwd", head_dim, q.dtype, shape_bucket(total, n_seqs), autotune, tiles)
    kernel[lambda m: (total // m["BLOCK_M"] + n_seqs, hq)](
        q, k, v, out, lse, cu_seqlens, btok_start, target_start, n_seqs, softmax_scale * LOG2E.value,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        out.stride(0), out.stride(1), lse.stride(0),
        G=hq // hkv, HEAD_DIM=head_dim, BLOCK_D=_block_d(head_dim), UPCAST=upcast, PRECISION=precision,
        CAUSAL=causal, **meta,
    )
    return out, lse


def condensation_bwd_triton(
    do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
    out: torch.Tensor, lse: torch.Tensor,
    cu_seqlens: torch.Tensor, btok_start: torch.Tensor, target_start: torch.Tensor,
    softmax_scale: float, *, causal: bool = True, autotune: bool = False, tiles: dict | None = None,
    gqa_split: int | None = None, fused_dq: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward launcher: delta preprocess, then dK/dV per key tile and dQ per query tile.

    Args:
        do: ``[T, Hq, D]``, the gradient of ``out``.
        q, k, v, cu_seqlens, btok_start, target_start, softmax_scale, causal: as in the forward.
        out, lse: the forward's results.
        autotune, tiles: as in the forward; "dkdv" and "dq" are read from ``tiles``.
        gqa_split: how many dK/dV programs share one KV head (a divisor of ``Hq // Hkv``;
            None: :func:`choose_gqa_split`).
        fused_dq: compute dQ inside the dK/dV kernel with fp32 atomics instead of a dQ
            kernel (the order of the atomic adds varies: not bitwise deterministic).

    Returns:
        ``dq, dk, dv`` in the dtypes and shapes of ``q, k, v``.
    """
    total, hq, head_dim = q.shape
    hkv = k.shape[1]
    group = hq // hkv
    n_seqs = cu_seqlens.numel() - 1
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    if total == 0:
        return dq, dk, dv
    do = do if do.stride(-1) == 1 else do.contiguous()
    block_d = _block_d(head_dim)
    upcast, precision = _dot_flags(q.dtype)
    delta = torch.empty_like(lse)
    pre_m = 16 if _interpreting() else 64
    condensation_bwd_preprocess_kernel[(triton.cdiv(total, pre_m), hq)](
        out, do, delta, total, out.stride(0), out.stride(1), do.stride(0), do.stride(1), delta.stride(0),
        HEAD_DIM=head_dim, BLOCK_D=block_d, BLOCK_M=pre_m,
    )
    qk_scale = softmax_scale * LOG2E.value
    common = dict(G=group, HEAD_DIM=head_dim, BLOCK_D=block_d, UPCAST=upcast, PRECISION=precision, CAUSAL=causal)

    bucket = shape_bucket(total, n_seqs)
    kernel, meta = _kernel_and_meta("dkdv", head_dim, q.dtype, bucket, autotune, tiles)
    if gqa_split is None:
        # the autotuner picks BLOCK_N later; count programs with the default tile then
        key_tile = meta.get("BLOCK_N") or default_configs(head_dim, q.dtype)["dkdv"]["BLOCK_N"]
        gqa_split = choose_gqa_split((total // key_tile + n_seqs) * hkv, group, q.device)
    if group % gqa_split != 0:
        raise ValueError(f"gqa_split={gqa_split} must divide the GQA group size {group}")
    dq_acc = torch.zeros(total, hq, head_dim, dtype=torch.float32, device=q.device) if fused_dq else dq
    if gqa_split == 1:
        dk_acc, dv_acc = dk, dv
    else:  # fp32 partial sums, one slot per program sharing a KV head
        dk_acc = torch.empty(total, hkv * gqa_split, head_dim, dtype=torch.float32, device=q.device)
        dv_acc = torch.empty_like(dk_acc)
    kernel[lambda m: (total // m["BLOCK_N"] + n_seqs, hkv * gqa_split)](
        q, k, v, do, lse, delta, dk_acc, dv_acc, dq_acc, cu_seqlens, btok_start, target_start, n_seqs,
        softmax_scale, qk_scale,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        do.stride(0), do.stride(1), dk_acc.stride(0), dk_acc.stride(1), dv_acc.stride(0), dv_acc.stride(1),
        dq_acc.stride(0), dq_acc.stride(1), lse.stride(0), HEADS=group // gqa_split, FUSED_DQ=fused_dq,
        **common, **meta,
    )
    if gqa_split > 1:
        dk.copy_(dk_acc.view(total, hkv, gqa_split, head_dim).sum(2))
        dv.copy_(dv_acc.view(total, hkv, gqa_split, head_dim).sum(2))

    if fused_dq:
        dq.copy_(dq_acc)
        return dq, dk, dv
    kernel, meta = _kernel_and_meta("dq", head_dim, q.dtype, bucket, autotune, tiles)
    kernel[lambda m: (total // m["BLOCK_M"] + n_seqs, hq)](
        q, k, v, do, lse, delta, dq, cu_seqlens, btok_start, target_start, n_seqs,
        softmax_scale, qk_scale,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        do.stride(0), do.stride(1), dq.stride(0), dq.stride(1), lse.stride(0), **common, **meta,
    )
    return dq, dk, dv
