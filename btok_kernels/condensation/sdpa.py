"""Exact condensation attention from causal attention calls (backend ``"sdpa"``).

The condensation mask of one sequence (``b`` = BTok start, ``t`` = target start, ``L`` its
length) splits into two causal problems, and every row belongs to exactly one of them::

    keys:            q q q B B t t        head segment: rows [0, t) over keys [0, t), causal
    query  row 0:    x . . . . . .
           row 2:    x x x . . . .        tail segment: rows [t, L) over keys [b, L), causal
    BTok   row 3:    x x x x . . .        aligned bottom-right (row t sees keys [b, t]), i.e.
           row 4:    x x x x x . .        causal attention over the slice [b, L) whose first
    target row 5:    . . . x x x .        t - b rows (the BTok rows, computed twice) are
           row 6:    . . . x x x x        dropped

A sequence with ``b == 0`` or ``t == L`` is one causal segment; a bidirectional layout
(``layout.is_causal`` False) gives one non-causal segment per sequence. Dropping rows costs
``K^2 / 2`` extra pairs per sequence (``K = t - b``). The BTok keys and values get gradients
from both segments.

Two ways to run the segments, neither with a dense mask:

- padded batches (CPU, and CUDA without flash-attn): segments of similar length are
  gathered into ``[n, H, Lmax, D]`` batches. Causal attention is top-left aligned, so a real
  row never sees the padding after it and padding is exact (non-causal segments are batched
  with equal lengths only). On the CPU, PyTorch's CPU flash kernel runs them in chunks of
  query rows, inside one autograd node for the whole pack, in fp32 for fp16/bf16 inputs (its
  backward is much slower in bf16); on CUDA, SDPA with plain autograd. GQA runs without
  repeating K/V.
- flash-attn varlen (CUDA, when ``flash_attn.cute``, ``flash_attn_interface`` or
  ``flash_attn`` imports): one call over all segments with separate query and key offsets
  and bottom-right causal alignment, so the query rows stay in packed order, no row is
  computed twice and only K/V are gathered.

The plans (index tensors) are built once per layout and device and cached with the layout.
"""

from __future__ import annotations

import importlib
import inspect
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..layout import CondensationLayout

__all__ = [
    "condensation_attention_sdpa",
    "segments",
    "padded_plan",
    "varlen_plan",
    "find_flash_varlen",
    "chunk_rows",
    "ROUTES",
]

# A segment joins a padded batch when the work its padding adds costs less than one more
# batch (gathers, kernel calls, scatters): measured on a 2-core CPU, see benchmarks/README.md.
# In multiply-adds: padded pairs x 2 x Hq x D.
CALL_COST_MACS = 50_000

# a causal segment runs in chunks from this many chunks on (below, the saved pairs do not pay
# for the extra calls); measured with the chunk size, benchmarks/README.md
MIN_CHUNKS = 2

# flash-attn builds, best first: FA4 (CuTe DSL), FA3 (Hopper), FA2
FLASH_VARLEN_MODULES = ("flash_attn.cute", "flash_attn_interface", "flash_attn")


# ----------------------------------------------------------------------------------------
# segments and plans (host integers -> index tensors, once per layout)
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Segment:
    """Attention over packed rows ``[start, start + length)`` (causal: top-left aligned; else
    every row sees every key of the segment). Its first ``drop`` rows are not outputs: they
    belong to the other segment of the sequence."""

    start: int
    length: int
    drop: int = 0
    causal: bool = True

    @property
    def kept(self) -> int:
        return self.length - self.drop


def segments(layout: CondensationLayout) -> list[Segment]:
    """The segments of ``layout`` in packed order: the kept rows of the segments, in order,
    are the packed rows ``0 .. total_tokens - 1``. Empty sequences give none."""
    causal = layout.is_causal
    out = []
    for a, length, b, t in zip(
        layout.host_cu_seqlens, layout.seqlens, layout.host_btok_start, layout.host_target_start
    ):
        if length == 0:
            continue
        if not causal or b == 0 or t == length:
            out.append(Segment(a, length, causal=causal))
        else:
            out.append(Segment(a, t))
            out.append(Segment(a + b, length - b, drop=t - b))
    return out


