#!/usr/bin/env python
"""One BTok training step (InfoNCE + generative loss, forward + backward) of a 2B-shaped model, four ways.

    python benchmarks/btok_step.py --quick     # GPU: Qwen2-VL-2B text dims, 4 layers, bf16, image_2B batch
    python benchmarks/btok_step.py             # CPU: a tiny decoder of the same family, fp32, cpu_pack batch
    python benchmarks/btok_step.py --layers 28 --rows btok_triton,flex_attention

The batch is a real BTok batch built by ``BTokModel.collate``'s packing: the workload's
queries ``[query | K BToks | target]`` (its query and target lengths, K = its BToks) and
one positive per query as the candidates ``[positive | K BToks]`` (each positive as long
as its query's target), random token ids from ``torch.Generator().manual_seed(seed)``; the
first target tokens (the template prefix) get no loss. Rows (:data:`ROWS`), same weights
(random, seeded), same tokens, the same losses (:class:`~btok_model.BTokModel`'s: InfoNCE at
temperature 0.02 + 5.0 x the generative next-token loss):

- ``btok_triton`` -- ``model(**batch)``: ONE packed pass, the condensation mask read from
  the layout by the fused kernel (on the CPU its kernel backend is ``"sdpa"``, btok's exact
  CPU path);
- ``two_pass_sdpa`` -- the authors' formulation with ``"sdpa"``: pass 1 ``[query | BToks]``
  (left-padded, KV cache), pass 2 the targets against the BTok keys/values only
  (``btok_model.embedder.twopass.two_pass_sequences``), then the candidates' padded pass and the
  same ``compute_loss``; it pads its inputs inside the step, as it must;
- ``sdpa_dense`` -- ``model(**batch)`` with ``"sdpa"``: BTokModel builds the dense additive
  ``[1, 1, T, T]`` condensation mask in every step;
- ``flex_attention`` -- ``model(**batch)`` with ``"flex_attention"``: BTokModel builds the
  ``BlockMask`` (``create_block_mask``) in every step.

``step_ms`` is the whole step as ``BTokModel`` runs it (mask builds included). The mask
build of ``sdpa_dense`` and ``flex_attention`` is also timed alone (``mask_build_ms``) and
``step_ex_mask_ms`` = step - mask build (derived, not measured) is the generous
comparison; ``x_<row>`` / ``x_<row>_ex_mask`` divide the row's time by a peer's.

Check first: every row against a copy of the model in a wider dtype (float32 for 16-bit
rows, float64 for float32 rows) running the two-pass
formulation with ``"sdpa"`` (the method's definition; tests/embedder prove the single pass
equal to it): the total, contrastive and generative losses (relative error) and the
gradients of layer 0's ``q_proj`` and of the K BTok embedding rows (relative L2). A row
above ``--tol`` prints FAILED and no time. Peak memory: see ``steps.MEMORY_NOTE``.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from benchmarks.harness import (
    DEFAULT_OUT_DIR,
    add_cpu_timing_arguments,
    apply_cpu_timing,
    bench,
    environment,
    run_stem,
)
from benchmarks.model_setup import CPU_TINY, QWEN2VL_2B_TEXT, SPECIAL_TOKENS, build_btok_model
from benchmarks.steps import Prepared, Reference, Row, Skip, check_run_options, report_rows, run_rows
from benchmarks.table import model_columns
from benchmarks.workloads import Workload, all_workloads

__all__ = ["ROWS", "StepBatch", "make_batch", "main", "RATIO_TO", "ERRORS"]

DIMS = {"2B": QWEN2VL_2B_TEXT, "tiny": CPU_TINY}
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
RATIO_TO = ["two_pass_sdpa", "sdpa_dense", "flex_attention"]
ERRORS = ["loss", "contrastive", "generative", "grad", "grad_btok"]


@dataclass
class StepBatch:
    """One BTok step's batch as token ids and as the library's packed batch.

    Attributes:
        queries, positives: per example, token id lists (no BToks).
        targets: per example, the query's target (its first ``unscored`` tokens without loss).
        unscored: leading target tokens without loss (the template prefix).
        collated: the :class:`btok_model.embedder.BTokBatch` ``BTokModel.collate`` builds, on the model's device.
    """

    queries: list[list[int]]
    positives: list[list[int]]
    targets: list  # btok_model.embedder.Target
    unscored: int
    collated: object  # btok_model.embedder.BTokBatch

    @property
    def layout(self):
        return self.collated["btok_layout"]


def make_batch(model, wl: Workload, num_words: int, seed: int) -> StepBatch:
    """The workload's BTok batch for ``model`` (whose K must be the workload's)."""
    from btok_model.embedder import EncodedExample, Target
    from btok_model.embedder.collate import IGNORE_INDEX

    if model.config.num_btoks != wl.num_btoks:
        raise ValueError(f"the model has K={model.config.num_btoks} BToks, the workload {wl.name} K={wl.num_btoks}")
    g = torch.Generator().manual_seed(seed)

    def draw(n: int) -> list[int]:  # ids of the word vocabulary (never a special or BTok id)
        return (torch.randint(0, num_words, (n,), generator=g) + len(SPECIAL_TOKENS)).tolist()

    queries = [draw(n) for n in wl.query_lens]
    target_ids = [draw(n) for n in wl.target_lens]
    positives = [draw(n) for n in wl.target_lens]
    unscored = model.collator.unscored
    if min(wl.target_lens) <= unscored:
        raise ValueError(
            f"every target must be longer than the {unscored} unscored prefix tokens, got {min(wl.target_lens)}"
        )
    targets = [Target(t, [IGNORE_INDEX] * unscored + t[unscored:]) for t in target_ids]
    encoded = [EncodedExample(q, [p], query_target=t) for q, p, t in zip(queries, positives, targets)]
    collated = model.collator.pack(encoded).to(model.device)
    assert collated["btok_layout"].seqlens[: wl.num_seqs] == wl.seqlens, "collation changed the workload's queries"
    return StepBatch(queries, positives, targets, unscored, collated)


def _losses(out) -> dict[str, torch.Tensor]:
    return {"loss": out.loss, "contrastive": out.contrastive_loss, "generative": out.generative_loss}


def _single_pass(mask_implementation: str | None):
    """``prepare`` of a one-pass row: ``model(**batch)``; ``mask_implementation``: the
    implementation whose mask BTokModel builds per step (timed alone too), or None."""

    def prepare(model, batch: StepBatch, device) -> Prepared:
        from btok_model.embedder.peer_masks import condensation_attention_mask

        def loss():
            return _losses(model(batch.collated))

        if mask_implementation == "flex_attention" and device.type == "cpu":
            # its forward still runs (compiled, 10-20 s): the row's plumbing is checked on any machine
            raise Skip("FlexAttention has no backward on CPU", forward=loss)

        if mask_implementation is None:
            kernel = "; kernel backend 'sdpa' on CPU" if device.type == "cpu" else ""
            return Prepared(loss, notes=[f"one packed pass, btok_layout (no mask){kernel}"])
        dtype = model.backbone.get_input_embeddings().weight.dtype
        build = lambda: condensation_attention_mask(batch.layout, mask_implementation, dtype, device)  # noqa: E731
        build()  # a first call (compiles, allocates) before timing
        kind = "dense additive [1, 1, T, T] mask" if mask_implementation == "sdpa" else "BlockMask"
        return Prepared(
            loss,
            bench(build, device, rep_ms=100, cpu_reps=3)["ms"],
            [f"one packed pass, {kind} built by BTokModel in every step (mask ms: that build alone)"],
            setup_in_step=True,
        )

    return prepare


def _two_pass(model, batch: StepBatch, device) -> Prepared:
    """The authors' two-pass formulation plus the candidates' pass, then BTokModel's losses."""
    from btok_model.embedder import BatchEmbeddings
    from btok_model.embedder.encode import embed_padded
    from btok_model.embedder.twopass import two_pass_sequences

    n = len(batch.queries)
    candidates = [p + model.btok_token_ids for p in batch.positives]
    positive_index = torch.arange(n, device=device)

    def loss():
        query, generative, _ = two_pass_sequences(model, batch.queries, batch.targets)
        cand = embed_padded(model, model.collator.pad_sequences(candidates))  # [positive | BToks], right-padded
        return _losses(model.compute_loss(BatchEmbeddings(query, cand, generative), positive_index))

    note = "query+BToks pass with KV cache, target pass on the BTok KV, candidates' pass (padded in the step)"
    return Prepared(loss, notes=[note])


