"""``python -m btok_model.embed``: embed a corpus into a Lance dataset (resumable, sharded under torchrun).

    python -m btok_model.embed --model runs/smol --data corpus.jsonl --output corpus.lance
    python -m btok_model.embed --model runs/qwen2vl --data photos/ --output photos.lance --index
    torchrun --nproc-per-node 8 -m btok_model.embed --model runs/qwen2vl --data pages.parquet --output pages.lance

``--data`` is a JSONL or parquet file, a Lance table or a folder of images (each file a row, its
path the id); see :mod:`btok_model.inference.readers` for the fields read. The output
(:mod:`btok_model.inference.lance_store`) holds each row's id, row number and L2-normalised
vector (``--dtype float16`` by default), the K BTok vectors with ``--multi-vector``, the
``--keep-columns``, and the settings and counts as metadata. Rerun the same command after a crash
and only the missing blocks are encoded; a rerun with other settings is refused. ``--index``
builds Lance's ANN index on the vectors (:mod:`btok_model.inference.index`); search with
``python -m btok_model.search``.

Bad rows (an empty text, an unreadable image or video, a row longer than the model accepts)
stop the run naming file and row (``--on-bad-row error``, the default: the checks that need no
model run before it loads), or are skipped and counted in the output's metadata
(``--on-bad-row skip``).
"""

from __future__ import annotations

import argparse
import os
import time

from . import cli
from .cli import fail
from .evaluate import BACKBONE_BASELINES, add_loading_arguments

__all__ = ["main", "parser"]

INDEX_TYPES = ("IVF_PQ", "IVF_HNSW_SQ")  # as btok_model.inference.index (not imported: --help stays light)
OUTPUT_COLUMNS = ("id", "row", "vector", "vectors")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m btok_model.embed",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--model",
        required=True,
        help="a saved BTok model or one trained with --no-btoks, or with --baseline a backbone",
    )
    p.add_argument("--gguf-file", help="load --model from this GGUF file in its folder (with --baseline)")
    p.add_argument("--baseline", choices=BACKBONE_BASELINES, help="embed with the backbone's own pooling, no BToks")
    p.add_argument("--data", required=True, help="corpus.jsonl, corpus.parquet, corpus.lance or a folder of images")
    p.add_argument("--output", required=True, help="the Lance dataset to write (a *.lance folder)")
    p.add_argument("--limit", type=int, help="embed only the first N rows")
    p.add_argument("--keep-columns", nargs="+", default=[], metavar="COLUMN", help="source fields copied to the output")
    p.add_argument("--text-field", default="text")
    p.add_argument(
        "--image-field", default="image", help="an image path (relative to the file), bytes, or {bytes, path}"
    )
    p.add_argument("--video-field", default="video", help="a list of frames (paths or bytes), already sampled")
    p.add_argument("--id-field", default="id", help="the row's id (default when absent: its row number)")
    p.add_argument("--dtype", choices=("float16", "float32"), default="float16", help="the stored vectors' type")
    p.add_argument("--multi-vector", action="store_true", help="also store a BTok model's K BTok vectors (MaxSim)")
    p.add_argument("--dims", help="Matryoshka: keep the leading DIMS components (re-normalised)")
    p.add_argument("--on-bad-row", choices=("error", "skip"), default="error")
    p.add_argument("--batch-size", type=int, default=64, help="inputs per forward pass")
    p.add_argument("--block-size", type=int, default=4096, help="rows per block (the unit of resuming and sharding)")
    p.add_argument("--index", action="store_true", help="build an ANN index on the vectors when done")
    p.add_argument("--index-type", choices=INDEX_TYPES, default="IVF_PQ")
    p.add_argument("--num-partitions", type=int, help="IVF partitions (default: about sqrt(rows))")
    p.add_argument("--num-sub-vectors", type=int, help="IVF_PQ sub-vectors (default: H / 16, or a divisor of H)")
    p.add_argument("--no-progress-bar", action="store_true")
    add_loading_arguments(p)
    return p