@dataclass(frozen=True)
class Bucket:
    """``count`` segments padded to ``length`` rows, run as one ``[count, H, length, D]``
    batch. ``rows`` (``[count * length]``) are the packed rows gathered into the batch
    (padding repeats a segment's last row); the batch rows ``kept`` are outputs, and
    ``dest`` their packed rows. Each is an int64 tensor, or a ``slice`` when the bucket is
    one unpadded segment (no copy)."""

    length: int
    count: int
    causal: bool
    rows: torch.Tensor | slice
    kept: torch.Tensor | slice
    dest: torch.Tensor | slice


@dataclass(frozen=True)
class PaddedPlan:
    """The buckets, and ``order`` (int64 ``[total_tokens]``, or ``None`` for the identity):
    the packed output is the buckets' kept rows, concatenated, then ``index_select(order)``."""

    buckets: tuple[Bucket, ...]
    order: torch.Tensor | None


def _group(segs: list[Segment], width: int) -> list[list[int]]:
    """Segment ids grouped into padded batches, longest first. A causal segment joins the
    current batch when padding it to the batch's length ``top`` adds at most
    :data:`CALL_COST_MACS`: the kernel computes the padded ``top x top`` square (up to its
    chunks), ``top^2 - len^2`` more pairs of ``2 x width`` multiply-adds. A non-causal
    segment would see the padding keys: it joins only a batch of its own length."""
    order = sorted(range(len(segs)), key=lambda i: (not segs[i].causal, -segs[i].length))
    groups: list[list[int]] = []
    for i in order:
        if groups:
            head, s = segs[groups[-1][0]], segs[i]
            if head.causal == s.causal and (
                head.length == s.length or (s.causal and (head.length**2 - s.length**2) * width * 2 <= CALL_COST_MACS)
            ):
                groups[-1].append(i)
                continue
        groups.append([i])
    return groups


def padded_plan(layout: CondensationLayout, width: int) -> PaddedPlan:
    """The padded batches of ``layout``'s segments for ``width = Hq * D``, on its device."""
    segs = segments(layout)
    groups = _group(segs, width)
    # every padded row of every batch at once: its segment, and its row within the segment
    ids = [i for g in groups for i in g]
    tops = [segs[g[0]].length for g in groups for _ in g]
    start, length, drop = (
        torch.tensor([getattr(segs[i], f) for i in ids], dtype=torch.long) for f in ("start", "length", "drop")
    )
    first = torch.tensor([0, *tops], dtype=torch.long).cumsum(0)  # first padded row of each segment
    member = torch.repeat_interleave(torch.arange(len(ids)), torch.tensor(tops, dtype=torch.long))
    step = torch.arange(int(first[-1])) - first[member]
    rows = start[member] + torch.minimum(step, length[member] - 1)  # padding repeats the last row
    is_kept = (step >= drop[member]) & (step < length[member])
    kept_at = is_kept.nonzero()[:, 0]
    dest = (start[member] + step)[is_kept]
    device = layout.device

    def dev(x: torch.Tensor) -> torch.Tensor:
        return x.to(device, non_blocking=True)

    buckets, seg0 = [], 0
    for g in groups:
        top, head = tops[seg0], segs[g[0]]
        if len(g) == 1:  # one segment, no padding: slices, no gather
            bucket = Bucket(
                top,
                1,
                head.causal,
                slice(head.start, head.start + top),
                slice(head.drop, top),
                slice(head.start + head.drop, head.start + top),
            )
        else:
            lo, hi = int(first[seg0]), int(first[seg0 + len(g)])
            k_lo, k_hi = (int(x) for x in torch.searchsorted(kept_at, torch.tensor([lo, hi])))
            bucket = Bucket(
                top, len(g), head.causal, dev(rows[lo:hi]), dev(kept_at[k_lo:k_hi] - lo), dev(dest[k_lo:k_hi])
            )
        buckets.append(bucket)
        seg0 += len(g)
    order = None
    if not torch.equal(dest, torch.arange(dest.numel())):
        order = dev(torch.empty_like(dest).scatter_(0, dest, torch.arange(dest.numel())))
    return PaddedPlan(tuple(buckets), order)


