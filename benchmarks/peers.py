"""The attention implementations ``mask_attn.py`` times, each on the same inputs.

A :class:`Peer` prepares a :class:`Run` for one :class:`Case` (a workload's inputs on one
device): the inputs in the peer's own format, a call, and how to read its output back in
packed ``[T, H, D]`` order. Peers that need a package or a device they do not have say why
in ``available`` (a note in the output, never a crash); optional packages are imported
only there: flex attention (torch), flash-attn 2 / 3 / 4, cuDNN (through SDPA).

exact peers (compute the condensation mask)      no-cut peers (plain causal: reference speed)
    btok Triton (+ autotuned, + fused dQ), CUDA      SDPA flash causal, padded
    btok sdpa decomposition (CPU and CUDA)           SDPA cuDNN causal, padded
    flash-attn varlen decomposition                  flash-attn 2 / 3 / 4 varlen causal
    btok reference (CPU: the chunked oracle)
    Flex + BlockMask (Triton backend, FLASH backend)
    SDPA dense mask, packed and padded
    eager dense mask, padded
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from btok_kernels import CondensationLayout, condensation_attention, condensation_mask, sequence_mask
from btok_kernels.condensation.sdpa import (
    FLASH_VARLEN_MODULES,
    condensation_attention_sdpa,
    find_flash_varlen,
    padded_plan,
    varlen_plan,
)
from btok_kernels.mask import condensation_mask_mod

from .harness import bench, optional_import, set_recompile_limit
from .oracle import oracle
from .workloads import Workload

__all__ = ["Case", "Run", "Peer", "Skip", "PEERS", "FLEX_PEER", "Padder", "padded_dense_mask"]

FLEX_PEER = "flex_triton"  # the peer the speed-up columns divide by


class Skip(Exception):
    """A peer that cannot run this case; the message is the row's note."""


# ----------------------------------------------------------------------------------------
# inputs: one workload on one device, in packed, padded and [1, H, T, D] formats
# ----------------------------------------------------------------------------------------
class Padder:
    """Moves packed ``[T, H, D]`` tensors to padded ``[n, H, Lmax, D]`` ones (SDPA's layout)
    and back."""

    def __init__(self, layout: CondensationLayout):
        self.n, self.lmax = layout.num_seqs, layout.max_seqlen
        rows = [s * self.lmax + i for s, length in enumerate(layout.seqlens) for i in range(length)]
        self.index = torch.tensor(rows, dtype=torch.long, device=layout.device)  # packed row -> padded row

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """``[T, H, D]`` -> ``[n, H, Lmax, D]`` (zeros in the padding)."""
        _, h, d = x.shape
        out = x.new_zeros(self.n * self.lmax, h, d)
        out[self.index] = x
        return out.view(self.n, self.lmax, h, d).transpose(1, 2).contiguous()

    def unpad(self, x: torch.Tensor) -> torch.Tensor:
        """``[n, H, Lmax, D]`` -> ``[T, H, D]``."""
        n, h, lmax, d = x.shape
        return x.transpose(1, 2).reshape(n * lmax, h, d)[self.index]


def to_bhsd(x: torch.Tensor) -> torch.Tensor:
    """Packed ``[T, H, D]`` -> ``[1, H, T, D]`` (contiguous)."""
    return x.transpose(0, 1).unsqueeze(0).contiguous()


def from_bhsd(x: torch.Tensor) -> torch.Tensor:
    """``[1, H, T, D]`` -> ``[T, H, D]``."""
    return x[0].transpose(0, 1)


def padded_dense_mask(layout: CondensationLayout) -> torch.Tensor:
    """Bool ``[n, 1, Lmax, Lmax]`` (True = attend). A padding row attends only itself, so no
    row is fully masked (a fully masked row gives NaN, which the backward would spread to
    real keys); real rows never see padding keys."""
    n, lmax = layout.num_seqs, layout.max_seqlen
    mask = torch.eye(lmax, dtype=torch.bool, device=layout.device).repeat(n, 1, 1)
    for s, (length, b, t) in enumerate(zip(layout.seqlens, layout.host_btok_start, layout.host_target_start)):
        mask[s, :length, :length] = sequence_mask(length, b, t, device=layout.device)
    return mask[:, None]


