"""The project's targets and the peers' recorded figures (benchmarks/README.md), and where a
run's rows stand against them.

The peers' figures were measured on one H100 80GB (torch 2.11, triton 3.6, bf16,
2026-11-26), forward / forward+backward ms; the targets are stated against them. A run is
only ever compared with itself: each bar uses this run's own peers where it has them.
"""

from __future__ import annotations

from .table import timed_view

__all__ = [
    "PEER_FIGURES_MS",
    "PACKED_TARGET_MS",
    "MOONSHOT_MS",
    "LONG_TFLOPS",
    "BTOK_STEP_BARS",
    "targets_markdown",
    "btok_step_target_lines",
    "encode_target_line",
    "cpu_targets_markdown",
    "cpu_btok_step_markdown",
]

# (forward, forward+backward) ms; None: not measured
PEER_FIGURES_MS = {
    "image_2B": {
        "flex_triton": (0.253, 1.203),
        "flex_flash": (0.311, 1.014),
        "sdpa_dense_padded": (0.910, 3.349),
        "fa4_varlen (no cut)": (0.112, 0.501),
        "cudnn_causal_padded (no cut)": (0.226, 0.982),
    },
    "video_2B": {
        "flex_triton": (0.662, 4.342),
        "flex_flash": (0.455, 1.882),
        "sdpa_dense_padded": (1.472, 5.886),
        "fa4_varlen (no cut)": (0.308, 1.286),
        "cudnn_causal_padded (no cut)": (0.392, 1.650),
    },
    "image_7B": {
        "flex_triton": (0.520, 2.367),
        "flex_flash": (0.560, 1.985),
        "sdpa_dense_padded": (1.853, 7.172),
        "fa4_varlen (no cut)": (0.240, 1.076),
        "cudnn_causal_padded (no cut)": (0.494, 2.195),
    },
    "long_8k": {
        "flex_triton": (0.513, 2.327),
        "flex_flash": (0.320, 1.271),
        "sdpa_dense_padded": None,
        "fa4_varlen (no cut)": (0.320, 1.305),
        "cudnn_causal_padded (no cut)": None,
    },
}
# forward+backward at least 1.3x faster than the best exact peer (either Flex backend)
PACKED_TARGET_MS = {"image_2B": 0.78, "video_2B": 1.45, "image_7B": 1.53}
MOONSHOT_MS = {"image_2B": 0.50, "video_2B": 1.29, "image_7B": 1.08}  # FA4 no-cut times
LONG_TFLOPS = {"fwd": 450.0, "fwd_bwd": 380.0}  # long_8k, counting kept pairs only
SPEEDUP_OVER_BEST_FLEX = 1.3
MODEL_X_SDPA, MODEL_X_FLEX = 1.3, 1.15
BTOK = "btok_triton"


def _f(v, spec=".3f"):
    return "—" if v is None else format(v, spec)


def _met(ok):
    return "—" if ok is None else ("yes" if ok else "**no**")


# the BTok-level model step (btok_step.py): btok_triton at least this much faster than each peer row
BTOK_STEP_BARS = {"two_pass_sdpa": MODEL_X_SDPA, "sdpa_dense": MODEL_X_SDPA, "flex_attention": MODEL_X_FLEX}


def btok_step_target_lines(rows: list[dict]) -> list[str]:
    """Target rows of btok_step.py's run: btok_triton's speed-up over each peer row (the
    whole step; after a slash, the peer's step minus its mask build, which decides: the
    generous comparison) and peak memory lower than every timed peer's."""
    m = {r["row"]: timed_view(r) for r in rows}
    b = m.get(BTOK, {})
    lines = []
    for peer, bar in BTOK_STEP_BARS.items():
        p = m.get(peer, {})
        timed = p.get("step_ms") is not None  # a FAILED or error peer is no bar to beat
        x, ex = (b.get(f"x_{peer}"), b.get(f"x_{peer}_ex_mask")) if timed else (None, None)
        decisive = ex if ex is not None else x
        shown = _f(x, ".2f") + "×" + (f" / {ex:.2f}× without its mask build" if ex is not None else "")
        state = p.get("status", "not run")
        peer_ms = (
            f"{peer} {_f(p.get('step_ms'), '.2f')} ms"
            + (f" (mask build {p['mask_build_ms']:.2f} ms)" if p.get("mask_build_ms") is not None else "")
            if p.get("step_ms")
            else f"{peer}: {state}"
        )
        lines.append(
            f"| model step (BTok) ×{peer} | {shown} | ≥ {bar} | {peer_ms} | "
            f"{_met(None if decisive is None else decisive >= bar)} |"
        )
    peak = b.get("peak_gib")
    others = {o: m[o].get("peak_gib") for o in BTOK_STEP_BARS if m.get(o, {}).get("peak_gib") is not None}
    ok = None if peak is None or not others else all(peak < v for v in others.values())
    lines.append(
        f"| model step (BTok) peak memory lower than every peer | {_f(peak, '.2f')} GiB | < each | "
        f"{', '.join(f'{o} {v:.2f}' for o, v in others.items()) or '—'} GiB | {_met(ok)} |"
    )
    return lines


