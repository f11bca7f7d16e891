"""What every benchmark here shares: timing, memory, the environment record, output files.

- :func:`bench` -- medians: ``triton.testing.do_bench`` on CUDA (quantiles 0.5/0.2/0.8, the
  L2 cache flushed between calls), a ``time.perf_counter`` loop on the CPU.
- :func:`peak_memory_mib` -- the most one call allocates, on CUDA.
- :func:`environment` -- device, versions, date, command and commit of a run.
- :func:`run_stem` / :func:`write_outputs` -- ``<stem>.json`` (meta + rows) and ``<stem>.csv``;
  a run never overwrites an earlier one (default stems carry the UTC time).
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
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

__all__ = [
    "DEFAULT_OUT_DIR",
    "CPU_CLOCKS",
    "bench",
    "add_cpu_timing_arguments",
    "apply_cpu_timing",
    "peak_memory_mib",
    "CpuPeakRss",
    "rel_l2",
    "environment",
    "optional_import",
    "set_recompile_limit",
    "run_stem",
    "write_outputs",
]

DEFAULT_OUT_DIR = Path(__file__).resolve().parent / "out"


# ----------------------------------------------------------------------------------------
# timing and memory
# ----------------------------------------------------------------------------------------
# CPU clocks: wall time, or the CPU time of the calling thread (``--threads 1`` only: then it
# is the work of the call, whatever else runs on the machine)
CPU_CLOCKS = {"wall": time.perf_counter, "thread": time.thread_time}


def bench(
    fn: Callable[[], object],
    device: torch.device,
    grad_to_none: Sequence[torch.Tensor] | None = None,
    warmup_ms: float = 25,
    rep_ms: float = 100,
    cpu_reps: int = 5,
    cpu_clock: str = "wall",
) -> dict[str, float]:
    """Median and 20th / 80th percentile milliseconds of ``fn()``.

    CUDA: ``triton.testing.do_bench(fn, warmup_ms, rep_ms)``. CPU: one warm-up call, then
    ``cpu_reps`` timed calls on ``cpu_clock`` (:data:`CPU_CLOCKS`; ``.grad`` of
    ``grad_to_none`` reset before each call, outside the timed region), and their minimum as
    ``ms_min``.
    """
    if device.type == "cuda":
        from triton.testing import do_bench

        med, p20, p80 = do_bench(fn, warmup=warmup_ms, rep=rep_ms, grad_to_none=grad_to_none, quantiles=[0.5, 0.2, 0.8])
        return {"ms": float(med), "ms_p20": float(p20), "ms_p80": float(p80)}
    clock = CPU_CLOCKS[cpu_clock]
    times = []
    for i in range(cpu_reps + 1):
        for x in grad_to_none or ():
            x.grad = None
        t0 = clock()
        fn()
        if i:
            times.append((clock() - t0) * 1e3)
    q = statistics.quantiles(times, n=10, method="inclusive") if len(times) > 1 else times * 9
    # the minimum too: on a CPU shared with other work the median absorbs their time slices
    return {"ms": statistics.median(times), "ms_p20": q[1], "ms_p80": q[7], "ms_min": min(times)}


def add_cpu_timing_arguments(ap) -> None:
    """``--threads`` and ``--cpu-clock`` of a benchmark's command line."""
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's, one per core); recorded with the run",
    )
    ap.add_argument(
        "--cpu-clock",
        default="wall",
        choices=tuple(CPU_CLOCKS),
        help="CPU timer: wall time, or 'thread' = CPU time of the calling thread (needs --threads 1; "
        "insensitive to other work on a shared machine)",
    )


