"""Package metadata lives in pyproject.toml; this file adds the optional CUDA extension
``btok_kernels._cuda`` (the kernels in csrc/, behind ``backend="cuda"``).

The extension is built only when a CUDA build of torch and nvcc are present at build time
(``pip install --no-deps --no-build-isolation -e .`` on a GPU machine), for sm_80 and sm_90
unless ``TORCH_CUDA_ARCH_LIST`` says otherwise. Otherwise one line says why and nothing is
built; ``BTOK_SKIP_CUDA_BUILD=1`` skips it on purpose. Nothing here downloads or runs git.
"""

import os
import sys

from setuptools import setup

SOURCES = ["csrc/binding.cpp", "csrc/kernels/fwd.cu", "csrc/kernels/bwd.cu"]
# sm_80 (A100) and sm_90 (H100/H200) machine code, plus sm_90 PTX for newer GPUs to JIT
DEFAULT_ARCH_FLAGS = [
    "-gencode=arch=compute_80,code=sm_80",
    "-gencode=arch=compute_90,code=[sm_90,compute_90]",
]


def _skip(reason: str) -> dict:
    print(
        f"btok: not building the CUDA extension btok_kernels._cuda: {reason}; "
        "backend='cuda' stays unavailable (the Triton and reference backends are unaffected)",
        file=sys.stderr,
    )
    return {}


def cuda_extension_kwargs() -> dict:
    """``ext_modules`` and ``cmdclass`` for setup(), or {} when the extension is not built."""
    if os.environ.get("BTOK_SKIP_CUDA_BUILD", "0") == "1":
        return _skip("BTOK_SKIP_CUDA_BUILD=1")
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        return _skip("torch is not importable at build time (an isolated build: use --no-build-isolation)")
    if torch.version.cuda is None:
        return _skip(f"torch {torch.__version__} is a CPU-only build")
    if cpp_extension.CUDA_HOME is None:
        return _skip("nvcc was not found (set CUDA_HOME or put nvcc on PATH)")
    # cpp_extension adds the TORCH_CUDA_ARCH_LIST flags itself when no arch flag is given
    arch_flags = [] if os.environ.get("TORCH_CUDA_ARCH_LIST") else DEFAULT_ARCH_FLAGS
    extension = cpp_extension.CUDAExtension(
        name="btok_kernels._cuda",
        sources=SOURCES,  # relative: setuptools wants paths inside the project
        extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "-lineinfo", *arch_flags]},
    )
    return {"ext_modules": [extension], "cmdclass": {"build_ext": cpp_extension.BuildExtension}}


if __name__ == "__main__":  # setuptools runs this file as __main__; tests import it
    setup(**cuda_extension_kwargs())