def _source_identity(path: str) -> dict:
    """What identifies the source: its absolute path, and for a file its size."""
    out = {"path": os.path.abspath(path)}
    if os.path.isfile(path):
        out["bytes"] = os.path.getsize(path)
    return out


def run(args: argparse.Namespace) -> dict:
    """Embed ``args.data`` into ``args.output`` (module docstring); returns the summary."""
    from .datasets.jsonl import DataError
    from .embedder.collate import ExampleError
    from .embedder.encode import encode_block, rank_and_world, row_blocks, shard_blocks
    from .inference import distributed
    from .inference.lance_store import EmbeddingStore, check_settings, model_fingerprint, output_schema
    from .inference.readers import open_rows

    for name in ("limit", "batch_size", "block_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            fail(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    clash = [c for c in args.keep_columns if c in OUTPUT_COLUMNS]
    if clash:
        fail(f"--keep-columns {clash}: the output has its own columns {list(OUTPUT_COLUMNS)}")
    try:
        args.device = distributed.init_from_env(args.device)
    except ValueError as err:
        fail(str(err))
    rank, world = rank_and_world()
    try:
        reader = open_rows(
            args.data,
            text_field=args.text_field,
            image_field=args.image_field,
            video_field=args.video_field,
            id_field=args.id_field,
            keep_columns=tuple(args.keep_columns),
        )
    except (DataError, ImportError) as err:
        fail(str(err))
    num_rows = reader.num_rows if args.limit is None else min(args.limit, reader.num_rows)
    blocks = row_blocks(num_rows, args.block_size)
    mine = shard_blocks(len(blocks), rank, world)
    if args.on_bad_row == "error" and len(mine):  # before the model loads
        share = range(blocks[mine.start].start, blocks[mine.stop - 1].stop)
        bad = reader.scan(share)
        if bad:
            fail(f"{bad[0].message()} (--on-bad-row skip skips such rows)")
    try:
        kept = reader.keep_types()
    except DataError as err:
        fail(str(err))
    run_settings = {
        "model": args.model,
        "gguf_file": args.gguf_file,
        "baseline": args.baseline,
        "attn_implementation": args.attn_implementation,
        "source": _source_identity(args.data),
        "source_kind": reader.kind,
        "source_rows": reader.num_rows,
        "limit": args.limit,
        "fields": {k: getattr(args, f"{k}_field") for k in ("text", "image", "video", "id")},
        "keep_columns": list(args.keep_columns),
        "dtype": args.dtype,
        "multi_vector": args.multi_vector,
        "block_size": args.block_size,
        "batch_size": args.batch_size,
    }
    try:  # the settings that need no model, checked before it loads (EmbeddingStore.open checks all)
        check_settings(args.output, run_settings)
    except DataError as err:
        fail(str(err))
    model = _load(args)
    if reader.has_media and model.processor is None:
        fail(f"{args.data}: rows with images or video need a vision-language model; {args.model} is text only")
    if args.multi_vector and "maxsim" not in model.config_class.SIMILARITIES:
        fail(f"--multi-vector stores the K BTok vectors of a BTok model; {args.model} without BToks has none")
    from .embedder.similarity import check_dims

    try:
        dims = check_dims([args.dims], model.embedding_dim, "--dims")[0] if args.dims else None
    except ValueError as err:
        fail(str(err))
    dim = dims or model.embedding_dim
    num_btoks = model.collator.num_btoks if args.multi_vector else None
    settings = {
        **run_settings,
        "weights": model_fingerprint(model),
        "embedder": type(model).__name__,
        "torch_dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "device_type": model.device.type,
        "dims": dim,
        "similarity": getattr(model.config, "similarity", "cosine"),
    }
    schema = output_schema(dim, args.dtype, num_btoks, kept, {"format": 1, "settings": settings})
    try:
        if rank == 0:
            store = EmbeddingStore.open(args.output, schema, block_size=args.block_size, dtype=args.dtype)
        distributed.barrier()
        if rank != 0:
            store = EmbeddingStore.open(
                args.output, schema, block_size=args.block_size, dtype=args.dtype, prepare=False
            )
    except (DataError, ImportError) as err:
        fail(str(err))
    todo = [b for b in mine if b not in store.done]
    if rank == 0:
        print(
            f"{args.output}: {num_rows} rows in {len(blocks)} blocks of {args.block_size}; "
            f"{len(blocks) - len(store.done)} to encode ({world} process{'es' if world > 1 else ''})",
            flush=True,
        )
    from tqdm.auto import tqdm

    started = time.perf_counter()
    encoded = 0
    total = sum(len(blocks[b]) for b in todo)
    options = dict(batch_size=args.batch_size, dims=dims, with_btok_vectors=num_btoks is not None)
    with tqdm(total=total, desc="Embedding", unit="row", disable=args.no_progress_bar or rank != 0 or not total) as bar:
        for b in todo:
            rows, bad = reader.read(blocks[b])
            if bad and args.on_bad_row == "error":
                fail(f"{bad[0].message()} (--on-bad-row skip skips such rows)")
            try:  # the block is tokenised (media read) before its first forward pass
                vectors = encode_block(model, [r.input for r in rows], bar=bar, **options)
            except ExampleError:  # find the rows the model refuses, then encode the others
                rows, refused = _model_check(model, rows, args.on_bad_row)
                bad = sorted(bad + refused, key=lambda r: r.row)
                vectors = encode_block(model, [r.input for r in rows], bar=bar, **options)
            vectors, multi = vectors if num_btoks else (vectors, None)  # --multi-vector: both from one forward
            bar.update(len(bad))
            store.write_block(b, rows, vectors.numpy(), None if multi is None else multi.numpy(), bad)
            encoded += len(rows)
    seconds = time.perf_counter() - started
    distributed.barrier()
    if rank != 0:
        return {}
    summary = store.finish(len(blocks), {"encoded_this_run": encoded, "seconds_this_run": round(seconds, 2)})
    if args.index:
        from .inference.index import build_index

        try:
            summary["index"] = index = build_index(
                args.output,
                index_type=args.index_type,
                num_partitions=args.num_partitions,
                num_sub_vectors=args.num_sub_vectors,
            )
        except ValueError as err:
            fail(str(err))
        built = (
            f"{index['index_type']} index, {index['num_partitions']} partitions, built in {index['build_seconds']} s"
        )
        print(f"{args.output}: {built}", flush=True)
    skipped = f", {summary['skipped']} skipped" if summary["skipped"] else ""
    print(f"{args.output}: {summary['rows']} rows{skipped}; {encoded} encoded in {seconds:.1f} s", flush=True)
    return summary


def _load(args):
    from .evaluate import load_embedder

    return load_embedder(args)


def _model_check(model, rows: list, on_bad_row: str) -> tuple[list, list]:
    """The rows of a block the model accepts, and the refused ones as BadRows (too long for the
    model, media its processor cannot take); with ``on_bad_row == "error"`` the first stops the run."""
    from .embedder.encode import check_inputs
    from .inference.readers import BadRow

    refused = check_inputs(model, [r.input for r in rows])
    if not refused:
        return rows, []
    bad = []
    for i, message in refused:
        reason = message.split(": ", 1)[1] if message.startswith(f"text {i}") else message
        bad.append(BadRow(rows[i].row, rows[i].where, reason))
    if on_bad_row == "error":
        fail(f"{bad[0].message()} (--on-bad-row skip skips such rows)")
    dropped = {i for i, _ in refused}
    return [r for i, r in enumerate(rows) if i not in dropped], bad


@cli.command
def main(argv: list[str] | None = None) -> dict:
    return run(parser().parse_args(argv))


if __name__ == "__main__":
    main()
