#!/usr/bin/env python
"""encode() throughput: ``BTokModel.encode`` with K BToks against last-token pooling of the same backbone.

    python benchmarks/encode.py --quick      # GPU: Qwen2-VL-2B text dims, 4 layers, bf16
    python benchmarks/encode.py              # CPU: a tiny decoder of the same family, fp32
    python benchmarks/encode.py --num-btoks 16 --workloads long

The same texts, the same weights, the same tokenizer and batch size, three methods:

- ``btok`` -- ``BTokModel.encode(texts)``: ``[text | K BToks]``, the mean of the K BTok
  states (the method's embedding);
- ``last_token`` -- the same pipeline without BToks (:class:`DirectLastToken`: the same
  tokenizer call, batches, forward, copies and normalisation as ``BTokModel.encode``, the
  last text token pooled): the decisive baseline, whose only differences are the K tokens
  and the pooled rows;
- ``pooled_embedder`` -- the library's no-BTok baseline
  (:class:`btok_model.embedder.pooled.PooledEmbedder`, last-token pooling) on
  ``model.backbone`` and ``model.tokenizer``: what a user would compare with.

each in two modes, with the same attention implementation on both sides: ``packed`` (one
``[1, T]`` row per batch, ``"btok_triton"``) and ``padded`` (right-padded ``[B, S]`` rows
with an attention mask, ``"sdpa"``). Texts are words of a synthetic word-level tokenizer,
so a text of ``n`` words is exactly ``n`` tokens; lengths uniform in the workload's range
from ``torch.Generator().manual_seed(seed)``:

=========  ===================  =======================================
workload   tokens per text      texts (GPU / GPU --quick / CPU)
=========  ===================  =======================================
``long``   256-1280 (CPU 32-160)  1024 / 256 / 48 (image_2B's query lengths; cpu_pack's on CPU)
``short``  16-64                  4096 / 1024 / 192 (short text queries)
=========  ===================  =======================================

Per workload and mode, each method's embeddings are first checked against a copy of the
model in a wider dtype (float32 for 16-bit rows, float64 for float32 rows) embedding the
first ``--check-texts`` texts one at a time (no padding, no packing) with ``"sdpa"``:
relative L2 error at most ``--tol``, or the row is FAILED and not timed. Then the
methods' ``encode`` calls alternate, ``--reps`` each (wall clock; on CUDA ``encode``
returns after the GPU is done): texts/s and input tokens/s (tokens of the texts, BToks
not counted) from the median call.

``time_ratio`` = btok time / ``last_token`` time, medians (``time_ratio_min``: of the
fastest calls; ``time_ratio_pooled``: / the ``pooled_embedder`` time); ``predicted_ratio``
= the tokens the btok forward processes / the tokens the last-token forward processes
(packed: ``sum(n + K) / sum(n)``; padded: the padded batches' tokens, ``sum(B * (max + K))
/ sum(B * max)``): the cost the K extra tokens explain. ``code_overhead`` = time_ratio /
predicted_ratio - 1 is what they do not. Target (GPU): btok throughput within 1% of
last-token pooling (``time_ratio`` <= 1 / 0.99).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from benchmarks.harness import (
    CPU_CLOCKS,
    DEFAULT_OUT_DIR,
    add_cpu_timing_arguments,
    apply_cpu_timing,
    environment,
    rel_l2,
    run_stem,
    write_outputs,
)
from benchmarks.model_setup import CPU_TINY, QWEN2VL_2B_TEXT, build_btok_model, word_texts
from benchmarks.table import format_table

__all__ = [
    "EncodeWorkload",
    "WORKLOADS",
    "MODES",
    "METHODS",
    "DirectLastToken",
    "predicted_tokens",
    "main",
    "COLUMNS",
    "WITHIN",
    "ENCODE_TARGET",
]

MODES = {"packed": "btok_triton", "padded": "sdpa"}  # mode -> attention implementation (both methods)
METHODS = ("btok", "last_token", "pooled_embedder")  # btok first; last_token: the decisive baseline
ENCODE_TARGET = 0.99  # btok throughput / last-token throughput, at least (GPU)
WITHIN = 1 / ENCODE_TARGET  # the most time_ratio may be


@dataclass(frozen=True)
class EncodeWorkload:
    """Texts of ``lengths`` tokens (inclusive range), how many per device configuration."""

    name: str
    lengths: tuple[int, int]
    cpu_lengths: tuple[int, int]
    texts: tuple[int, int, int]  # GPU, GPU --quick, CPU

    def draw(self, gpu: bool, quick: bool, seed: int, n: int | None = None) -> list[int]:
        """The text lengths, drawn with ``torch.Generator().manual_seed(seed)``."""
        lo, hi = self.lengths if gpu else self.cpu_lengths
        count = n if n is not None else self.texts[1 if quick else 0] if gpu else self.texts[2]
        g = torch.Generator().manual_seed(seed)
        return torch.randint(lo, hi + 1, (count,), generator=g).tolist()


WORKLOADS = {
    "long": EncodeWorkload("long", (256, 1280), (32, 160), (1024, 256, 48)),
    "short": EncodeWorkload("short", (16, 64), (16, 64), (4096, 1024, 192)),
}


def predicted_tokens(lengths: list[int], extra: int, batch_size: int, mode: str) -> int:
    """Tokens one forward over the texts processes with ``extra`` tokens appended to each:
    ``sum(n + extra)`` packed; padded, the texts sorted longest first (as ``encode`` does)
    in batches of ``batch_size``, each padded to its longest."""
    if mode == "packed":
        return sum(lengths) + extra * len(lengths)
    ordered = sorted(lengths, reverse=True)
    total = 0
    for start in range(0, len(ordered), batch_size):
        batch = ordered[start : start + batch_size]
        total += len(batch) * (batch[0] + extra)
    return total


def set_attention(model, name: str) -> None:
    from btok_model.embedder.backbone import transformers_model

    transformers_model(model.backbone).set_attn_implementation(name)


class DirectLastToken:
    """Last-token pooling through ``BTokModel.encode``'s own pipeline with K = 0: the same
    tokenizer call, longest-first batches, forward to the last-layer states, pinned asynchronous
    copies and ``pool_btok_states``, so that its only differences from ``btok`` are the K BTok
    tokens and which states are pooled.

    Args:
        model: the BTok model whose backbone and tokenizer are used (its BToks are not).
    """

    def __init__(self, model):
        from btok_model.embedder import BTokCollator

        self.model = model
        self.collator = BTokCollator(model.tokenizer, [], with_targets=False)

    def encode(self, texts: list[str], batch_size: int, packed: bool) -> torch.Tensor:
        """fp32 ``[N, H]`` L2-normalised last-token states, in input order, on the CPU."""
        from btok_model.embedder import pool_btok_states
        from btok_model.embedder.encode import encode_in_length_order

        model, k = self.model, self.model.config.num_btoks
        sequences = [s[:-k] for s in model.collator.encode_for_embedding(texts)[0]]

        def embed(rows: list[int]) -> torch.Tensor:
            last = self._last_states([sequences[i] for i in rows], packed, model.device)
            return pool_btok_states(last[:, None], "last")

        return encode_in_length_order(model, [len(s) for s in sequences], batch_size, (model.embedding_dim,), embed)

    def _last_states(self, rows: list[list[int]], packed: bool, device: torch.device) -> torch.Tensor:
        """``[n, H]`` last-layer states of each row's last token."""
        from btok_model.embedder.packed_batch import to_device

        model = self.model
        if packed:
            batch = self.collator.pack_sequences(rows)
            layout = batch["btok_layout"].to(device)
            ids, positions = (to_device(batch[key], device) for key in ("input_ids", "position_ids"))
            hidden = model._last_hidden_states(ids, positions, layout=layout)
            last = torch.tensor(layout.host_cu_seqlens[1:], dtype=torch.long) - 1
        else:
            batch = self.collator.pad_sequences(rows)
            lens, width = batch["attention_mask"].sum(1), batch["input_ids"].shape[1]
            ids, positions, mask = (
                to_device(batch[key], device) for key in ("input_ids", "position_ids", "attention_mask")
            )
            hidden = model._last_hidden_states(ids, positions, attention_mask=mask)
            last = torch.arange(len(rows)) * width + lens - 1
        return hidden[to_device(last, device)]


