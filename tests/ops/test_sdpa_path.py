"""Backend "sdpa": condensation attention from causal attention calls, against the fp64 oracle.

Every route of :mod:`btok_kernels.condensation.sdpa` runs here: ``cpu_flash`` (the CPU
default), ``sdpa`` (padded batches through ``F.scaled_dot_product_attention``, the CUDA route
without flash-attn) and ``varlen`` with a dense implementation of ``flash_attn_varlen_func``'s
documented semantics (the CUDA route with flash-attn). On a CUDA test device
(``TRITON_INTERPRET=0``) the oracle comparisons run the CUDA routes on CUDA tensors.

Error rule (flash-attention's): the L2 error against the fp64 oracle is at most twice that
of a plain PyTorch implementation in the same dtype, plus a small floor relative to the
oracle's norm (or absolute, where the exact value is 0: dQ of a row that sees one key).
"""

from __future__ import annotations

import math

import pytest
import torch

from btok_kernels import CondensationLayout, condensation_attention
from btok_kernels.condensation import sdpa
from btok_kernels.condensation.sdpa import chunk_rows, condensation_attention_sdpa, padded_plan, segments, varlen_plan
from tests.helpers.dispatch_modes import PoisonEmpty
from tests.helpers.layouts import edge_layouts, make_inputs
from tests.helpers.numerics import DTYPE_IDS, FLOOR, rel_err
from tests.helpers.oracle import dense_attention, dense_layout_mask

LSE_BOUND = {torch.float64: 1e-13, torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 1e-2}

# the shared edge cases (no tiles here: no "shorter_than_tile"), with one token, a sequence of
# several row chunks and lengths spread over several padded batches
EDGE_LAYOUTS = {
    "length_1": ([1], 0, [0]),
    **edge_layouts("query_len_1", "no_target", "K1", "no_btoks", "no_query", "many_tiny", "empty_sequences"),
    "one_long": ([530], 4, [90]),  # at least two chunks (256 rows at D=32): chunks and merges
    "mixed_lengths": ([300, 7, 64, 65, 2, 120], 4, [40, 3, 0, 31, 1, 9]),  # several padded batches
}
ROUTES = ["cpu_flash", "sdpa", "varlen"]


def on_device(route: str, device: str) -> str:
    """``cpu_flash`` exists on the CPU only: on a CUDA device its cases run ``sdpa``."""
    return "sdpa" if route == "cpu_flash" and device != "cpu" else route


def reference_varlen(
    q,
    k,
    v,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q,
    max_seqlen_k,
    softmax_scale=None,
    causal=False,
    return_attn_probs=False,
):
    """``flash_attn_varlen_func`` as flash-attn >= 2.1 documents it, densely in the inputs'
    dtype: segment ``s`` attends its queries to its keys; causal masks are aligned to the
    bottom-right corner (query ``i`` of ``Lq`` sees keys ``j <= i + Lk - Lq``). Returns
    ``(out, lse [Hq, total_q], None)`` with ``return_attn_probs``, as FA2 does."""
    cq, ck = cu_seqlens_q.tolist(), cu_seqlens_k.tolist()
    assert max_seqlen_q == max(b - a for a, b in zip(cq, cq[1:]))
    assert max_seqlen_k == max(b - a for a, b in zip(ck, ck[1:]))
    group = q.shape[1] // k.shape[1]
    outs, lses = [], []
    for s in range(len(cq) - 1):
        qs = q[cq[s] : cq[s + 1]].transpose(0, 1)  # [Hq, Lq, D]
        ks = k[ck[s] : ck[s + 1]].transpose(0, 1).repeat_interleave(group, 0)
        vs = v[ck[s] : ck[s + 1]].transpose(0, 1).repeat_interleave(group, 0)
        scores = (qs @ ks.transpose(-1, -2)) * softmax_scale
        if causal:
            lq, lk = qs.shape[1], ks.shape[1]
            rows, keys = torch.arange(lq, device=q.device), torch.arange(lk, device=q.device)
            allowed = keys[None, :] <= rows[:, None] + (lk - lq)
            scores = scores.masked_fill(~allowed, float("-inf"))
        outs.append((scores.softmax(-1) @ vs).transpose(0, 1))
        lses.append(scores.logsumexp(-1))
    out = torch.cat(outs)
    return (out, torch.cat(lses, 1), None) if return_attn_probs else out


