#!/usr/bin/env python
"""Condensation-mask attention: btok against its peers, on the same inputs, in one run.

    python benchmarks/mask_attn.py            # GPU: every workload; CPU: a small configuration
    python benchmarks/mask_attn.py --quick    # GPU: every workload and peer, fewer sweep lengths

Workloads (``benchmarks/workloads.py``): image_2B, video_2B, image_7B, long_8k of DESIGN.md and
one sequence of 1k..16k tokens (target 1/8) at head dims 64 and 128. Peers:

    exact (compute the condensation mask)      no cut (speed references, plain causal)
    btok Triton / CUDA (/ reference on CPU)    SDPA flash causal, padded
    Flex + BlockMask, Triton backend           SDPA cuDNN causal, padded
    Flex + BlockMask, FLASH backend (FA4)      flash-attn 2 / 3 / 4 varlen causal
    SDPA dense mask, packed and padded
    eager dense mask, padded

Per row: median ms (``triton.testing.do_bench`` on CUDA) of the forward and the
forward+backward, TFLOP/s counting only the pairs the condensation mask keeps (backward =
2.5x forward; no-cut rows are credited with the same work, so the column compares speed on
the useful work), peak memory, speed-up over Flex's Triton backend, the per-batch mask build
time (Flex ``create_block_mask``, dense masks, btok's layout), and the error against the fp32
btok reference (relative L2 of the output, dQ and dK). A row whose error is above ``--tol``
prints FAILED and no timing. No-cut rows are checked against plain causal attention.

Outputs: a table on stdout, and ``<out-dir>/<stem>.json`` / ``.csv`` (GPU name, versions,
date; rewritten after each workload, so a run cut short keeps its rows) and ``.png`` (with
matplotlib: ``pip install -e .[bench]``).
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.nn.functional as F

from benchmarks.common import (
    Padder,
    bench,
    environment,
    flex_mask_mod,
    format_table,
    from_bhsd,
    optional_import,
    packed_dense_mask,
    padded_dense_mask,
    peak_memory_mib,
    rel_l2,
    set_recompile_limit,
    to_bhsd,
    write_outputs,
)
from benchmarks.workloads import Workload, all_workloads, cpu_workloads, design_workloads, sweep_workloads
from btok_kernels import CondensationLayout, condensation_attention

SWEEP_LENGTHS = (1024, 2048, 4096, 8192, 16384)
QUICK_SWEEP_LENGTHS = (1024, 4096, 16384)
SWEEP_HEAD_DIMS = (64, 128)
CPU_SWEEP_LENGTHS = (256, 512)
FLEX_PEER = "flex_triton"
MODES = ("fwd", "fwd_bwd")


class Skip(Exception):
    """A peer that cannot run this case; the message is the row's note."""


# ----------------------------------------------------------------------------------------
# one workload's inputs and references
# ----------------------------------------------------------------------------------------
@dataclass
class Case:
    wl: Workload
    device: torch.device
    dtype: torch.dtype
    seed: int
    layout: CondensationLayout = field(init=False)
    q: torch.Tensor = field(init=False)
    k: torch.Tensor = field(init=False)
    v: torch.Tensor = field(init=False)
    do: torch.Tensor = field(init=False)
    scale: float = field(init=False)
    _refs: dict = field(default_factory=dict, init=False)
    _cache: dict = field(default_factory=dict, init=False)

    def __post_init__(self):
        self.layout = self.wl.layout(self.device)
        g = torch.Generator(device="cpu").manual_seed(self.seed)
        t, hq, hkv, d = self.wl.total_tokens, self.wl.num_heads, self.wl.num_kv_heads, self.wl.head_dim

        def rand(*shape):
            return torch.randn(*shape, generator=g).to(self.device, self.dtype)

        self.q, self.k, self.v, self.do = rand(t, hq, d), rand(t, hkv, d), rand(t, hkv, d), rand(t, hq, d)
        self.scale = 1.0 / math.sqrt(d)

    def reference(self, exact: bool) -> dict[str, torch.Tensor]:
        """fp32 btok reference (condensation mask, or plain causal for no-cut peers): out, dq, dk."""
        key = "exact" if exact else "causal"
        if key not in self._refs:
            layout = self.layout if exact else CondensationLayout.causal(self.layout.cu_seqlens)
            q, k, v = (x.detach().float().requires_grad_() for x in (self.q, self.k, self.v))
            out = condensation_attention(q, k, v, layout, softmax_scale=self.scale, backend="reference")
            out.backward(self.do.float())
            self._refs[key] = {"out": out.detach(), "dq": q.grad, "dk": k.grad}
        return self._refs[key]

    def cached(self, key: str, build: Callable):
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    @property
    def padder(self) -> Padder:
        return self.cached("padder", lambda: Padder(self.layout))

    def free(self):
        self._refs.clear()
        self._cache.clear()


