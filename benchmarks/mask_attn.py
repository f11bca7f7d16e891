#!/usr/bin/env python
"""Condensation-mask attention: btok against its peers, on the same inputs, in one run.

    python benchmarks/mask_attn.py            # GPU: every workload; CPU: the CPU configuration
    python benchmarks/mask_attn.py --quick    # GPU: every workload and peer, fewer sweep lengths
    python -m benchmarks.mask_attn --tiny     # seconds: one tiny pack, every peer once (tests)

Workloads, peers, the FLOP formula and the targets: benchmarks/README.md. Per row: median
ms of the forward and of forward+backward, TFLOP/s over the pairs the mask keeps, peak
memory (CUDA), speed-up over Flex's Triton backend, the per-batch mask build, and the
error against a float64 oracle (every row, btok's included). A row above ``--tol`` is
FAILED and shows no timing.

Outputs under ``--out-dir`` (default benchmarks/out): ``<stem>.json`` / ``.csv`` (device,
versions, date, command, rows; rewritten after each workload, so a run cut short keeps
its rows) and ``<stem>.png`` (with matplotlib). The default stem carries the UTC time and
an existing stem gets a suffix: no run overwrites another.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from benchmarks.harness import (
    DEFAULT_OUT_DIR,
    add_cpu_timing_arguments,
    apply_cpu_timing,
    environment,
    run_stem,
    write_outputs,
)
from benchmarks.measure import add_speedups, measure_rounds
from benchmarks.peers import PEERS, Case
from benchmarks.plot import plot_attention
from benchmarks.table import ATTENTION_COLUMNS, attention_text_rows, format_table
from benchmarks.workloads import Workload, all_workloads, workload_groups

SWEEP_LENGTHS = (1024, 2048, 4096, 8192, 16384)
QUICK_SWEEP_LENGTHS = (1024, 4096, 16384)
SWEEP_HEAD_DIMS = (64, 128)
CPU_SWEEP_LENGTHS = (256, 512)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="GPU: every workload and peer, sweep lengths "
        f"{QUICK_SWEEP_LENGTHS}, shorter timing (under five minutes with compiles)",
    )
    ap.add_argument(
        "--tiny",
        action="store_true",
        help="the 'tiny' workload only, one timed call per row: checks that every peer runs",
    )
    ap.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    ap.add_argument(
        "--dtype", default=None, choices=("bf16", "fp16", "fp32"), help="default: bf16 on CUDA, fp32 on CPU"
    )
    ap.add_argument(
        "--workloads",
        default=None,
        help="comma list of workload names or groups (design, sweep, cpu, tiny); default: design,sweep "
        "on CUDA, cpu,sweep on CPU",
    )
    ap.add_argument("--sweep-lengths", default=None, help="comma list (default: 1k..16k on CUDA, 256,512 on CPU)")
    ap.add_argument("--head-dims", default=None, help="sweep head dims (default 64,128)")
    ap.add_argument(
        "--peers", default=None, help="comma list of peers (default: all): " + ", ".join(p.name for p in PEERS)
    )
    ap.add_argument(
        "--tol",
        type=float,
        default=None,
        help="bound on the relative L2 errors against the fp64 oracle (default 2e-2 for 16-bit, 1e-3 fp32)",
    )
    ap.add_argument("--warmup-ms", type=float, default=None, help="do_bench warmup (default 25, quick 10)")
    ap.add_argument("--rep-ms", type=float, default=None, help="do_bench rep (default 100, quick 40)")
    ap.add_argument("--cpu-reps", type=int, default=None, help="timed calls per row on CPU (default 5, tiny 1)")
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="CPU: measure every row of a workload this many times, alternating the order of the rows, "
        "and keep each row's median round (a protocol for shared machines; default 1)",
    )
    add_cpu_timing_arguments(ap)
    ap.add_argument("--cpu-eager-gib", type=float, default=2.0, help="eager's memory budget on CPU")
    ap.add_argument(
        "--no-dedupe",
        dest="dedupe",
        action="store_false",
        help="also run sdpa_dense_packed on one-sequence workloads (same as padded)",
    )
    ap.add_argument(
        "--time-budget-s",
        type=float,
        default=None,
        help="start no new workload that would end past this many seconds, taking it to last as "
        "long as the previous one (default: 270 with --quick, none otherwise)",
    )
    ap.add_argument("--seed", type=int, default=0, help="seed of q, k, v, dO")
    ap.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR)
    ap.add_argument("--stem", default=None, help="output file stem (default mask_attn[_quick]_<device>_<UTC time>)")
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args(argv)
    apply_cpu_timing(args)
    args.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    on_gpu = args.device.type == "cuda"
    args.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[
        args.dtype or ("bf16" if on_gpu else "fp32")
    ]
    if args.tol is None:
        args.tol = 1e-3 if args.dtype == torch.float32 else 2e-2
    if args.time_budget_s is None and args.quick:
        args.time_budget_s = 270.0
    if args.warmup_ms is None:
        args.warmup_ms = 10 if args.quick or args.tiny else 25
    if args.rep_ms is None:
        args.rep_ms = 40 if args.quick or args.tiny else 100
    if args.cpu_reps is None:
        args.cpu_reps = 1 if args.tiny else 5
    if args.rounds < 1:
        raise SystemExit(f"--rounds must be >= 1, got {args.rounds}")
    default_lengths = (QUICK_SWEEP_LENGTHS if args.quick else SWEEP_LENGTHS) if on_gpu else CPU_SWEEP_LENGTHS
    args.sweep_lengths = _ints(args.sweep_lengths) if args.sweep_lengths else default_lengths
    args.head_dims = _ints(args.head_dims) if args.head_dims else SWEEP_HEAD_DIMS
    args.workloads = args.workloads or ("tiny" if args.tiny else "design,sweep" if on_gpu else "cpu,sweep")
    args.name = "mask_attn" + ("_quick" if args.quick else "_tiny" if args.tiny else "") + f"_{args.device.type}"
    return args


def _ints(s: str) -> tuple[int, ...]:
    return tuple(int(x) for x in s.split(",") if x.strip())


def select_workloads(args) -> list[Workload]:
    groups = workload_groups(args.sweep_lengths, args.head_dims)
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


def select_peers(args) -> list:
    if not args.peers:
        return list(PEERS)
    wanted = [x.strip() for x in args.peers.split(",") if x.strip()]
    unknown = set(wanted) - {p.name for p in PEERS}
    if unknown:
        raise SystemExit(f"unknown peers {sorted(unknown)}: choose from {[p.name for p in PEERS]}")
    return [p for p in PEERS if p.name in wanted]


def main(argv=None) -> dict:
    t_start = time.perf_counter()
    args = parse_args(argv)
    device = args.device
    workloads = select_workloads(args)
    stem = run_stem(args.out_dir, args.name, args.stem)
    meta = environment(device)
    meta.update(
        dtype=str(args.dtype).replace("torch.", ""),
        tol=args.tol,
        quick=args.quick,
        tiny=args.tiny,
        cpu_clock=args.cpu_clock,
        flops="kept pairs x 4 D Hq forward; backward 2.5x forward",
        oracle="float64 dense, benchmarks/oracle.py",
        peers_not_run=[],
    )
    print(
        f"# mask_attn on {meta['gpu'] or 'CPU'} ({device}, {meta['cpu_threads']} threads), {meta['dtype']}, "
        f"torch {meta['torch']}, triton {meta.get('triton')}, {meta['date_utc']}"
    )
    if device.type == "cpu":
        print(
            "# CPU configuration: small shapes; btok's exact CPU path is btok_sdpa (backend='sdpa'); the Triton "
            "kernels need CUDA; peak memory is not measured on CPU"
        )
    active = []
    for p in select_peers(args):
        why = p.available(device)
        if why:
            why = f"{p.name}: {why.split(': ', 1)[-1]}"
            print(f"# not run: {why}")
            meta["peers_not_run"].append(why)
        else:
            active.append(p)
    rows: list[dict] = []
    last_s = 0.0  # wall time of the previous workload: the next one is assumed to take as long
    for i, wl in enumerate(workloads):
        elapsed = time.perf_counter() - t_start
        if args.time_budget_s and elapsed + last_s > args.time_budget_s:
            left = [w.name for w in workloads[i:]]
            meta["workloads_not_run"] = left
            print(
                f"# time budget of {args.time_budget_s:.0f} s: {elapsed:.0f} s spent and the last workload took "
                f"{last_s:.0f} s: not run: {', '.join(left)}"
            )
            break
        t_wl = time.perf_counter()
        print(
            f"# {wl.describe()}, kept pairs {wl.kept_pairs():,} ({wl.kept_pairs() / wl.causal_pairs():.1%} of causal)",
            flush=True,
        )
        case = Case(wl, device, args.dtype, args.seed)
        rows += measure_rounds(case, active, args)
        case.free()
        del case
        if device.type == "cuda":
            torch.cuda.empty_cache()
        last_s = time.perf_counter() - t_wl
        # this run's rows so far: a run killed by an outer timeout keeps them
        add_speedups(rows)
        meta.update(wall_s=time.perf_counter() - t_start, workloads_done=i + 1, workloads_total=len(workloads))
        write_outputs(rows, meta, stem)
    add_speedups(rows)
    print()
    print(format_table(attention_text_rows(rows), ATTENTION_COLUMNS))
    meta["wall_s"] = time.perf_counter() - t_start
    paths = write_outputs(rows, meta, stem)
    if not args.no_plot:
        png = stem.with_name(stem.name + ".png")
        why = plot_attention(rows, png)
        if why:
            print(f"# {why}")
        else:
            paths.append(png)
    print(f"# wrote {', '.join(str(p) for p in paths)}")
    print(f"# total wall time {meta['wall_s']:.1f} s (compiles included)")
    return {"rows": rows, "meta": meta, "paths": paths}


if __name__ == "__main__":
    main()