def l2(x: torch.Tensor) -> float:
    return float(x.detach().double().norm())


def lse_supported(route, dtype, device) -> bool:
    """SDPA on CUDA returns the log-sum-exp from its flash kernel only: fp16 / bf16."""
    return not (route == "sdpa" and device != "cpu" and dtype not in (torch.float16, torch.bfloat16))


def run(route, q, k, v, do, layout, scale, want_lse=True):
    """Output, dq, dk, dv and the LSE (or None) of one route, uninitialised memory poisoned."""
    q, k, v = (x.detach().clone().requires_grad_() for x in (q, k, v))
    with PoisonEmpty():
        kwargs = dict(route=route, varlen_func=reference_varlen if route == "varlen" else None)
        res = condensation_attention_sdpa(q, k, v, layout, scale, return_lse=want_lse, **kwargs)
        out, lse = res if want_lse else (res, None)
        grads = torch.autograd.grad(out, (q, k, v), do)
    return out.detach(), grads, lse


_REFERENCES: dict = {}


def references(layout, hq, hkv, d, dtype, seed):
    """Inputs, the fp64 oracle (out, LSE, dq, dk, dv) and dense PyTorch in ``dtype``; the
    routes of one case share them (keyed by the layout's integers)."""
    key = (
        tuple(layout.host_cu_seqlens),
        tuple(layout.host_btok_start),
        tuple(layout.host_target_start),
        layout.is_causal,
        str(layout.device),
        hq,
        hkv,
        d,
        dtype,
        seed,
    )
    if key not in _REFERENCES:
        exact, lowp = make_inputs(layout, hq, hkv, d, dtype, seed=seed)
        scale = 1.0 / math.sqrt(d)
        q, k, v = (x.detach().requires_grad_() for x in exact[:3])
        o_ref, lse_ref = dense_attention(q, k, v, layout, scale, return_lse=True)
        g_ref = torch.autograd.grad(o_ref, (q, k, v), exact[3])
        q, k, v = (x.detach().requires_grad_() for x in lowp[:3])
        o_low = dense_attention(q, k, v, layout, scale)
        g_low = torch.autograd.grad(o_low, (q, k, v), lowp[3])
        _REFERENCES.clear()  # one case at a time: the parametrizations run routes next to each other
        _REFERENCES[key] = (lowp, (o_ref.detach(), *g_ref), lse_ref.detach(), (o_low.detach(), *g_low))
    return _REFERENCES[key]


def check(layout, hq, hkv, d, dtype, route="cpu_flash", seed=0, device="cpu"):
    layout = layout.to(device)
    lowp, (o_ref, *g_ref), lse_ref, (o_low, *g_low) = references(layout, hq, hkv, d, dtype, seed)
    scale = 1.0 / math.sqrt(d)
    want_lse = lse_supported(route, dtype, device)
    out, grads, lse = run(route, *lowp, layout, scale, want_lse)
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
    assert out.shape == (layout.total_tokens, hq, d) and out.device == lowp[0].device
    for name, got, ref, low in zip(("out", "dq", "dk", "dv"), (out, *grads), (o_ref, *g_ref), (o_low, *g_low)):
        assert not torch.isnan(got).any(), f"{name}: NaN (an element was never written)"
        err, bound = l2(got - ref), 2 * l2(low - ref) + FLOOR[dtype] * max(l2(ref), 1.0)
        assert err <= bound, f"{name}: L2 error {err:.3e} > bound {bound:.3e} (oracle norm {l2(ref):.3e})"
    if want_lse:
        assert lse.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
        assert lse.shape == (hq, layout.total_tokens)
        assert rel_err(lse, lse_ref) <= LSE_BOUND[dtype]


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("name", list(EDGE_LAYOUTS))
def test_edge_layouts_fp64(name, route, device):
    layout = CondensationLayout.from_lengths(*EDGE_LAYOUTS[name])
    check(layout, 4, 2, 32, torch.float64, on_device(route, device), device=device)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=DTYPE_IDS.get)