@dataclass(frozen=True)
class VarlenPlan:
    """flash-attn varlen arguments over the segments: the query rows are the packed rows in
    order, ``key_rows`` (int64) gathers each segment's keys; int32 offsets."""

    cu_seqlens_q: torch.Tensor
    cu_seqlens_k: torch.Tensor
    key_rows: torch.Tensor
    max_seqlen_q: int
    max_seqlen_k: int
    causal: bool


def varlen_plan(layout: CondensationLayout) -> VarlenPlan:
    """Each sequence as query+BTok rows ``[0, t)`` causal over keys ``[0, t)`` and target
    rows ``[t, L)`` bottom-right causal over keys ``[b, L)`` (flash-attn >= 2.1 aligns a
    causal mask bottom-right when a segment has more keys than queries)."""
    segs = segments(layout)
    q_lens = torch.tensor([s.kept for s in segs], dtype=torch.long)
    k_lens = torch.tensor([s.length for s in segs], dtype=torch.long)
    k_starts = torch.tensor([s.start for s in segs], dtype=torch.long)
    zero = torch.zeros(1, dtype=torch.long)
    cu_q, cu_k = torch.cat([zero, q_lens.cumsum(0)]), torch.cat([zero, k_lens.cumsum(0)])
    # row r of the gathered keys, in segment s: packed row k_starts[s] + (r - cu_k[s])
    key_rows = torch.arange(int(cu_k[-1])) + torch.repeat_interleave(k_starts - cu_k[:-1], k_lens)
    device = layout.device
    return VarlenPlan(
        cu_seqlens_q=cu_q.to(torch.int32).to(device, non_blocking=True),
        cu_seqlens_k=cu_k.to(torch.int32).to(device, non_blocking=True),
        key_rows=key_rows.to(device, non_blocking=True),
        max_seqlen_q=max((s.kept for s in segs), default=0),
        max_seqlen_k=max((s.length for s in segs), default=0),
        causal=layout.is_causal,
    )


# plans are pure functions of the layout: built once per layout (a model reuses one layout
# in every layer) and dropped with it
_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _cached(layout: CondensationLayout, key, build: Callable):
    per_layout = _PLANS.setdefault(layout, {})
    if key not in per_layout:
        per_layout[key] = build()
    return per_layout[key]


# ----------------------------------------------------------------------------------------
# rows in and out of the batches
# ----------------------------------------------------------------------------------------
def _take(x: torch.Tensor, rows: torch.Tensor | slice) -> torch.Tensor:
    """``x[rows]`` along dim 0: a view for a slice, a row copy (``index_select``) otherwise."""
    return x[rows] if isinstance(rows, slice) else x.index_select(0, rows)


def _put(x: torch.Tensor, rows: torch.Tensor | slice, src: torch.Tensor) -> None:
    """``x[rows] = src`` along dim 0, in place."""
    if isinstance(rows, slice):
        x[rows] = src
    else:
        x.index_copy_(0, rows, src.to(x.dtype))


def _add(x: torch.Tensor, rows: torch.Tensor | slice, src: torch.Tensor) -> None:
    """``x[rows] += src`` along dim 0, in place (repeated rows add up)."""
    if isinstance(rows, slice):
        x[rows] += src
    else:
        x.index_add_(0, rows, src.to(x.dtype))


def _batched(x: torch.Tensor, bucket: Bucket) -> torch.Tensor:
    """Packed ``[T, H, D]`` -> the bucket's ``[count, H, length, D]`` (a view for a slice)."""
    return _take(x, bucket.rows).view(bucket.count, bucket.length, x.shape[1], x.shape[2]).transpose(1, 2)