@dataclass
class Run:
    """A peer ready to run one case: ``fn()`` returns the output in the peer's own format."""

    fn: Callable[[], torch.Tensor]
    leaves: tuple[torch.Tensor, ...]  # q, k, v in the peer's format
    do: torch.Tensor  # dO in the peer's format
    unpack: Callable[[torch.Tensor], torch.Tensor]  # peer format -> packed [T, H, D]
    extra_bytes: int = 0  # other inputs the peer needs (dense mask, BlockMask)
    setup_ms: float | None = None  # per-batch mask build (BlockMask, dense mask, layout)
    note: str = ""
    # environment variables set around everything the measuring code does with this run
    # (error check, timed forward, timed forward+backward, peak memory): the library reads
    # some launcher options (BTOK_FUSED_DQ, BTOK_AUTOTUNE) in the backward too
    env: dict[str, str] = field(default_factory=dict)

    @property
    def input_bytes(self) -> int:
        return sum(x.numel() * x.element_size() for x in (*self.leaves, self.do)) + self.extra_bytes


@dataclass
class Peer:
    name: str
    exact: bool
    prepare: Callable[[Case, bool, argparse.Namespace], Run]
    available: Callable[[torch.device], str | None] = lambda device: None  # None or why not


def _leaves(xs, grad: bool):
    return tuple(x.detach().clone().requires_grad_(grad) for x in xs)


def _setup_ms(case: Case, key: str, fn: Callable, args) -> float:
    return case.cached(f"setup_ms:{key}", lambda: bench(fn, case.device, **_bench_kwargs(args))["ms"])


def _bench_kwargs(args) -> dict:
    return {"warmup_ms": args.warmup_ms, "rep_ms": args.rep_ms, "cpu_reps": args.cpu_reps}


# ----------------------------------------------------------------------------------------
# peers
# ----------------------------------------------------------------------------------------
def _btok(backend: str) -> Callable:
    def prepare(case: Case, grad: bool, args) -> Run:
        q, k, v = _leaves((case.q, case.k, case.v), grad)
        wl, device = case.wl, case.device

        def build():
            return CondensationLayout.from_lengths(wl.query_lens, wl.num_btoks, wl.target_lens, device)

        layout_ms = _setup_ms(case, "layout", build, args)

        def fn():
            return condensation_attention(q, k, v, case.layout, softmax_scale=case.scale, backend=backend)

        return Run(fn, (q, k, v), case.do, lambda x: x, setup_ms=layout_ms,
                   note="mask build = CondensationLayout.from_lengths")

    return prepare


def _btok_with_env(variable: str, help: str) -> Callable:
    """btok Triton with ``variable=1`` (a launcher option that ``condensation_attention``
    reads from the environment, in the forward and in the backward): ``run.env``, which the
    measuring code sets around the forward, the backward and the error check."""

    def prepare(case: Case, grad: bool, args) -> Run:
        run = _btok("triton")(case, grad, args)
        run.env = {**run.env, variable: "1"}
        run.note = f"{variable}=1 ({help}); " + run.note
        return run

    return prepare


@contextlib.contextmanager
def _env(variables: dict[str, str]):
    """Sets ``variables`` in ``os.environ`` and restores the previous values on exit."""
    before = {k: os.environ.get(k) for k in variables}
    os.environ.update(variables)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _btok_triton_available(device):
    if device.type == "cuda":
        return None
    return "btok triton: needs a CUDA device (TRITON_INTERPRET is for tests, not timing)"


def _btok_cuda_available(device):
    if device.type != "cuda":
        return "btok cuda: needs a CUDA device"
    x = torch.zeros(1, 1, 8, device=device)
    try:
        condensation_attention(x, x, x, CondensationLayout.causal([0, 1], device=device), backend="cuda")
    except NotImplementedError as e:
        return f"btok cuda: not built ({str(e).split(':')[0]})"
    return None


def _block_mask(case: Case, args):
    from torch.nn.attention.flex_attention import create_block_mask

    t = case.wl.total_tokens
    mask_mod = flex_mask_mod(case.layout)
    build = lambda: create_block_mask(mask_mod, None, None, t, t, device=case.device)  # noqa: E731
    bm = case.cached("block_mask", build)
    return bm, _setup_ms(case, "block_mask", build, args)


_FLEX = {}