def test_bidirectional(dtype, route, device):
    """Every row sees every key of its sequence: one non-causal segment per sequence, padded
    batches of equal lengths only (padding keys would be seen)."""
    # lengths 30, 0, 1, 30, 300, 17, 27: a causal 27 would join the batch of the 30s
    layout = CondensationLayout.bidirectional([0, 30, 30, 31, 61, 361, 378, 405])
    check(layout, 4, 2, 32, dtype, on_device(route, device), device=device)


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=DTYPE_IDS.get)
def test_dtypes(dtype, route, device):
    """Several padded batches, one sequence in chunks (D = 128: 64 rows a chunk)."""
    layout = CondensationLayout.from_lengths([140, 7, 33, 34, 2], 4, [40, 3, 0, 5, 1])
    check(layout, 2, 1, 128, dtype, on_device(route, device), device=device)


@pytest.mark.parametrize(
    "hq,hkv,d",
    [(3, 3, 80), (4, 2, 96), (6, 1, 128), (12, 2, 64)],
    ids=["gqa1_d80", "gqa2_d96", "gqa6_d128", "gqa6_d64"],
)
def test_gqa_and_head_dims(hq, hkv, d, device):
    """Unaligned head dims; on the CPU the long sequence runs in chunks at every head dim."""
    layout = CondensationLayout.from_lengths([2 * chunk_rows(d) + 3, 9, 20], 4, [40, 0, 5])
    check(layout, hq, hkv, d, torch.float32, on_device("cpu_flash", device), device=device)


@pytest.mark.parametrize("seed", range(4))
def test_random_layouts_bf16(seed, device):
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(1, 9, (1,), generator=g))
    lengths = [
        torch.randint(0, 200, (n,), generator=g).tolist(),
        torch.randint(0, 9, (n,), generator=g).tolist(),
        torch.randint(0, 60, (n,), generator=g).tolist(),
    ]
    check(
        CondensationLayout.from_lengths(*lengths),
        6,
        2,
        32,
        torch.bfloat16,
        on_device("cpu_flash", device),
        seed,
        device,
    )


def test_public_function_defaults_to_sdpa_on_cpu(monkeypatch):
    """backend="auto" on CPU tensors runs this path (and BTOK_BACKEND still overrides it)."""
    layout = CondensationLayout.from_lengths([9, 4], 2, [5, 3])
    _, (q, k, v, _) = make_inputs(layout, 4, 2, 16, torch.float32)
    calls = []
    real = sdpa.condensation_attention_sdpa

    def spy(*args, **kwargs):
        calls.append(args[4])
        return real(*args, **kwargs)

    monkeypatch.setattr(sdpa, "condensation_attention_sdpa", spy)
    monkeypatch.delenv("BTOK_BACKEND", raising=False)
    out = condensation_attention(q, k, v, layout, softmax_scale=0.3)
    assert calls == [0.3]
    assert torch.equal(out, real(q, k, v, layout, 0.3))
    monkeypatch.setenv("BTOK_BACKEND", "reference")
    ref = condensation_attention(q, k, v, layout, softmax_scale=0.3)
    assert calls == [0.3] and rel_err(ref, out) < 1e-6
    _, lse = condensation_attention(q, k, v, layout, backend="sdpa", return_lse=True)
    assert lse.shape == (4, layout.total_tokens) and calls == [0.3, 0.25]


def test_empty_pack():
    layout = CondensationLayout.from_lengths([0, 0], 0, [0, 0])
    q, k, v = (torch.randn(0, h, 16, requires_grad=True) for h in (2, 1, 1))
    out, lse = condensation_attention(q, k, v, layout, backend="sdpa", return_lse=True)
    out.sum().backward()
    assert out.shape == (0, 2, 16) and lse.shape == (2, 0)
    assert q.grad.shape == (0, 2, 16) and k.grad.shape == (0, 1, 16) and v.grad.shape == (0, 1, 16)


def test_compiled_matches_eager():
    """torch.compile traces the path (plans are built outside the graph, once per layout)."""
    layout = CondensationLayout.from_lengths([130, 3], 4, [10, 2])  # D=128: the long head segment in chunks
    _, (q, k, v, do) = make_inputs(layout, 2, 1, 128, torch.float32)

    def step(q, k, v):
        q, k, v = (x.detach().requires_grad_() for x in (q, k, v))
        out = condensation_attention(q, k, v, layout, backend="sdpa")
        return (out, *torch.autograd.grad(out, (q, k, v), do))

    torch._dynamo.reset()
    compiled = torch.compile(
        lambda q, k, v: condensation_attention(q, k, v, layout, backend="sdpa"), backend="aot_eager"
    )
    eager = step(q, k, v)
    leaves = [x.detach().requires_grad_() for x in (q, k, v)]
    out = compiled(*leaves)
    grads = torch.autograd.grad(out, leaves, do)
    for got, want in zip((out, *grads), eager):
        assert rel_err(got, want) < 1e-6