def encode_target_line(rows: list[dict]) -> str:
    """The inference target: btok's encode() time within 1% of last-token pooling's, per
    workload and mode of encode.py's run (met only if every one is), with the ratio the
    token count predicts beside each."""
    btok = [timed_view(r) for r in rows if r.get("method") == "btok"]
    timed = [r for r in btok if r.get("time_ratio") is not None]
    shown = "; ".join(
        f"{r['workload']} {r['mode']} {r['time_ratio']:.4f} (by tokens {r['predicted_ratio']:.4f})" for r in timed
    )
    ok = None if not timed or len(timed) < len(btok) else all(r["within_1pct"] for r in timed)
    return (
        f"| inference within 1% of last-token pooling (time ratio) | {shown or '—'} | ≤ {1 / 0.99:.4f} | "
        f"last-token pooling, same inputs | {_met(ok)} |"
    )


def targets_markdown(
    rows: list[dict],
    model_rows: list[dict] | None,
    btok_step_rows: list[dict] | None = None,
    encode_rows: list[dict] | None = None,
) -> str:
    """A Markdown table: each GPU target, btok's figure in this run, the bar, the peers of
    this run, and whether it is met (FAILED and error rows count for nothing). The model
    step, BTok step and encode lines appear when their runs are given."""
    by = {(r["workload"], r["peer"]): timed_view(r) for r in rows}
    lines = ["| target | btok (this run) | bar | peers (this run) | met? |", "|---|---|---|---|---|"]
    for wl, target in PACKED_TARGET_MS.items():
        b = by.get((wl, BTOK), {}).get("fwd_bwd_ms")
        flex = {p: by.get((wl, p), {}).get("fwd_bwd_ms") for p in ("flex_triton", "flex_flash")}
        best = min((v for v in flex.values() if v), default=None)
        bar = (
            f"≤ {best / SPEEDUP_OVER_BEST_FLEX:.3f} ms (this run's best Flex / 1.3) and ≤ {target} (README)"
            if best
            else f"≤ {target} ms (README; no Flex row in this run)"
        )
        # the stricter bar: the README's figure comes from the FLASH backend, which a run without FA4 lacks
        limit = min(best / SPEEDUP_OVER_BEST_FLEX, target) if best else target
        peers = ", ".join(f"{p} {v:.3f}" for p, v in flex.items() if v)
        fa = [(p, by[(wl, p)].get("fwd_bwd_ms")) for p in ("fa4_varlen", "fa3_varlen", "fa2_varlen") if (wl, p) in by]
        peers += "".join(f", {p} {v:.3f} (no cut)" for p, v in fa if v)
        lines.append(
            f"| {wl} f+b, 1.3× best exact Flex (moonshot {MOONSHOT_MS[wl]} ms) | {_f(b)} ms | {bar} | "
            f"{peers or '—'} | {_met(None if b is None else b <= limit)} |"
        )
    for mode, bar in LONG_TFLOPS.items():
        v = by.get(("long_8k", BTOK), {}).get(f"{mode}_tflops")
        peers = ", ".join(
            f"{p} {by[('long_8k', p)].get(f'{mode}_tflops'):.0f}"
            for p in ("flex_triton", "flex_flash", "fa4_varlen", "sdpa_flash_causal")
            if by.get(("long_8k", p), {}).get(f"{mode}_tflops")
        )
        lines.append(
            f"| long_8k {mode.replace('_', '+')} TFLOP/s (kept pairs) | {_f(v, '.0f')} | ≥ {bar:.0f} | "
            f"{peers or '—'} | {_met(None if v is None else v >= bar)} |"
        )
    worse, measured = [], False
    for (wl, peer), r in by.items():
        if peer != BTOK or r.get("fwd_bwd_peak_mib") is None:
            continue
        measured = True
        f = by.get((wl, "flex_triton"), {}).get("fwd_bwd_peak_mib")
        if f is not None and r["fwd_bwd_peak_mib"] > f:
            worse.append(f"{wl} ({r['fwd_bwd_peak_mib']:.0f} > {f:.0f} MiB)")
    state = ("higher on " + ", ".join(worse)) if worse else ("not higher on any workload" if measured else "—")
    lines.append(
        f"| attention peak memory ≤ Flex Triton's | {state} | ≤ Flex | see table | "
        f"{_met(None if not measured else not worse)} |"
    )
    builds = [r.get("mask_build_ms") for (wl, p), r in by.items() if p == BTOK and r.get("mask_build_ms") is not None]
    lines.append(
        f"| zero per-batch mask build | layout only: max {_f(max(builds) if builds else None)} ms "
        f"(`CondensationLayout.from_lengths`) | no mask | Flex `create_block_mask` column | "
        f"{'yes (no mask is built)' if builds else '—'} |"
    )
    if model_rows:
        m = {r["row"]: timed_view(r) for r in model_rows}
        b = m.get("btok_triton", {})
        xs, xf = b.get("x_sdpa"), b.get("x_flex_attention")
        peak_ok = None
        if b.get("peak_gib") is not None:
            others = [m[o].get("peak_gib") for o in ("sdpa", "flex_attention") if m.get(o, {}).get("peak_gib")]
            peak_ok = all(b["peak_gib"] < o for o in others) if others else None
        sdpa, flex = m.get("sdpa", {}), m.get("flex_attention", {})
        lines.append(
            f"| model step ×sdpa | {_f(xs, '.2f')}× | ≥ {MODEL_X_SDPA} | sdpa "
            f"{_f(sdpa.get('step_ms'), '.2f')} ms | {_met(None if xs is None else xs >= MODEL_X_SDPA)} |"
        )
        lines.append(
            f"| model step ×flex_attention | {_f(xf, '.2f')}× | ≥ {MODEL_X_FLEX} | flex "
            f"{_f(flex.get('step_ms'), '.2f')} ms | {_met(None if xf is None else xf >= MODEL_X_FLEX)} |"
        )
        lines.append(
            f"| model step peak memory lower than both | {_f(b.get('peak_gib'), '.2f')} GiB | < both | "
            f"sdpa {_f(sdpa.get('peak_gib'), '.2f')}, flex {_f(flex.get('peak_gib'), '.2f')} GiB "
            f"| {_met(peak_ok)} |"
        )
    if btok_step_rows:
        lines += btok_step_target_lines(btok_step_rows)
    if encode_rows:
        lines.append(encode_target_line(encode_rows))
    else:
        lines.append("| inference within 1% of last-token pooling | not in this report (encode.py) | ≤ 1% | — | — |")
    return "\n".join(lines)