ROWS = [
    Row("btok_triton", "btok_triton", _single_pass(None)),
    Row("two_pass_sdpa", "sdpa", _two_pass),
    Row("sdpa_dense", "sdpa", _single_pass("sdpa")),
    Row("flex_attention", "flex_attention", _single_pass("flex_attention")),
]


def set_attention(model, name: str) -> None:
    from btok_model.embedder.backbone import transformers_model

    transformers_model(model.backbone).set_attn_implementation(name)


def probe_grads(model) -> dict[str, torch.Tensor | None]:
    """Layer 0's ``q_proj`` weight gradient (every attention backward reaches it) and the K
    BTok rows of the input embedding's gradient (what only the BTok positions train)."""
    from btok_model.embedder.backbone import transformers_model

    lm = transformers_model(model.backbone)
    emb = lm.get_input_embeddings().weight.grad
    ids = torch.tensor(model.btok_token_ids, device=lm.device)
    return {"grad": lm.model.layers[0].self_attn.q_proj.weight.grad, "grad_btok": None if emb is None else emb[ids]}


def reference_step(model, batch: StepBatch, device: torch.device, dtype: torch.dtype) -> Reference:
    """Losses and probed gradients of a ``dtype`` copy of ``model`` (the same weights,
    computed wider; two-pass formulation, ``"sdpa"``)."""
    ref = copy.deepcopy(model).to(device, dtype)
    set_attention(ref, "sdpa")
    ref.zero_grad(set_to_none=True)
    values = _two_pass(ref, batch, device).loss()
    values["loss"].backward()
    reference = Reference(
        {k: float(v.detach()) for k, v in values.items()}, {k: g.detach().clone() for k, g in probe_grads(ref).items()}
    )
    del ref, values
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return reference


