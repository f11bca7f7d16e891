#!/usr/bin/env python
"""Registers, spills and shared memory of every kernel at its default tiles, without a GPU.

    python benchmarks/kernel_resources.py                   # sm_90, bf16, head dims 64/128/256
    python benchmarks/kernel_resources.py --arch 80 --dtypes fp16,fp32 --head-dims 80,128

Triton compiles the kernels to a cubin for the named target on any machine; cuobjdump reads
the resource usage back. A kernel that spills (stack or local bytes > 0) or needs more shared
memory than the target has is a tuning problem visible before any GPU time is spent. These
are compiler figures, not timings.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import torch

from btok_kernels.condensation.aot import KERNELS, kernel_resources

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
SHARED_LIMIT = {80: 163 * 1024, 86: 99 * 1024, 89: 99 * 1024, 90: 227 * 1024}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", type=int, default=90, help="compute capability x10 (default 90: H100/H200)")
    ap.add_argument("--dtypes", default="bf16")
    ap.add_argument("--head-dims", default="64,128,256")
    ap.add_argument("--group", type=int, default=6, help="GQA group size Hq / Hkv (default 6, as Qwen2-VL-2B)")
    args = ap.parse_args(argv)
    limit = SHARED_LIMIT.get(args.arch)
    print(f"sm_{args.arch}, GQA group {args.group}; compiler figures, not timings")
    print(f"{'kernel':<10} {'dtype':<5} {'D':>4} {'regs':>5} {'stack B':>8} {'local B':>8} {'shared KiB':>11}  note")
    worst = 0
    for name in args.dtypes.split(","):
        for d in (int(x) for x in args.head_dims.split(",")):
            for kernel in KERNELS:
                r = kernel_resources(kernel, DTYPES[name], d, args.group, arch=args.arch)
                notes = []
                if r.spills:
                    notes.append("spills")
                if limit is not None and r.shared_bytes > limit:
                    notes.append(f"shared memory over the sm_{args.arch} limit")
                worst = max(worst, len(notes))
                print(
                    f"{kernel:<10} {name:<5} {d:>4} {r.registers:>5} {r.stack_bytes:>8} {r.local_bytes:>8} "
                    f"{r.shared_bytes / 1024:>11.1f}  {', '.join(notes)}"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