BTOK_CPU = "btok_sdpa"
BTOK_ROWS = ("btok_", "fa_varlen_decomposition")  # btok's own rows: not peers of btok


def cpu_targets_markdown(rows: list[dict]) -> str:
    """The CPU target: btok's exact CPU path (``btok_sdpa``) at least as fast as the fastest
    exact CPU peer, forward and forward+backward, per workload of this run."""
    lines = [
        "| workload | mode | btok_sdpa ms | fastest exact peer (this run) | ratio | met? |",
        "|---|---|---|---|---|---|",
    ]
    for wl in dict.fromkeys(r["workload"] for r in rows):
        mine = timed_view(next((r for r in rows if r["workload"] == wl and r["peer"] == BTOK_CPU), {}))
        peers = [
            timed_view(r) for r in rows if r["workload"] == wl and r["exact"] and not r["peer"].startswith(BTOK_ROWS)
        ]
        for mode in ("fwd", "fwd_bwd"):
            timed = [(r[f"{mode}_ms"], r["peer"]) for r in peers if r.get(f"{mode}_ms")]
            b = mine.get(f"{mode}_ms")
            best = min(timed, default=None)
            ratio = b / best[0] if b and best else None
            lines.append(
                f"| {wl} | {mode.replace('_', '+')} | {_f(b)} | "
                f"{f'{best[1]} {best[0]:.3f}' if best else '—'} | {_f(ratio, '.2f')} | "
                f"{_met(None if ratio is None else ratio <= 1.0)} |"
            )
    return "\n".join(lines)


def cpu_btok_step_markdown(rows: list[dict]) -> str:
    """The CPU model-step target on btok_step.py's CPU run: btok_triton (kernel backend
    ``"sdpa"``) no slower than each exact peer row that ran (ratio = btok / peer time)."""
    m = {r["row"]: timed_view(r) for r in rows}
    b = m.get(BTOK, {}).get("step_ms")
    lines = ["| peer row | btok_triton ms | peer ms | ratio | met? |", "|---|---|---|---|---|"]
    for peer in BTOK_STEP_BARS:
        p = m.get(peer, {})
        ratio = b / p["step_ms"] if b and p.get("step_ms") else None
        lines.append(
            f"| {peer} | {_f(b, '.2f')} | {_f(p.get('step_ms'), '.2f') if p else '—'} "
            f"{'' if p.get('step_ms') else '(' + p.get('status', 'not run') + ')'} | {_f(ratio, '.2f')} | "
            f"{_met(None if ratio is None else ratio <= 1.0)} |"
        )
    return "\n".join(lines)