def parse_args(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="shorter timing")
    ap.add_argument("--device", default=None)
    ap.add_argument(
        "--dims", default=None, choices=tuple(DIMS), help="decoder dimensions (default 2B on CUDA, tiny on CPU)"
    )
    ap.add_argument("--dtype", default=None, choices=tuple(DTYPES), help="default bf16 on CUDA, fp32 on CPU")
    ap.add_argument("--layers", type=int, default=None, help="decoder layers (default 4 on CUDA, 2 on CPU)")
    ap.add_argument("--vocab", type=int, default=None, help="vocabulary (default 151936; 1024 on CPU)")
    ap.add_argument("--rows", default=",".join(r.name for r in ROWS), help="comma list of rows")
    ap.add_argument("--workload", default=None, help="default image_2B on CUDA, cpu_pack on CPU")
    ap.add_argument(
        "--tol",
        type=float,
        default=None,
        help="bound on the relative errors of the losses and gradients (default 5e-2 bf16, 1e-4 fp32)",
    )
    ap.add_argument("--rep-ms", type=float, default=None, help="do_bench rep (default 500, quick 200)")
    ap.add_argument("--cpu-reps", type=int, default=5)
    add_cpu_timing_arguments(ap)
    ap.add_argument(
        "--no-memory", dest="cpu_memory", action="store_false", help="CPU: skip the peak-RSS pass after the timing"
    )
    ap.add_argument(
        "--no-forward-check",
        dest="skipped_forward_check",
        action="store_false",
        help="CPU: do not compile and check flex_attention's forward (its row is skipped: no backward)",
    )
    ap.add_argument("--seed", type=int, default=0, help="weights and token ids")
    ap.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR)
    ap.add_argument("--stem", default=None, help="output file stem (default btok_step_<device>_<UTC time>)")
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args(argv)
    apply_cpu_timing(args)
    args.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gpu = args.device.type == "cuda"
    args.layers = (4 if gpu else 2) if args.layers is None else args.layers
    args.dims = dict(DIMS[args.dims or ("2B" if gpu else "tiny")])
    if args.vocab:
        args.dims["vocab_size"] = args.vocab
    args.dtype = DTYPES[args.dtype or ("bf16" if gpu else "fp32")]
    # the reference is wider than the rows: float32 for 16-bit rows, float64 for float32 rows
    args.ref_dtype = torch.float64 if args.dtype == torch.float32 else torch.float32
    if args.tol is None:
        args.tol = 1e-4 if args.dtype == torch.float32 else 5e-2
    args.workload = args.workload or ("image_2B" if gpu else "cpu_pack")
    args.rep_ms = args.rep_ms or (200 if args.quick else 500)
    check_run_options(args, ROWS)
    return args


def main(argv=None) -> dict:
    t_start = time.perf_counter()
    args = parse_args(argv)
    device = args.device
    wl = all_workloads()[args.workload]
    stem = run_stem(args.out_dir, f"btok_step_{device.type}", args.stem)
    meta = environment(device)
    meta.update(
        workload=wl.describe(),
        layers=args.layers,
        dims=args.dims,
        dtype=str(args.dtype).replace("torch.", ""),
        step="BTokModel: InfoNCE (T=0.02) + 5.0 x generative, forward + backward",
        tol=args.tol,
        reference=f"{str(args.ref_dtype).replace('torch.', '')} copy of the model, two-pass formulation with sdpa",
        cpu_clock=args.cpu_clock,
    )
    print(
        f"# btok_step on {meta['gpu'] or 'CPU'} ({meta['cpu_threads']} threads), torch {meta['torch']}, "
        f"transformers {meta.get('transformers')}, {meta['date_utc']}",
        flush=True,
    )
    model, num_words = build_btok_model(args.dims, args.layers, args.seed, wl.num_btoks)
    model.to(device, args.dtype).train()  # a training step (no dropout in this config)
    batch = make_batch(model, wl, num_words, args.seed)
    meta.update(
        tokens=batch.layout.total_tokens,
        sequences=batch.layout.num_seqs,
        target_tokens=int(batch.collated["num_target_tokens"]),
    )
    print(
        f"# {wl.describe()} + {wl.num_seqs} positives: {batch.layout.total_tokens} tokens; Qwen2 decoder "
        f"{args.layers} layers, {args.dims}",
        flush=True,
    )
    reference = reference_step(model, batch, device, args.ref_dtype)
    meta["wall_s"] = time.perf_counter() - t_start
    fixed = {"workload": args.workload, "layers": args.layers, "tokens": batch.layout.total_tokens}
    rows = [row for row in ROWS if row.name in args.rows]
    results = run_rows(rows, model, batch, reference, probe_grads, set_attention, args, meta, stem, fixed, RATIO_TO)
    return report_rows(results, meta, stem, model_columns(RATIO_TO, ERRORS), plot=not args.no_plot)


if __name__ == "__main__":
    main()