@dataclass
class Case:
    """A workload's inputs (q, k, v, dO drawn from ``seed``) and its fp64 oracle."""

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
    _cache: dict = field(default_factory=dict, init=False)

    def __post_init__(self):
        self.layout = self.wl.layout(self.device)
        g = torch.Generator(device="cpu").manual_seed(self.seed)
        t, hq, hkv, d = self.wl.total_tokens, self.wl.num_heads, self.wl.num_kv_heads, self.wl.head_dim
        self.q, self.k, self.v, self.do = (
            torch.randn(t, h, d, generator=g).to(self.device, self.dtype) for h in (hq, hkv, hkv, hq)
        )
        self.scale = 1.0 / math.sqrt(d)

    def reference(self, exact: bool) -> dict[str, torch.Tensor]:
        """fp64 out, dq, dk, dv of the condensation mask (``exact``) or of plain causal
        attention (the no-cut peers) on the case's own (rounded) inputs."""

        def build():
            layout = self.layout if exact else CondensationLayout.causal(self.layout.cu_seqlens)
            return oracle(self.q, self.k, self.v, self.do, layout, self.scale)

        return self.cached(f"oracle:{exact}", build)

    def cached(self, key: str, build: Callable):
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    @property
    def padder(self) -> Padder:
        return self.cached("padder", lambda: Padder(self.layout))

    def free(self):
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

    @property
    def input_bytes(self) -> int:
        return sum(x.numel() * x.element_size() for x in (*self.leaves, self.do)) + self.extra_bytes


@dataclass
class Peer:
    name: str
    exact: bool
    prepare: Callable[[Case, bool, object], Run]  # (case, with gradients, CLI settings) -> Run
    available: Callable[[torch.device], str | None] = lambda device: None  # None, or why not


def _leaves(xs, grad: bool):
    return tuple(x.detach().clone().requires_grad_(grad) for x in xs)


def _setup_ms(case: Case, key: str, fn: Callable, args) -> float:
    return case.cached(
        f"setup_ms:{key}",
        lambda: bench(
            fn,
            case.device,
            warmup_ms=args.warmup_ms,
            rep_ms=args.rep_ms,
            cpu_reps=args.cpu_reps,
            cpu_clock=args.cpu_clock,
        )["ms"],
    )


def _repeat_kv(x: torch.Tensor, groups: int) -> torch.Tensor:
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def _cuda_only(name: str):
    def available(device):
        return None if device.type == "cuda" else f"{name}: needs a CUDA device"

    return available


# ----------------------------------------------------------------------------------------
# btok
# ----------------------------------------------------------------------------------------
def _btok(backend: str, note: str = "", route: str | None = None, **options) -> Callable:
    """btok's ``condensation_attention(backend=...)`` with explicit options (recorded with
    the forward, so the backward uses them too); with ``route``, the decomposition of
    ``btok_kernels.condensation.sdpa`` on that route. The mask build column times what a
    new batch costs: the layout, plus the decomposition's segment plan."""

    def prepare(case: Case, grad: bool, args) -> Run:
        q, k, v = _leaves((case.q, case.k, case.v), grad)
        wl, device = case.wl, case.device
        width = wl.num_heads * wl.head_dim
        if backend != "sdpa":
            plan = None
        elif route == "varlen":
            plan = varlen_plan
        else:
            plan = lambda layout: padded_plan(layout, width)  # noqa: E731

        def build():
            layout = CondensationLayout.from_lengths(wl.query_lens, wl.num_btoks, wl.target_lens, device)
            return plan(layout) if plan else layout

        setup_ms = _setup_ms(case, f"layout:{route}:{backend}", build, args)
        if route is None:

            def fn():
                return condensation_attention(
                    q, k, v, case.layout, softmax_scale=case.scale, backend=backend, **options
                )
        else:

            def fn():
                return condensation_attention_sdpa(q, k, v, case.layout, case.scale, route=route)

        built = "CondensationLayout.from_lengths" + (" + segment plan" if plan else "")
        return Run(
            fn,
            (q, k, v),
            case.do,
            lambda x: x,
            setup_ms=setup_ms,
            note=(f"{note}; " if note else "") + f"mask build = {built}",
        )

    return prepare