def _flex_fn():
    if "fn" not in _FLEX:
        from torch.nn.attention.flex_attention import flex_attention

        set_recompile_limit()
        _FLEX["fn"] = torch.compile(flex_attention, dynamic=False)
    return _FLEX["fn"]


def _flex(backend: str | None) -> Callable:
    def prepare(case: Case, grad: bool, args) -> Run:
        if grad and case.device.type == "cpu":
            raise Skip("FlexAttention has no backward on CPU")
        bm, bm_ms = _block_mask(case, args)
        q, k, v = _leaves((to_bhsd(case.q), to_bhsd(case.k), to_bhsd(case.v)), grad)
        flex = _flex_fn()
        opts = {"BACKEND": backend} if backend else None
        fn = lambda: flex(q, k, v, block_mask=bm, scale=case.scale, enable_gqa=True, kernel_options=opts)  # noqa: E731
        bm_bytes = sum(x.numel() * x.element_size() for x in bm.as_tuple() if isinstance(x, torch.Tensor))
        return Run(fn, (q, k, v), to_bhsd(case.do), from_bhsd, extra_bytes=bm_bytes, setup_ms=bm_ms,
                   note="compiled; mask build = create_block_mask")

    return prepare


def _flex_flash_available(device):
    if device.type != "cuda":
        return "flex FLASH backend: needs a CUDA device"
    _, why = optional_import("flash_attn.cute")
    return f"flex FLASH backend: {why}" if why else None


def _repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def _sdpa_dense(padded: bool) -> Callable:
    def prepare(case: Case, grad: bool, args) -> Run:
        if not padded and case.layout.num_seqs == 1 and args.dedupe:
            raise Skip("one sequence: packed = padded, see sdpa_dense_padded")
        groups = case.wl.num_heads // case.wl.num_kv_heads
        if padded:
            p = case.padder
            build = lambda: padded_dense_mask(case.layout)  # noqa: E731
            xs, do, unpack = (p.pad(case.q), p.pad(case.k), p.pad(case.v)), p.pad(case.do), p.unpad
        else:
            build = lambda: packed_dense_mask(case.layout)  # noqa: E731
            xs, do, unpack = (to_bhsd(case.q), to_bhsd(case.k), to_bhsd(case.v)), to_bhsd(case.do), from_bhsd
        mask = case.cached(f"dense_mask:{padded}", build)
        mask_ms = _setup_ms(case, f"dense_mask:{padded}", build, args)
        q, k, v = _leaves(xs, grad)

        def fn():
            return F.scaled_dot_product_attention(
                q, _repeat_kv(k, groups), _repeat_kv(v, groups), attn_mask=mask, scale=case.scale
            )

        note = "bool mask, K/V repeated to Hq (timed)" if groups > 1 else "bool mask"
        return Run(fn, (q, k, v), do, unpack, extra_bytes=mask.numel() * mask.element_size(), setup_ms=mask_ms,
                   note=note)

    return prepare


def _eager_bytes(case: Case) -> int:
    """Rough fwd+bwd footprint of eager attention: ~20 bytes per score element (bf16 scores,
    fp32 softmax, bf16 probs, and their gradients)."""
    wl = case.wl
    return 20 * wl.num_seqs * wl.num_heads * wl.max_seqlen**2


def _eager(case: Case, grad: bool, args) -> Run:
    need = _eager_bytes(case)
    if case.device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(case.device)
        budget = 0.6 * free
    else:
        budget = args.cpu_eager_gib * 2**30
    if need > budget:
        raise Skip(f"skipped: would need ~{need / 2**30:.1f} GiB (budget {budget / 2**30:.1f} GiB)")
    groups = case.wl.num_heads // case.wl.num_kv_heads
    p = case.padder

    def build():
        bool_mask = padded_dense_mask(case.layout)
        return torch.zeros(bool_mask.shape, dtype=case.dtype, device=case.device).masked_fill_(
            ~bool_mask, torch.finfo(case.dtype).min
        )

    mask = case.cached("additive_mask", build)
    mask_ms = _setup_ms(case, "additive_mask", build, args)
    q, k, v = _leaves((p.pad(case.q), p.pad(case.k), p.pad(case.v)), grad)

    def fn():
        # transformers' eager_attention_forward: repeat K/V, additive mask, softmax in fp32
        s = torch.matmul(q, _repeat_kv(k, groups).transpose(2, 3)) * case.scale + mask
        pr = torch.softmax(s, dim=-1, dtype=torch.float32).to(q.dtype)
        return torch.matmul(pr, _repeat_kv(v, groups))

    return Run(fn, (q, k, v), p.pad(case.do), p.unpad, extra_bytes=mask.numel() * mask.element_size(),
               setup_ms=mask_ms, note="additive mask, padded")