def _encoders(model, batch_size: int):
    """``{method: (texts, packed) -> fp32 [N, H]}``: the BTok model, the direct last-token
    encode and the library's last-token baseline, on the same backbone and tokenizer."""
    from btok_model.embedder import PooledConfig, PooledEmbedder

    direct = DirectLastToken(model)
    pooled = PooledEmbedder(model.backbone, model.tokenizer, PooledConfig(pooling="last"))
    return {
        "btok": lambda texts, packed: model.encode(texts, batch_size=batch_size, packed=packed),
        "last_token": lambda texts, packed: direct.encode(texts, batch_size, packed),
        # packs under "btok_triton", pads otherwise: the mode follows the attention implementation
        "pooled_embedder": lambda texts, packed: pooled.encode(texts, batch_size=batch_size),
    }


def reference_embeddings(model, texts: list[str], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Each method's embeddings of ``texts`` from a ``dtype`` copy of ``model`` (the same
    weights, computed wider), one text per forward (no padding, no packing), ``"sdpa"``."""
    ref = copy.deepcopy(model).to(dtype=dtype)
    set_attention(ref, "sdpa")
    encoders = _encoders(ref, 1)
    out = {method: encoders[method](texts, False) for method in METHODS}
    del ref, encoders
    return out


def _time_calls(calls: dict, reps: int, clock, device: torch.device) -> dict[str, list[float]]:
    """Seconds of each call, ``reps`` times, alternating the order between reps."""
    times = {name: [] for name in calls}
    names = list(calls)
    for r in range(reps):
        for name in names if r % 2 == 0 else names[::-1]:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = clock()
            calls[name]()
            times[name].append(clock() - t0)
    return times


def run_mode(model, wl_name: str, lengths: list[int], texts: list[str], mode: str, reference: dict, args) -> list[dict]:
    """The methods' rows on one workload in one mode: check, then alternating timed calls."""
    set_attention(model, MODES[mode])
    encoders = _encoders(model, args.batch_size)
    packed = mode == "packed"
    k = model.config.num_btoks
    n_check = len(next(iter(reference.values())))
    input_tokens = sum(lengths)
    rows, calls = {}, {}
    for method in METHODS:
        extra = k if method == "btok" else 0
        row = {
            "workload": wl_name,
            "mode": mode,
            "method": method,
            "attn": MODES[mode],
            "texts": len(texts),
            "num_btoks": extra,
            "batch_size": args.batch_size,
            "input_tokens": input_tokens,
            "processed_tokens": predicted_tokens(lengths, extra, args.batch_size, mode),
            "status": "ok",
        }
        rows[method] = row
        try:
            t0 = time.perf_counter()
            emb = encoders[method](texts, packed)  # also the warm-up (kernels compiled, buffers made)
            row["first_call_s"] = time.perf_counter() - t0
            row["err"] = rel_l2(emb[:n_check], reference[method])
            if not row["err"] <= args.tol:
                row["status"] = "FAILED"
                row["note"] = (
                    f"FAILED check vs the {args.ref_dtype_name} one-text-at-a-time embeddings "
                    f"(rel L2 {row['err']:.1e} > tol {args.tol:.0e})"
                )
                continue
            calls[method] = lambda m=method: encoders[m](texts, packed)
        except Exception as e:  # noqa: BLE001 -- a method that breaks is a row, not a crash
            row["status"] = "error"
            row["note"] = f"ERROR {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
            if args.device.type == "cuda":
                torch.cuda.empty_cache()
    if calls:
        times = _time_calls(
            calls,
            args.reps,
            CPU_CLOCKS[args.cpu_clock] if args.device.type == "cpu" else time.perf_counter,
            args.device,
        )
        for method, secs in times.items():
            row, med = rows[method], statistics.median(secs)
            row.update(
                ms=med * 1e3,
                ms_min=min(secs) * 1e3,
                reps=len(secs),
                texts_per_s=len(texts) / med,
                tokens_per_s=input_tokens / med,
                processed_tokens_per_s=row["processed_tokens"] / med,
            )
    btok, last, pooled = (rows[m] for m in METHODS)
    btok["predicted_ratio"] = btok["processed_tokens"] / last["processed_tokens"]
    if btok.get("ms") and last.get("ms"):
        btok["time_ratio"] = btok["ms"] / last["ms"]
        btok["time_ratio_min"] = btok["ms_min"] / last["ms_min"]  # fastest calls: less of a shared CPU's noise
        btok["throughput_vs_last"] = last["ms"] / btok["ms"]
        btok["code_overhead"] = btok["time_ratio"] / btok["predicted_ratio"] - 1
        btok["within_1pct"] = btok["time_ratio"] <= WITHIN
    if btok.get("ms") and pooled.get("ms"):
        btok["time_ratio_pooled"] = btok["ms"] / pooled["ms"]
    return [btok, last, pooled]


