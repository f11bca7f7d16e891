"""Aggregate several runs of the WordNet demo (one per ``--seed``) into mean and spread.

    for seed in 0 1 2; do
        python examples/wordnet_demo.py --rows all --seed $seed --out-dir runs/wordnet-seed$seed
    done
    python examples/wordnet_seeds.py runs/wordnet-seed*/results.json --output runs/wordnet-seeds.md

For every row (R@1, MRR@10) and every paired difference of the demo's comparisons, over the
runs that have it: the mean, the sample standard deviation (n - 1; 0 for one run), the minimum
and the maximum. A seed picks the split, the LoRA init and the data order, so the spread is
that of the whole recipe, not of the training alone. Prints a markdown table; ``--output``
also writes it, and the JSON beside it (``.json``).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

METRICS = ("recall@1", "mrr@10")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", help="results.json files of wordnet_demo.py, one per seed")
    p.add_argument("--output", help="write the markdown table here (and the JSON summary beside it, .json)")
    return p


def spread(values: list[float]) -> dict:
    """``{"n", "mean", "sd", "min", "max"}`` of ``values`` (sd: sample, n - 1; 0 for one value)."""
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"n": n, "mean": mean, "sd": sd, "min": min(values), "max": max(values)}


def aggregate(runs: list[dict]) -> dict:
    """The summary of :func:`spread` per row and per comparison (``"a - b"``) and metric."""
    rows: dict[str, dict[str, list[float]]] = {}
    comparisons: dict[str, dict[str, list[float]]] = {}
    for run in runs:
        for name, row in run["rows"].items():
            for metric in METRICS:
                rows.setdefault(name, {}).setdefault(metric, []).append(row["metrics"][metric])
        for c in run.get("comparisons", []):
            for metric in METRICS:
                key = f"{c['a']} - {c['b']}"
                comparisons.setdefault(key, {}).setdefault(metric, []).append(c[metric]["difference"])
    return {
        "seeds": [run["seed"] for run in runs],
        "commands": [run["command"] for run in runs],
        "rows": {name: {m: spread(v) for m, v in metrics.items()} for name, metrics in rows.items()},
        "comparisons": {name: {m: spread(v) for m, v in metrics.items()} for name, metrics in comparisons.items()},
    }


def _cell(s: dict) -> str:
    return f"{s['mean']:+.3f} ± {s['sd']:.3f} [{s['min']:+.3f}, {s['max']:+.3f}] (n={s['n']})"


def markdown(summary: dict) -> str:
    lines = [
        f"# WordNet demo over seeds {summary['seeds']}",
        "",
        "Mean ± sample sd [min, max] over the runs.",
        "",
        "| row | R@1 | MRR@10 |",
        "|---|---|---|",
    ]
    lines += [f"| {name} | {_cell(m['recall@1'])} | {_cell(m['mrr@10'])} |" for name, m in summary["rows"].items()]
    if summary["comparisons"]:
        lines += ["", "Paired differences (each run's a - b on its own pool):", "", "| a - b | R@1 | MRR@10 |"]
        lines += ["|---|---|---|"]
        lines += [
            f"| {name} | {_cell(m['recall@1'])} | {_cell(m['mrr@10'])} |" for name, m in summary["comparisons"].items()
        ]
    lines += ["", "Commands:", "", *[f"- `{c}`" for c in summary["commands"]]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    args = parser().parse_args(argv)
    runs = []
    for path in args.results:
        try:
            with open(path) as f:
                run = json.load(f)
            seed = run["seed"] if "seed" in run else run["recipe"]["seed"]
        except (OSError, ValueError, KeyError) as err:
            raise SystemExit(f"error: {path}: not a wordnet_demo.py results.json ({err})") from None
        if any(r["seed"] == seed for r in runs):
            raise SystemExit(f"error: {path}: seed {seed} appears twice; give one results.json per seed")
        runs.append({**run, "seed": seed})
    summary = aggregate(runs)
    text = markdown(summary)
    print(text, end="")
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            f.write(text)
        with open(os.path.splitext(args.output)[0] + ".json", "w") as f:
            json.dump(summary, f, indent=2)
    return summary


if __name__ == "__main__":
    main(sys.argv[1:])
