#!/usr/bin/env python
"""One training step (forward + backward) of a 2B-shaped decoder on the image_2B batch.

    python benchmarks/model_step.py --quick    # GPU: Qwen2-VL-2B text dims, 4 layers, bf16
    python benchmarks/model_step.py            # CPU: a tiny decoder of the same family, fp32
    python benchmarks/model_step.py --layers 28

Rows (:data:`ROWS`), same weights (random, seeded), same tokens:

- ``btok_triton`` -- the packed ``[1, T]`` batch, ``position_ids`` restarting per sequence,
  ``btok_layout=`` (the condensation mask from a few integers per sequence; on the CPU the
  kernel backend is ``"sdpa"``, btok's exact CPU path);
- ``sdpa`` -- the padded ``[n, Lmax]`` batch with a dense 4D boolean condensation mask;
- ``flex_attention`` -- the packed batch with a BlockMask from the same ``mask_mod`` as
  ``mask_attn.py`` (its ``create_block_mask`` time is shown apart, not in the step).

A row is a function that builds its inputs and returns the step (see :class:`Row`); add
one by appending to :data:`ROWS`.

The step: ``model.model`` -> hidden states of the real tokens only (padding rows dropped) ->
``lm_head`` -> next-token cross-entropy within each sequence (fp32) -> backward. Dropping the
padding rows before the LM head gives every row the same LM-head work, so the differences
are attention plus the decoder layers' work on padding. Each row is checked first against a
float64 copy of the model (``sdpa``, math kernel, with the dense mask): relative error of the
loss and relative L2 of the gradient of layer 0's ``q_proj`` (which every attention
backward reaches). Peak memory: ``steps.MEMORY_NOTE`` (CUDA: ``max_memory_allocated``; CPU:
peak RSS growth, measured after the timing). The BTok-level step (InfoNCE + generative loss,
the two-pass formulation as a row) is ``btok_step.py``.

Dimensions (Qwen2-VL-2B text model): hidden 1536, 12 heads, 2 KV heads, head dim 128,
intermediate 8960, vocab 151936, tied embeddings, RoPE theta 1e6 (plain 1D RoPE: M-RoPE only
changes the position ids, not the attention work). ``--layers`` of its 28 decoder layers.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.nn.functional as F

from benchmarks.harness import (
    DEFAULT_OUT_DIR,
    add_cpu_timing_arguments,
    apply_cpu_timing,
    bench,
    environment,
    optional_import,
    run_stem,
)
from benchmarks.model_setup import CPU_TINY, QWEN2VL_2B_TEXT
from benchmarks.model_setup import build_decoder as build_model
from benchmarks.peers import padded_dense_mask
from benchmarks.steps import Prepared, Reference, Row, Skip, check_run_options, report_rows, run_rows, train_step
from benchmarks.table import MODEL_COLUMNS
from benchmarks.workloads import Workload, all_workloads
from btok_kernels.mask import condensation_mask_mod

__all__ = ["QWEN2VL_2B_TEXT", "CPU_TINY", "ROWS", "Row", "Prepared", "Skip", "Batch", "build_model", "main"]


def set_attention(model, name: str) -> None:
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(name)
    else:
        model.config._attn_implementation = name


class Batch:
    """The same tokens packed ``[1, T]`` and padded ``[n, Lmax]``, with next-token labels."""

    def __init__(self, wl: Workload, vocab: int, device: torch.device, seed: int):
        g = torch.Generator().manual_seed(seed)
        self.layout = wl.layout(device)
        lens, n, lmax = wl.seqlens, wl.num_seqs, wl.max_seqlen
        ids = [torch.randint(0, vocab, (length,), generator=g) for length in lens]
        self.packed_ids = torch.cat(ids)[None].to(device)
        self.packed_pos = torch.cat([torch.arange(length) for length in lens])[None].to(device)
        self.padded_ids = torch.zeros(n, lmax, dtype=torch.long)
        for s, x in enumerate(ids):
            self.padded_ids[s, : len(x)] = x
        self.padded_ids = self.padded_ids.to(device)
        self.padded_pos = torch.arange(lmax)[None].expand(n, lmax).contiguous().to(device)
        # row i of a sequence predicts token i + 1 of the same sequence; its last row predicts nothing
        self.labels = torch.cat([torch.cat([x[1:], torch.tensor([-100])]) for x in ids]).to(device)
        self.real_rows = torch.tensor(
            [s * lmax + i for s, length in enumerate(lens) for i in range(length)], device=device
        )


def _loss(model, batch: Batch, hidden: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy (fp32, fp64 for the fp64 oracle) of the real tokens' hidden
    states ``[rows, H]``, packed order."""
    logits = model.lm_head(hidden)
    return F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), batch.labels, ignore_index=-100)


def _packed_layout(model, batch: Batch, device) -> Prepared:
    why = optional_import("btok_model")[1]
    if why:
        raise Skip(f"btok_model not importable: {why}")

    def loss():
        h = model.model(
            input_ids=batch.packed_ids, position_ids=batch.packed_pos, btok_layout=batch.layout
        ).last_hidden_state
        return _loss(model, batch, h[0])

    kernel = "; kernel backend 'sdpa' on CPU" if device.type == "cpu" else ""
    return Prepared(loss, notes=[f"packed, btok_layout (no mask){kernel}"])


def _padded_dense(model, batch: Batch, device) -> Prepared:
    t0 = time.perf_counter()
    mask = padded_dense_mask(batch.layout)
    setup_ms = (time.perf_counter() - t0) * 1e3

    def loss():
        h = model.model(
            input_ids=batch.padded_ids, position_ids=batch.padded_pos, attention_mask=mask
        ).last_hidden_state
        return _loss(model, batch, h.reshape(-1, h.shape[-1])[batch.real_rows])

    return Prepared(loss, setup_ms, ["padded, dense 4D bool mask (build not in the step)"])


