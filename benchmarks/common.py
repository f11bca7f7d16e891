"""Helpers shared by the benchmarks: masks for the peers, layouts, timing, memory, outputs.

One function builds each mask the peers need, from the same :class:`CondensationLayout`:

- :func:`dense_condensation_mask` -- the ``[L, L]`` boolean mask of one sequence; the packed
  and padded dense masks (SDPA, eager) are assembled from it.
- :func:`flex_mask_mod` -- FlexAttention's ``mask_mod`` (document id plus per-sequence
  ``btok_start`` / ``target_start`` lookups).
"""

from __future__ import annotations

import csv
import datetime as _dt
import importlib
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from btok_kernels import CondensationLayout

__all__ = [
    "dense_condensation_mask",
    "packed_dense_mask",
    "padded_dense_mask",
    "flex_mask_mod",
    "Padder",
    "to_bhsd",
    "from_bhsd",
    "rel_l2",
    "bench",
    "peak_memory_mib",
    "environment",
    "write_outputs",
    "format_table",
    "optional_import",
    "set_recompile_limit",
]


# ----------------------------------------------------------------------------------------
# masks
# ----------------------------------------------------------------------------------------
def dense_condensation_mask(length: int, btok_start: int, target_start: int, device=None) -> torch.Tensor:
    """``allowed(i, j) = (j <= i) and not (i >= t and j < b)`` as a bool ``[L, L]`` (True = attend)."""
    i = torch.arange(length, device=device)[:, None]
    j = torch.arange(length, device=device)[None, :]
    return (j <= i) & ~((i >= target_start) & (j < btok_start))


def _sequences(layout: CondensationLayout):
    cu = layout.host_cu_seqlens
    return zip(cu[:-1], layout.seqlens, layout.host_btok_start, layout.host_target_start)


def packed_dense_mask(layout: CondensationLayout, device=None) -> torch.Tensor:
    """Block-diagonal bool ``[1, 1, T, T]`` over the whole pack (no key crosses a sequence)."""
    device = layout.device if device is None else device
    total = layout.total_tokens
    mask = torch.zeros(total, total, dtype=torch.bool, device=device)
    for start, length, b, t in _sequences(layout):
        mask[start : start + length, start : start + length] = dense_condensation_mask(length, b, t, device)
    return mask[None, None]


def padded_dense_mask(layout: CondensationLayout, device=None) -> torch.Tensor:
    """Bool ``[n, 1, Lmax, Lmax]``. A padding row attends only itself, so that no row is fully
    masked (a fully masked row gives NaN, which the backward would spread to real keys);
    real rows never see padding keys."""
    device = layout.device if device is None else device
    n, lmax = layout.num_seqs, layout.max_seqlen
    mask = torch.eye(lmax, dtype=torch.bool, device=device).repeat(n, 1, 1)
    for s, (_, length, b, t) in enumerate(_sequences(layout)):
        mask[s, :length, :length] = dense_condensation_mask(length, b, t, device)
    return mask[:, None]


def flex_mask_mod(layout: CondensationLayout) -> Callable:
    """FlexAttention ``mask_mod(b, h, q_idx, kv_idx)`` of the condensation mask over a pack of
    ``T`` tokens laid out as ``[1, H, T, D]``: same sequence, causal, and not (target row and
    key before the BToks)."""
    device = layout.device
    cu = layout.cu_seqlens.long()
    seq_of = torch.repeat_interleave(
        torch.arange(layout.num_seqs, device=device), cu[1:] - cu[:-1], output_size=layout.total_tokens
    )
    start = cu[:-1]
    btok = start + layout.btok_start.long()  # absolute positions
    target = start + layout.target_start.long()

    def mask_mod(b, h, q_idx, kv_idx):
        s = seq_of[q_idx]
        same = s == seq_of[kv_idx]
        causal = kv_idx <= q_idx
        cut = (q_idx >= target[s]) & (kv_idx < btok[s])
        return same & causal & ~cut

    return mask_mod


# ----------------------------------------------------------------------------------------
# packed <-> padded
# ----------------------------------------------------------------------------------------
class Padder:
    """Moves ``[T, H, D]`` packed tensors to ``[n, H, Lmax, D]`` padded ones (SDPA layout) and back."""

    def __init__(self, layout: CondensationLayout):
        self.n, self.lmax, self.total = layout.num_seqs, layout.max_seqlen, layout.total_tokens
        rows = [s * self.lmax + i for s, length in enumerate(layout.seqlens) for i in range(length)]
        self.index = torch.tensor(rows, dtype=torch.long, device=layout.device)  # packed row -> padded row

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """``[T, H, D]`` -> ``[n, H, Lmax, D]`` (zeros in the padding)."""
        _, h, d = x.shape
        out = x.new_zeros(self.n * self.lmax, h, d)
        out[self.index] = x
        return out.view(self.n, self.lmax, h, d).transpose(1, 2).contiguous()

    def unpad(self, x: torch.Tensor) -> torch.Tensor:
        """``[n, H, Lmax, D]`` -> ``[T, H, D]``."""
        n, h, lmax, d = x.shape
        return x.transpose(1, 2).reshape(n * lmax, h, d)[self.index]


def to_bhsd(x: torch.Tensor) -> torch.Tensor:
    """Packed ``[T, H, D]`` -> ``[1, H, T, D]`` (contiguous)."""
    return x.transpose(0, 1).unsqueeze(0).contiguous()


