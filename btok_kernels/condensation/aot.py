"""Ahead-of-time compilation of the kernels for a named NVIDIA target, without a GPU.

Triton's compiler and ptxas run on any machine, so the kernels can be compiled to a cubin
for sm_90 (H100/H200) or sm_80 here: the tests use it to catch errors that only the
compiler sees (the interpreter runs Python), and ``benchmarks/kernel_resources.py`` reports
registers, spills and shared memory per tile configuration.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from . import parallel as P

__all__ = ["KernelResources", "compile_kernel", "kernel_resources", "KERNELS"]

_DTYPE = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
_INT_PTRS = {"cu_seqlens", "btok_start", "target_start"}
_FP32_PTRS = {"LSE", "DELTA", "DQ_ACC"}
_FLOATS = {"qk_scale", "sm_scale"}

KERNELS = P.KERNEL_NAMES  # "fwd", "dkdv", "dq"


@dataclass
class KernelResources:
    kernel: str
    registers: int
    stack_bytes: int
    local_bytes: int
    shared_bytes: int

    @property
    def spills(self) -> bool:
        return self.stack_bytes > 0 or self.local_bytes > 0


def _signature(fn, dtype: str, constexprs: dict) -> dict:
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in _INT_PTRS:
            sig[name] = "*i32"
        elif name in _FP32_PTRS:
            sig[name] = "*fp32"
        elif name[0].isupper():
            sig[name] = f"*{dtype}"
        elif name in _FLOATS:
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
    return sig


def compile_kernel(
    kernel: str,
    dtype: torch.dtype,
    head_dim: int,
    group: int = 1,
    config: dict | None = None,
    arch: int = 90,
    gqa_split: int = 1,
    fused_dq: bool = False,
    causal: bool = True,
):
    """Compiles one kernel ("fwd", "dkdv" or "dq") with the launchers' default GPU
    configuration for ``(head_dim, dtype)``, updated by ``config`` (``BLOCK_M``, ``BLOCK_N``,
    ``num_warps``, ``num_stages``), for ``sm_{arch}``; ``causal=False`` compiles the
    bidirectional variant. Returns Triton's compiled kernel (``.asm["cubin"]``,
    ``.asm["ptx"]``, ``.metadata``)."""
    fn = P._FIXED[kernel]
    if not hasattr(fn, "cache_key"):
        raise RuntimeError(
            "compile_kernel needs the real Triton compiler: run it in a process where "
            "TRITON_INTERPRET is unset or 0 when triton is first imported"
        )
    cfg = P.gpu_configs(head_dim, dtype)[kernel]
    precision = P.dot_precision(dtype, interpreting=False)
    cfg.update(config or {})
    block_d = P._block_d(head_dim)
    constexprs = dict(
        G=group,
        HEAD_DIM=head_dim,
        BLOCK_D=block_d,
        BLOCK_M=cfg["BLOCK_M"],
        BLOCK_N=cfg["BLOCK_N"],
        PRECISION=precision,
        CAUSAL=causal,
    )
    if kernel == "dkdv":
        constexprs["HEADS"] = group // gqa_split
        constexprs["FUSED_DQ"] = fused_dq
    sig = _signature(fn, _DTYPE[dtype], constexprs)
    # what the launcher specialises on: 16-byte aligned pointers and strides that are multiples of 16
    aligned = [
        (i,)
        for i, name in enumerate(fn.arg_names)
        if sig[name].startswith("*") or (name.startswith("stride") and head_dim % 16 == 0)
    ]
    src = ASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs={k: [["tt.divisibility", 16]] for k in aligned})
    target = GPUTarget("cuda", arch, 32)
    return triton.compile(src, target=target, options=dict(num_warps=cfg["num_warps"], num_stages=cfg["num_stages"]))


def kernel_resources(
    kernel: str,
    dtype: torch.dtype,
    head_dim: int,
    group: int = 1,
    config: dict | None = None,
    arch: int = 90,
    gqa_split: int = 1,
    fused_dq: bool = False,
    causal: bool = True,
) -> KernelResources:
    """Registers per thread, spill stack/local bytes and shared memory of one compiled kernel."""
    compiled = compile_kernel(kernel, dtype, head_dim, group, config, arch, gqa_split, fused_dq, causal)
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.cubin")
        with open(path, "wb") as f:
            f.write(compiled.asm["cubin"])
        report = subprocess.run(
            [cuobjdump, "--dump-resource-usage", path], capture_output=True, text=True, check=True
        ).stdout

    def field(name):
        m = re.search(rf"{name}:(\d+)", report)
        return int(m.group(1)) if m else 0

    return KernelResources(kernel, field("REG"), field("STACK"), field("LOCAL"), compiled.metadata.shared)