def _packed_block_mask(model, batch: Batch, device) -> Prepared:
    if device.type == "cpu":
        raise Skip("FlexAttention has no backward on CPU")
    from torch.nn.attention.flex_attention import create_block_mask

    t = batch.layout.total_tokens
    mask_mod = condensation_mask_mod(batch.layout)
    build = lambda: create_block_mask(mask_mod, None, None, t, t, device=device)  # noqa: E731
    block_mask = build()

    def loss():
        h = model.model(
            input_ids=batch.packed_ids, position_ids=batch.packed_pos, attention_mask=block_mask
        ).last_hidden_state
        return _loss(model, batch, h[0])

    return Prepared(
        loss,
        bench(build, device, rep_ms=100)["ms"],
        ["packed, BlockMask; mask build = create_block_mask (not in the step)"],
    )


ROWS = [
    Row("btok_triton", "btok_triton", _packed_layout),
    Row("sdpa", "sdpa", _padded_dense),
    Row("flex_attention", "flex_attention", _packed_block_mask),
]


def probe_grads(model) -> dict[str, torch.Tensor]:
    """The gradient checked: layer 0's ``q_proj`` weight (every attention backward reaches it)."""
    return {"grad": model.model.layers[0].self_attn.q_proj.weight.grad}


def oracle_step(base, batch: Batch, device: torch.device) -> Reference:
    """Loss and probe gradient of a float64 copy of the model (sdpa with the dense mask)."""
    oracle = copy.deepcopy(base).to(device, torch.float64)
    set_attention(oracle, "sdpa")
    loss = train_step(_padded_dense(oracle, batch, device).loss)()["loss"].item()
    return Reference({"loss": loss}, {name: g.detach().clone() for name, g in probe_grads(oracle).items()})


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="shorter timing")
    ap.add_argument("--device", default=None)
    ap.add_argument("--layers", type=int, default=None, help="decoder layers (default 4 on CUDA, 2 on CPU)")
    ap.add_argument("--vocab", type=int, default=None, help="vocabulary (default 151936; 1024 on CPU)")
    ap.add_argument("--rows", default=",".join(r.name for r in ROWS), help="comma list of rows")
    ap.add_argument("--workload", default=None, help="default image_2B on CUDA, cpu_pack on CPU")
    ap.add_argument(
        "--tol",
        type=float,
        default=None,
        help="bound on the loss and gradient relative errors (default 5e-2 bf16, 1e-4 fp32)",
    )
    ap.add_argument("--rep-ms", type=float, default=None, help="do_bench rep (default 500, quick 200)")
    ap.add_argument("--cpu-reps", type=int, default=5)
    add_cpu_timing_arguments(ap)
    ap.add_argument(
        "--no-memory", dest="cpu_memory", action="store_false", help="CPU: skip the peak-RSS pass after the timing"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR)
    ap.add_argument("--stem", default=None, help="output file stem (default model_step_<device>_<UTC time>)")
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args(argv)
    apply_cpu_timing(args)
    args.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gpu = args.device.type == "cuda"
    args.layers = (4 if gpu else 2) if args.layers is None else args.layers
    args.dims = dict(QWEN2VL_2B_TEXT if gpu else CPU_TINY)
    if args.vocab:
        args.dims["vocab_size"] = args.vocab
    args.dtype = torch.bfloat16 if gpu else torch.float32
    if args.tol is None:
        args.tol = 5e-2 if gpu else 1e-4
    args.workload = args.workload or ("image_2B" if gpu else "cpu_pack")
    args.rep_ms = args.rep_ms or (200 if args.quick else 500)
    check_run_options(args, ROWS)
    return args


def main(argv=None) -> dict:
    t_start = time.perf_counter()
    args = parse_args(argv)
    device = args.device
    wl = all_workloads()[args.workload]
    stem = run_stem(args.out_dir, f"model_step_{device.type}", args.stem)
    meta = environment(device)
    meta.update(
        workload=wl.describe(),
        layers=args.layers,
        dims=args.dims,
        dtype=str(args.dtype).replace("torch.", ""),
        step="model.model -> real rows -> lm_head -> fp32 CE -> backward",
        tol=args.tol,
        oracle="float64 copy of the model, sdpa with the dense 4D mask",
        cpu_clock=args.cpu_clock,
    )
    print(
        f"# model_step on {meta['gpu'] or 'CPU'} ({meta['cpu_threads']} threads), torch {meta['torch']}, "
        f"transformers {meta.get('transformers')}, {meta['date_utc']}"
    )
    print(f"# {wl.describe()}; Qwen2 decoder {args.layers} layers, {args.dims}")
    batch = Batch(wl, args.dims["vocab_size"], device, args.seed)
    base = build_model(args.dims, args.layers, args.seed)
    reference = oracle_step(base, batch, device)
    model = base.to(device, args.dtype)
    del base
    if device.type == "cuda":
        torch.cuda.empty_cache()
    meta["wall_s"] = time.perf_counter() - t_start
    fixed = {"workload": args.workload, "layers": args.layers, "tokens": batch.layout.total_tokens}
    results = run_rows(
        [row for row in ROWS if row.name in args.rows],
        model,
        batch,
        reference,
        probe_grads,
        set_attention,
        args,
        meta,
        stem,
        fixed,
        ["sdpa", "flex_attention"],
    )
    return report_rows(results, meta, stem, MODEL_COLUMNS, plot=not args.no_plot)


if __name__ == "__main__":
    main()