def _flat(x: torch.Tensor) -> torch.Tensor:
    """``[count, H, length, D]`` -> ``[count * length, H, D]`` (a view when rows are contiguous)."""
    return x.transpose(1, 2).reshape(-1, x.shape[1], x.shape[3])


# ----------------------------------------------------------------------------------------
# CPU: PyTorch's CPU flash kernel in chunks of query rows, one autograd node per pack
# ----------------------------------------------------------------------------------------
def chunk_rows(head_dim: int) -> int:
    """Query rows per chunk on the CPU: about 32 KiB of fp32 queries per head, a multiple of
    32 between 64 and 256 (measured on a 2-core CPU: benchmarks/README.md)."""
    return max(64, min(256, (8192 // head_dim) // 32 * 32))


def _merge_into(out, lse, o1, l1, o2, l2) -> None:
    """Writes the attention over the union of two disjoint key sets into ``out``
    ``[n, H, C, D]`` and ``lse`` ``[n, H, C]``, from the two partial outputs (each normalised
    over its own keys) and their log-sum-exps. The weight of part 1 is
    ``exp(l1 - logaddexp(l1, l2)) = sigmoid(l1 - l2)``; both are finite (every row sees a key
    in each part). Four element-wise ops, in the inputs' dtype (fp32 or fp64, as the CPU path
    computes: see :class:`_CpuSegments`)."""
    torch.logaddexp(l1, l2, out=lse)
    torch.lerp(o2, o1, torch.sigmoid(l1 - l2).unsqueeze(-1), out=out)


def _flash_fwd(q, k, v, scale: float, causal: bool, chunk: int):
    """Attention of ``[n, H, L, D]`` batches on the CPU (causal: top-left); returns ``out``
    ``[n, H, L, D]`` (rows contiguous) and ``lse`` ``[n, H, L]``.

    PyTorch's CPU flash kernel masks inside its key blocks (up to 512 keys) instead of
    skipping them, so below ~768 rows a causal call costs about what a non-causal one does.
    So causal segments of at least :data:`MIN_CHUNKS` chunks run in chunks: chunk
    ``[r0, r1)`` is a causal call over keys ``[r0, r1)`` and a non-causal one over keys
    ``[0, r0)``, merged by their log-sum-exps, which skips the pairs above the diagonal but
    for each chunk's own square."""
    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    n, h, length, _ = q.shape
    if not causal or length < MIN_CHUNKS * chunk:
        return flash(q, k, v, 0.0, causal, scale=scale)
    out = q.new_empty(n, length, h, v.shape[-1]).transpose(1, 2)
    lse = None
    for r0 in range(0, length, chunk):
        r1 = min(r0 + chunk, length)
        qc = q[:, :, r0:r1]
        o, lse_c = flash(qc, k[:, :, r0:r1], v[:, :, r0:r1], 0.0, True, scale=scale)
        if r0 == 0:
            lse = lse_c.new_empty(n, h, length)
            out[:, :, :r1] = o
            lse[:, :, :r1] = lse_c
        else:
            _merge_into(
                out[:, :, r0:r1],
                lse[:, :, r0:r1],
                *flash(qc, k[:, :, :r0], v[:, :, :r0], 0.0, False, scale=scale),
                o,
                lse_c,
            )
    return out, lse


def _flash_bwd(dout, q, k, v, out, lse, scale: float, causal: bool, chunk: int):
    """Gradients of :func:`_flash_fwd`. The kernel's backward on each piece, given the merged
    ``out`` and ``lse``, is that piece's exact share (as a flash backward splits over key
    blocks). ``dq`` in q's dtype; ``dk``, ``dv`` in the log-sum-exp's dtype."""
    backward = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward
    length = q.shape[2]
    acc = lse.dtype
    if not causal or length < MIN_CHUNKS * chunk:
        dq, dk, dv = backward(dout, q, k, v, out, lse, 0.0, causal, scale=scale)
        return dq, dk.to(acc), dv.to(acc)
    dq = q.new_empty(q.shape[0], length, q.shape[1], q.shape[3]).transpose(1, 2)
    dk = torch.zeros(k.shape, dtype=acc, device=k.device)
    dv = torch.zeros(v.shape, dtype=acc, device=v.device)
    for r0 in range(0, length, chunk):
        r1 = min(r0 + chunk, length)
        rows = (dout[:, :, r0:r1], q[:, :, r0:r1])
        stats = (out[:, :, r0:r1], lse[:, :, r0:r1])
        gq, gk, gv = backward(*rows, k[:, :, r0:r1], v[:, :, r0:r1], *stats, 0.0, True, scale=scale)
        dk[:, :, r0:r1] += gk
        dv[:, :, r0:r1] += gv
        if r0 == 0:
            dq[:, :, :r1] = gq
            continue
        gq_past, gk_past, gv_past = backward(*rows, k[:, :, :r0], v[:, :, :r0], *stats, 0.0, False, scale=scale)
        torch.add(gq, gq_past, out=dq[:, :, r0:r1])  # one rounding to q's dtype
        dk[:, :, :r0] += gk_past
        dv[:, :, :r0] += gv_past
    return dq, dk, dv


class _CpuSegments(torch.autograd.Function):
    """A padded plan on the CPU as one autograd node: gathers, runs and scatters every
    bucket without autograd, and keeps each bucket's padded output and log-sum-exp for the
    backward, which therefore sees exactly what the forward computed, padding included (one
    node: no per-bucket gradient buffer the size of the pack)."""

    @staticmethod
    def forward(ctx, q, k, v, plan: PaddedPlan, scale: float, need_lse: bool):
        # fp16/bf16 run in fp32: the CPU flash backward is 1.4-14x slower in bf16 than in fp32
        # (2-core CPU, segments of 16-1024 rows), and the casts cost far less.
        ctx.dtype = q.dtype
        if q.dtype in (torch.float16, torch.bfloat16):
            q, k, v = q.float(), k.float(), v.float()
        total, hq, _ = q.shape
        chunk = chunk_rows(q.shape[-1])
        out = q.new_empty(total, hq, v.shape[-1])
        lse = None
        saved = []
        for bucket in plan.buckets:
            ob, lb = _flash_fwd(*(_batched(x, bucket) for x in (q, k, v)), scale, bucket.causal, chunk)
            _put(out, bucket.dest, _take(_flat(ob), bucket.kept))
            if need_lse:
                if lse is None:
                    lse = lb.new_empty(total, hq)
                _put(lse, bucket.dest, _take(lb.transpose(1, 2).reshape(-1, hq), bucket.kept))
            saved += [ob, lb]
        ctx.save_for_backward(q, k, v, *saved)
        ctx.plan, ctx.scale, ctx.chunk = plan, scale, chunk
        lse = out.new_empty(0) if lse is None else lse.t()
        ctx.mark_non_differentiable(lse)
        return out.to(ctx.dtype), lse

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout, _dlse):
        q, k, v, *saved = ctx.saved_tensors
        acc = torch.float64 if q.dtype == torch.float64 else torch.float32
        dout = dout.to(q.dtype)
        if dout.stride(-1) != 1:
            dout = dout.contiguous()
        dq = torch.empty_like(q)  # every packed row is an output of exactly one bucket
        dk = torch.zeros(k.shape, dtype=acc, device=k.device)
        dv = torch.zeros(v.shape, dtype=acc, device=v.device)
        for bucket, ob, lb in zip(ctx.plan.buckets, saved[0::2], saved[1::2]):
            if isinstance(bucket.kept, slice) and bucket.kept == slice(0, bucket.length):  # every row an output
                dob = _batched(dout, bucket)
            else:
                dob = torch.zeros_like(ob)  # the rows this bucket does not output get no gradient
                _put(_flat(dob), bucket.kept, _take(dout, bucket.dest))
            gq, gk, gv = _flash_bwd(
                dob, *(_batched(x, bucket) for x in (q, k, v)), ob, lb, ctx.scale, bucket.causal, ctx.chunk
            )
            _put(dq, bucket.dest, _take(_flat(gq), bucket.kept))
            _add(dk, bucket.rows, _flat(gk))
            _add(dv, bucket.rows, _flat(gv))
        return dq.to(ctx.dtype), dk.to(ctx.dtype), dv.to(ctx.dtype), None, None, None


# ----------------------------------------------------------------------------------------
# CUDA: SDPA on the padded batches with plain autograd, or flash-attn varlen
# ----------------------------------------------------------------------------------------
def _sdpa(q, k, v, scale: float, causal: bool, need_lse: bool):
    """SDPA on ``[n, H, L, D]`` batches (GQA without repeating K/V), plain autograd; ``lse``
    ``[n, H, L]`` when asked (from the flash kernels, which return it), else None."""
    if not need_lse:
        gqa = k.shape[1] != q.shape[1]
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale, enable_gqa=gqa), None
    if q.device.type == "cpu":
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, causal, scale=scale)
    if q.dtype not in (torch.float16, torch.bfloat16):
        # of SDPA's CUDA kernels only flash attention returns the log-sum-exp, in fp16/bf16 only
        raise NotImplementedError(
            f"backend='sdpa' on {q.device.type} returns the log-sum-exp for fp16/bf16 only (flash attention), "
            f"got {q.dtype}; use backend='triton' or 'reference' for return_lse=True"
        )
    return torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, causal, False, scale=scale)[:2]


