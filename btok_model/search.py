"""``python -m btok_model.search``: the best rows of an ``embed`` output for a query.

    python -m btok_model.search --index corpus.lance --query "a small furry animal" -k 10
    python -m btok_model.search --index photos.lance --model runs/qwen2vl --image cat.jpg --query "this animal"
    python -m btok_model.search --index corpus.lance --query "..." --exact

The query is embedded by the model that embedded the output (``--model``; default: the one
recorded in the output, checked by its weights' fingerprint) with the same settings (Matryoshka
``dims``), then searched with :class:`btok_model.inference.index.Index`: through the output's
ANN index when it has one (the hits are then marked approximate), exactly otherwise or with
``--exact``. ``--similarity maxsim`` scores the K BTok vectors of a ``--multi-vector`` output
(exact).
"""

from __future__ import annotations

import argparse
import json

from . import cli
from .cli import fail
from .evaluate import BACKBONE_BASELINES, add_loading_arguments

__all__ = ["main", "parser"]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m btok_model.search",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--index", required=True, help="the Lance dataset python -m btok_model.embed wrote")
    p.add_argument("--model", help="the model that embedded it (default: the one recorded in --index)")
    p.add_argument("--gguf-file", help="as for embed")
    p.add_argument("--baseline", choices=BACKBONE_BASELINES, help="as for embed")
    p.add_argument("--query", action="append", default=[], help="a query text (repeat for several)")
    p.add_argument("--image", help="an image for the query (one --query or none; a vision-language model)")
    p.add_argument("-k", type=int, default=10, help="hits per query")
    p.add_argument("--exact", action="store_true", help="brute force even when the output has an ANN index")
    p.add_argument("--similarity", choices=("cosine", "maxsim"), default="cosine")
    p.add_argument("--nprobes", type=int, default=20, help="ANN: IVF partitions searched")
    p.add_argument("--refine-factor", type=int, default=10, help="ANN: re-rank k x this on the stored vectors (0: off)")
    p.add_argument(
        "--show", nargs="+", default=[], metavar="COLUMN", help="print these columns of each hit (kept columns)"
    )
    p.add_argument("--json", action="store_true", help="print the hits as one JSON object")
    add_loading_arguments(p)
    return p


def run(args: argparse.Namespace) -> dict:
    """Search ``args.index`` for the queries (module docstring); returns the hits."""
    from .datasets.jsonl import DataError
    from .embedder.collate import ExampleError
    from .embedder.encode import encode
    from .inference.index import Index

    if not args.query and not args.image:
        fail("give --query TEXT (repeatable) and/or --image PATH")
    if args.image and len(args.query) > 1:
        fail("--image goes with one --query (or none)")
    if args.k < 1:
        fail(f"-k must be >= 1, got {args.k}")
    try:
        index = Index(args.index)
    except (DataError, ImportError) as err:
        fail(str(err))
    recorded = index.settings
    if args.model is None:
        args.model, args.gguf_file, args.baseline = recorded["model"], recorded["gguf_file"], recorded["baseline"]
    if args.similarity == "maxsim" and not index.has_multi_vector:
        fail(f"--similarity maxsim needs the K vectors of each row: {args.index} was embedded without --multi-vector")
    from .embed import _load

    model = _load(args)
    try:
        index.check_model(model)
    except DataError as err:
        fail(str(err))
    if args.image:
        inputs = [{"text": args.query[0] if args.query else None, "image": args.image}]
    else:
        inputs = list(args.query)
    dims = recorded["dims"] if recorded["dims"] != model.embedding_dim else None
    try:
        queries = encode(model, inputs, dims=dims, multi_vector=args.similarity == "maxsim")
    except ExampleError as err:
        fail(f"--query/--image: {err}")
    missing = [c for c in args.show if c not in index.columns]
    if missing:
        fail(f"--show {missing}: {args.index} has no such column; its columns: {list(index.columns)}")
    hits = index.search(
        queries,
        args.k,
        exact=args.exact,
        similarity=args.similarity,
        nprobes=args.nprobes,
        refine_factor=args.refine_factor or None,
        columns=tuple(args.show),
    )
    how = "exact"
    if hits.approximate:
        how = f"approximate ({hits.method}, nprobes {args.nprobes}, refine {args.refine_factor})"
    out = {"index": args.index, "rows": index.num_rows, "search": how, "queries": []}
    labels = args.query or [f"image {args.image}"]
    if args.image and args.query:
        labels = [f"{args.query[0]} + image {args.image}"]
    for q, label in enumerate(labels):
        found = [
            {"id": rid, "row": int(row), "score": round(float(score), 6), **extra}
            for rid, row, score, extra in zip(
                hits.ids[q], hits.rows[q].tolist(), hits.scores[q].tolist(), hits.columns[q]
            )
        ]
        out["queries"].append({"query": label, "hits": found})
    if args.json:
        print(json.dumps(out, ensure_ascii=False))
    else:
        print(f"{args.index}: {index.num_rows} rows, {how} search")
        for entry in out["queries"]:
            print(f"query: {entry['query']}")
            for rank, hit in enumerate(entry["hits"], start=1):
                shown = "".join(f"  {hit[c]}" for c in args.show)
                print(f"  {rank:>3}. {hit['score']:.4f}  {hit['id']}{shown}")
    return out


@cli.command
def main(argv: list[str] | None = None) -> dict:
    return run(parser().parse_args(argv))


if __name__ == "__main__":
    main()
