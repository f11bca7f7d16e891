#!/usr/bin/env python
"""Markdown for benchmarks/RESULTS.md from the JSON files the benchmarks wrote.

    python benchmarks/report.py benchmarks/out/MASK_ATTN_RUN.json [benchmarks/out/MODEL_STEP_RUN.json]
    python benchmarks/report.py RUN.json --png RUN.png   # the plot again, e.g. where matplotlib is

Prints the run's header (device, versions, date, command), one table per workload group,
and where each target of benchmarks/README.md stands (the GPU targets for a GPU run, the
CPU target for a CPU run), computed from the rows of that same run only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.table import attention_markdown, model_markdown, run_header
from benchmarks.targets import cpu_targets_markdown, targets_markdown


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mask_attn_json", type=Path)
    ap.add_argument("model_step_json", type=Path, nargs="?")
    ap.add_argument("--png", type=Path, help="also draw mask_attn.py's plot of these rows (needs matplotlib)")
    args = ap.parse_args(argv)
    data = json.loads(args.mask_attn_json.read_text())
    if args.png:
        from benchmarks.plot import plot_attention

        why = plot_attention(data["rows"], args.png)
        print(f"<!-- {why or 'wrote ' + str(args.png)} -->\n")
    model = json.loads(args.model_step_json.read_text()) if args.model_step_json else None
    rows = data["rows"]
    print(f"### Attention ({args.mask_attn_json.name})\n\n{run_header(data['meta'])}\n")
    if data["meta"].get("peers_not_run"):
        print("Peers not run: " + "; ".join(data["meta"]["peers_not_run"]) + "\n")
    for group in dict.fromkeys(r["group"] for r in rows):
        print(f"#### {group}\n\n{attention_markdown([r for r in rows if r['group'] == group])}\n")
    if model:
        mm = model["meta"]
        print(f"### Model step ({args.model_step_json.name})\n\n{run_header(mm)}\n- workload: {mm.get('workload')}, "
              f"layers: {mm.get('layers')}\n\n{model_markdown(model['rows'])}\n")
    if not data["meta"].get("gpu"):
        print("### CPU target, this run only\n\n" + cpu_targets_markdown(rows))
        return
    model_rows = model["rows"] if model else None
    print(f"### Targets (benchmarks/README.md), this run only\n\n{targets_markdown(rows, model_rows)}")


if __name__ == "__main__":
    main()