def from_bhsd(x: torch.Tensor) -> torch.Tensor:
    """``[1, H, T, D]`` -> ``[T, H, D]``."""
    return x[0].transpose(0, 1)


# ----------------------------------------------------------------------------------------
# checks, timing, memory
# ----------------------------------------------------------------------------------------
def rel_l2(x: torch.Tensor, ref: torch.Tensor) -> float:
    """``||x - ref|| / ||ref||`` in fp32 (inf when x has a NaN or an Inf)."""
    x, ref = x.detach().float(), ref.detach().float()
    if not torch.isfinite(x).all():
        return math.inf
    return float(torch.linalg.vector_norm(x - ref) / torch.linalg.vector_norm(ref).clamp_min(1e-30))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(
    fn: Callable[[], object],
    device: torch.device,
    grad_to_none: Sequence[torch.Tensor] | None = None,
    warmup_ms: float = 25,
    rep_ms: float = 100,
    cpu_reps: int = 5,
) -> dict[str, float]:
    """Median and 20th/80th percentile ms of ``fn``.

    CUDA: ``triton.testing.do_bench`` (which flushes the L2 cache between calls).
    CPU: one warm-up call, then the ``time.perf_counter`` median of ``cpu_reps`` calls.
    """
    if device.type == "cuda":
        from triton.testing import do_bench

        med, p20, p80 = do_bench(fn, warmup=warmup_ms, rep=rep_ms, grad_to_none=grad_to_none, quantiles=[0.5, 0.2, 0.8])
        return {"ms": float(med), "ms_p20": float(p20), "ms_p80": float(p80)}
    times = []
    for i in range(cpu_reps + 1):
        for x in grad_to_none or ():
            x.grad = None
        t0 = time.perf_counter()
        fn()
        dt = (time.perf_counter() - t0) * 1e3
        if i:
            times.append(dt)
    q = statistics.quantiles(times, n=10, method="inclusive") if len(times) > 1 else times * 9
    return {"ms": statistics.median(times), "ms_p20": q[1], "ms_p80": q[7]}


def peak_memory_mib(fn: Callable[[], object], device: torch.device, input_bytes: int) -> float | None:
    """Peak memory of one call of ``fn`` in MiB: the inputs in the peer's own format
    (``input_bytes``: packed or padded q/k/v, dO, dense mask...) plus the most it allocates
    on top of what was allocated before the call. ``None`` off CUDA (not measured)."""
    if device.type != "cuda":
        return None
    _sync(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    _sync(device)
    extra = torch.cuda.max_memory_allocated(device) - base
    return (extra + input_bytes) / 2**20


def set_recompile_limit(limit: int = 1024) -> None:
    """Lets ``torch.compile(flex_attention, dynamic=False)`` recompile once per shape of a sweep
    (``recompile_limit`` was called ``cache_size_limit`` before torch 2.6)."""
    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(cfg, name):
            setattr(cfg, name, max(getattr(cfg, name), limit))
            break
    for name in ("accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(cfg, name):
            setattr(cfg, name, max(getattr(cfg, name), 4 * limit))
            break


def optional_import(name: str):
    """``(module, None)`` or ``(None, one-line reason)``: a missing peer is a note, never a crash."""
    try:
        return importlib.import_module(name), None
    except Exception as e:  # noqa: BLE001 -- any import failure (ImportError, CUDA/ABI errors) means "not available"
        return None, f"{name} not importable ({type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''})"


# ----------------------------------------------------------------------------------------
# environment and outputs
# ----------------------------------------------------------------------------------------
def _version(name: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # noqa: BLE001
        return None


def _git_commit() -> str | None:
    """The checkout's commit (``+dirty`` with uncommitted changes), or None outside git."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: torch.device) -> dict:
    """What produced the numbers: device, library versions, date (UTC), command line."""
    import sys

    env = {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cpu": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
    }
    env["git_commit"] = _git_commit()
    for pkg in ("triton", "transformers", "btok", "flash-attn", "flash-attn-3", "flash-attn-4", "flash_attn_3"):
        v = _version(pkg)
        if v is not None:
            env[pkg.replace("-", "_")] = v
    return env


def format_table(rows: Sequence[dict], columns: Sequence[tuple[str, str, str]]) -> str:
    """Fixed-width text table. ``columns``: (key, header, format spec); None prints as '-'."""
    cells = []
    for r in rows:
        line = []
        for key, _, spec in columns:
            v = r.get(key)
            if v is None or (isinstance(v, float) and math.isnan(v)):
                line.append("-")
            elif spec:
                line.append(format(v, spec))
            else:
                line.append(str(v))
        cells.append(line)
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, (_, h, _) in enumerate(columns)]
    out = ["  ".join(h.ljust(w) for (_, h, _), w in zip(columns, widths))]
    out.append("  ".join("-" * w for w in widths))
    for c in cells:
        out.append("  ".join(x.ljust(w) for x, w in zip(c, widths)))
    return "\n".join(out)


def write_outputs(rows: list[dict], meta: dict, out_dir: Path, stem: str) -> list[Path]:
    """``<stem>.json`` (meta + rows) and ``<stem>.csv`` (rows) under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = out_dir / f"{stem}.json", out_dir / f"{stem}.csv"

    def clean(v):
        return None if isinstance(v, float) and not math.isfinite(v) else v

    with open(json_path, "w") as f:
        json.dump({"meta": meta, "rows": [{k: clean(v) for k, v in r.items()} for r in rows]}, f, indent=1)
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: clean(r.get(k)) for k in keys})
    return [json_path, csv_path]