COLUMNS = [
    ("workload", "workload", ""),
    ("mode", "mode", ""),
    ("method", "method", ""),
    ("texts", "texts", ""),
    ("input_tokens", "tokens", ""),
    ("ms", "ms/call", ".1f"),
    ("ms_min", "min ms", ".1f"),
    ("texts_per_s", "texts/s", ".1f"),
    ("tokens_per_s", "tokens/s", ".0f"),
    ("time_ratio", "time ratio", ".4f"),
    ("time_ratio_min", "of mins", ".4f"),
    ("predicted_ratio", "by tokens", ".4f"),
    ("code_overhead", "code ovh", "+.2%"),
    ("within_1pct", "<=1%", ""),
    ("time_ratio_pooled", "vs pooled", ".4f"),
    ("first_call_s", "1st call s", ".1f"),
    ("err", "err", ".1e"),
    ("status", "status", ""),
    ("note", "note", ""),
]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="fewer texts and calls")
    ap.add_argument("--device", default=None)
    ap.add_argument("--dims", default=None, choices=("2B", "tiny"), help="default 2B on CUDA, tiny on CPU")
    ap.add_argument("--dtype", default=None, choices=("bf16", "fp16", "fp32"), help="default bf16 on CUDA, fp32 on CPU")
    ap.add_argument("--layers", type=int, default=None, help="decoder layers (default 4 on CUDA, 2 on CPU)")
    ap.add_argument("--num-btoks", type=int, default=4, help="K (default 4, the authors' released configs)")
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help="comma list: " + ", ".join(WORKLOADS))
    ap.add_argument("--modes", default=",".join(MODES), help="comma list: " + ", ".join(MODES))
    ap.add_argument("--texts", type=int, default=None, help="texts per workload (default: see the table above)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--reps", type=int, default=None, help="timed calls per method (default 5; quick 3)")
    ap.add_argument("--check-texts", type=int, default=32, help="texts checked against the reference")
    ap.add_argument(
        "--tol",
        type=float,
        default=None,
        help="bound on the embeddings' relative L2 error (default 5e-2 16-bit, 1e-4 fp32)",
    )
    add_cpu_timing_arguments(ap)
    ap.add_argument("--seed", type=int, default=0, help="weights, lengths and words")
    ap.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR)
    ap.add_argument("--stem", default=None, help="output file stem (default encode_<device>_<UTC time>)")
    args = ap.parse_args(argv)
    apply_cpu_timing(args)
    args.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gpu = args.device.type == "cuda"
    args.layers = (4 if gpu else 2) if args.layers is None else args.layers
    args.dims = dict({"2B": QWEN2VL_2B_TEXT, "tiny": CPU_TINY}[args.dims or ("2B" if gpu else "tiny")])
    args.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[
        args.dtype or ("bf16" if gpu else "fp32")
    ]
    args.ref_dtype = torch.float64 if args.dtype == torch.float32 else torch.float32
    args.ref_dtype_name = str(args.ref_dtype).replace("torch.", "")
    if args.tol is None:
        args.tol = 1e-4 if args.dtype == torch.float32 else 5e-2
    args.reps = (3 if args.quick else 5) if args.reps is None else args.reps
    for name, value in (
        ("--layers", args.layers),
        ("--num-btoks", args.num_btoks),
        ("--batch-size", args.batch_size),
        ("--reps", args.reps),
        ("--check-texts", args.check_texts),
        ("--texts", 1 if args.texts is None else args.texts),
    ):
        if value < 1:
            raise SystemExit(f"{name} must be >= 1, got {value}")
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for given, known, what in ((args.workloads, WORKLOADS, "workloads"), (args.modes, MODES, "modes")):
        if not given or set(given) - set(known):
            raise SystemExit(f"--{what} must name some of {list(known)}, got {given}")
    return args


