"""Public entry point of condensation-mask attention, its custom ops and its autograd.

``btok::condensation_fwd`` and ``btok::condensation_bwd`` are registered with
``torch.library`` (with fake implementations), so ``torch.compile`` sees one node per call
instead of a graph break, whatever the backend.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Mapping

import torch

from ..layout import CondensationLayout
from .naive import condensation_bwd_naive, condensation_fwd_naive

__all__ = ["condensation_attention", "BACKENDS"]

BACKENDS = ("auto", "triton", "cuda", "sdpa", "reference")
_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 256


def _lse_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


# ----------------------------------------------------------------------------------------
# kernel options: explicit, recorded for the backward
# ----------------------------------------------------------------------------------------
_TILE_KERNELS = ("fwd", "dkdv", "dq")
_TILE_FIELDS = ("BLOCK_M", "BLOCK_N", "num_warps", "num_stages")


def _env_flag(name: str) -> bool:
    value = os.environ.get(name, "").strip()
    if value not in ("", "0", "1"):
        raise ValueError(f"environment variable {name} must be 0 or 1, got {value!r}")
    return value == "1"


def _check_tiles(tiles) -> None:
    if not isinstance(tiles, Mapping):
        raise ValueError(f"tiles must be a dict like {{'fwd': {{'BLOCK_M': 64}}}}, got {type(tiles).__name__}")
    for kernel, cfg in tiles.items():
        if kernel not in _TILE_KERNELS:
            raise ValueError(f"tiles: unknown kernel {kernel!r}; the kernels are {_TILE_KERNELS}")
        if not isinstance(cfg, Mapping):
            raise ValueError(f"tiles[{kernel!r}] must be a dict of {_TILE_FIELDS}, got {type(cfg).__name__}")
        for field, value in cfg.items():
            if field not in _TILE_FIELDS:
                raise ValueError(f"tiles[{kernel!r}]: unknown field {field!r}; the fields are {_TILE_FIELDS}")
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"tiles[{kernel!r}][{field!r}] must be a positive int, got {value!r}")
            if field.startswith("BLOCK") and (value < 16 or value & (value - 1)):
                raise ValueError(f"tiles[{kernel!r}][{field!r}] must be a power of two >= 16, got {value}")


def _encode_tiles(tiles) -> list[int]:
    """Tile overrides as the flat int list a custom-op schema carries (0 = default)."""
    tiles = tiles or {}
    return [int(tiles.get(kernel, {}).get(field, 0)) for kernel in _TILE_KERNELS for field in _TILE_FIELDS]


def _decode_tiles(flat: list[int]) -> dict | None:
    it = iter(flat)
    tiles = {kernel: {field: v for field in _TILE_FIELDS if (v := next(it))} for kernel in _TILE_KERNELS}
    tiles = {kernel: cfg for kernel, cfg in tiles.items() if cfg}
    return tiles or None


# ----------------------------------------------------------------------------------------
# custom ops
# ----------------------------------------------------------------------------------------
# Every kernel option is an argument of the forward op, so that the autograd context
# records it and the backward op runs with exactly the forward's options.
@torch.library.custom_op("btok::condensation_fwd", mutates_args=())
def _condensation_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    btok_start: torch.Tensor,
    target_start: torch.Tensor,
    causal: bool,
    softmax_scale: float,
    backend: str,
    fused_dq: bool,
    autotune: bool,
    gqa_split: int,
    tiles: list[int],
) -> tuple[torch.Tensor, torch.Tensor]:
    if backend == "triton":
        from .parallel import condensation_fwd_triton

        return condensation_fwd_triton(
            q,
            k,
            v,
            cu_seqlens,
            btok_start,
            target_start,
            softmax_scale,
            causal=causal,
            autotune=autotune,
            tiles=_decode_tiles(tiles),
        )
    if backend == "cuda":
        from .cuda import condensation_fwd_cuda

        return condensation_fwd_cuda(q, k, v, cu_seqlens, btok_start, target_start, softmax_scale, causal)
    return condensation_fwd_naive(q, k, v, cu_seqlens, btok_start, target_start, softmax_scale, causal)


@_condensation_fwd.register_fake
def _(
    q, k, v, cu_seqlens, btok_start, target_start, causal, softmax_scale, backend, fused_dq, autotune, gqa_split, tiles
):
    lse = q.new_empty((q.shape[1], q.shape[0]), dtype=_lse_dtype(q.dtype))
    return torch.empty_like(q), lse


@torch.library.custom_op("btok::condensation_bwd", mutates_args=())
def _condensation_bwd(
    do: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    cu_seqlens: torch.Tensor,
    btok_start: torch.Tensor,
    target_start: torch.Tensor,
    causal: bool,
    softmax_scale: float,
    backend: str,
    fused_dq: bool,
    autotune: bool,
    gqa_split: int,
    tiles: list[int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if backend == "triton":
        from .parallel import condensation_bwd_triton

        return condensation_bwd_triton(
            do,
            q,
            k,
            v,
            out,
            lse,
            cu_seqlens,
            btok_start,
            target_start,
            softmax_scale,
            causal=causal,
            autotune=autotune,
            tiles=_decode_tiles(tiles),
            gqa_split=gqa_split or None,
            fused_dq=fused_dq,
        )
    if backend == "cuda":
        from .cuda import condensation_bwd_cuda

        return condensation_bwd_cuda(do, q, k, v, out, lse, cu_seqlens, btok_start, target_start, softmax_scale, causal)
    return condensation_bwd_naive(do, q, k, v, out, lse, cu_seqlens, btok_start, target_start, softmax_scale, causal)


@_condensation_bwd.register_fake
def _(
    do,
    q,
    k,
    v,
    out,
    lse,
    cu_seqlens,
    btok_start,
    target_start,
    causal,
    softmax_scale,
    backend,
    fused_dq,
    autotune,
    gqa_split,
    tiles,
):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, cu_seqlens, btok_start, target_start, *options = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu_seqlens, btok_start, target_start)
    ctx.options = options  # causal, softmax_scale, backend, fused_dq, autotune, gqa_split, tiles
    ctx.mark_non_differentiable(lse)


def _backward(ctx, dout, dlse):
    q, k, v, out, lse, cu_seqlens, btok_start, target_start = ctx.saved_tensors
    dq, dk, dv = _condensation_bwd(dout, q, k, v, out, lse, cu_seqlens, btok_start, target_start, *ctx.options)
    return (dq, dk, dv) + (None,) * (3 + len(ctx.options))


_condensation_fwd.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------
# public function
# ----------------------------------------------------------------------------------------
@functools.cache
def _triton_importable() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        env = os.environ.get("BTOK_BACKEND", "").strip()
        if env:
            if env not in BACKENDS:
                raise ValueError(f"environment variable BTOK_BACKEND must be one of {BACKENDS}, got {env!r}")
            backend = env
    if backend == "auto":
        # the CUDA C++ kernels stand in for Triton only where Triton does not import
        backend = ("triton" if _triton_importable() else "cuda") if device.type == "cuda" else "sdpa"
    if backend == "cuda":
        from .cuda import require_extension

        require_extension()  # or CUDABackendUnavailable (a NotImplementedError) saying why not
    if backend == "triton" and device.type != "cuda" and os.environ.get("TRITON_INTERPRET", "0") != "1":
        raise ValueError(
            f"backend='triton' needs CUDA tensors (got tensors on {device}); on the CPU set "
            "TRITON_INTERPRET=1 before importing triton, or use backend='reference'"
        )
    return backend


def _check_inputs(q, k, v, layout, backend):
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 3:
            raise ValueError(f"{name} must be 3-D [total_tokens, heads, head_dim], got shape {tuple(x.shape)}")
    if not isinstance(layout, CondensationLayout):
        raise TypeError(f"layout must be a CondensationLayout, got {type(layout).__name__}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k and v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k and v must be on one device, got {q.device}, {k.device}, {v.device}")
    if layout.device != q.device:
        raise ValueError(f"layout is on {layout.device} but q is on {q.device}; move it once with layout.to(q.device)")
    total, hq, d = q.shape
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape, got {tuple(k.shape)} and {tuple(v.shape)}")
    if k.shape[0] != total or k.shape[2] != d:
        raise ValueError(f"k must have shape [{total}, Hkv, {d}] to match q {tuple(q.shape)}, got {tuple(k.shape)}")
    hkv = k.shape[1]
    if hkv == 0 or hq % hkv != 0:
        raise ValueError(f"the number of query heads ({hq}) must be a multiple of the number of KV heads ({hkv})")
    if total != layout.total_tokens:
        raise ValueError(f"q has {total} tokens but the layout packs {layout.total_tokens} (cu_seqlens[-1])")
    if backend == "triton":
        if q.dtype not in _KERNEL_DTYPES:
            raise ValueError(f"backend='triton' supports dtypes {_KERNEL_DTYPES}, got {q.dtype}")
        if d % 8 != 0 or not 8 <= d <= MAX_HEAD_DIM:
            raise ValueError(
                f"backend='triton' supports head dims that are multiples of 8 up to {MAX_HEAD_DIM}, got {d}"
            )
    elif not q.dtype.is_floating_point:
        raise ValueError(f"q, k and v must be floating point, got {q.dtype}")


def _resolve_options(fused_dq, autotune, gqa_split, tiles, group: int) -> tuple[bool, bool, int, list[int]]:
    """Validated kernel options, the environment filling in those left None; read once per
    call, here, never in the launchers."""
    if fused_dq is None:
        fused_dq = _env_flag("BTOK_FUSED_DQ")
    if autotune is None:
        autotune = _env_flag("BTOK_AUTOTUNE")
    for name, value in (("fused_dq", fused_dq), ("autotune", autotune)):
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be a bool or None, got {value!r}")
    if gqa_split is not None:
        if isinstance(gqa_split, bool) or not isinstance(gqa_split, int) or gqa_split < 1:
            raise ValueError(f"gqa_split must be a positive int or None, got {gqa_split!r}")
        if group % gqa_split:
            raise ValueError(f"gqa_split={gqa_split} must divide the GQA group size Hq // Hkv = {group}")
    if tiles is not None:
        _check_tiles(tiles)
    return fused_dq, autotune, gqa_split or 0, _encode_tiles(tiles)


def condensation_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: CondensationLayout,
    *,
    softmax_scale: float | None = None,
    backend: str = "auto",
    return_lse: bool = False,
    fused_dq: bool | None = None,
    autotune: bool | None = None,
    gqa_split: int | None = None,
    tiles: dict | None = None,
):
    """Exact attention under the condensation mask on a packed varlen batch.

    For each sequence of ``layout`` (positions relative to its start, ``b`` its BTok start,
    ``t`` its target start), row ``i`` attends key ``j`` iff ``j <= i`` and not
    ``(i >= t and j < b)``: query and BTok rows are causal, target rows see only the BToks
    and the target before them. Every row sees at least itself. A bidirectional layout
    (:meth:`CondensationLayout.bidirectional`, ``layout.is_causal`` False) lets every row
    attend every key of its own sequence.

    Args:
        q: ``[total_tokens, Hq, D]``, fp16/bf16/fp32 (fp64 with the reference backend).
        k, v: ``[total_tokens, Hkv, D]``, ``Hq % Hkv == 0`` (GQA/MQA without repeating K/V).
        layout: :class:`CondensationLayout` on q's device.
        softmax_scale: defaults to ``1 / sqrt(D)``.
        backend: ``"auto"`` (Triton for CUDA tensors, or ``"cuda"`` where Triton does not
            import; ``"sdpa"`` otherwise; the environment variable ``BTOK_BACKEND`` overrides
            it), ``"triton"``, ``"cuda"`` (the CUDA C++ kernels of ``csrc/``, fp16/bf16, when
            the extension is built: :mod:`btok_kernels.condensation.cuda`; else it raises
            ``CUDABackendUnavailable`` saying why), ``"sdpa"`` (exact and fast on the CPU:
            causal calls of PyTorch's fused attention, or flash-attn varlen on CUDA when it imports;
            :mod:`btok_kernels.condensation.sdpa`) or ``"reference"`` (the chunked
            PyTorch oracle).
        return_lse: also return the log-sum-exp of each row's scaled scores, fp32
            ``[Hq, total_tokens]`` (natural log; not differentiable).

    Options of the Triton kernels (the other backends validate and ignore them). They are
    recorded with the forward, so its backward runs with the same options whatever the
    environment is by then:
        fused_dq: compute dQ inside the dK/dV kernel with fp32 atomic adds instead of a
            separate dQ kernel (fewer matmuls). The order of the atomic adds varies from run
            to run, so dQ is not bitwise deterministic (it stays within rounding).
            None: the environment variable ``BTOK_FUSED_DQ=1`` turns it on; off otherwise.
        autotune: time candidate tiles on the first call for each shape bucket (next powers
            of two of the token count and of the mean sequence length), head dim, GQA
            group and dtype, and keep the fastest. None: ``BTOK_AUTOTUNE=1`` turns it on.
        gqa_split: how many dK/dV programs share one KV head, a divisor of ``Hq // Hkv``
            (None: chosen from the number of programs and the GPU's SM count).
        tiles: per-kernel launch overrides, e.g. ``{"fwd": {"BLOCK_M": 64, "BLOCK_N": 32},
            "dkdv": {"num_warps": 4}}`` (kernels "fwd", "dkdv", "dq"; fields ``BLOCK_M``,
            ``BLOCK_N`` (powers of two >= 16), ``num_warps``, ``num_stages``). A kernel
            with explicit tiles is not autotuned.

    Returns:
        ``out`` ``[total_tokens, Hq, D]`` in q's dtype, and ``lse`` if ``return_lse``.
        Differentiable in q, k and v.
    """
    if not isinstance(backend, str):
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if not isinstance(q, torch.Tensor):
        raise TypeError(f"q must be a torch.Tensor, got {type(q).__name__}")
    backend = _resolve_backend(backend, q.device)
    _check_inputs(q, k, v, layout, backend)
    if softmax_scale is None:
        softmax_scale = 1.0 / math.sqrt(q.shape[-1])
    elif not (isinstance(softmax_scale, (int, float)) and math.isfinite(softmax_scale) and softmax_scale > 0):
        raise ValueError(f"softmax_scale must be a positive finite number, got {softmax_scale!r}")
    options = _resolve_options(fused_dq, autotune, gqa_split, tiles, q.shape[1] // k.shape[1])
    q, k, v = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k, v))
    if backend == "sdpa":
        from .sdpa import condensation_attention_sdpa

        return condensation_attention_sdpa(q, k, v, layout, float(softmax_scale), return_lse)
    out, lse = _condensation_fwd(
        q,
        k,
        v,
        layout.cu_seqlens,
        layout.btok_start,
        layout.target_start,
        layout.is_causal,
        float(softmax_scale),
        backend,
        *options,
    )
    return (out, lse) if return_lse else out
