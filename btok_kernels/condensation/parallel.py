"""Triton kernels for condensation-mask attention on packed varlen sequences.

The tile schedule is computed inside the kernels from ``cu_seqlens``, ``btok_start`` and
``target_start``; nothing is precomputed per batch. The file has the four layers of an op,
in order: kernels (device helpers, forward, backward), launchers; the custom ops, autograd
and the public function are in ``ops.py``.

Programs. A pack of ``n`` sequences and ``T`` tokens launches ``T // BLOCK + n`` programs
per head along axis 0. Sequence ``s`` owns the program slots starting at
``cu_seqlens[s] // BLOCK + s``, which always leaves room for its ``cdiv(len_s, BLOCK)``
tiles; a program finds its sequence by binary search over ``cu_seqlens`` and at most one
slot per sequence has no tile and returns at once. No host synchronisation, no padding to
``max_seqlen``.

The mask, per row and per key. Each row ``i`` attends one contiguous key range
``[k_first, k_last]``: ``[0, i]`` for query and BTok rows, ``[b, i]`` for target rows
(``b`` = BTok start, ``t`` = target start), ``[0, len)`` when bidirectional. Seen from a
key ``j``, the rows attending it are ``[j, t)`` if ``j < b``, else ``[j, len)``, and
``[0, len)`` when bidirectional. :func:`_key_range` and :func:`_row_range` are the only
places that write the mask down; a masked block compares positions with these ranges
(tests/ops/test_tile_plan.py checks them against the mask pair by pair).

Tiles. For a query tile with rows ``[q0, q1)`` of a sequence, the keys visited are
``[lo, hi)`` with ``lo = b`` when every row is a target row (``q0 >= t``) and ``lo = 0``
otherwise, in blocks of ``BLOCK_N`` starting at ``lo`` (:func:`_key_plan`):

    keys [lo, cut_hi)       blocks holding keys < b for a tile that mixes target and other
                            rows: per-element mask (the cut)
    keys [cut_hi, full_hi)  every key <= q0 and no cut applies: no mask at all
    keys [full_hi, hi)      blocks crossing the diagonal: per-element mask

The backward's dK/dV programs mirror this per key tile (:func:`_row_plan`): row blocks
from the key tile's start, masked on the diagonal, then unmasked while every row sees
every key of the tile, then masked where rows ``>= t`` stop seeing keys ``< b``.

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
# device helpers: tiles, plans, the mask, loads and stores
# ----------------------------------------------------------------------------------------
@triton.jit
def _find_tile(cu_seqlens, n_seqs, i_t, BLOCK: tl.constexpr):
    """Program slot ``i_t`` -> (sequence, tile index within it, tile count of the sequence,
    first packed row of the sequence, its length). Sequence ``s`` owns the slots from
    ``cu_seqlens[s] // BLOCK + s``."""
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
def _dot(a, b, PRECISION: tl.constexpr):
    # "upcast": the Triton interpreter multiplies bf16 blocks wrongly; fp32 products of
    # bf16 values are exact, so the result matches a bf16 tensor-core dot with fp32 acc.
    if PRECISION == "upcast":
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def _key_range(o_m, seqlen, b, t, CAUSAL: tl.constexpr):
    """First and last key each row of ``o_m`` attends (int32 ``[BLOCK_M]`` each): the mask,
    row by row. Rows past the sequence end get keys of the sequence only (never stored)."""
    if CAUSAL:
        return tl.where(o_m >= t, b, 0), tl.minimum(o_m, seqlen - 1)
    return tl.zeros_like(o_m), tl.zeros_like(o_m) + seqlen - 1


@triton.jit
def _row_range(o_n, seqlen, b, t, CAUSAL: tl.constexpr):
    """First and last row attending each key of ``o_n`` (int32 ``[BLOCK_N]`` each): the
    mask, key by key. Keys past the sequence end get an empty range."""
    if CAUSAL:
        return o_n, tl.where(o_n < b, t, seqlen) - 1
    return tl.where(o_n < seqlen, 0, seqlen), tl.zeros_like(o_n) + seqlen - 1


@triton.jit
def _key_plan(q0, q1, b, t, seqlen, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr):
    """Keys visited by the query tile with rows [q0, q1), in blocks of BLOCK_N from lo:
    (lo, cut_hi, full_hi, hi); blocks in [cut_hi, full_hi) need no mask."""
    if not CAUSAL:  # every key of the sequence; only the last, partial block is masked
        return 0, 0, seqlen // BLOCK_N * BLOCK_N, tl.cdiv(seqlen, BLOCK_N) * BLOCK_N
    has_plain = q0 < t  # rows that see the query segment
    has_target = q1 > t  # rows that do not
    lo = tl.where(has_plain, 0, b)
    n_blocks = tl.cdiv(q1 - lo, BLOCK_N)
    n_diag = (q0 + 1 - lo) // BLOCK_N
    n_cut = tl.minimum(tl.where(has_plain & has_target, tl.cdiv(b, BLOCK_N), 0), n_diag)
    return lo, lo + n_cut * BLOCK_N, lo + n_diag * BLOCK_N, lo + n_blocks * BLOCK_N