def _sdpa_causal(backend_name: str) -> Callable:
    def prepare(case: Case, grad: bool, args) -> Run:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backend = getattr(SDPBackend, backend_name)
        groups = case.wl.num_heads // case.wl.num_kv_heads
        p = case.padder
        q, k, v = _leaves((p.pad(case.q), p.pad(case.k), p.pad(case.v)), grad)
        native_gqa = case.cached(f"native_gqa:{backend_name}", lambda: _supports_gqa(backend, case))

        def fn():
            with sdpa_kernel([backend]):
                if native_gqa:
                    return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=case.scale, enable_gqa=True)
                return F.scaled_dot_product_attention(
                    q, _repeat_kv(k, groups), _repeat_kv(v, groups), is_causal=True, scale=case.scale
                )

        note = "no cut (reference speed), padded" + ("" if native_gqa or groups == 1 else ", K/V repeated (timed)")
        return Run(fn, (q, k, v), p.pad(case.do), p.unpad, note=note)

    return prepare


def _supports_gqa(backend, case: Case) -> bool:
    from torch.nn.attention import sdpa_kernel

    hq, hkv, d = case.wl.num_heads, case.wl.num_kv_heads, case.wl.head_dim
    q = torch.zeros(1, hq, 128, d, device=case.device, dtype=case.dtype)
    kv = torch.zeros(1, hkv, 128, d, device=case.device, dtype=case.dtype)
    try:
        with sdpa_kernel([backend]):
            F.scaled_dot_product_attention(q, kv, kv, is_causal=True, enable_gqa=True)
        return True
    except RuntimeError:
        return False


def _sdpa_available(backend_name: str):
    def available(device):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        if backend_name == "CUDNN_ATTENTION" and device.type != "cuda":
            return "sdpa cuDNN: needs a CUDA device"
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        x = torch.zeros(1, 2, 128, 64, device=device, dtype=dtype)
        try:
            with sdpa_kernel([getattr(SDPBackend, backend_name)]):
                F.scaled_dot_product_attention(x, x, x, is_causal=True)
        except RuntimeError as e:
            return f"sdpa {backend_name}: not available here ({str(e).splitlines()[0][:80]})"
        return None

    return available


# flash-attn varlen: (module, label); FA4 ships as flash_attn.cute, FA3 as flash_attn_interface
_FA_MODULES = {"fa4_varlen": "flash_attn.cute", "fa3_varlen": "flash_attn_interface", "fa2_varlen": "flash_attn"}


def _fa_available(name: str):
    def available(device):
        if device.type != "cuda":
            return f"{name}: needs a CUDA device"
        mod, why = optional_import(_FA_MODULES[name])
        if mod is None:
            return f"{name}: {why}"
        if not hasattr(mod, "flash_attn_varlen_func"):
            return f"{name}: {_FA_MODULES[name]} has no flash_attn_varlen_func"
        return None

    return available


def _accepted_kwargs(func: Callable, kwargs: dict) -> tuple[dict, list[str]]:
    """The entries of ``kwargs`` that ``func``'s signature accepts (all of them when it takes
    ``**kwargs`` or has no readable signature), and the names left out. flash-attn builds
    differ (FA4's ``flash_attn.cute`` has had no ``max_seqlen_q`` / ``max_seqlen_k``)."""
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return dict(kwargs), []
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(kwargs), []
    names = {n for n, p in params.items()
             if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}
    return {k: v for k, v in kwargs.items() if k in names}, [k for k in kwargs if k not in names]


def _fa_varlen(name: str) -> Callable:
    def prepare(case: Case, grad: bool, args) -> Run:
        func = optional_import(_FA_MODULES[name])[0].flash_attn_varlen_func
        q, k, v = _leaves((case.q, case.k, case.v), grad)
        cu, m = case.layout.cu_seqlens, case.layout.max_seqlen
        kwargs, dropped = _accepted_kwargs(func, {"cu_seqlens_q": cu, "cu_seqlens_k": cu, "max_seqlen_q": m,
                                                  "max_seqlen_k": m, "softmax_scale": case.scale, "causal": True})

        def fn():
            res = func(q, k, v, **kwargs)
            return res[0] if isinstance(res, tuple) else res

        note = "no cut (reference speed)" + (f"; not in its signature: {', '.join(dropped)}" if dropped else "")
        return Run(fn, (q, k, v), case.do, lambda x: x, note=note)

    return prepare