def main(argv=None) -> dict:
    t_start = time.perf_counter()
    args = parse_args(argv)
    device, gpu = args.device, args.device.type == "cuda"
    if args.cpu_clock == "thread":
        # the tokenizer's batch encoding must run on the timed thread, not in a Rust thread pool
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    stem = run_stem(args.out_dir, f"encode_{device.type}", args.stem)
    meta = environment(device)
    meta.update(
        layers=args.layers,
        dims=args.dims,
        dtype=str(args.dtype).replace("torch.", ""),
        num_btoks=args.num_btoks,
        batch_size=args.batch_size,
        tol=args.tol,
        cpu_clock=args.cpu_clock,
        reference=f"{args.ref_dtype_name} copy, one text per forward, sdpa",
        timing="wall clock per encode() call (CUDA: returns after the GPU finished)"
        if gpu
        else f"{args.cpu_clock} clock per encode() call",
        tokenizers_parallelism=os.environ.get("TOKENIZERS_PARALLELISM"),
    )
    print(
        f"# encode on {meta['gpu'] or 'CPU'} ({meta['cpu_threads']} threads), torch {meta['torch']}, "
        f"transformers {meta.get('transformers')}, {meta['date_utc']}",
        flush=True,
    )
    print(
        f"# Qwen2 decoder {args.layers} layers {args.dims}, K={args.num_btoks}, batch size {args.batch_size}, "
        f"{meta['dtype']}",
        flush=True,
    )
    model, num_words = build_btok_model(args.dims, args.layers, args.seed, args.num_btoks)
    model.to(device, args.dtype)
    rows: list[dict] = []
    for wl_name in args.workloads:
        lengths = WORKLOADS[wl_name].draw(gpu, args.quick, args.seed, args.texts)
        texts = word_texts(lengths, num_words, args.seed)
        print(
            f"# {wl_name}: {len(texts)} texts of {min(lengths)}-{max(lengths)} tokens ({sum(lengths):,} tokens)",
            flush=True,
        )
        reference = reference_embeddings(model, texts[: args.check_texts], args.ref_dtype)
        for mode in args.modes:
            rows += run_mode(model, wl_name, lengths, texts, mode, reference, args)
            meta["wall_s"] = time.perf_counter() - t_start
            write_outputs(rows, meta, stem)  # a run cut short keeps what it finished
    print()
    print(format_table(rows, COLUMNS))
    meta["wall_s"] = time.perf_counter() - t_start
    paths = write_outputs(rows, meta, stem)
    print(
        f"# time ratio = btok ms / last-token ms; by tokens = the ratio the K extra tokens predict; code ovh = "
        f"time ratio / by tokens - 1. Target (GPU): time ratio <= {WITHIN:.4f}"
    )
    print(f"# wrote {', '.join(str(p) for p in paths)}; total wall time {meta['wall_s']:.1f} s")
    return {"rows": rows, "meta": meta, "paths": paths}


if __name__ == "__main__":
    main()
