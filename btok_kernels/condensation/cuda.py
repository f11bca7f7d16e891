"""The CUDA C++ backend (``backend="cuda"``): lazy loader and launchers of the compiled ops.

The kernels live in ``csrc/`` and are built into the extension ``btok_kernels._cuda`` by
``pip install --no-deps --no-build-isolation -e .`` on a machine with a CUDA build of torch
and nvcc (``setup.py``). The extension registers the torch ops ``btok_cuda::fwd`` and
``btok_cuda::bwd``; it is loaded on first use, never at import, and when it is missing
:class:`CUDABackendUnavailable` says why.

Supported: fp16 and bf16 (fp32 accumulation; fp32 inputs are refused), head dims that are
multiples of 8 up to 256, GQA/MQA (``Hq % Hkv == 0``), causal condensation layouts and
bidirectional ones (``causal=False``). Launchers take the same arguments, in the same order,
as the Triton launchers in ``parallel.py``.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import shutil

import torch

__all__ = [
    "CUDABackendUnavailable",
    "EXTENSION",
    "is_available",
    "require_extension",
    "condensation_fwd_cuda",
    "condensation_bwd_cuda",
]

EXTENSION = "btok_kernels._cuda"
DTYPES = (torch.float16, torch.bfloat16)
MAX_HEAD_DIM = 256
_FAKES: list = []  # the fake implementations, registered with the first successful load


class CUDABackendUnavailable(NotImplementedError):
    """``backend="cuda"`` was asked for but the extension is not built or does not load."""


def _why_not_built() -> str:
    causes = []
    if torch.version.cuda is None:
        causes.append(f"this torch ({torch.__version__}) is a CPU-only build")
    if os.environ.get("BTOK_SKIP_CUDA_BUILD", "0") == "1":
        causes.append("BTOK_SKIP_CUDA_BUILD=1 is set")
    if shutil.which("nvcc") is None and not os.environ.get("CUDA_HOME"):
        causes.append("nvcc is not on PATH and CUDA_HOME is not set")
    if not causes:
        causes.append("the package was installed without building it (an isolated build has no torch)")
    return (
        f"the extension {EXTENSION} was not built ({'; '.join(causes)}). Build it on a machine with a CUDA "
        "build of torch and nvcc: pip install --no-deps --no-build-isolation -e ."
    )


@functools.cache
def _load() -> str | None:
    """Loads the extension once. Returns None when its ops are registered, else why not."""
    spec = importlib.util.find_spec(EXTENSION)
    if spec is None or spec.origin is None:
        return _why_not_built()
    try:
        torch.ops.load_library(spec.origin)
    except (OSError, RuntimeError) as e:
        return f"the extension {spec.origin} does not load: {e}"
    if not _FAKES:  # once per process, even if the loader's cache is cleared
        _FAKES.append(torch.library.register_fake("btok_cuda::fwd")(_fwd_fake))
        _FAKES.append(torch.library.register_fake("btok_cuda::bwd")(_bwd_fake))
    return None


def is_available() -> bool:
    """Whether the compiled ops can be called (loads the extension on first call)."""
    return _load() is None


def require_extension() -> None:
    """Loads the extension, or raises :class:`CUDABackendUnavailable` saying why it cannot."""
    why = _load()
    if why is not None:
        raise CUDABackendUnavailable(f"backend='cuda': the CUDA C++ fallback is not part of this build: {why}")


def _fwd_fake(q, k, v, cu_seqlens, btok_start, target_start, softmax_scale, causal=True):
    return q.new_empty(q.shape), q.new_empty((q.shape[1], q.shape[0]), dtype=torch.float32)


def _bwd_fake(dout, q, k, v, out, lse, cu_seqlens, btok_start, target_start, softmax_scale, causal=True):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    """What the CUDA kernels support, as ValueErrors naming the argument (the ops check
    again, with TORCH_CHECK)."""
    if q.dtype not in DTYPES:
        raise ValueError(
            f"backend='cuda' supports dtypes {DTYPES}, got {q.dtype} (float32 runs on backend='triton' or 'reference')"
        )
    d = q.shape[-1]
    if d % 8 != 0 or not 8 <= d <= MAX_HEAD_DIM:
        raise ValueError(f"backend='cuda' supports head dims that are multiples of 8 up to {MAX_HEAD_DIM}, got {d}")
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.device.type != "cuda":
            raise ValueError(f"backend='cuda' needs CUDA tensors, got {name} on {x.device}")


def _aligned(x: torch.Tensor) -> torch.Tensor:
    """``x`` itself when the kernels can read it in place (contiguous last dim, 16-byte
    aligned rows and heads), else a contiguous copy."""
    if x.stride(-1) == 1 and x.stride(0) % 8 == 0 and x.stride(1) % 8 == 0 and x.data_ptr() % 16 == 0:
        return x
    return x.clone(memory_format=torch.contiguous_format)


def condensation_fwd_cuda(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    btok_start: torch.Tensor,
    target_start: torch.Tensor,
    softmax_scale: float,
    causal: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward on the CUDA kernels.

    Args:
        q: ``[T, Hq, D]`` fp16/bf16 on a CUDA device; k, v: ``[T, Hkv, D]``, same dtype.
        cu_seqlens: int32 ``[n + 1]``; btok_start, target_start: int32 ``[n]`` (a
            :class:`~btok_kernels.CondensationLayout`'s tensors, on q's device).
        softmax_scale: the scale of the scores.
        causal: False for a bidirectional layout (every row sees its whole sequence).

    Returns:
        ``out`` ``[T, Hq, D]`` in q's dtype and ``lse`` fp32 ``[Hq, T]`` (natural log).
    """
    check_inputs(q, k, v)
    require_extension()
    q, k, v = (_aligned(x) for x in (q, k, v))
    return torch.ops.btok_cuda.fwd(q, k, v, cu_seqlens, btok_start, target_start, float(softmax_scale), bool(causal))


def condensation_bwd_cuda(
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
    causal: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward on the CUDA kernels, from the forward's ``out`` and ``lse``; deterministic.

    Args:
        do: ``[T, Hq, D]``, the gradient of ``out``; the other arguments as in
            :func:`condensation_fwd_cuda`, ``lse`` fp32 ``[Hq, T]`` from it.

    Returns:
        ``dq, dk, dv`` in the dtypes and shapes of ``q, k, v``.
    """
    check_inputs(q, k, v)
    require_extension()
    do, q, k, v, out = (_aligned(x) for x in (do, q, k, v, out))
    if lse.stride(-1) != 1:
        lse = lse.contiguous()
    return torch.ops.btok_cuda.bwd(
        do, q, k, v, out, lse, cu_seqlens, btok_start, target_start, float(softmax_scale), bool(causal)
    )