PEERS = [
    Peer("btok_triton", True, _btok("triton"), _btok_triton_available),
    Peer("btok_triton_autotune", True,
         _btok_with_env("BTOK_AUTOTUNE", "tiles timed on the first call, outside the timed region"),
         _btok_triton_available),
    Peer("btok_triton_fused_dq", True, _btok_with_env("BTOK_FUSED_DQ", "dQ by atomics in the dK/dV kernel"),
         _btok_triton_available),
    Peer("btok_cuda", True, _btok("cuda"), _btok_cuda_available),
    Peer("btok_reference", True, _btok("reference"), lambda d: None if d.type == "cpu" else "btok_reference: CPU only"),
    Peer(FLEX_PEER, True, _flex(None)),
    Peer("flex_flash", True, _flex("FLASH"), _flex_flash_available),
    Peer("sdpa_dense_packed", True, _sdpa_dense(padded=False)),
    Peer("sdpa_dense_padded", True, _sdpa_dense(padded=True)),
    Peer("eager_dense_padded", True, _eager),
    Peer("sdpa_flash_causal", False, _sdpa_causal("FLASH_ATTENTION"), _sdpa_available("FLASH_ATTENTION")),
    Peer("sdpa_cudnn_causal", False, _sdpa_causal("CUDNN_ATTENTION"), _sdpa_available("CUDNN_ATTENTION")),
    Peer("fa4_varlen", False, _fa_varlen("fa4_varlen"), _fa_available("fa4_varlen")),
    Peer("fa3_varlen", False, _fa_varlen("fa3_varlen"), _fa_available("fa3_varlen")),
    Peer("fa2_varlen", False, _fa_varlen("fa2_varlen"), _fa_available("fa2_varlen")),
]


# ----------------------------------------------------------------------------------------
# measuring
# ----------------------------------------------------------------------------------------
def _check(case: Case, peer: Peer, run: Run, grad: bool) -> tuple[dict[str, float], float]:
    """Runs the peer once (this call compiles, for compiled peers) and returns its errors
    against the reference and the wall time of the call in seconds."""
    ref = case.reference(peer.exact)
    t0 = time.perf_counter()
    with contextlib.nullcontext() if grad else torch.no_grad():
        out = run.fn()
        if grad:
            out.backward(run.do)
    if case.device.type == "cuda":
        torch.cuda.synchronize(case.device)
    first_s = time.perf_counter() - t0
    err = {"err_out": rel_l2(run.unpack(out), ref["out"])}
    if grad:
        err["err_dq"] = rel_l2(run.unpack(run.leaves[0].grad), ref["dq"])
        err["err_dk"] = rel_l2(run.unpack(run.leaves[1].grad), ref["dk"])
    return err, first_s


# a worse status is never replaced by a milder one (a FAILED check stays FAILED when a later mode raises)
_STATUS_RANK = {"ok": 0, "skipped": 1, "error": 2, "FAILED": 3}


def _set_status(row: dict, status: str) -> None:
    if _STATUS_RANK[status] >= _STATUS_RANK.get(row["status"], 0):
        row["status"] = status


def is_timing_key(key: str) -> bool:
    """A timing-derived column (ms and its percentiles, mask build ms, TFLOP/s, peak MiB, xFlex)."""
    return "_ms" in key or key.endswith(("_tflops", "_peak_mib", "_x_flex"))


def _short(e: BaseException, n: int) -> str:
    return str(e).splitlines()[0][:n] if str(e) else ""


def measure(case: Case, peer: Peer, args) -> dict:
    wl = case.wl
    row = {"workload": wl.name, "group": wl.group, "peer": peer.name, "exact": peer.exact, "head_dim": wl.head_dim,
           "tokens": wl.total_tokens, "max_seqlen": wl.max_seqlen, "status": "ok"}
    notes = []
    for mode in MODES:
        grad = mode == "fwd_bwd"
        run, stop, free_cuda = None, False, False
        try:
            run = peer.prepare(case, grad, args)
            with _env(run.env):
                err, first_s = _check(case, peer, run, grad)
            for key, value in err.items():
                row[f"{mode}_{key}"] = value
            row[f"{mode}_first_call_s"] = first_s
            if run.setup_ms is not None:
                row["mask_build_ms"] = run.setup_ms
            if run.note and run.note not in notes:
                notes.append(run.note)
            if max(err.values()) > args.tol:
                _set_status(row, "FAILED")
                notes.append(f"{mode}: FAILED error check (max rel L2 {max(err.values()):.2e} > {args.tol:.0e})")
            else:
                row.update(_time(case, run, mode, args))
        except Skip as e:
            notes.append(f"{mode}: {e}" if grad else str(e))
            if not grad:
                _set_status(row, "skipped")
                stop = True
        except NotImplementedError as e:
            notes.append(f"not implemented ({_short(e, 80)})")
            _set_status(row, "skipped")
            stop = True
        except Exception as e:  # noqa: BLE001 -- a peer that breaks (compile error, OOM...) is a row, not a crash
            notes.append(f"{mode}: ERROR {type(e).__name__}: {_short(e, 120)}")
            _set_status(row, "error")
            free_cuda = True
        # outside the except clause: the traceback (and the tensors its frames hold) is gone
        del run
        if free_cuda and case.device.type == "cuda":
            torch.cuda.empty_cache()
        if stop:
            break
    if row["status"] == "FAILED":  # no timing of a row that fails its check, in either mode
        for key in [k for k in row if is_timing_key(k)]:
            del row[key]
    row["note"] = "; ".join(notes)
    return row