# ----------------------------------------------------------------------------------------
# the plans: every packed row computed once, every kept pair visited
# ----------------------------------------------------------------------------------------
def test_bidirectional_plans():
    layout = CondensationLayout.bidirectional([0, 5, 10, 10, 13, 18])
    segs = segments(layout)
    assert [(s.start, s.length, s.drop, s.causal) for s in segs] == [
        (0, 5, 0, False),
        (5, 5, 0, False),
        (10, 3, 0, False),
        (13, 5, 0, False),
    ]
    plan = padded_plan(layout, 1)  # padding would be almost free, but keys must not be padded
    assert sorted((b.length, b.count, b.causal) for b in plan.buckets) == [(3, 1, False), (5, 3, False)]
    assert varlen_plan(layout).causal is False


def allowed_by_segments(layout):
    """The [T, T] pairs the segments attend, as the kept rows see them (causal top-left)."""
    total = layout.total_tokens
    seen = torch.zeros(total, total, dtype=torch.bool)
    for s in segments(layout):
        rows = torch.arange(s.start + s.drop, s.start + s.length)
        keys = torch.arange(s.start, s.start + s.length)
        block = keys[None, :] <= rows[:, None] if s.causal else torch.ones(len(rows), len(keys), dtype=torch.bool)
        seen[rows[:, None], keys[None, :]] |= block
    return seen


@pytest.mark.parametrize("name", ["many_tiny", "empty_sequences", "mixed_lengths", "no_btoks", "no_query"])
def test_segments_cover_the_mask_exactly(name):
    layout = CondensationLayout.from_lengths(*EDGE_LAYOUTS[name])
    kept = [r for s in segments(layout) for r in range(s.start + s.drop, s.start + s.length)]
    assert kept == list(range(layout.total_tokens))  # packed order, each row once
    assert torch.equal(allowed_by_segments(layout), dense_layout_mask(layout))


@pytest.mark.parametrize("width", [1, 128, 10**6], ids=["merge_most", "mid", "merge_equal"])
def test_padded_plan_puts_every_row_once(width):
    layout = CondensationLayout.from_lengths(*EDGE_LAYOUTS["mixed_lengths"])
    segs = segments(layout)
    plan = padded_plan(layout, width)
    outputs, total = [], 0
    for b in plan.buckets:
        rows = torch.arange(b.rows.start, b.rows.stop) if isinstance(b.rows, slice) else b.rows
        kept = torch.arange(b.count * b.length)[b.kept]
        dest = torch.arange(layout.total_tokens)[b.dest]
        assert rows.numel() == b.count * b.length and kept.numel() == dest.numel()
        # a kept batch row gathers the packed row it outputs
        assert torch.equal(rows[kept], dest)
        # padding repeats rows of the same segment, after the real ones
        for j in range(b.count):
            seg_rows = rows[j * b.length : (j + 1) * b.length]
            assert torch.all(seg_rows[1:] >= seg_rows[:-1])
        outputs.append(dest)
        total += b.count
    assert total == len(segs)
    dest = torch.cat(outputs)
    assert sorted(dest.tolist()) == list(range(layout.total_tokens))
    order = torch.arange(layout.total_tokens) if plan.order is None else plan.order
    assert torch.equal(dest[order], torch.arange(layout.total_tokens))
    if width == 10**6:  # padding too dear: only equal lengths share a batch
        assert all(b.count == 1 or len({s.length for s in segs if s.length == b.length}) == 1 for b in plan.buckets)
        assert len(plan.buckets) == len({s.length for s in segs})


