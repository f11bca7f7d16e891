#!/usr/bin/env python
"""The two floors of each workload: FLOPs over the kept pairs and compulsory HBM bytes.

    python benchmarks/floors.py [--tflops 812] [--tbps 3.35]

Prints a Markdown table (the one in benchmarks/NOTES.md): kept pairs, FLOPs and bytes of the
forward and of forward+backward, and the time each would take at the given matmul rate and
memory bandwidth, and the share of visited 128x128 tiles that need a per-element mask.
These are arithmetic lower bounds, not measurements.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.workloads import design_workloads, sweep_workloads, tile_counts


def floor_rows(tflops: float, tbps: float, lengths=(1024, 2048, 4096, 8192, 16384), head_dims=(64, 128)):
    rows = []
    for w in design_workloads() + sweep_workloads(lengths, head_dims):
        r = {
            "workload": w.name,
            "tokens": w.total_tokens,
            "kept": w.kept_pairs(),
            "kept_frac": w.kept_pairs() / w.causal_pairs(),
        }
        full, partial = tile_counts(w)
        r["partial_frac"] = partial / (full + partial)
        for mode in ("fwd", "fwd_bwd"):
            f, b = w.flops(mode), w.bytes_moved(mode)
            r[f"{mode}_gflop"] = f / 1e9
            r[f"{mode}_mb"] = b / 1e6
            r[f"{mode}_flop_ms"] = f / (tflops * 1e12) * 1e3
            r[f"{mode}_byte_ms"] = b / (tbps * 1e12) * 1e3
            r[f"{mode}_intensity"] = f / b
        rows.append(r)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--tflops",
        type=float,
        default=812.0,
        help="dense bf16 matmul rate (812: measured on H100, benchmarks/README.md)",
    )
    ap.add_argument("--tbps", type=float, default=3.35, help="HBM bandwidth in TB/s (H100 SXM spec 3.35; H200 4.8)")
    args = ap.parse_args(argv)
    print(
        "| workload | tokens | kept pairs (/causal) | fwd GFLOP | fwd MB | fwd FLOP floor ms | fwd byte floor ms "
        "| f+b GFLOP | f+b MB | f+b FLOP floor ms | f+b byte floor ms | partial tiles (128x128) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in floor_rows(args.tflops, args.tbps):
        print(
            f"| {r['workload']} | {r['tokens']:,} | {r['kept']:,} ({r['kept_frac']:.1%}) | {r['fwd_gflop']:.1f} | "
            f"{r['fwd_mb']:.1f} | {r['fwd_flop_ms']:.4f} | {r['fwd_byte_ms']:.4f} | {r['fwd_bwd_gflop']:.1f} | "
            f"{r['fwd_bwd_mb']:.1f} | {r['fwd_bwd_flop_ms']:.4f} | {r['fwd_bwd_byte_ms']:.4f} | "
            f"{r['partial_frac']:.1%} |"
        )


if __name__ == "__main__":
    main()