def _btok_cuda_available(device):
    if device.type != "cuda":
        return "btok cuda: needs a CUDA device"
    x = torch.zeros(1, 1, 8, device=device, dtype=torch.bfloat16)  # the CUDA kernels take fp16/bf16
    try:
        condensation_attention(x, x, x, CondensationLayout.causal([0, 1], device=device), backend="cuda")
    except NotImplementedError as e:
        return f"btok cuda: not built ({str(e).split(':')[0]})"
    return None


def _btok_sdpa(case: Case, grad: bool, args) -> Run:
    """The sdpa decomposition: on the CPU, ``backend="sdpa"`` as users call it (the CPU flash
    kernel in chunks); on CUDA its padded-SDPA route (the flash-attn route is its own peer)."""
    if case.device.type == "cpu":
        return _btok("sdpa", "sdpa decomposition: CPU flash kernel in chunks")(case, grad, args)
    return _btok("sdpa", "sdpa decomposition: padded SDPA, is_causal", route="sdpa")(case, grad, args)


def _fa_decomposition_available(device):
    if device.type != "cuda":
        return "fa_varlen_decomposition: needs a CUDA device"
    if find_flash_varlen() is None:
        return f"fa_varlen_decomposition: none of {', '.join(FLASH_VARLEN_MODULES)} imports"
    return None


# ----------------------------------------------------------------------------------------
# FlexAttention
# ----------------------------------------------------------------------------------------
def _block_mask(case: Case, args):
    from torch.nn.attention.flex_attention import create_block_mask

    t = case.wl.total_tokens
    mask_mod = condensation_mask_mod(case.layout)
    build = lambda: create_block_mask(mask_mod, None, None, t, t, device=case.device)  # noqa: E731
    return case.cached("block_mask", build), _setup_ms(case, "block_mask", build, args)


_FLEX: dict = {}


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
        return Run(
            fn,
            (q, k, v),
            to_bhsd(case.do),
            from_bhsd,
            extra_bytes=bm_bytes,
            setup_ms=bm_ms,
            note="compiled; mask build = create_block_mask",
        )

    return prepare


def _flex_flash_available(device):
    if device.type != "cuda":
        return "flex FLASH backend: needs a CUDA device"
    _, why = optional_import("flash_attn.cute")
    return f"flex FLASH backend: {why}" if why else None


# ----------------------------------------------------------------------------------------
# dense masks: SDPA and eager
# ----------------------------------------------------------------------------------------
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
            build = lambda: condensation_mask(case.layout)[None, None]  # noqa: E731
            xs, do, unpack = (to_bhsd(case.q), to_bhsd(case.k), to_bhsd(case.v)), to_bhsd(case.do), from_bhsd
        mask = case.cached(f"dense_mask:{padded}", build)
        mask_ms = _setup_ms(case, f"dense_mask:{padded}", build, args)
        q, k, v = _leaves(xs, grad)

        def fn():
            return F.scaled_dot_product_attention(
                q, _repeat_kv(k, groups), _repeat_kv(v, groups), attn_mask=mask, scale=case.scale
            )

        note = "bool mask, K/V repeated to Hq (timed)" if groups > 1 else "bool mask"
        return Run(
            fn, (q, k, v), do, unpack, extra_bytes=mask.numel() * mask.element_size(), setup_ms=mask_ms, note=note
        )

    return prepare


def _eager(case: Case, grad: bool, args) -> Run:
    # rough fwd+bwd footprint: ~20 bytes per score (bf16 scores, fp32 softmax, bf16 probs, gradients)
    wl = case.wl
    need = 20 * wl.num_seqs * wl.num_heads * wl.max_seqlen**2
    budget = 0.6 * torch.cuda.mem_get_info(case.device)[0] if case.device.type == "cuda" else args.cpu_eager_gib * 2**30
    if need > budget:
        raise Skip(f"skipped: would need ~{need / 2**30:.1f} GiB (budget {budget / 2**30:.1f} GiB)")
    groups = wl.num_heads // wl.num_kv_heads
    p = case.padder

    def build():
        allowed = padded_dense_mask(case.layout)
        return torch.zeros(allowed.shape, dtype=case.dtype, device=case.device).masked_fill_(
            ~allowed, torch.finfo(case.dtype).min
        )

    mask = case.cached("additive_mask", build)
    mask_ms = _setup_ms(case, "additive_mask", build, args)
    q, k, v = _leaves((p.pad(case.q), p.pad(case.k), p.pad(case.v)), grad)

    def fn():
        # transformers' eager_attention_forward: repeat K/V, additive mask, softmax in fp32
        s = torch.matmul(q, _repeat_kv(k, groups).transpose(2, 3)) * case.scale + mask
        return torch.matmul(torch.softmax(s, dim=-1, dtype=torch.float32).to(q.dtype), _repeat_kv(v, groups))

    return Run(
        fn,
        (q, k, v),
        p.pad(case.do),
        p.unpad,
        extra_bytes=mask.numel() * mask.element_size(),
        setup_ms=mask_ms,
        note="additive mask, padded",
    )