@triton.jit
def _row_plan(n0, n1, b, t, seqlen, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr):
    """Rows visited by the key tile [n0, n1), in blocks of BLOCK_M from lo:
    (lo, diag_hi, full_hi, hi); blocks in [diag_hi, full_hi) need no mask. Causal: keys
    all before b are seen by rows < t only."""
    if not CAUSAL:  # every row of the sequence; only the last, partial block is masked
        return 0, 0, seqlen // BLOCK_M * BLOCK_M, tl.cdiv(seqlen, BLOCK_M) * BLOCK_M
    row_hi = tl.where(n1 <= b, t, seqlen)
    full_hi = tl.where(n0 < b, t, seqlen)
    n_blocks = tl.cdiv(row_hi - n0, BLOCK_M)
    n_diag = tl.minimum(tl.cdiv(BLOCK_N - 1, BLOCK_M), n_blocks)
    n_full = tl.maximum((full_hi - n0) // BLOCK_M, n_diag)
    return n0, n0 + n_diag * BLOCK_M, n0 + n_full * BLOCK_M, n0 + n_blocks * BLOCK_M


# The kernels' prologue is _find_tile, a return for a slot without a tile (before anything
# else is loaded: an early return keeps registers free on sm_90), then one of these two.
@triton.jit
def _query_tile(
    btok_start, target_start, i_s, i_m, n_m, seqlen, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr
):
    """The forward's and dQ's query tile ``i_m`` of sequence ``i_s`` and its key plan:
    ``(b, t, o_m, lo, cut_hi, full_hi, hi)``. Tiles run last first (they see the most keys)."""
    b = tl.load(btok_start + i_s)
    t = tl.load(target_start + i_s)
    q0 = (n_m - 1 - i_m) * BLOCK_M
    o_m = q0 + tl.arange(0, BLOCK_M)
    lo, cut_hi, full_hi, hi = _key_plan(q0, tl.minimum(q0 + BLOCK_M, seqlen), b, t, seqlen, BLOCK_N, CAUSAL)
    return b, t, o_m, lo, cut_hi, full_hi, hi


@triton.jit
def _key_tile(
    btok_start, target_start, i_s, i_n, seqlen, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr
):
    """The dK/dV key tile ``i_n`` of sequence ``i_s`` and its row plan:
    ``(b, t, o_n, lo, diag_hi, full_hi, hi)``."""
    b = tl.load(btok_start + i_s)
    t = tl.load(target_start + i_s)
    n0 = i_n * BLOCK_N
    o_n = n0 + tl.arange(0, BLOCK_N)
    lo, diag_hi, full_hi, hi = _row_plan(n0, tl.minimum(n0 + BLOCK_N, seqlen), b, t, seqlen, BLOCK_M, BLOCK_N, CAUSAL)
    return b, t, o_n, lo, diag_hi, full_hi, hi


@triton.jit
def _load_rows(p, o_r, seqlen, stride, MASK_ROWS: tl.constexpr, HEAD_DIM: tl.constexpr):
    """Rows ``o_r`` of one head as a ``[len(o_r), BLOCK_D]`` block. ``p`` ``[1, BLOCK_D]``
    points at the sequence's first row with the head-dim offsets added. Zeros past
    ``HEAD_DIM`` and, with ``MASK_ROWS``, past the sequence end."""
    o_d = tl.arange(0, p.shape[1])
    p_r = p + o_r[:, None].to(tl.int64) * stride
    if MASK_ROWS:
        return tl.load(p_r, mask=(o_r[:, None] < seqlen) & (o_d[None, :] < HEAD_DIM), other=0.0)
    if p.shape[1] != HEAD_DIM:
        return tl.load(p_r, mask=o_d[None, :] < HEAD_DIM, other=0.0)
    return tl.load(p_r)


@triton.jit
def _store_rows(p, o_r, seqlen, stride, value, HEAD_DIM: tl.constexpr):
    """Stores ``value`` into rows ``o_r`` of one head (``p`` as in :func:`_load_rows`),
    rows past the sequence end and columns past ``HEAD_DIM`` left out."""
    o_d = tl.arange(0, p.shape[1])
    m = (o_r[:, None] < seqlen) & (o_d[None, :] < HEAD_DIM)
    tl.store(p + o_r[:, None].to(tl.int64) * stride, value.to(p.dtype.element_ty), mask=m)


@triton.jit
def _load_row_stats(p, o_r, seqlen, MASK_ROWS: tl.constexpr):
    """Per-row fp32 values (LSE, delta) of rows ``o_r``; ``p`` points at the sequence's first row."""
    if MASK_ROWS:
        return tl.load(p + o_r, mask=o_r < seqlen, other=0.0)
    return tl.load(p + o_r)


# ----------------------------------------------------------------------------------------
# forward
# ----------------------------------------------------------------------------------------
@triton.jit
def _key_block_scores(
    b_q,
    p_k,
    p_v,
    stride_kt,
    stride_vt,
    qk_scale,
    seqlen,
    o_m,
    o_n,
    b,
    t,
    MASKED: tl.constexpr,
    CAUSAL: tl.constexpr,
    PRECISION: tl.constexpr,
    HEAD_DIM: tl.constexpr,
):
    """K and V of the key block ``o_n`` ([BLOCK_N, BLOCK_D] each) and the query tile's scaled
    scores against it ([BLOCK_M, BLOCK_N]), -inf where the mask hides a pair in a MASKED block.
    Shared by the forward and dQ so that both see exactly the same scores; masking before the
    exponent also keeps a hidden score far above a row's LSE from overflowing in dQ."""
    b_k = _load_rows(p_k, o_n, seqlen, stride_kt, MASKED, HEAD_DIM)
    b_v = _load_rows(p_v, o_n, seqlen, stride_vt, MASKED, HEAD_DIM)
    b_s = _dot(b_q, tl.trans(b_k), PRECISION) * qk_scale
    if MASKED:
        k_first, k_last = _key_range(o_m, seqlen, b, t, CAUSAL)  # recomputed here: fewer live registers
        m_s = (o_n[None, :] >= k_first[:, None]) & (o_n[None, :] <= k_last[:, None])
        b_s = tl.where(m_s, b_s, float("-inf"))
    return b_k, b_v, b_s


@triton.jit
def _fwd_inner(
    acc,
    l_i,
    m_i,
    b_q,
    p_k,
    p_v,
    stride_kt,
    stride_vt,
    qk_scale,
    seqlen,
    o_m,
    b,
    t,
    key_lo,
    key_hi,
    MASKED: tl.constexpr,
    CAUSAL: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
):
    """Online softmax of the query tile ``b_q`` over keys [key_lo, key_hi), a block of
    BLOCK_N at a time; scores in log2 units (``qk_scale`` includes log2(e)). MASKED blocks
    compare each key with the key range of each row ``o_m`` (:func:`_key_range` of the
    sequence's ``b``, ``t``)."""
    # counted loops: a strided range(key_lo, key_hi, BLOCK_N) costs registers (sm_90: dK/dV spills)
    for i_n in range(0, (key_hi - key_lo) // BLOCK_N):
        o_n = key_lo + i_n * BLOCK_N + tl.arange(0, BLOCK_N)
        _b_k, b_v, b_s = _key_block_scores(
            b_q, p_k, p_v, stride_kt, stride_vt, qk_scale, seqlen, o_m, o_n, b, t, MASKED, CAUSAL, PRECISION, HEAD_DIM
        )
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
        acc = acc * alpha[:, None] + _dot(b_p.to(b_v.dtype), b_v, PRECISION)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def condensation_fwd_kernel(
    Q,
    K,
    V,
    O,  # noqa: E741 (the kernels name their tensors Q, K, V, O, LSE; the AOT build reads these names)
    LSE,
    cu_seqlens,
    btok_start,
    target_start,
    n_seqs,
    qk_scale,
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_ot,
    stride_oh,
    stride_lse_h,
    G: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
    CAUSAL: tl.constexpr,
):
    """One program per (query tile, query head). O [T, Hq, D]; LSE fp32 [Hq, T], natural log."""
    i_s, i_m, n_m, bos, seqlen = _find_tile(cu_seqlens, n_seqs, tl.program_id(0), BLOCK_M)
    if i_m >= n_m:
        return
    b, t, o_m, lo, cut_hi, full_hi, hi = _query_tile(
        btok_start, target_start, i_s, i_m, n_m, seqlen, BLOCK_M, BLOCK_N, CAUSAL
    )
    i_h = tl.program_id(1)
    o_d = tl.arange(0, BLOCK_D)
    p_q = Q + bos.to(tl.int64) * stride_qt + i_h * stride_qh + o_d[None, :]
    p_k = K + bos.to(tl.int64) * stride_kt + (i_h // G) * stride_kh + o_d[None, :]
    p_v = V + bos.to(tl.int64) * stride_vt + (i_h // G) * stride_vh + o_d[None, :]
    b_q = _load_rows(p_q, o_m, seqlen, stride_qt, True, HEAD_DIM)  # [BLOCK_M, BLOCK_D]

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    kv = (p_k, p_v, stride_kt, stride_vt, qk_scale, seqlen, o_m, b, t)
    acc, l_i, m_i = _fwd_inner(
        acc,
        l_i,
        m_i,
        b_q,
        *kv,
        lo,
        cut_hi,
        MASKED=True,
        CAUSAL=CAUSAL,
        PRECISION=PRECISION,
        BLOCK_N=BLOCK_N,
        HEAD_DIM=HEAD_DIM,
    )
    acc, l_i, m_i = _fwd_inner(
        acc,
        l_i,
        m_i,
        b_q,
        *kv,
        cut_hi,
        full_hi,
        MASKED=False,
        CAUSAL=CAUSAL,
        PRECISION=PRECISION,
        BLOCK_N=BLOCK_N,
        HEAD_DIM=HEAD_DIM,
    )
    acc, l_i, m_i = _fwd_inner(
        acc,
        l_i,
        m_i,
        b_q,
        *kv,
        full_hi,
        hi,
        MASKED=True,
        CAUSAL=CAUSAL,
        PRECISION=PRECISION,
        BLOCK_N=BLOCK_N,
        HEAD_DIM=HEAD_DIM,
    )

    # every row of the sequence sees at least itself: l > 0; rows past its end are not stored
    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    p_o = O + bos.to(tl.int64) * stride_ot + i_h * stride_oh + o_d[None, :]
    _store_rows(p_o, o_m, seqlen, stride_ot, acc / l_safe[:, None], HEAD_DIM)
    b_lse = (m_i + tl.math.log2(l_safe)) * LN2  # natural log
    tl.store(LSE + i_h.to(tl.int64) * stride_lse_h + bos + o_m, b_lse, mask=o_m < seqlen)


# ----------------------------------------------------------------------------------------
# backward
# ----------------------------------------------------------------------------------------
@triton.jit
def condensation_bwd_preprocess_kernel(
    O,  # noqa: E741 (the output tensor, named as in the other kernels)
    DO,
    DELTA,
    total,
    stride_ot,
    stride_oh,
    stride_dot,
    stride_doh,
    stride_delta_h,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    """delta = rowsum(dO * O), fp32 [Hq, T]."""
    i_m, i_h = tl.program_id(0), tl.program_id(1)
    o_m = i_m * BLOCK_M + tl.arange(0, BLOCK_M)
    o_d = tl.arange(0, BLOCK_D)
    b_o = _load_rows(O + i_h * stride_oh + o_d[None, :], o_m, total, stride_ot, True, HEAD_DIM)
    b_do = _load_rows(DO + i_h * stride_doh + o_d[None, :], o_m, total, stride_dot, True, HEAD_DIM)
    b_delta = tl.sum(b_o.to(tl.float32) * b_do.to(tl.float32), 1)
    tl.store(DELTA + i_h.to(tl.int64) * stride_delta_h + o_m, b_delta, mask=o_m < total)


@triton.jit
def _dkdv_inner(
    b_dk,
    b_dv,
    b_k,
    b_v,
    p_q,
    stride_qt,
    p_do,
    p_dq,
    stride_dot,
    p_lse,
    p_delta,
    sm_scale,
    seqlen,
    o_n,
    b,
    t,
    row_lo,
    row_hi,
    MASKED: tl.constexpr,
    CAUSAL: tl.constexpr,
    PRECISION: tl.constexpr,
    FUSED_DQ: tl.constexpr,
    BLOCK_M: tl.constexpr,
    HEAD_DIM: tl.constexpr,
):
    """dK and dV of the key tile (``b_k``, ``b_v``) summed over rows [row_lo, row_hi) of one
    query head, a block of BLOCK_M rows at a time, transposed ([keys, rows]) so the sums
    run along the rows. MASKED blocks compare each row with the row range of each key
    ``o_n`` (:func:`_row_range`). FUSED_DQ: also add each block's share of dQ into the fp32
    accumulator at ``p_dq`` (same strides as dO) with atomics."""
    qk_scale = sm_scale * LOG2E
    # counted loops: a strided range(row_lo, row_hi, BLOCK_M) costs registers (sm_90: dK/dV spills)
    for i_m in range(0, (row_hi - row_lo) // BLOCK_M):
        o_m = row_lo + i_m * BLOCK_M + tl.arange(0, BLOCK_M)
        b_q = _load_rows(p_q, o_m, seqlen, stride_qt, MASKED, HEAD_DIM)  # [BLOCK_M, BLOCK_D]
        b_do = _load_rows(p_do, o_m, seqlen, stride_dot, MASKED, HEAD_DIM)
        b_lse = _load_row_stats(p_lse, o_m, seqlen, MASKED)  # [BLOCK_M], natural log
        b_delta = _load_row_stats(p_delta, o_m, seqlen, MASKED)
        b_sT = _dot(b_k, tl.trans(b_q), PRECISION) * qk_scale  # [BLOCK_N, BLOCK_M]
        if MASKED:
            # masked before the exponent: a hidden score far above the row's LSE would overflow
            r_first, r_last = _row_range(o_n, seqlen, b, t, CAUSAL)  # recomputed: fewer live registers
            m_sT = (o_m[None, :] >= r_first[:, None]) & (o_m[None, :] <= r_last[:, None])
            b_sT = tl.where(m_sT, b_sT, float("-inf"))
        b_pT = tl.math.exp2(b_sT - b_lse[None, :] * LOG2E)
        b_dv += _dot(b_pT.to(b_do.dtype), b_do, PRECISION)
        b_dpT = _dot(b_v, tl.trans(b_do), PRECISION)  # [BLOCK_N, BLOCK_M]
        b_dsT = b_pT * (b_dpT - b_delta[None, :])
        b_dk += _dot(b_dsT.to(b_q.dtype), b_q, PRECISION)
        if FUSED_DQ:
            # this key tile's share of dQ for these rows; other key tiles add theirs
            b_dq = _dot(tl.trans(b_dsT.to(b_k.dtype)), b_k, PRECISION) * sm_scale  # [BLOCK_M, BLOCK_D]
            o_d = tl.arange(0, p_dq.shape[1])
            m_dq = (o_m[:, None] < seqlen) & (o_d[None, :] < HEAD_DIM)
            tl.atomic_add(p_dq + o_m[:, None].to(tl.int64) * stride_dot, b_dq, mask=m_dq)
    return b_dk, b_dv


@triton.jit
def condensation_bwd_dkdv_kernel(
    Q,
    K,
    V,
    DO,
    LSE,
    DELTA,
    DK,
    DV,
    DQ_ACC,
    cu_seqlens,
    btok_start,
    target_start,
    n_seqs,
    sm_scale,
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_dot,
    stride_doh,
    stride_dkt,
    stride_dkh,
    stride_dvt,
    stride_dvh,
    stride_lse_h,
    G: tl.constexpr,
    HEADS: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
    FUSED_DQ: tl.constexpr,
    CAUSAL: tl.constexpr,
):
    """One program per (key tile, group of HEADS query heads sharing one KV head): sums dK,
    dV over those heads and over the row blocks that see the tile. No atomics.

    HEADS == G: one program per KV head, DK/DV are the [T, Hkv, D] results. HEADS < G (few
    key tiles, long sequences): G // HEADS programs share a KV head and each writes its
    partial sums to DK/DV of shape [T, Hq // HEADS, D], reduced by the launcher.

    FUSED_DQ: also add each block's dQ share into the fp32 DQ_ACC (dO's shape and strides)
    with atomics (5 matmuls per block pair instead of the 7 of a separate dQ kernel)."""
    i_s, i_n, n_n, bos, seqlen = _find_tile(cu_seqlens, n_seqs, tl.program_id(0), BLOCK_N)
    if i_n >= n_n:
        return
    b, t, o_n, lo, diag_hi, full_hi, hi = _key_tile(
        btok_start, target_start, i_s, i_n, seqlen, BLOCK_M, BLOCK_N, CAUSAL
    )
    i_hg = tl.program_id(1)
    i_kvh = (i_hg * HEADS) // G
    o_d = tl.arange(0, BLOCK_D)
    p_k = K + bos.to(tl.int64) * stride_kt + i_kvh * stride_kh + o_d[None, :]
    p_v = V + bos.to(tl.int64) * stride_vt + i_kvh * stride_vh + o_d[None, :]
    b_k = _load_rows(p_k, o_n, seqlen, stride_kt, True, HEAD_DIM)  # [BLOCK_N, BLOCK_D]
    b_v = _load_rows(p_v, o_n, seqlen, stride_vt, True, HEAD_DIM)
    b_dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    b_dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)

    for g in range(0, HEADS):
        i_h = i_hg * HEADS + g
        p_q = Q + bos.to(tl.int64) * stride_qt + i_h * stride_qh + o_d[None, :]
        p_do = DO + bos.to(tl.int64) * stride_dot + i_h * stride_doh + o_d[None, :]
        p_dq = DQ_ACC + bos.to(tl.int64) * stride_dot + i_h * stride_doh + o_d[None, :]
        p_lse = LSE + i_h.to(tl.int64) * stride_lse_h + bos
        p_delta = DELTA + i_h.to(tl.int64) * stride_lse_h + bos
        rows = (p_q, stride_qt, p_do, p_dq, stride_dot, p_lse, p_delta, sm_scale, seqlen, o_n, b, t)
        b_dk, b_dv = _dkdv_inner(
            b_dk,
            b_dv,
            b_k,
            b_v,
            *rows,
            lo,
            diag_hi,
            MASKED=True,
            CAUSAL=CAUSAL,
            PRECISION=PRECISION,
            FUSED_DQ=FUSED_DQ,
            BLOCK_M=BLOCK_M,
            HEAD_DIM=HEAD_DIM,
        )
        b_dk, b_dv = _dkdv_inner(
            b_dk,
            b_dv,
            b_k,
            b_v,
            *rows,
            diag_hi,
            full_hi,
            MASKED=False,
            CAUSAL=CAUSAL,
            PRECISION=PRECISION,
            FUSED_DQ=FUSED_DQ,
            BLOCK_M=BLOCK_M,
            HEAD_DIM=HEAD_DIM,
        )
        b_dk, b_dv = _dkdv_inner(
            b_dk,
            b_dv,
            b_k,
            b_v,
            *rows,
            full_hi,
            hi,
            MASKED=True,
            CAUSAL=CAUSAL,
            PRECISION=PRECISION,
            FUSED_DQ=FUSED_DQ,
            BLOCK_M=BLOCK_M,
            HEAD_DIM=HEAD_DIM,
        )

    p_dk = DK + bos.to(tl.int64) * stride_dkt + i_hg * stride_dkh + o_d[None, :]
    p_dv = DV + bos.to(tl.int64) * stride_dvt + i_hg * stride_dvh + o_d[None, :]
    _store_rows(p_dk, o_n, seqlen, stride_dkt, b_dk * sm_scale, HEAD_DIM)
    _store_rows(p_dv, o_n, seqlen, stride_dvt, b_dv, HEAD_DIM)


@triton.jit
def _dq_inner(
    b_dq,
    b_q,
    b_do,
    b_lse,
    b_delta,
    p_k,
    p_v,
    stride_kt,
    stride_vt,
    qk_scale,
    seqlen,
    o_m,
    b,
    t,
    key_lo,
    key_hi,
    MASKED: tl.constexpr,
    CAUSAL: tl.constexpr,
    PRECISION: tl.constexpr,
    BLOCK_N: tl.constexpr,
    HEAD_DIM: tl.constexpr,
):
    """dQ of the query tile summed over keys [key_lo, key_hi), as :func:`_fwd_inner` visits
    and masks them; ``b_lse`` is in log2 units."""
    # counted loops: a strided range(key_lo, key_hi, BLOCK_N) costs registers (sm_90: dK/dV spills)
    for i_n in range(0, (key_hi - key_lo) // BLOCK_N):
        o_n = key_lo + i_n * BLOCK_N + tl.arange(0, BLOCK_N)
        b_k, b_v, b_s = _key_block_scores(
            b_q, p_k, p_v, stride_kt, stride_vt, qk_scale, seqlen, o_m, o_n, b, t, MASKED, CAUSAL, PRECISION, HEAD_DIM
        )
        b_p = tl.math.exp2(b_s - b_lse[:, None])
        b_dp = _dot(b_do, tl.trans(b_v), PRECISION)  # [BLOCK_M, BLOCK_N]
        b_ds = b_p * (b_dp - b_delta[:, None])
        b_dq += _dot(b_ds.to(b_k.dtype), b_k, PRECISION)
    return b_dq


@triton.jit
def condensation_bwd_dq_kernel(
    Q,
    K,
    V,
    DO,
    LSE,
    DELTA,
    DQ,
    cu_seqlens,
    btok_start,
    target_start,
    n_seqs,
    sm_scale,
    stride_qt,
    stride_qh,
    stride_kt,
    stride_kh,
    stride_vt,
    stride_vh,
    stride_dot,
    stride_doh,
    stride_dqt,
    stride_dqh,
    stride_lse_h,
    G: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    PRECISION: tl.constexpr,
    CAUSAL: tl.constexpr,
):
    """One program per (query tile, query head), visiting the same key blocks as the forward."""
    i_s, i_m, n_m, bos, seqlen = _find_tile(cu_seqlens, n_seqs, tl.program_id(0), BLOCK_M)
    if i_m >= n_m:
        return
    b, t, o_m, lo, cut_hi, full_hi, hi = _query_tile(
        btok_start, target_start, i_s, i_m, n_m, seqlen, BLOCK_M, BLOCK_N, CAUSAL
    )
    i_h = tl.program_id(1)
    o_d = tl.arange(0, BLOCK_D)
    p_q = Q + bos.to(tl.int64) * stride_qt + i_h * stride_qh + o_d[None, :]
    p_do = DO + bos.to(tl.int64) * stride_dot + i_h * stride_doh + o_d[None, :]
    p_k = K + bos.to(tl.int64) * stride_kt + (i_h // G) * stride_kh + o_d[None, :]
    p_v = V + bos.to(tl.int64) * stride_vt + (i_h // G) * stride_vh + o_d[None, :]
    b_q = _load_rows(p_q, o_m, seqlen, stride_qt, True, HEAD_DIM)  # [BLOCK_M, BLOCK_D]
    b_do = _load_rows(p_do, o_m, seqlen, stride_dot, True, HEAD_DIM)
    b_lse = _load_row_stats(LSE + i_h.to(tl.int64) * stride_lse_h + bos, o_m, seqlen, True) * LOG2E
    b_delta = _load_row_stats(DELTA + i_h.to(tl.int64) * stride_lse_h + bos, o_m, seqlen, True)
    b_dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    tile = (b_q, b_do, b_lse, b_delta, p_k, p_v, stride_kt, stride_vt, sm_scale * LOG2E, seqlen, o_m, b, t)
    b_dq = _dq_inner(
        b_dq, *tile, lo, cut_hi, MASKED=True, CAUSAL=CAUSAL, PRECISION=PRECISION, BLOCK_N=BLOCK_N, HEAD_DIM=HEAD_DIM
    )
    b_dq = _dq_inner(
        b_dq,
        *tile,
        cut_hi,
        full_hi,
        MASKED=False,
        CAUSAL=CAUSAL,
        PRECISION=PRECISION,
        BLOCK_N=BLOCK_N,
        HEAD_DIM=HEAD_DIM,
    )
    b_dq = _dq_inner(
        b_dq, *tile, full_hi, hi, MASKED=True, CAUSAL=CAUSAL, PRECISION=PRECISION, BLOCK_N=BLOCK_N, HEAD_DIM=HEAD_DIM
    )

    p_dq = DQ + bos.to(tl.int64) * stride_dqt + i_h * stride_dqh + o_d[None, :]
    _store_rows(p_dq, o_m, seqlen, stride_dqt, b_dq * sm_scale, HEAD_DIM)


# ----------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------
def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def dot_precision(dtype: torch.dtype, interpreting: bool | None = None) -> str:
    """The kernels' ``PRECISION``: "ieee" for fp32 inputs (exact dots, no TF32), "tf32" for
    fp16/bf16 (which run on tensor cores whatever it says), "upcast" for bf16 under the
    interpreter (see ``_dot``)."""
    if interpreting is None:
        interpreting = _interpreting()
    if interpreting and dtype == torch.bfloat16:
        return "upcast"
    return "ieee" if dtype == torch.float32 else "tf32"


def _block_d(head_dim: int) -> int:
    return max(16, triton.next_power_of_2(head_dim))


@functools.cache
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
# register spills with Triton 3.6 and 3.9, head dims 64/80/128/256, causal and
# bidirectional), not yet from timings; autotune=True times the candidates below instead.
_DEFAULTS = {
    64: (_launch(128, 64, 8, 3), _launch(32, 128, 8, 2), _launch(128, 32, 8, 2)),
    128: (_launch(128, 64, 8, 2), _launch(16, 128, 8, 2), _launch(128, 32, 8, 2)),
    256: (_launch(64, 32, 8, 2), _launch(32, 32, 8, 1), _launch(32, 16, 4, 1)),
}
# fp32 runs the dots in IEEE precision (no tensor cores): smaller tiles
_DEFAULTS_FP32 = {
    64: (_launch(64, 32, 8, 2), _launch(32, 32, 8, 1), _launch(64, 32, 8, 2)),
    128: (_launch(32, 16, 8, 2), _launch(16, 64, 8, 2), _launch(32, 16, 8, 2)),
    256: (_launch(32, 16, 8, 1), _launch(16, 16, 4, 1), _launch(32, 16, 4, 1)),
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


@functools.cache
def autotuned_kernel(name: str, bucket: tuple[int, int]):
    """Kernel ``name`` ("fwd", "dkdv", "dq") wrapped in a Triton autotuner for packs of one
    :func:`shape_bucket`: it times its candidate tiles on its first launch for each (head
    dim, GQA group, dtypes, ...) and keeps the fastest. Tiles tuned on a short pack are not
    reused for a long one: each bucket has its own tuner."""
    reset = ["DQ_ACC"] if name == "dkdv" else None  # timing runs add into the fused-dQ accumulator
    return triton.autotune(
        configs=_candidates(_TUNE_CANDIDATES[name]),
        key=_TUNE_KEYS[name],
        reset_to_zero=reset,
        prune_configs_by={"early_config_prune": _prune_large_tiles},
        do_bench=_wall_clock if _interpreting() else None,
    )(_FIXED[name])


def _kernel_and_meta(
    name: str, head_dim: int, dtype: torch.dtype, bucket: tuple[int, int], autotune: bool, tiles: dict | None
):
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
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    btok_start: torch.Tensor,
    target_start: torch.Tensor,
    softmax_scale: float,
    *,
    causal: bool = True,
    autotune: bool = False,
    tiles: dict | None = None,
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
    kernel, meta = _kernel_and_meta("fwd", head_dim, q.dtype, shape_bucket(total, n_seqs), autotune, tiles)
    kernel[lambda m: (total // m["BLOCK_M"] + n_seqs, hq)](
        q,
        k,
        v,
        out,
        lse,
        cu_seqlens,
        btok_start,
        target_start,
        n_seqs,
        softmax_scale * LOG2E.value,
        q.stride(0),
        q.stride(1),
        k.stride(0),
        k.stride(1),
        v.stride(0),
        v.stride(1),
        out.stride(0),
        out.stride(1),
        lse.stride(0),
        G=hq // hkv,
        HEAD_DIM=head_dim,
        BLOCK_D=_block_d(head_dim),
        PRECISION=dot_precision(q.dtype),
        CAUSAL=causal,
        **meta,
    )
    return out, lse


def condensation_bwd_triton(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    cu_seqlens: torch.Tensor,
    btok_start: torch.Tensor,
    target_start: torch.Tensor,
    softmax_scale: float,
    *,
    causal: bool = True,
    autotune: bool = False,
    tiles: dict | None = None,
    gqa_split: int | None = None,
    fused_dq: bool = False,
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
    do = do.contiguous()  # the fused-dQ accumulator shares its strides
    block_d = _block_d(head_dim)
    delta = torch.empty_like(lse)
    pre_m = 16 if _interpreting() else 64
    condensation_bwd_preprocess_kernel[(triton.cdiv(total, pre_m), hq)](
        out,
        do,
        delta,
        total,
        out.stride(0),
        out.stride(1),
        do.stride(0),
        do.stride(1),
        delta.stride(0),
        HEAD_DIM=head_dim,
        BLOCK_D=block_d,
        BLOCK_M=pre_m,
    )
    common = dict(G=group, HEAD_DIM=head_dim, BLOCK_D=block_d, PRECISION=dot_precision(q.dtype), CAUSAL=causal)

    bucket = shape_bucket(total, n_seqs)
    kernel, meta = _kernel_and_meta("dkdv", head_dim, q.dtype, bucket, autotune, tiles)
    if gqa_split is None:
        # the autotuner picks BLOCK_N later; count programs with the default tile then
        key_tile = meta.get("BLOCK_N") or default_configs(head_dim, q.dtype)["dkdv"]["BLOCK_N"]
        gqa_split = choose_gqa_split((total // key_tile + n_seqs) * hkv, group, q.device)
    if group % gqa_split != 0:
        raise ValueError(f"gqa_split={gqa_split} must divide the GQA group size {group}")
    dq_acc = torch.zeros_like(do, dtype=torch.float32) if fused_dq else dq
    if gqa_split == 1:
        dk_acc, dv_acc = dk, dv
    else:  # fp32 partial sums, one slot per program sharing a KV head
        dk_acc = torch.empty(total, hkv * gqa_split, head_dim, dtype=torch.float32, device=q.device)
        dv_acc = torch.empty_like(dk_acc)
    kernel[lambda m: (total // m["BLOCK_N"] + n_seqs, hkv * gqa_split)](
        q,
        k,
        v,
        do,
        lse,
        delta,
        dk_acc,
        dv_acc,
        dq_acc,
        cu_seqlens,
        btok_start,
        target_start,
        n_seqs,
        softmax_scale,
        q.stride(0),
        q.stride(1),
        k.stride(0),
        k.stride(1),
        v.stride(0),
        v.stride(1),
        do.stride(0),
        do.stride(1),
        dk_acc.stride(0),
        dk_acc.stride(1),
        dv_acc.stride(0),
        dv_acc.stride(1),
        lse.stride(0),
        HEADS=group // gqa_split,
        FUSED_DQ=fused_dq,
        **common,
        **meta,
    )
    if gqa_split > 1:
        dk.copy_(dk_acc.view(total, hkv, gqa_split, head_dim).sum(2))
        dv.copy_(dv_acc.view(total, hkv, gqa_split, head_dim).sum(2))

    if fused_dq:
        dq.copy_(dq_acc)
        return dq, dk, dv
    kernel, meta = _kernel_and_meta("dq", head_dim, q.dtype, bucket, autotune, tiles)
    kernel[lambda m: (total // m["BLOCK_M"] + n_seqs, hq)](
        q,
        k,
        v,
        do,
        lse,
        delta,
        dq,
        cu_seqlens,
        btok_start,
        target_start,
        n_seqs,
        softmax_scale,
        q.stride(0),
        q.stride(1),
        k.stride(0),
        k.stride(1),
        v.stride(0),
        v.stride(1),
        do.stride(0),
        do.stride(1),
        dq.stride(0),
        dq.stride(1),
        lse.stride(0),
        **common,
        **meta,
    )
    return dq, dk, dv