def _padded_autograd(q, k, v, plan: PaddedPlan, scale: float, need_lse: bool):
    hq = q.shape[1]
    outs, lses = [], []
    for bucket in plan.buckets:
        ob, lb = _sdpa(*(_batched(x, bucket) for x in (q, k, v)), scale, bucket.causal, need_lse)
        outs.append(_take(_flat(ob), bucket.kept))
        if need_lse:
            lses.append(_take(lb.transpose(1, 2).reshape(-1, hq), bucket.kept))
    out = torch.cat(outs) if len(outs) > 1 else outs[0]
    lse = (torch.cat(lses) if len(lses) > 1 else lses[0]) if need_lse else None
    if plan.order is not None:
        out = out.index_select(0, plan.order)
        lse = None if lse is None else lse.index_select(0, plan.order)
    return out, (None if lse is None else lse.t())


def _accepted_kwargs(func: Callable, kwargs: dict) -> dict:
    """The entries of ``kwargs`` that ``func`` accepts (flash-attn builds differ: FA4's
    ``flash_attn.cute`` has had no ``max_seqlen_q``, FA2 says ``return_attn_probs``)."""
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return dict(kwargs)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(kwargs)
    return {name: value for name, value in kwargs.items() if name in params}


def _varlen(q, k, v, plan: VarlenPlan, scale: float, need_lse: bool, func: Callable):
    kwargs = {
        "cu_seqlens_q": plan.cu_seqlens_q,
        "cu_seqlens_k": plan.cu_seqlens_k,
        "max_seqlen_q": plan.max_seqlen_q,
        "max_seqlen_k": plan.max_seqlen_k,
        "softmax_scale": scale,
        "causal": plan.causal,
        "return_attn_probs": need_lse,
        "return_lse": need_lse,
    }
    res = func(q, k.index_select(0, plan.key_rows), v.index_select(0, plan.key_rows), **_accepted_kwargs(func, kwargs))
    out, lse = (res[0], res[1] if len(res) > 1 else None) if isinstance(res, tuple) else (res, None)
    if need_lse and (lse is None or tuple(lse.shape) != (q.shape[1], q.shape[0])):
        got = None if lse is None else tuple(lse.shape)
        raise RuntimeError(
            f"{func.__module__}.flash_attn_varlen_func returned a log-sum-exp of shape {got}, "
            f"expected [Hq, total_tokens] = {[q.shape[1], q.shape[0]]}"
        )
    return out, lse