def _time(case: Case, run: Run, mode: str, args) -> dict:
    """Median / p20 / p80 ms, TFLOP/s and peak memory of one mode of a run that passed its
    check, with ``run.env`` set throughout."""
    grad = mode == "fwd_bwd"
    if grad:
        def timed():
            run.fn().backward(run.do)
    else:
        def timed():
            with torch.no_grad():
                run.fn()
    with _env(run.env):
        t = bench(timed, case.device, grad_to_none=run.leaves if grad else None, **_bench_kwargs(args))
        for x in run.leaves:
            x.grad = None
        peak = peak_memory_mib(timed, case.device, run.input_bytes)
    return {f"{mode}_ms": t["ms"], f"{mode}_ms_p20": t["ms_p20"], f"{mode}_ms_p80": t["ms_p80"],
            f"{mode}_tflops": case.wl.flops(mode) / (t["ms"] * 1e-3) / 1e12, f"{mode}_peak_mib": peak}


def _add_speedups(rows: list[dict]) -> None:
    """``<mode>_x_flex``: Flex Triton's ms / the row's ms, same workload; none for a FAILED
    row, and none at all on a workload whose Flex row FAILED."""
    flex = {r["workload"]: r for r in rows if r["peer"] == FLEX_PEER}
    for r in rows:
        f = flex.get(r["workload"])
        for mode in MODES:
            r.pop(f"{mode}_x_flex", None)
            if f is None or "FAILED" in (f["status"], r["status"]):
                continue
            if f.get(f"{mode}_ms") and r.get(f"{mode}_ms"):
                r[f"{mode}_x_flex"] = f[f"{mode}_ms"] / r[f"{mode}_ms"]


TABLE_COLUMNS = [
    ("workload", "workload", ""),
    ("peer", "peer", ""),
    ("kind", "kind", ""),
    ("fwd_ms", "fwd ms", ".3f"),
    ("fwd_tflops", "TFLOP/s", ".3g"),
    ("fwd_bwd_ms", "fwd+bwd ms", ".3f"),
    ("fwd_bwd_tflops", "TFLOP/s", ".3g"),
    ("peak", "peak MiB", ""),
    ("mask_build_ms", "mask ms", ".3f"),
    ("first_call_s", "1st call s", ".1f"),
    ("fwd_x_flex", "xFlex fwd", ".2f"),
    ("fwd_bwd_x_flex", "xFlex f+b", ".2f"),
    ("err", "max err", ".1e"),
    ("status", "status", ""),
    ("note", "note", ""),
]


def _table_rows(rows: list[dict]) -> list[dict]:
    out = []
    for r in rows:
        d = dict(r)
        d["kind"] = "exact" if r["exact"] else "no cut"
        errs = [v for k, v in r.items() if "_err_" in k]
        d["err"] = max(errs) if errs else None
        firsts = [v for k, v in r.items() if k.endswith("_first_call_s")]
        d["first_call_s"] = max(firsts) if firsts else None
        peak = r.get("fwd_bwd_peak_mib", r.get("fwd_peak_mib"))
        d["peak"] = f"{peak:.0f}" if peak is not None else ("n/a" if r.get("fwd_ms") else None)
        if r["status"] == "FAILED":
            for mode in MODES:
                d.pop(f"{mode}_ms", None)
        out.append(d)
    return out


