"""PNG plots of benchmark rows (matplotlib: ``pip install -e .[bench]``; the GPU machine has
none, so ``report.py --png`` draws them again from a run's JSON)."""

from __future__ import annotations

from pathlib import Path

from .measure import MODES
from .table import timed_view

__all__ = ["plot_attention", "plot_model_step"]


def _pyplot():
    """matplotlib's pyplot on the Agg backend, or None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


NO_MATPLOTLIB = "no PNG: matplotlib is not installed (pip install -e .[bench])"


def plot_attention(rows: list[dict], path: Path) -> str | None:
    """mask_attn rows: forward and forward+backward ms on the packed workloads (bars; hatched:
    no cut), TFLOP/s along the sweep. Returns why nothing was drawn, or None."""
    plt = _pyplot()
    if plt is None:
        return NO_MATPLOTLIB
    ok = [r for r in map(timed_view, rows) if r.get("status") != "FAILED"]
    packed = [r for r in ok if r["group"] != "sweep"]
    sweep = [r for r in ok if r["group"] == "sweep"]
    fig, axes = plt.subplots(2, 2, figsize=(15, 10))
    wls = list(dict.fromkeys(r["workload"] for r in packed))
    peers = [
        p for p in dict.fromkeys(r["peer"] for r in packed) if any(r.get("fwd_ms") for r in packed if r["peer"] == p)
    ]
    width = 0.8 / max(1, len(peers))
    color = {p: f"C{i % 10}" for i, p in enumerate(dict.fromkeys(r["peer"] for r in ok))}
    for ax, mode in zip(axes[0], MODES):
        for i, p in enumerate(peers):
            got = {r["workload"]: r.get(f"{mode}_ms") for r in packed if r["peer"] == p}
            xs = [j + i * width for j, w in enumerate(wls) if got.get(w)]
            ys = [got[w] for w in wls if got.get(w)]
            exact = next(r["exact"] for r in packed if r["peer"] == p)
            if ys:
                ax.bar(xs, ys, width, label=p, color=color[p], hatch=None if exact else "//")
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(wls))], wls)
        ax.set_ylabel(f"{mode.replace('_', '+')} ms (median)")
        ax.set_title(f"packed workloads, {mode.replace('_', '+')} (hatched: no cut, reference speed)")
        if ax.patches:
            ax.legend(fontsize=7)
    for ax, mode in zip(axes[1], MODES):
        for p in dict.fromkeys(r["peer"] for r in sweep):
            for d, style in ((128, "-"), (64, "--")):
                pts = sorted(
                    (r["max_seqlen"], r.get(f"{mode}_tflops"))
                    for r in sweep
                    if r["peer"] == p and r["head_dim"] == d and r.get(f"{mode}_tflops")
                )
                if pts:
                    ax.plot(*zip(*pts), style, marker="o", color=color[p], label=f"{p} D={d}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("one sequence, length (target 1/8)")
        ax.set_ylabel(f"{mode.replace('_', '+')} TFLOP/s (kept pairs only)")
        ax.set_title(f"sweep, {mode.replace('_', '+')}")
        if ax.lines:
            ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def plot_model_step(rows: list[dict], path: Path, meta: dict) -> str | None:
    """model_step / btok_step rows: step time and peak memory per row (CUDA: allocated;
    CPU: resident-memory growth)."""
    plt = _pyplot()
    if plt is None:
        return NO_MATPLOTLIB
    ok = [r for r in map(timed_view, rows) if r.get("step_ms")]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    names = [r["row"] for r in ok]
    colors = [f"C{i % 10}" for i in range(len(ok))]
    axes[0].bar(names, [r["step_ms"] for r in ok], color=colors)
    axes[0].set_ylabel("forward+backward step, ms (median)")
    mem, label = [r.get("peak_gib") or 0 for r in ok], "peak GiB (max_memory_allocated)"
    if not any(mem):  # a CPU run: the peak resident-memory growth, if it was measured
        mem, label = [r.get("rss_peak_mib") or 0 for r in ok], "peak RSS growth in one step, MiB"
    axes[1].bar(names, mem, color=colors)
    axes[1].set_ylabel(label + ("" if any(mem) else " (not measured)"))
    fig.suptitle(f"{meta['workload'].split(':')[0]}, {meta['layers']} layers, {meta['gpu'] or 'CPU'}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
