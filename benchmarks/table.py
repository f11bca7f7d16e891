"""Tables of benchmark rows: fixed-width text for the terminal, Markdown for RESULTS.md.

A row whose check FAILED or that raised shows no timing anywhere (nor counts toward a
target): :func:`timed_view` drops its timing-derived values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .measure import is_timing_key

__all__ = [
    "format_table",
    "ATTENTION_COLUMNS",
    "attention_text_rows",
    "MODEL_COLUMNS",
    "model_columns",
    "timed_view",
    "attention_markdown",
    "model_markdown",
    "encode_markdown",
    "run_header",
]

NO_TIMING_STATUS = ("FAILED", "error")


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
    out = ["  ".join(h.ljust(w) for (_, h, _), w in zip(columns, widths)), "  ".join("-" * w for w in widths)]
    out += ["  ".join(x.ljust(w) for x, w in zip(c, widths)) for c in cells]
    return "\n".join(out)


def timed_view(r: dict) -> dict:
    """The row without its timing-derived values when it FAILED its check or raised."""
    if r.get("status") not in NO_TIMING_STATUS:
        return r
    return {k: v for k, v in r.items() if not is_timing_key(k)}


def _max_err(r: dict) -> float | None:
    errs = [v for k, v in r.items() if "_err_" in k and v is not None]
    return max(errs) if errs else None


# ----------------------------------------------------------------------------------------
# text (mask_attn.py, model_step.py)
# ----------------------------------------------------------------------------------------
ATTENTION_COLUMNS = [
    ("workload", "workload", ""),
    ("peer", "peer", ""),
    ("kind", "kind", ""),
    ("fwd_ms", "fwd ms", ".3f"),
    ("fwd_tflops", "TFLOP/s", ".3g"),
    ("fwd_bwd_ms", "fwd+bwd ms", ".3f"),
    ("fwd_bwd_tflops", "TFLOP/s", ".3g"),
    ("peak", "peak MiB", ""),
    ("mask_build_ms", "mask ms", ".3f"),
    ("first_call_s", "1st call s", ".1f"),
    ("fwd_x_flex", "xFlex fwd", ".2f"),
    ("fwd_bwd_x_flex", "xFlex f+b", ".2f"),
    ("err", "max err", ".1e"),
    ("status", "status", ""),
    ("note", "note", ""),
]


def model_columns(
    ratio_to: Sequence[str] = ("sdpa", "flex_attention"), errors: Sequence[str] = ("loss", "grad")
) -> list[tuple[str, str, str]]:
    """Columns of a model-step table: step time and memory, the speed ratios to ``ratio_to``
    rows (``x_<row>``), mask build, first call and the ``err_<name>`` checks."""
    cols = [
        ("row", "attention", ""),
        ("step_ms", "step ms", ".2f"),
        ("step_ms_min", "min ms", ".2f"),
        ("peak_gib", "peak GiB", ".2f"),
        ("step_peak_gib", "step GiB", ".2f"),
        ("rss_peak_mib", "RSS+ MiB", ".0f"),
    ]
    cols += [(f"x_{r}", f"x {r}", ".2f") for r in ratio_to]
    cols += [("mask_build_ms", "mask ms", ".2f"), ("first_call_s", "1st call s", ".1f")]
    cols += [(f"err_{e}", f"err {e}", ".1e") for e in errors]
    return cols + [("status", "status", ""), ("note", "note", "")]


MODEL_COLUMNS = model_columns()


def attention_text_rows(rows: list[dict]) -> list[dict]:
    """mask_attn rows with the derived columns of :data:`ATTENTION_COLUMNS`."""
    out = []
    for r in map(timed_view, rows):
        d = dict(r)
        d["kind"] = "exact" if r["exact"] else "no cut"
        d["err"] = _max_err(r)
        firsts = [v for k, v in r.items() if k.endswith("_first_call_s")]
        d["first_call_s"] = max(firsts) if firsts else None
        peak = r.get("fwd_bwd_peak_mib", r.get("fwd_peak_mib"))
        d["peak"] = f"{peak:.0f}" if peak is not None else ("n/a" if r.get("fwd_ms") else None)
        out.append(d)
    return out


# ----------------------------------------------------------------------------------------
# Markdown (report.py -> RESULTS.md)
# ----------------------------------------------------------------------------------------
def _f(v, spec=".3f"):
    return "—" if v is None else format(v, spec)


def run_header(meta: dict) -> str:
    keys = (
        "gpu",
        "device",
        "cpu_threads",
        "torch",
        "cuda",
        "triton",
        "transformers",
        "dtype",
        "git_commit",
        "date_utc",
        "command",
        "wall_s",
    )
    shown = [k for k in keys if meta.get(k) is not None]
    return "\n".join(f"- {k}: {round(meta[k], 1) if k == 'wall_s' else meta[k]}" for k in shown)


def attention_markdown(rows: list[dict]) -> str:
    out = [
        "| workload | peer | kind | fwd ms | fwd TFLOP/s | f+b ms | f+b TFLOP/s | peak MiB (f+b) | mask build ms "
        "| ×Flex fwd | ×Flex f+b | max rel err | status / note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in map(timed_view, rows):
        kind = "exact" if r["exact"] else "no cut"
        note = r["status"] + (f": {r['note']}" if r.get("note") else "")
        out.append(
            f"| {r['workload']} | {r['peer']} | {kind} | {_f(r.get('fwd_ms'))} | {_f(r.get('fwd_tflops'), '.3g')} | "
            f"{_f(r.get('fwd_bwd_ms'))} | {_f(r.get('fwd_bwd_tflops'), '.3g')} | "
            f"{_f(r.get('fwd_bwd_peak_mib'), '.0f')} | {_f(r.get('mask_build_ms'))} | "
            f"{_f(r.get('fwd_x_flex'), '.2f')} | {_f(r.get('fwd_bwd_x_flex'), '.2f')} | "
            f"{_f(_max_err(r), '.1e')} | {note} |"
        )
    return "\n".join(out)


def model_markdown(
    rows: list[dict], ratio_to: Sequence[str] = ("sdpa", "flex_attention"), errors: Sequence[str] = ("loss", "grad")
) -> str:
    """A model-step table: step ms (and, when the step builds a mask, step - mask build),
    peak memory (CUDA: absolute and above the pre-step allocation; CPU: peak RSS growth),
    the ratios ``x_<row>`` (``x_<row>_ex_mask`` after a slash), mask build, checks."""
    head = ["attention", "step ms", "step − mask ms", "peak GiB", "step GiB", "RSS+ MiB"]
    head += [f"×{r}" for r in ratio_to] + ["mask build ms"] + [f"err {e}" for e in errors] + ["status / note"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in map(timed_view, rows):
        cells = [
            r["row"],
            _f(r.get("step_ms"), ".2f"),
            _f(r.get("step_ex_mask_ms"), ".2f"),
            _f(r.get("peak_gib"), ".2f"),
            _f(r.get("step_peak_gib"), ".2f"),
            _f(r.get("rss_peak_mib"), ".0f"),
        ]
        for other in ratio_to:
            x, ex = r.get(f"x_{other}"), r.get(f"x_{other}_ex_mask")
            cells.append(_f(x, ".2f") + (f" / {ex:.2f}" if ex is not None else ""))
        cells.append(_f(r.get("mask_build_ms"), ".2f"))
        cells += [_f(r.get(f"err_{e}"), ".1e") for e in errors]
        cells.append(r["status"] + (f": {r['note']}" if r.get("note") else ""))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def _paren(v, spec=".4f") -> str:
    return "" if v is None else f" ({v:{spec}})"


def encode_markdown(rows: list[dict]) -> str:
    """encode.py rows: per workload, mode and method, the throughput; on the btok rows the
    measured time ratio to last-token pooling (same pipeline), the ratio the token count
    predicts, the code overhead, and the time ratio to the library's PooledEmbedder."""
    out = [
        "| workload | mode | method | texts | tokens | ms / call | texts/s | tokens/s | time ratio (of mins) "
        "| by tokens | code overhead | ≤ 1%? | vs pooled_embedder | err | status / note |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in map(timed_view, rows):
        within, overhead = r.get("within_1pct"), r.get("code_overhead")
        out.append(
            f"| {r['workload']} | {r['mode']} | {r['method']} | {r.get('texts', '—')} | {r.get('input_tokens', '—')} "
            f"| {_f(r.get('ms'), '.2f')} | {_f(r.get('texts_per_s'), '.1f')} | {_f(r.get('tokens_per_s'), '.0f')} "
            f"| {_f(r.get('time_ratio'), '.4f')}{_paren(r.get('time_ratio_min'))} "
            f"| {_f(r.get('predicted_ratio'), '.4f')} "
            f"| {'—' if overhead is None else format(overhead, '+.2%')} "
            f"| {'—' if within is None else ('yes' if within else 'no')} | {_f(r.get('time_ratio_pooled'), '.4f')} "
            f"| {_f(r.get('err'), '.1e')} "
            f"| {r['status']}{': ' + r['note'] if r.get('note') else ''} |"
        )
    return "\n".join(out)