def plot(rows: list[dict], path: Path) -> str | None:
    """Forward and forward+backward ms on the packed workloads (bars), TFLOP/s along the sweep."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no PNG: matplotlib is not installed (pip install -e .[bench])"
    ok = [r for r in rows if r.get("status") != "FAILED"]
    packed = [r for r in ok if r["group"] != "sweep"]
    sweep = [r for r in ok if r["group"] == "sweep"]
    fig, axes = plt.subplots(2, 2, figsize=(15, 10))
    wls = list(dict.fromkeys(r["workload"] for r in packed))
    peers = [p for p in dict.fromkeys(r["peer"] for r in packed)
             if any(r.get("fwd_ms") for r in packed if r["peer"] == p)]
    width = 0.8 / max(1, len(peers))
    color = {p: f"C{i % 10}" for i, p in enumerate(dict.fromkeys(r["peer"] for r in ok))}
    for ax, mode in zip(axes[0], MODES):
        for i, p in enumerate(peers):
            got = {r["workload"]: r.get(f"{mode}_ms") for r in packed if r["peer"] == p}
            xs = [j + i * width for j, w in enumerate(wls) if got.get(w)]
            ys = [got[w] for w in wls if got.get(w)]
            exact = next(r["exact"] for r in packed if r["peer"] == p)
            if ys:
                ax.bar(xs, ys, width, label=p, color=color[p], hatch=None if exact else "//")
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(wls))], wls)
        ax.set_ylabel(f"{mode.replace('_', '+')} ms (median)")
        ax.set_title(f"packed workloads, {mode.replace('_', '+')} (hatched: no cut, reference speed)")
        if ax.patches:
            ax.legend(fontsize=7)
    for ax, mode in zip(axes[1], MODES):
        for p in dict.fromkeys(r["peer"] for r in sweep):
            for d, style in ((128, "-"), (64, "--")):
                pts = sorted((r["max_seqlen"], r.get(f"{mode}_tflops"))
                             for r in sweep if r["peer"] == p and r["head_dim"] == d and r.get(f"{mode}_tflops"))
                if pts:
                    ax.plot(*zip(*pts), style, marker="o", color=color[p], label=f"{p} D={d}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("one sequence, length (target 1/8)")
        ax.set_ylabel(f"{mode.replace('_', '+')} TFLOP/s (kept pairs only)")
        ax.set_title(f"sweep, {mode.replace('_', '+')}")
        if ax.lines:
            ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


# ----------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="GPU: every workload and peer, sweep lengths "
                    f"{QUICK_SWEEP_LENGTHS}, shorter timing (under five minutes with compiles)")
    ap.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    ap.add_argument("--dtype", default=None, choices=("bf16", "fp16", "fp32"),
                    help="default: bf16 on CUDA, fp32 on CPU")
    ap.add_argument("--workloads", default=None,
                    help="comma list of workload names or groups (design, sweep, cpu); default: design,sweep on "
                         "CUDA, cpu,sweep on CPU")
    ap.add_argument("--sweep-lengths", default=None, help="comma list (default: 1k..16k on CUDA, 256,512 on CPU)")
    ap.add_argument("--head-dims", default=None, help="sweep head dims (default 64,128)")
    ap.add_argument("--peers", default=None,
                    help="comma list of peers (default: all): " + ", ".join(p.name for p in PEERS))
    ap.add_argument("--tol", type=float, default=None, help="relative L2 bound (default 2e-2 for 16-bit, 1e-3 fp32)")
    ap.add_argument("--warmup-ms", type=float, default=None, help="do_bench warmup (default 25, quick 10)")
    ap.add_argument("--rep-ms", type=float, default=None, help="do_bench rep (default 100, quick 40)")
    ap.add_argument("--cpu-reps", type=int, default=3, help="timed calls per row on CPU")
    ap.add_argument("--cpu-eager-gib", type=float, default=2.0, help="eager's memory budget on CPU")
    ap.add_argument("--no-dedupe", dest="dedupe", action="store_false",
                    help="also run sdpa_dense_packed on one-sequence workloads (same as padded)")
    ap.add_argument("--time-budget-s", type=float, default=None,
                    help="start no new workload that would end past this many seconds, taking it to last as "
                         "long as the previous one (default: 270 with --quick, none otherwise)")
    ap.add_argument("--seed", type=int, default=0, help="seed of q, k, v, dO")
    ap.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "out")
    ap.add_argument("--stem", default=None, help="output file stem (default mask_attn[_quick]_<device>)")
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args(argv)
    args.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    on_gpu = args.device.type == "cuda"
    args.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[
        args.dtype or ("bf16" if on_gpu else "fp32")]
    if args.tol is None:
        args.tol = 1e-3 if args.dtype == torch.float32 else 2e-2
    if args.time_budget_s is None and args.quick:
        args.time_budget_s = 270.0
    if args.warmup_ms is None:
        args.warmup_ms = 10 if args.quick else 25
    if args.rep_ms is None:
        args.rep_ms = 40 if args.quick else 100
    default_lengths = (QUICK_SWEEP_LENGTHS if args.quick else SWEEP_LENGTHS) if on_gpu else CPU_SWEEP_LENGTHS
    args.sweep_lengths = _ints(args.sweep_lengths) if args.sweep_lengths else default_lengths
    args.head_dims = _ints(args.head_dims) if args.head_dims else SWEEP_HEAD_DIMS
    args.workloads = args.workloads or ("design,sweep" if on_gpu else "cpu,sweep")
    if args.stem is None:
        args.stem = "mask_attn" + ("_quick" if args.quick else "") + f"_{args.device.type}"
    return args


def _ints(s: str) -> tuple[int, ...]:
    return tuple(int(x) for x in s.split(",") if x.strip())


def select_workloads(args) -> list[Workload]:
    groups = {"design": design_workloads(), "cpu": cpu_workloads(),
              "sweep": sweep_workloads(args.sweep_lengths, args.head_dims)}
    named = all_workloads(args.sweep_lengths, args.head_dims)
    out = []
    for name in (x.strip() for x in args.workloads.split(",") if x.strip()):
        if name in groups:
            out += groups[name]
        elif name in named:
            out.append(named[name])
        else:
            raise SystemExit(f"unknown workload {name!r}: choose from {sorted(groups) + sorted(named)}")
    return out


def main(argv=None) -> dict:
    t_start = time.perf_counter()
    args = parse_args(argv)
    device = args.device
    peers = PEERS
    if args.peers:
        wanted = [x.strip() for x in args.peers.split(",") if x.strip()]
        unknown = set(wanted) - {p.name for p in PEERS}
        if unknown:
            raise SystemExit(f"unknown peers {sorted(unknown)}: choose from {[p.name for p in PEERS]}")
        peers = [p for p in PEERS if p.name in wanted]
    workloads = select_workloads(args)
    meta = environment(device)
    meta.update(dtype=str(args.dtype).replace("torch.", ""), tol=args.tol, quick=args.quick,
                flops="kept pairs x 4 D Hq forward; backward 2.5x forward", peers_not_run=[])
    print(f"# mask_attn on {meta['gpu'] or 'CPU'} ({device}), {meta['dtype']}, torch {meta['torch']}, "
          f"triton {meta.get('triton')}, {meta['date_utc']}")
    if device.type == "cpu":
        print("# CPU configuration: small shapes; btok runs its reference path (the Triton kernels need CUDA);"
              " peak memory is not measured on CPU")
    active = []
    for p in peers:
        why = p.available(device)
        if why:
            why = f"{p.name}: {why.split(': ', 1)[-1]}"
            print(f"# not run: {why}")
            meta["peers_not_run"].append(why)
        else:
            active.append(p)
    rows = []
    last_s = 0.0  # wall time of the previous workload: the next one is assumed to take as long
    for i, wl in enumerate(workloads):
        elapsed = time.perf_counter() - t_start
        if args.time_budget_s and elapsed + last_s > args.time_budget_s:
            left = [w.name for w in workloads[i:]]
            meta["workloads_not_run"] = left
            print(f"# time budget of {args.time_budget_s:.0f} s: {elapsed:.0f} s spent and the last workload took "
                  f"{last_s:.0f} s: not run: {', '.join(left)}")
            break
        t_wl = time.perf_counter()
        print(f"# {wl.describe()}, kept pairs {wl.kept_pairs():,} "
              f"({wl.kept_pairs() / wl.causal_pairs():.1%} of causal)", flush=True)
        case = Case(wl, device, args.dtype, args.seed)
        for p in active:
            rows.append(measure(case, p, args))
        case.free()
        del case
        if device.type == "cuda":
            torch.cuda.empty_cache()
        last_s = time.perf_counter() - t_wl
        # rows so far, overwritten after each workload: a run killed by an outer timeout keeps them
        _add_speedups(rows)
        meta["wall_s"] = time.perf_counter() - t_start
        meta["workloads_done"] = i + 1
        meta["workloads_total"] = len(workloads)
        write_outputs(rows, meta, args.out_dir, args.stem)
    _add_speedups(rows)
    print()
    print(format_table(_table_rows(rows), TABLE_COLUMNS))
    meta["wall_s"] = time.perf_counter() - t_start
    paths = write_outputs(rows, meta, args.out_dir, args.stem)
    if not args.no_plot:
        png = args.out_dir / f"{args.stem}.png"
        why = plot(rows, png)
        if why:
            print(f"# {why}")
        else:
            paths.append(png)
    print(f"# wrote {', '.join(str(p) for p in paths)}")
    print(f"# total wall time {meta['wall_s']:.1f} s (compiles included)")
    return {"rows": rows, "meta": meta, "paths": paths}


if __name__ == "__main__":
    main()