# ----------------------------------------------------------------------------------------
# no-cut speed references: SDPA causal, flash-attn varlen causal
# ----------------------------------------------------------------------------------------
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


# flash-attn varlen builds: FA4 ships as flash_attn.cute, FA3 as flash_attn_interface
FA_MODULES = {"fa4_varlen": "flash_attn.cute", "fa3_varlen": "flash_attn_interface", "fa2_varlen": "flash_attn"}


def _fa_available(name: str):
    def available(device):
        if device.type != "cuda":
            return f"{name}: needs a CUDA device"
        mod, why = optional_import(FA_MODULES[name])
        if mod is None:
            return f"{name}: {why}"
        if not hasattr(mod, "flash_attn_varlen_func"):
            return f"{name}: {FA_MODULES[name]} has no flash_attn_varlen_func"
        return None

    return available


def accepted_kwargs(func: Callable, kwargs: dict) -> tuple[dict, list[str]]:
    """The entries of ``kwargs`` that ``func``'s signature accepts (all of them when it takes
    ``**kwargs`` or has no readable signature), and the names left out. flash-attn builds
    differ (FA4's ``flash_attn.cute`` has had no ``max_seqlen_q`` / ``max_seqlen_k``)."""
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return dict(kwargs), []
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return dict(kwargs), []
    names = {
        n
        for n, p in params.items()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    return {k: v for k, v in kwargs.items() if k in names}, [k for k in kwargs if k not in names]


def _fa_varlen(name: str) -> Callable:
    def prepare(case: Case, grad: bool, args) -> Run:
        func = optional_import(FA_MODULES[name])[0].flash_attn_varlen_func
        q, k, v = _leaves((case.q, case.k, case.v), grad)
        cu, m = case.layout.cu_seqlens, case.layout.max_seqlen
        kwargs, dropped = accepted_kwargs(
            func,
            {
                "cu_seqlens_q": cu,
                "cu_seqlens_k": cu,
                "max_seqlen_q": m,
                "max_seqlen_k": m,
                "softmax_scale": case.scale,
                "causal": True,
            },
        )

        def fn():
            res = func(q, k, v, **kwargs)
            return res[0] if isinstance(res, tuple) else res

        note = "no cut (reference speed)" + (f"; not in its signature: {', '.join(dropped)}" if dropped else "")
        return Run(fn, (q, k, v), case.do, lambda x: x, note=note)

    return prepare


PEERS = [
    Peer("btok_triton", True, _btok("triton"), _cuda_only("btok triton")),
    Peer(
        "btok_triton_autotune",
        True,
        _btok("triton", "autotune=True (tiles timed on the first call, outside the timed region)", autotune=True),
        _cuda_only("btok triton"),
    ),
    Peer(
        "btok_triton_fused_dq",
        True,
        _btok("triton", "fused_dq=True (dQ by atomics in the dK/dV kernel)", fused_dq=True),
        _cuda_only("btok triton"),
    ),
    Peer("btok_cuda", True, _btok("cuda"), _btok_cuda_available),
    Peer("btok_sdpa", True, _btok_sdpa),
    Peer(
        "fa_varlen_decomposition",
        True,
        _btok(
            "sdpa",
            "flash-attn varlen decomposition: query+BTok rows causal over [0, t), target rows "
            "bottom-right causal over [b, L)",
            route="varlen",
        ),
        _fa_decomposition_available,
    ),
    Peer(
        "btok_reference",
        True,
        _btok("reference", "the chunked fp32 reference (btok's oracle, not a fast path)"),
        lambda d: None if d.type == "cpu" else "btok_reference: CPU only",
    ),
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