def apply_cpu_timing(args) -> None:
    """Sets torch's thread count from ``args.threads``; a thread clock needs one thread."""
    if args.threads is not None:
        if args.threads < 1:
            raise SystemExit(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.cpu_clock == "thread" and torch.get_num_threads() != 1:
        raise SystemExit(
            f"--cpu-clock thread times the calling thread only: it needs --threads 1 "
            f"(torch uses {torch.get_num_threads()})"
        )


def peak_memory_mib(fn: Callable[[], object], device: torch.device, input_bytes: int) -> float | None:
    """Peak memory of one call of ``fn`` in MiB: ``input_bytes`` (the inputs in the peer's
    own format: packed or padded q/k/v, dO, masks) plus the most it allocates on top of what
    was allocated before the call. ``None`` off CUDA (not measured)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base + input_bytes) / 2**20


class CpuPeakRss:
    """Peak resident memory that one call adds to the process, on Linux with glibc.

    :meth:`start` sets glibc's malloc to serve every allocation of 64 KiB or more with its
    own ``mmap`` (freed tensors go back to the OS at once) and to trim its heap; then
    :meth:`measure` resets the kernel's high-water mark (``/proc/self/clear_refs``), runs
    the call and returns ``VmHWM`` minus the resident size before it, in MiB: what the call
    held at its peak (tensors, allocator and library overhead), never what earlier calls
    left cached. ``start`` changes malloc for the rest of the process (more page faults per
    allocation): call it after the timing.
    """

    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)

    def __init__(self):
        self._libc = None

    def start(self) -> str | None:
        """Prepares the measurement; returns why it cannot be done here, or None."""
        import ctypes
        import ctypes.util

        if not os.path.exists("/proc/self/clear_refs"):
            return "peak RSS not measured: no /proc/self/clear_refs (Linux only)"
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            ok = libc.mallopt(self.M_MMAP_THRESHOLD, 64 << 10) and libc.mallopt(self.M_TRIM_THRESHOLD, 128 << 10)
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except (OSError, AttributeError) as e:
            return f"peak RSS not measured: {type(e).__name__}: {e}"
        if not ok:
            return "peak RSS not measured: mallopt refused the mmap threshold (not glibc?)"
        self._libc = libc
        return None

    @staticmethod
    def _status_kib(key: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        raise OSError(f"{key} missing from /proc/self/status")

    def measure(self, fn: Callable[[], object]) -> float:
        """MiB the process's resident size grew to, at most, during ``fn()``."""
        if self._libc is None:
            raise RuntimeError("CpuPeakRss.measure before a successful start()")
        self._libc.malloc_trim(0)
        before = self._status_kib("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM := the current resident size
        fn()
        return (self._status_kib("VmHWM") - before) / 1024


def rel_l2(x: torch.Tensor, ref: torch.Tensor) -> float:
    """``||x - ref|| / ||ref||`` in fp64 (inf when x holds a NaN or an Inf)."""
    x, ref = x.detach().double(), ref.detach().double()
    if not torch.isfinite(x).all():
        return math.inf
    return float(torch.linalg.vector_norm(x - ref) / torch.linalg.vector_norm(ref).clamp_min(1e-30))


# ----------------------------------------------------------------------------------------
# optional peers
# ----------------------------------------------------------------------------------------
def optional_import(name: str):
    """``(module, None)`` or ``(None, one-line reason)``: a missing peer is a note, never a crash."""
    try:
        return importlib.import_module(name), None
    except Exception as e:  # noqa: BLE001 -- any import failure (ImportError, CUDA/ABI errors) means "not available"
        first = str(e).splitlines()[0][:100] if str(e) else ""
        return None, f"{name} not importable ({type(e).__name__}: {first})"


def set_recompile_limit(limit: int = 1024) -> None:
    """Lets ``torch.compile(flex_attention, dynamic=False)`` recompile once per shape of a
    sweep (``recompile_limit`` was ``cache_size_limit`` before torch 2.6)."""
    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(cfg, name):
            setattr(cfg, name, max(getattr(cfg, name), limit))
            break
    for name in ("accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(cfg, name):
            setattr(cfg, name, max(getattr(cfg, name), 4 * limit))
            break


# ----------------------------------------------------------------------------------------
# environment and outputs
# ----------------------------------------------------------------------------------------
def _version(name: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # noqa: BLE001 -- not installed, or broken metadata: no version to record
        return None


def _git_commit() -> str | None:
    """The checkout's commit (``+dirty`` with uncommitted changes), or None outside git."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: torch.device) -> dict:
    """What produced the numbers: device, threads, library versions, date (UTC), command."""
    env = {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cpu": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "git_commit": _git_commit(),
    }
    for pkg in ("triton", "transformers", "btok", "flash-attn", "flash-attn-3", "flash-attn-4", "flash_attn_3"):
        v = _version(pkg)
        if v is not None:
            env[pkg.replace("-", "_")] = v
    return env


def run_stem(out_dir: Path, name: str, stem: str | None = None) -> Path:
    """Where a run writes ``<stem>.json`` / ``.csv`` / ``.png`` under ``out_dir``: the given
    ``stem``, else ``<name>_<UTC time>``. A stem some file already uses gets ``-2``, ``-3``...
    so an earlier run is never overwritten."""
    out_dir.mkdir(parents=True, exist_ok=True)
    base = stem or f"{name}_{_dt.datetime.now(_dt.timezone.utc).strftime('%Y%m%dT%H%M%SZ')}"
    candidate, n = base, 1
    while any(out_dir.glob(f"{candidate}.*")):
        n += 1
        candidate = f"{base}-{n}"
    return out_dir / candidate


def write_outputs(rows: list[dict], meta: dict, stem: Path) -> list[Path]:
    """``<stem>.json`` (meta + rows) and ``<stem>.csv`` (rows, the union of their keys).
    Rewrites the files of this run (rows so far), never another run's."""
    json_path, csv_path = stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".csv")

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