def find_flash_varlen() -> Callable | None:
    """The first importable ``flash_attn_varlen_func`` of :data:`FLASH_VARLEN_MODULES`, or None."""
    for name in FLASH_VARLEN_MODULES:
        try:
            func = getattr(importlib.import_module(name), "flash_attn_varlen_func", None)
        except Exception:  # noqa: BLE001 -- any import failure (ImportError, CUDA/ABI errors) means "not there"
            continue
        if func is not None:
            return func
    return None


# ----------------------------------------------------------------------------------------
# entry point
# ----------------------------------------------------------------------------------------
ROUTES = ("auto", "cpu_flash", "sdpa", "varlen")


def condensation_attention_sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: CondensationLayout,
    softmax_scale: float,
    return_lse: bool = False,
    *,
    route: str = "auto",
    varlen_func: Callable | None = None,
):
    """Exact condensation attention from causal attention calls; differentiable in q, k, v.

    Called by :func:`btok_kernels.condensation_attention` with ``backend="sdpa"`` (which
    validates the arguments and takes ``route="auto"``); call it directly to pick a route.

    Args:
        q: ``[total_tokens, Hq, D]``, fp16/bf16/fp32/fp64, last dim contiguous.
        k, v: ``[total_tokens, Hkv, D]`` with ``Hq % Hkv == 0``, q's dtype and device.
        layout: :class:`CondensationLayout` on q's device.
        softmax_scale: the scale of the scores (float).
        return_lse: also return the natural-log log-sum-exp of each row's scaled scores,
            ``[Hq, total_tokens]``, fp32 (fp64 for fp64 inputs), not differentiable. The
            ``"sdpa"`` route on CUDA returns it for fp16/bf16 only.
        route: ``"cpu_flash"`` (CPU tensors: padded batches through the CPU flash kernel in
            chunks, one autograd node), ``"sdpa"`` (padded batches through
            ``F.scaled_dot_product_attention``, plain autograd), ``"varlen"`` (one
            flash-attn varlen call), or ``"auto"``: ``"cpu_flash"`` on the CPU; on CUDA
            ``"varlen"`` when flash-attn imports, else ``"sdpa"``.
        varlen_func: the ``flash_attn_varlen_func`` of the ``"varlen"`` route (default: the
            first of :data:`FLASH_VARLEN_MODULES` that imports).

    Returns:
        ``out`` ``[total_tokens, Hq, D]`` in q's dtype, and ``lse`` when ``return_lse``.
    """
    if route not in ROUTES:
        raise ValueError(f"route must be one of {ROUTES}, got {route!r}")
    if route == "auto":
        if q.device.type == "cpu":
            route = "cpu_flash"
        else:
            varlen_func = varlen_func or find_flash_varlen()
            route = "sdpa" if varlen_func is None else "varlen"
    if route == "cpu_flash" and q.device.type != "cpu":
        raise ValueError(f"route='cpu_flash' needs CPU tensors, got tensors on {q.device}")
    if route == "varlen" and varlen_func is None:
        varlen_func = find_flash_varlen()
        if varlen_func is None:
            raise ValueError(f"route='varlen' needs flash-attn: none of {FLASH_VARLEN_MODULES} imports")
    total, hq, d = q.shape
    lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    if total == 0:
        # no rows, but still a node of q, k and v, so that backward gives their (empty) gradients
        out = q.new_zeros(0, hq, v.shape[2]) + (q.sum() + k.sum() + v.sum())
        return (out, q.new_zeros(hq, 0, dtype=lse_dtype)) if return_lse else out
    if route == "varlen":
        plan = _cached(layout, "varlen", lambda: varlen_plan(layout))
        out, lse = _varlen(q, k, v, plan, softmax_scale, return_lse, varlen_func)
    else:
        plan = _cached(layout, ("padded", hq * d), lambda: padded_plan(layout, hq * d))
        if route == "cpu_flash":
            out, lse = _CpuSegments.apply(q, k, v, plan, softmax_scale, return_lse)
        else:
            out, lse = _padded_autograd(q, k, v, plan, softmax_scale, return_lse)
    if not return_lse:
        return out
    return out, lse.detach().to(lse_dtype).contiguous()