def test_varlen_plan_offsets():
    layout = CondensationLayout.from_lengths([5, 0, 3], [2, 1, 0], [4, 6, 2])  # b=5,t=7 | b=0 | b=t=3
    plan = varlen_plan(layout)
    # query rows stay in packed order; target segments gather keys from the BTok start
    assert plan.cu_seqlens_q.tolist() == [0, 7, 11, 18, 21, 23]
    assert plan.cu_seqlens_k.tolist() == [0, 7, 13, 20, 23, 25]
    assert plan.key_rows.tolist() == [*range(0, 7), *range(5, 11), *range(11, 18), *range(18, 21), *range(21, 23)]
    assert (plan.max_seqlen_q, plan.max_seqlen_k, plan.causal) == (7, 7, True)


@pytest.mark.parametrize(
    "length,d,calls", [(511, 32, 1), (512, 32, 3), (534, 32, 5), (127, 128, 1), (128, 128, 3), (264, 64, 5)]
)
def test_long_segments_run_in_chunks(length, d, calls, monkeypatch):
    """From two chunks on (256 rows at D=32, 64 at D=128, 128 at D=64) a causal segment runs in
    chunks: one call for the first, two for each other (its own keys, the keys before it).
    The oracle tests use such segments: one_long, gqa_and_head_dims, dtypes, compiled."""
    rows = []
    flash = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu

    def counting(*args, **kwargs):
        rows.append((args[0].shape[2], args[1].shape[2]))  # (query rows, keys)
        return flash(*args, **kwargs)

    monkeypatch.setattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", counting)
    layout = CondensationLayout.causal([0, length])
    _, (q, k, v, _) = make_inputs(layout, 2, 1, d, torch.float32)
    condensation_attention_sdpa(q, k, v, layout, 0.3)
    assert len(rows) == calls
    done = rows[0][0]  # the first chunk: its rows over their own keys
    for (r, own), (r_past, past) in zip(rows[1::2], rows[2::2]):
        assert own == r and r_past == r and past == done  # the chunk's keys, then every key before it
        done += r
    assert done == length


def test_plans_are_built_once_per_layout(monkeypatch):
    """Every layer of a model calls the kernel with the same layout: its plan is built once."""
    built = []
    real = sdpa.padded_plan
    monkeypatch.setattr(sdpa, "padded_plan", lambda layout, width: built.append(layout) or real(layout, width))
    layout = CondensationLayout.from_lengths([40, 7], 2, [9, 3])
    _, (q, k, v, _) = make_inputs(layout, 2, 1, 8, torch.float32)
    first = condensation_attention_sdpa(q, k, v, layout, 0.3)
    assert torch.equal(condensation_attention_sdpa(q, k, v, layout, 0.3), first)
    assert built == [layout]
    other = CondensationLayout.from_lengths([40, 7], 2, [9, 3])  # equal, but another object: its own plan
    condensation_attention_sdpa(q, k, v, other, 0.3)
    assert built == [layout, other]


def test_route_errors(monkeypatch):
    layout = CondensationLayout.from_lengths([3], 1, [2])
    q = torch.randn(6, 2, 8)
    with pytest.raises(ValueError, match=r"route must be one of \('auto', 'cpu_flash', 'sdpa', 'varlen'\), got 'x'"):
        condensation_attention_sdpa(q, q, q, layout, 0.3, route="x")
    monkeypatch.setattr(sdpa, "FLASH_VARLEN_MODULES", ("btok_no_such_module",))
    with pytest.raises(ValueError, match=r"route='varlen' needs flash-attn: none of \('btok_no_such_module',\)"):
        condensation_attention_sdpa(q, q, q, layout, 0.3, route="varlen")


def test_varlen_lse_shape_is_checked():
    layout = CondensationLayout.from_lengths([3], 1, [2])
    q = torch.randn(6, 2, 8)

    def transposed_lse(
        q,
        k,
        v,
        cu_seqlens_q,
        cu_seqlens_k,
        max_seqlen_q,
        max_seqlen_k,
        softmax_scale=None,
        causal=False,
        return_attn_probs=False,
    ):
        out, lse, _ = reference_varlen(
            q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, softmax_scale, causal, return_attn_probs
        )
        return out, lse.t()

    with pytest.raises(RuntimeError, match=r"log-sum-exp of shape \(6, 2\), expected \[Hq, total_tokens\]"):
        condensation_attention_sdpa(q, q, q, layout, 0.3, return_lse=True, route="varlen", varlen_func=transposed_lse)
