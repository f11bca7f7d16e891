#!/usr/bin/env python
"""Markdown for benchmarks/RESULTS.md from the JSON files the benchmarks wrote.

    python benchmarks/report.py benchmarks/out/MASK_ATTN_RUN.json [benchmarks/out/MODEL_STEP_RUN.json] \\
        [--btok-step BTOK_STEP_RUN.json] [--encode ENCODE_RUN.json]
    python benchmarks/report.py --btok-step BTOK_STEP_RUN.json        # any subset of the runs
    python benchmarks/report.py RUN.json --png RUN.png   # the plot again, e.g. where matplotlib is

Prints each run's header (device, versions, date, command) and tables (attention: one per
workload group), then where each target of benchmarks/README.md stands (the GPU targets
for GPU runs, the CPU targets for CPU runs), each computed from the rows of its own run
only. A run file that is missing or unreadable is named with the reason, and the others
are still reported.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.table import attention_markdown, encode_markdown, model_markdown, run_header
from benchmarks.targets import cpu_btok_step_markdown, cpu_targets_markdown, targets_markdown


def _load(path: Path | None) -> tuple[dict | None, str | None]:
    """``(run, None)`` or ``(None, why)``; ``(None, None)`` when no path was given."""
    if path is None:
        return None, None
    try:
        data = json.loads(path.read_text())
        if not isinstance(data.get("rows"), list) or not isinstance(data.get("meta"), dict):
            return None, f"{path}: not a benchmark run (no 'meta' and 'rows')"
        return data, None
    except (OSError, ValueError) as e:
        return None, f"{path}: {type(e).__name__}: {e}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mask_attn_json", type=Path, nargs="?", help="mask_attn.py's run")
    ap.add_argument("model_step_json", type=Path, nargs="?", help="model_step.py's run")
    ap.add_argument("--btok-step", type=Path, help="btok_step.py's run")
    ap.add_argument("--encode", type=Path, help="encode.py's run")
    ap.add_argument("--png", type=Path, help="also draw mask_attn.py's plot of these rows (needs matplotlib)")
    args = ap.parse_args(argv)
    paths = {
        "mask_attn": args.mask_attn_json,
        "model_step": args.model_step_json,
        "btok_step": args.btok_step,
        "encode": args.encode,
    }
    if not any(paths.values()):
        ap.error("give at least one run's JSON")
    runs = {}
    for name, path in paths.items():
        runs[name], why = _load(path)
        if why:
            print(f"> {name}: not reported: {why}\n")
    attn, model, step, enc = (runs[k] for k in ("mask_attn", "model_step", "btok_step", "encode"))
    if attn:
        if args.png:
            from benchmarks.plot import plot_attention

            why = plot_attention(attn["rows"], args.png)
            print(f"<!-- {why or 'wrote ' + str(args.png)} -->\n")
        print(f"### Attention ({args.mask_attn_json.name})\n\n{run_header(attn['meta'])}\n")
        if attn["meta"].get("peers_not_run"):
            print("Peers not run: " + "; ".join(attn["meta"]["peers_not_run"]) + "\n")
        for group in dict.fromkeys(r["group"] for r in attn["rows"]):
            print(f"#### {group}\n\n{attention_markdown([r for r in attn['rows'] if r['group'] == group])}\n")
    if model:
        mm = model["meta"]
        print(
            f"### Model step ({args.model_step_json.name})\n\n{run_header(mm)}\n- workload: {mm.get('workload')}, "
            f"layers: {mm.get('layers')}\n- memory: {mm.get('peak_memory', '—')}\n\n"
            f"{model_markdown(model['rows'])}\n"
        )
    if step:
        from benchmarks.btok_step import ERRORS, RATIO_TO

        sm = step["meta"]
        print(
            f"### BTok training step ({args.btok_step.name})\n\n{run_header(sm)}\n- workload: {sm.get('workload')} "
            f"and its positives, {sm.get('tokens')} tokens; layers: {sm.get('layers')}\n- step: {sm.get('step')}\n"
            f"- reference: {sm.get('reference')}\n- memory: {sm.get('peak_memory', '—')}\n\n"
            f"{model_markdown(step['rows'], RATIO_TO, ERRORS)}\n"
        )
    if enc:
        em = enc["meta"]
        print(
            f"### encode() throughput ({args.encode.name})\n\n{run_header(em)}\n- K = {em.get('num_btoks')}, "
            f"batch size {em.get('batch_size')}; timing: {em.get('timing')}\n- reference: {em.get('reference')}\n\n"
            f"{encode_markdown(enc['rows'])}\n"
        )
    gpu = {name: bool(run["meta"].get("gpu")) for name, run in runs.items() if run}
    if any(gpu.values()):
        on = {name: runs[name]["rows"] if gpu.get(name) else None for name in paths}
        print(
            "### Targets (benchmarks/README.md), each from its own run\n\n"
            + targets_markdown(on["mask_attn"] or [], on["model_step"], on["btok_step"], on["encode"])
            + "\n"
        )
    if attn and not gpu["mask_attn"]:
        print("### CPU target, this run only\n\n" + cpu_targets_markdown(attn["rows"]) + "\n")
    if step and not gpu["btok_step"]:
        print(
            "### CPU target, BTok step: btok_triton no slower than each exact peer row\n\n"
            + cpu_btok_step_markdown(step["rows"])
            + "\n"
        )


if __name__ == "__main__":
    main()
