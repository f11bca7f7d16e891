#!/usr/bin/env python
"""What the transformers backend adds on top of the kernel: reshaping, layout handling, checks.

    python benchmarks/backend_overhead.py              # GPU: image_2B and long_8k shapes, bf16
    python benchmarks/backend_overhead.py --device cpu # small shapes, the CPU kernel backend (sdpa)

Times, on the same inputs, ``condensation_attention`` on packed ``[T, H, D]`` tensors (the
kernel alone) and ``btok_model.btok_attention_forward`` on the ``[1, H, T, D]`` views a
decoder layer hands it (``q.view(1, T, H, D).transpose(1, 2)``) with ``btok_layout=``: the
difference is the backend's own cost per attention call. Forward and forward+backward
medians; JSON beside the other benchmark outputs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

import btok_model
from benchmarks.harness import DEFAULT_OUT_DIR, bench, environment, rel_l2, run_stem, write_outputs
from benchmarks.table import format_table
from benchmarks.workloads import all_workloads, cpu_workloads
from btok_kernels import condensation_attention

COLUMNS = [
    ("workload", "workload", ""),
    ("mode", "mode", ""),
    ("kernel_ms", "kernel ms", ".4f"),
    ("backend_ms", "backend ms", ".4f"),
    ("overhead_ms", "overhead ms", ".4f"),
    ("overhead_pct", "overhead %", ".1f"),
    ("max_err", "rel err", ".1e"),
]


def measure(wl, device, dtype, args) -> list[dict]:
    layout = wl.layout(device)
    g = torch.Generator().manual_seed(0)
    t, hq, hkv, d = wl.total_tokens, wl.num_heads, wl.num_kv_heads, wl.head_dim
    q, k, v, do = (torch.randn(t, h, d, generator=g).to(device=device, dtype=dtype) for h in (hq, hkv, hkv, hq))
    module = SimpleNamespace(is_causal=True, config=None)
    scale = d**-0.5

    def kernel(q, k, v):
        return condensation_attention(q, k, v, layout, softmax_scale=scale)

    def backend(q, k, v):
        # the layout a decoder layer produces: [1, T, H, D] projections seen as [1, H, T, D]
        out, _ = btok_model.btok_attention_forward(
            module,
            q[None].transpose(1, 2),
            k[None].transpose(1, 2),
            v[None].transpose(1, 2),
            None,
            scaling=scale,
            btok_layout=layout,
        )
        return out[0]

    rows = []
    leaves = [x.detach().clone().requires_grad_() for x in (q, k, v)]
    err = rel_l2(backend(*leaves), kernel(*leaves))
    for mode in ("fwd", "fwd_bwd"):
        times = {}
        for name, fn in (("kernel", kernel), ("backend", backend)):
            if mode == "fwd":

                def call(fn=fn):
                    with torch.no_grad():
                        fn(q, k, v)
            else:

                def call(fn=fn):
                    fn(*leaves).backward(do)

            times[name] = bench(
                call,
                device,
                grad_to_none=leaves if mode == "fwd_bwd" else None,
                rep_ms=args.rep_ms,
                cpu_reps=args.cpu_reps,
            )["ms"]
        rows.append(
            dict(
                workload=wl.name,
                mode=mode,
                kernel_ms=times["kernel"],
                backend_ms=times["backend"],
                overhead_ms=times["backend"] - times["kernel"],
                overhead_pct=100 * (times["backend"] - times["kernel"]) / times["kernel"],
                max_err=err,
            )
        )
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    ap.add_argument("--workloads", default="image_2B,long_8k", help="GPU workloads (benchmarks/README.md names)")
    ap.add_argument("--rep-ms", type=float, default=200)
    ap.add_argument("--cpu-reps", type=int, default=3)
    ap.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR)
    ap.add_argument("--stem", default=None, help="output file stem (default backend_overhead_<device>_<UTC time>)")
    args = ap.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    workloads = (
        [all_workloads()[n] for n in args.workloads.split(",")] if device.type == "cuda" else cpu_workloads()[:1]
    )
    meta = dict(environment(device), dtype=str(dtype).removeprefix("torch."))
    print(f"# backend overhead on {meta.get('gpu') or 'CPU'}, {meta['dtype']}, {meta['date_utc']}")
    rows = [row for wl in workloads for row in measure(wl, device, dtype, args)]
    print(format_table(rows, COLUMNS))
    stem = run_stem(args.out_dir, f"backend_overhead_{device.type}", args.stem)
    for path in write_outputs(rows, meta, stem):
        print(f"# wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
