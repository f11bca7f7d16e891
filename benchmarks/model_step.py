#!/usr/bin/env python
"""One training step (forward + backward) of a 2B-shaped decoder on the image_2B batch.

    python benchmarks/model_step.py            # GPU: Qwen2-VL-2B text dims, 4 layers, bf16
    python benchmarks/model_step.py --layers 28

Rows, same weights (random, seeded), same tokens:

- ``btok_triton`` -- the packed ``[1, T]`` batch, ``position_ids`` restarting per sequence,
  ``btok_layout=`` (the condensation mask from a few integers per sequence);
- ``sdpa`` -- the padded ``[n, Lmax]`` batch with a dense 4D boolean condensation mask;
- ``flex_attention`` -- the packed batch with a BlockMask from the same ``mask_mod`` as
  ``benchmarks/mask_attn.py`` (its ``create_block_mask`` time is shown apart, not in the step).

The step: ``model.model`` -> hidden states of the real tokens only (padding rows dropped) ->
``lm_head`` -> next-token cross-entropy within each sequence (fp32) -> backward. Dropping the
padding rows before the LM head gives every row the same LM-head work, so the differences
are attention plus the decoder layers' work on padding. Each row is checked first against an
fp32 copy of the model (``sdpa`` with the dense mask): relative error of the loss and relative
L2 of the gradient of layer 0's ``q_proj`` (which every attention backward reaches).

Dimensions (Qwen2-VL-2B text model): hidden 1536, 12 heads, 2 KV heads, head dim 128,
intermediate 8960, vocab 151936, tied embeddings, RoPE theta 1e6 (plain 1D RoPE: M-RoPE only
changes the position ids, not the attention work). ``--layers`` of its 28 decoder layers.
On CPU it runs a tiny configuration of the same shape family.
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

from benchmarks.common import (
    bench,
    environment,
    flex_mask_mod,
    format_table,
    optional_import,
    padded_dense_mask,
    rel_l2,
    write_outputs,
)
from benchmarks.workloads import Workload, cpu_workloads, design_workloads

QWEN2VL_2B_TEXT = dict(hidden_size=1536, num_attention_heads=12, num_key_value_heads=2, head_dim=128,
                       intermediate_size=8960, vocab_size=151936, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
                       tie_word_embeddings=True)
CPU_TINY = dict(hidden_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=32,
                intermediate_size=384, vocab_size=1024, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
                tie_word_embeddings=True)
ROWS = ("btok_triton", "sdpa", "flex_attention")


def build_model(dims: dict, layers: int, seed: int):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(num_hidden_layers=layers, max_position_embeddings=32768, attention_dropout=0.0,
                         use_cache=False, **dims)
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config)


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
        self.real_rows = torch.tensor([s * lmax + i for s, length in enumerate(lens) for i in range(length)],
                                      device=device)


def make_step(model, batch: Batch, row: str, masks: dict):
    """The step function of one row; returns the loss."""

    def loss_of(hidden):  # hidden [rows, H] of the real tokens, packed order
        logits = model.lm_head(hidden)
        return F.cross_entropy(logits.float(), batch.labels, ignore_index=-100)

    if row == "btok_triton":
        def step():
            h = model.model(input_ids=batch.packed_ids, position_ids=batch.packed_pos,
                            btok_layout=batch.layout).last_hidden_state
            return loss_of(h[0])
    elif row == "sdpa":
        def step():
            h = model.model(input_ids=batch.padded_ids, position_ids=batch.padded_pos,
                            attention_mask=masks["dense"]).last_hidden_state
            return loss_of(h.reshape(-1, h.shape[-1])[batch.real_rows])
    elif row == "flex_attention":
        def step():
            h = model.model(input_ids=batch.packed_ids, position_ids=batch.packed_pos,
                            attention_mask=masks["block"]).last_hidden_state
            return loss_of(h[0])
    else:
        raise ValueError(row)

    def train_step():
        loss = step()
        loss.backward()
        return loss

    return train_step


def probe_grad(model) -> torch.Tensor:
    return model.model.layers[0].self_attn.q_proj.weight.grad


def oracle_step(base, batch: Batch, masks: dict, device: torch.device) -> tuple[float, torch.Tensor]:
    """Loss and probe gradient of an fp32 copy of the model with sdpa and the dense mask."""
    oracle = copy.deepcopy(base).to(device, torch.float32)
    set_attention(oracle, "sdpa")
    loss = make_step(oracle, batch, "sdpa", masks)().item()
    return loss, probe_grad(oracle).detach().clone()


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="shorter timing")
    ap.add_argument("--device", default=None)
    ap.add_argument("--layers", type=int, default=None, help="decoder layers (default 4 on CUDA, 2 on CPU)")
    ap.add_argument("--vocab", type=int, default=None, help="vocabulary (default 151936; 1024 on CPU)")
    ap.add_argument("--rows", default=",".join(ROWS), help="comma list of " + ", ".join(ROWS))
    ap.add_argument("--workload", default=None, help="default image_2B on CUDA, cpu_pack on CPU")
    ap.add_argument("--tol", type=float, default=5e-2, help="bound on the loss and gradient relative errors (bf16)")
    ap.add_argument("--rep-ms", type=float, default=None, help="do_bench rep (default 500, quick 200)")
    ap.add_argument("--cpu-reps", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", type=Path, default=Path(__file__).resolve().parent / "out")
    ap.add_argument("--stem", default=None)
    args = ap.parse_args(argv)
    args.device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gpu = args.device.type == "cuda"
    args.layers = args.layers or (4 if gpu else 2)
    args.dims = dict(QWEN2VL_2B_TEXT if gpu else CPU_TINY)
    if args.vocab:
        args.dims["vocab_size"] = args.vocab
    args.dtype = torch.bfloat16 if gpu else torch.float32
    args.workload = args.workload or ("image_2B" if gpu else "cpu_pack")
    args.rep_ms = args.rep_ms or (200 if args.quick else 500)
    args.stem = args.stem or f"model_step_{args.device.type}"
    return args


def main(argv=None) -> dict:
    t_start = time.perf_counter()
    args = parse_args(argv)
    device = args.device
    wl = {w.name: w for w in design_workloads() + cpu_workloads()}[args.workload]
    meta = environment(device)
    meta.update(workload=wl.describe(), layers=args.layers, dims=args.dims, dtype=str(args.dtype).replace("torch.", ""),
                step="model.model -> real rows -> lm_head -> fp32 CE -> backward", tol=args.tol)
    print(f"# model_step on {meta['gpu'] or 'CPU'}, torch {meta['torch']}, transformers {meta.get('transformers')}, "
          f"{meta['date_utc']}")
    print(f"# {wl.describe()}; Qwen2 decoder {args.layers} layers, {args.dims}")
    _, why_btok = optional_import("btok_model")
    batch = Batch(wl, args.dims["vocab_size"], device, args.seed)
    t0 = time.perf_counter()
    masks = {"dense": padded_dense_mask(batch.layout)}
    dense_ms = (time.perf_counter() - t0) * 1e3

    base = build_model(args.dims, args.layers, args.seed)
    ref_loss, ref_grad = oracle_step(base, batch, masks, device)
    model = base.to(device, args.dtype)
    del base
    if device.type == "cuda":
        torch.cuda.empty_cache()

    results = []
    for name in [r.strip() for r in args.rows.split(",") if r.strip()]:
        row = {"row": name, "workload": wl.name, "layers": args.layers, "tokens": wl.total_tokens, "status": "ok"}
        notes = []
        try:
            if name == "btok_triton" and why_btok:
                raise _Skip(f"btok_model not importable yet: {why_btok}")
            if name == "flex_attention":
                if device.type == "cpu":
                    raise _Skip("FlexAttention has no backward on CPU")
                from torch.nn.attention.flex_attention import create_block_mask

                t = wl.total_tokens
                mask_mod = flex_mask_mod(batch.layout)
                build = lambda: create_block_mask(mask_mod, None, None, t, t, device=device)  # noqa: E731
                masks["block"] = build()
                row["mask_build_ms"] = bench(build, device, rep_ms=100)["ms"]
                notes.append("packed, BlockMask; mask build = create_block_mask (not in the step)")
            elif name == "sdpa":
                row["mask_build_ms"] = dense_ms
                notes.append("padded, dense 4D bool mask (build not in the step)")
            else:
                on_cpu = device.type == "cpu"
                notes.append("packed, btok_layout (no mask)" + ("; kernel = reference on CPU" if on_cpu else ""))
            set_attention(model, name)
            step = make_step(model, batch, name, masks)
            model.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            loss = step().item()
            row["first_call_s"] = time.perf_counter() - t0
            row["loss"] = loss
            row["err_loss"] = abs(loss - ref_loss) / abs(ref_loss)
            row["err_grad"] = rel_l2(probe_grad(model), ref_grad)
            if max(row["err_loss"], row["err_grad"]) > args.tol:
                row["status"] = "FAILED"
                notes.append(f"FAILED check vs fp32 sdpa (tol {args.tol:.0e})")
            else:
                params = [p for p in model.parameters()]
                model.zero_grad(set_to_none=True)
                t = bench(step, device, grad_to_none=params, warmup_ms=50, rep_ms=args.rep_ms, cpu_reps=args.cpu_reps)
                row.update(step_ms=t["ms"], step_ms_p20=t["ms_p20"], step_ms_p80=t["ms_p80"])
                model.zero_grad(set_to_none=True)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                    torch.cuda.reset_peak_memory_stats(device)
                    step()
                    torch.cuda.synchronize(device)
                    row["peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
                model.zero_grad(set_to_none=True)
        except _Skip as e:
            row["status"] = "skipped"
            notes.append(str(e))
        except Exception as e:  # noqa: BLE001 -- a row that breaks is reported, the others still run
            row["status"] = "error"
            notes.append(f"ERROR {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}")
            model.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
        row["note"] = "; ".join(notes)
        results.append(row)
    by = {r["row"]: r for r in results}
    for r in results:
        for other in ("sdpa", "flex_attention"):
            if r.get("step_ms") and by.get(other, {}).get("step_ms"):
                r[f"x_{other}"] = by[other]["step_ms"] / r["step_ms"]
    cols = [("row", "attention", ""), ("step_ms", "step ms", ".2f"), ("peak_gib", "peak GiB", ".2f"),
            ("x_sdpa", "x sdpa", ".2f"), ("x_flex_attention", "x flex", ".2f"), ("mask_build_ms", "mask ms", ".2f"),
            ("first_call_s", "1st call s", ".1f"), ("err_loss", "err loss", ".1e"), ("err_grad", "err grad", ".1e"),
            ("status", "status", ""), ("note", "note", "")]
    print()
    print(format_table(results, cols))
    if device.type == "cpu":
        print("# peak memory is not measured on CPU (n/a)")
    meta["wall_s"] = time.perf_counter() - t_start
    paths = write_outputs(results, meta, args.out_dir, args.stem)
    why = plot(results, args.out_dir / f"{args.stem}.png", meta)
    if why:
        print(f"# {why}")
    else:
        paths.append(args.out_dir / f"{args.stem}.png")
    print(f"# wrote {', '.join(str(p) for p in paths)}; total wall time {meta['wall_s']:.1f} s")
    return {"rows": results, "meta": meta}


def plot(results: list[dict], path: Path, meta: dict) -> str | None:
    """Step time and peak memory per attention implementation."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "no PNG: matplotlib is not installed (pip install -e .[bench])"
    ok = [r for r in results if r.get("step_ms")]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    names = [r["row"] for r in ok]
    axes[0].bar(names, [r["step_ms"] for r in ok], color=[f"C{i}" for i in range(len(ok))])
    axes[0].set_ylabel("forward+backward step, ms (median)")
    mem = [r.get("peak_gib") or 0 for r in ok]
    axes[1].bar(names, mem, color=[f"C{i}" for i in range(len(ok))])
    axes[1].set_ylabel("peak GiB" + ("" if any(mem) else " (not measured on CPU)"))
    fig.suptitle(f"{meta['workload'].split(':')[0]}, {meta['layers']} layers, {meta['gpu'] or 'CPU'}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


class _Skip(Exception):
    pass


if __name__ == "__main__":
    main()
