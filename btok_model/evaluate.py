"""``python -m btok_model.evaluate``: retrieval metrics of a BTok model, a no-BTok baseline or TF-IDF.

    python -m btok_model.evaluate --model runs/smol --data test.jsonl --output scores.json
    python -m btok_model.evaluate --model HuggingFaceTB/SmolLM2-135M-Instruct --baseline mean --data test.jsonl
    python -m btok_model.evaluate --baseline tfidf --data test.jsonl
    python -m btok_model.evaluate --model runs/qwen2vl --mmeb-v2 data/MMEB-V2 --output-dir eval/mmeb_v2
    python -m btok_model.evaluate --model runs/smol --data test.jsonl --similarity maxsim --dims 64 128 full
    torchrun --nproc-per-node 2 -m btok_model.evaluate --model runs/smol --data test.jsonl --output scores.json

Each ``--data`` file is either ``{"query", "positive"}`` pairs (ranked against the pool of all
positives plus ``--corpus``, or plus the rows of ``--corpus-index``, an ``embed`` output of the
same model: exact, or with ``--ann`` through its ANN index and reported as approximate) or MMEB-style ``{"query", "candidates", "label"}`` lists (scored as
Hit@1, with the other metrics too). Reports Recall@1/5/10, MRR@10 and nDCG@10, as expected
values under random tie-breaking. ``--mmeb-v2 ROOT`` scores MMEB-V2 as the paper does (see
:mod:`btok_model.evaluation.mmeb_v2`): Hit@1 or nDCG@5 per dataset, the meta-task, modality and
Overall means, written to ``--output-dir`` dataset by dataset (a rerun resumes).
``--similarity maxsim`` scores a BTok model's K BTok vectors by MaxSim (default: the similarity
the model was trained with); ``--dims`` scores the Matryoshka truncations of one embedding pass,
one metrics block per dimension.

Under ``torchrun --nproc-per-node N`` (gloo on the CPU, NCCL with CUDA: a GPU per rank) each
rank encodes its share of the row blocks, candidates stay on their rank, every query is scored
against every rank's share and the rank counts add up: the same JSON and tables as one
process (rank 0 prints and writes them). ``--on-bad-row skip`` leaves out the inputs the model
refuses (an empty text, a text longer than it accepts, an image that does not decode) and says
how many beside each score; by default the first one stops the run, named by file and line,
before anything is embedded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

from . import cli
from .cli import fail

__all__ = [
    "AUTHORS_PIXELS",
    "add_bad_row_argument",
    "add_corpus_index_arguments",
    "add_loading_arguments",
    "corpus_index_options",
    "join_ranks",
    "load_embedder",
    "load_scorer",
    "main",
    "parser",
    "pixel_limits",
    "run_mmeb_v2",
]

BACKBONE_BASELINES = ("last-token", "mean")  # a backbone without BToks, pooled so (embed, search, mine too)
BASELINES = (*BACKBONE_BASELINES, "tfidf")
SIMILARITIES = ("cosine", "maxsim")  # as btok_model.embedder.similarity (not imported: --help stays light)
MMEB_MODES = ("canonical", "origin")  # as btok_model.evaluation.mmeb_v2_inputs.MODES (likewise)
BLOCK_SIZE = 8192  # --encode-block's default: as btok_model.evaluation.scorers.BLOCK_SIZE


# The authors' pixel limits for Qwen2-VL (configs/presets/btoks_qwen2vl_2b_v1.yaml: processor.*), quoted in --help.
AUTHORS_PIXELS = {
    "image_min_pixels": 28 * 28 * 4,
    "image_max_pixels": 28 * 28 * 1280,
    "video_max_pixels": 28 * 28 * 768,
}


def _pixels(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {text!r}")
    return value


def add_loading_arguments(p: argparse.ArgumentParser) -> None:
    """The flags :func:`load_embedder` reads to load a model: attention, device, dtype, and a
    vision-language model's pixel limits."""
    p.add_argument("--attn-implementation", default="btok_triton")
    p.add_argument(
        "--merge-adapters",
        action="store_true",
        help="a model saved with unmerged LoRA/DoRA adapters (train --save-adapters): merge them into the weights on "
        "loading (default: keep them apart, as the authors evaluate)",
    )
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument(
        "--torch-dtype",
        default=None,
        help="the model's weights (float32, bfloat16, auto: as saved); default: bfloat16 where --device computes it "
        "natively, else float32",
    )
    g = p.add_argument_group(
        "pixel limits (Qwen2-VL family)",
        "pixels per image / video frame the processor resizes to; unset: the saved processor's (a BTok model keeps "
        "its training limits). The authors evaluate Qwen2-VL with --image-min-pixels {image_min_pixels} "
        "--image-max-pixels {image_max_pixels} --video-max-pixels {video_max_pixels}".format(**AUTHORS_PIXELS),
    )
    for what in ("image", "video"):
        for end in ("min", "max"):
            g.add_argument(f"--{what}-{end}-pixels", type=_pixels, default=None, metavar="N")


def pixel_limits(args: argparse.Namespace) -> tuple[tuple[int | None, int | None], tuple[int | None, int | None]]:
    """``((image min, max), (video min, max))`` of the pixel flags (None where not given)."""
    return tuple(
        (getattr(args, f"{what}_min_pixels", None), getattr(args, f"{what}_max_pixels", None))
        for what in ("image", "video")
    )


def add_bad_row_argument(p: argparse.ArgumentParser) -> None:
    """``--on-bad-row error|skip``: stop at an input the model refuses, or leave it out and count it."""
    p.add_argument(
        "--on-bad-row",
        choices=("error", "skip"),
        default="error",
        help="an input the model refuses (empty text, longer than the model accepts, an image that does not decode): "
        "stop naming its file and line, or skip it and report how many were skipped",
    )


def add_corpus_index_arguments(p: argparse.ArgumentParser) -> None:
    """``--corpus-index`` (an ``embed`` output as extra candidates) and its ANN options; read
    back with :func:`corpus_index_options`."""
    g = p.add_argument_group(
        "corpus index",
        "extra candidates from an embed output (python -m btok_model.embed, same model; --keep-columns text lets "
        "rows equal to a positive count once): scored exactly from the stored vectors, or with --ann through its "
        "ANN index (reported as approximate)",
    )
    g.add_argument("--corpus-index", metavar="LANCE", help="a *.lance folder written by python -m btok_model.embed")
    g.add_argument("--ann", action="store_true", help="search the --corpus-index's ANN index instead of every row")
    g.add_argument("--ann-candidates", type=int, default=100, metavar="N", help="--ann: rows taken per query")
    g.add_argument("--nprobes", type=int, default=20, help="--ann: IVF partitions searched")
    g.add_argument(
        "--refine-factor", type=int, default=10, help="--ann: re-rank N x this on the stored vectors (0: off)"
    )


def corpus_index_options(args: argparse.Namespace, least: int = 1):
    """The :class:`~btok_model.inference.pools.PoolOptions` of :func:`add_corpus_index_arguments`'
    flags (None without ``--corpus-index``), checked; ``least``: the fewest ``--ann-candidates``.

    Raises:
        SystemExit: exit status 2 after one ``error:`` line naming the flag.
    """
    if args.corpus_index is None:
        if args.ann:
            fail("--ann searches the ANN index of a --corpus-index; give one")
        return None
    if getattr(args, "corpus", None) is not None:
        fail("give --corpus (a JSONL embedded here) or --corpus-index (an embed output), not both")
    from .inference.pools import PoolOptions

    options = PoolOptions(
        args.corpus_index,
        ann=args.ann,
        candidates=args.ann_candidates,
        nprobes=args.nprobes,
        refine_factor=args.refine_factor or None,
    )
    try:
        options.check(least, "--ann-candidates")
        if args.nprobes < 1:
            raise ValueError(f"--nprobes must be >= 1, got {args.nprobes}")
    except ValueError as err:
        fail(str(err))
    return options


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m btok_model.evaluate",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--model",
        help="a saved BTok model or one trained with --no-btoks, or with --baseline a backbone (hub name, folder, "
        "'smollm2')",
    )
    p.add_argument("--gguf-file", help="load --model from this GGUF file in its folder")
    p.add_argument("--data", nargs="+", help="evaluation JSONL files (or --mmeb-v2)")
    p.add_argument("--corpus", help="JSONL of extra candidates ({'text': ...} per line) for pair files")
    p.add_argument(
        "--baseline",
        choices=BASELINES,
        help="score without BToks: the backbone with last-token or mean pooling, or TF-IDF",
    )
    p.add_argument("--tfidf-analyzer", default="char_wb", choices=("char_wb", "word"))
    p.add_argument("--tfidf-ngrams", type=int, nargs=2, default=(3, 5), metavar=("MIN", "MAX"))
    p.add_argument("--batch-size", type=int, default=64, help="texts per forward pass")
    p.add_argument(
        "--encode-block",
        type=int,
        default=None,
        help="rows per encode block, the unit each rank takes under torchrun (results depend on it only to float "
        "rounding, not on the number of ranks); default 8192, and for MMEB-V2 256 media rows (decoded at once)",
    )
    p.add_argument(
        "--similarity",
        choices=SIMILARITIES,
        default=None,
        help="cosine of the pooled embeddings, or MaxSim of a BTok model's K BTok vectors (default: the model's saved "
        "similarity; cosine for --baseline)",
    )
    p.add_argument(
        "--dims",
        nargs="+",
        metavar="DIM",
        help="Matryoshka evaluation: score the leading DIM components (re-normalised) of one embedding pass, e.g. "
        "64 128 full (strictly increasing; one metrics block per dimension)",
    )
    add_loading_arguments(p)
    p.add_argument("--output", help="write the results as JSON here")
    p.add_argument("--no-progress-bar", action="store_true")
    add_bad_row_argument(p)
    add_corpus_index_arguments(p)
    g = p.add_argument_group("MMEB-V2")
    g.add_argument("--mmeb-v2", metavar="ROOT", help="the MMEB-V2 root (image-tasks/, video-tasks/, visdoc-tasks/)")
    g.add_argument("--datasets", nargs="+", metavar="NAME", help="only these MMEB-V2 datasets (none: all 78)")
    g.add_argument("--modalities", nargs="+", choices=("image", "video", "visdoc"), help="only these modalities")
    g.add_argument("--limit", type=int, help="the first N queries of each dataset (smoke runs)")
    g.add_argument("--num-frames", type=int, default=8, help="frames sampled per video")
    g.add_argument(
        "--mmeb-mode",
        choices=MMEB_MODES,
        default="canonical",
        help="how prompts are composed, as the authors' evaluation does in its canonical mode (their default: the "
        "placeholder on its own line, one final newline, whitespace normalised) or its origin mode (the placeholder "
        "inline, raw whitespace; differs on the video and visual-document datasets and five image ones); "
        "recorded with the settings",
    )
    g.add_argument(
        "--output-dir", help="MMEB-V2 results: one JSON per dataset as it finishes, results.json/.md; reruns resume"
    )
    return p


def load_scorer(args: argparse.Namespace):
    """The scorer the arguments ask for: TF-IDF, or the embedder of :func:`load_embedder`
    scored by cosine or MaxSim."""
    from .evaluation.scorers import EmbeddingScorer, TfidfTaskScorer

    if args.baseline == "tfidf":
        if args.similarity or args.dims:
            fail("--similarity and --dims apply to embedders; TF-IDF scores by its own cosine")
        return TfidfTaskScorer(args.tfidf_analyzer, tuple(args.tfidf_ngrams))
    if args.similarity == "maxsim" and (args.baseline is not None or _saved_kind(args) == "pooled"):
        without = "a --baseline" if args.baseline is not None else f"{args.model} (trained with --no-btoks)"
        fail(f"--similarity maxsim scores the K BTok vectors of a BTok model; {without} has one vector per input")
    return EmbeddingScorer(
        load_embedder(args),
        batch_size=args.batch_size,
        show_progress_bar=not args.no_progress_bar,
        similarity=args.similarity,
        block_size=args.encode_block or BLOCK_SIZE,
        shard=True,
    )


def load_embedder(args: argparse.Namespace):
    """The embedder ``--model`` names, on its device in eval mode, in the dtype of
    :func:`~btok_model.embedder.precision.resolve_dtype` for the device (the line saying which
    is printed): a saved BTok model; a model trained with ``--no-btoks`` (a
    :class:`~btok_model.embedder.pooled.PooledEmbedder` with the pooling its folder records); or
    with ``--baseline last-token|mean`` any backbone without BToks. Reads ``model``,
    ``gguf_file``, ``baseline`` and :func:`add_loading_arguments`'.

    Raises:
        SystemExit: exit status 2 after one ``error:`` line: a folder that holds neither kind of
            saved model without ``--baseline``, a ``--baseline`` other than the pooling a
            ``--no-btoks`` folder was trained with, a bad ``--torch-dtype``, a model that does not
            load.
    """
    if not args.model:
        fail("--model is required (except with --baseline tfidf)")
    from .embedder.btok import BTokModel
    from .embedder.pooled import PooledEmbedder
    from .embedder.precision import default_device, resolve_dtype
    from .inference import distributed

    saved = {"btok": BTokModel, "pooled": PooledEmbedder}.get(_saved_kind(args))
    if saved is None and args.baseline is None:
        fail(
            f"{args.model} is not a saved BTok model (no {BTokModel.config_class.CONFIG_NAME}) nor one trained with "
            f"--no-btoks (no {PooledEmbedder.config_class.CONFIG_NAME}); train one with python -m btok_model.train, "
            "or evaluate the backbone with --baseline last-token|mean"
        )
    # --baseline names the pooling "last-token"; the config says "last" (its alias of that name)
    aliases = PooledEmbedder.config_class.POOLING_ALIASES
    baseline_pooling = aliases.get(args.baseline, args.baseline)
    if saved is PooledEmbedder:
        try:
            pooling = PooledEmbedder.config_class.load(args.model).pooling
        except ValueError as err:
            fail(f"--model {args.model}: {err}")
        if args.baseline is not None and baseline_pooling != pooling:
            flag = {new: old for old, new in aliases.items()}.get(pooling, pooling)
            fail(
                f"--baseline {args.baseline}: {args.model} was trained with --no-btoks --pooling {pooling}; "
                f"leave --baseline out (or give --baseline {flag})"
            )
    device = join_ranks(args.device) or default_device()  # under torchrun: a rank per GPU
    try:
        choice = resolve_dtype(args.torch_dtype, device)
    except ValueError as err:
        fail(f"--torch-dtype: {err}")
    if distributed.is_main():
        print(f"weights: {choice.line}", flush=True)
    try:
        if saved is PooledEmbedder or (saved is BTokModel and args.baseline is None):
            model = saved.from_pretrained(
                args.model,
                attn_implementation=args.attn_implementation,
                dtype=choice.dtype,
                merge_adapters=getattr(args, "merge_adapters", False),
            )
        else:  # a backbone pooled without BToks (a BTok model's own, too)
            kwargs = {"gguf_file": args.gguf_file} if args.gguf_file else {}
            model = PooledEmbedder.from_backbone(
                args.model,
                pooling=baseline_pooling,
                attn_implementation=args.attn_implementation,
                dtype=choice.dtype,
                **kwargs,
            )
    except (OSError, ValueError, ImportError) as err:  # a model that is not there, settings that do not fit it
        fail(f"--model {args.model}: {err}")
    _apply_pixel_limits(model, args)
    return model.to(device).eval()


def _saved_kind(args: argparse.Namespace) -> str | None:
    """What the folder ``--model`` holds: ``"btok"`` (a saved BTok model), ``"pooled"`` (one
    trained with ``--no-btoks``: its settings, pooling included, in ``pooled_config.json``), or
    None (a hub name, a GGUF file, a folder of neither)."""
    from .embedder.config import BTokConfig, PooledConfig

    if args.gguf_file or not args.model:
        return None
    for kind, config in (("btok", BTokConfig), ("pooled", PooledConfig)):
        if os.path.isfile(os.path.join(args.model, config.CONFIG_NAME)):
            return kind
    return None


def _apply_pixel_limits(model, args: argparse.Namespace) -> None:
    """Set the pixel flags on the loaded model's processor (one ``error:`` line when they do not apply)."""
    image, video = pixel_limits(args)
    if all(v is None for v in image + video):
        return
    from .embedder.backbone import set_pixel_limits, transformers_model
    from .embedder.multimodal import is_vision_model

    if not is_vision_model(transformers_model(model.backbone)) or model.processor is None:
        fail(
            f"--image-*/--video-*-pixels apply to vision-language models with a processor; {args.model} is "
            f"{type(transformers_model(model.backbone)).__name__}" + ("" if model.processor is None else " (text only)")
        )
    try:
        set_pixel_limits(model.processor, image, video)
    except ValueError as err:
        fail(f"--image-*/--video-*-pixels: {err}")


def run_mmeb_v2(args: argparse.Namespace) -> dict:
    """``--mmeb-v2``: check the datasets, load the model, evaluate (resumable), print the table."""
    from .evaluation.mmeb_v2 import evaluate_mmeb_v2, markdown_table, open_tasks

    if args.baseline == "tfidf":
        fail("--baseline tfidf scores text only; MMEB-V2 needs an image and video embedder")
    if args.output_dir is None:
        fail("--mmeb-v2 needs --output-dir (results are written there dataset by dataset)")
    if args.corpus or args.corpus_index or args.output:
        fail("--corpus, --corpus-index and --output apply to --data files; MMEB-V2 writes to --output-dir")
    if args.similarity == "maxsim" or args.dims:
        fail(
            "--mmeb-v2 scores pooled embeddings by cosine at full size: --similarity maxsim and "
            "--dims apply to --data files"
        )
    if (args.limit is not None and args.limit < 1) or args.num_frames < 1:
        fail("--limit and --num-frames must be >= 1")
    try:
        tasks = open_tasks(args.mmeb_v2, args.datasets, args.modalities, args.limit, args.mmeb_mode)  # no model yet
    except (OSError, ValueError, ImportError) as err:
        fail(str(err))
    scorer = load_scorer(args)
    if args.on_bad_row != "error":
        fail(
            "--on-bad-row skip applies to --data files; MMEB-V2 stops at a row it cannot read, naming the "
            "dataset and row id"
        )
    try:
        report = evaluate_mmeb_v2(
            args.mmeb_v2,
            scorer.model,
            args.output_dir,
            limit=args.limit,
            batch_size=args.batch_size,
            num_frames=args.num_frames,
            shard=True,
            mode=args.mmeb_mode,
            **({"block": args.encode_block, "text_block": args.encode_block} if args.encode_block else {}),
            run_info={
                "model": args.model,
                "gguf_file": args.gguf_file,
                "baseline": args.baseline,
                # lists, as settings.json reads them back (a rerun compares them)
                "pixel_limits": dict(zip(("image", "video"), map(list, pixel_limits(args)))),
            },
            show_progress_bar=not args.no_progress_bar,
            tasks=tasks,
        )
    except (OSError, ValueError) as err:  # bad data met mid-run, or a folder of another run
        fail(str(err))
    from .inference import distributed

    if distributed.is_main():
        print(markdown_table(report["datasets"], report["summary"]), end="")
    return report


@cli.command
def main(argv: list[str] | None = None) -> dict:
    args = parser().parse_args(argv)
    from .inference import distributed

    try:
        args.device = join_ranks(args.device)
        return _run(args, argv)
    finally:
        distributed.shutdown()


def _check_corpus_index(args: argparse.Namespace, pool, tasks: list):
    """The opened ``--corpus-index``; what it cannot go with refused before a model loads
    (``ValueError``)."""
    from .evaluation.task_files import PairTask
    from .inference.pools import open_pool_index

    if args.baseline == "tfidf":
        raise ValueError("--corpus-index holds embeddings; --baseline tfidf scores texts")
    if args.similarity == "maxsim":
        raise ValueError("--corpus-index holds one vector per row: it is scored by cosine, not --similarity maxsim")
    if pool.ann and args.dims:
        raise ValueError("--dims and --ann do not mix: the ANN index searches full-size vectors")
    lists = [task.name for task in tasks if not isinstance(task, PairTask)]
    if lists:
        raise ValueError(f"--corpus-index extends the pool of query/positive pairs; {lists[0]} holds candidate lists")
    return open_pool_index(pool)


def join_ranks(device: str | None) -> str | None:
    """Under ``torchrun``, join the process group (gloo on the CPU, NCCL on CUDA) before
    anything else, so that only rank 0 prints and writes; returns the device this rank uses
    (``cuda:LOCAL_RANK``; ``device`` unchanged on one process)."""
    from .inference import distributed

    try:
        return distributed.init_from_env(device)
    except ValueError as err:
        fail(f"--device: {err}")


def _run(args: argparse.Namespace, argv: list[str] | None) -> dict:
    if (args.data is None) == (args.mmeb_v2 is None):
        fail("give --data FILE ... or --mmeb-v2 ROOT (one of them)")
    if args.encode_block is not None and args.encode_block < 1:
        fail(f"--encode-block must be >= 1, got {args.encode_block}")
    if args.mmeb_v2 is not None:
        return run_mmeb_v2(args)
    from .embedder.similarity import check_dims
    from .evaluation.scorers import evaluate, evaluate_dims
    from .evaluation.task_files import load_task
    from .inference import distributed

    try:
        dims = check_dims(args.dims, None, "--dims") if args.dims else None
    except ValueError as err:
        fail(str(err))
    pool = corpus_index_options(args, least=10)
    try:  # bad data fails before a model loads
        tasks = [load_task(path, args.corpus, on_bad_row=args.on_bad_row) for path in args.data]
    except (OSError, ValueError) as err:
        fail(str(err))
    if pool is not None:
        try:
            index = _check_corpus_index(args, pool, tasks)
        except (OSError, ValueError, ImportError) as err:
            fail(str(err))
    scorer = load_scorer(args)
    if pool is not None:  # before anything is embedded
        try:
            index.check_embedder(scorer.model)
        except ValueError as err:
            fail(f"--corpus-index: {err}")
    if dims is not None:
        try:
            size = scorer.model.embedding_dim
            dims = [None if d == size else d for d in check_dims(dims, size, "--dims")]
        except ValueError as err:
            fail(str(err))
    try:
        if dims is not None:
            scored = [
                r
                for task in tasks
                for r in evaluate_dims(task, scorer, dims, on_bad_row=args.on_bad_row, corpus_index=pool)
            ]
        else:
            scored = [evaluate(task, scorer, on_bad_row=args.on_bad_row, corpus_index=pool) for task in tasks]
    except ValueError as err:  # an input the model refuses (file and line named), or one it cannot embed
        fail(str(err))
    results = {
        "model": args.model,
        "baseline": args.baseline,
        "similarity": getattr(scorer, "similarity_name", "cosine"),
        "dims": dims,
        "machine": f"{platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs)",
        "command": ["python", "-m", "btok_model.evaluate", *(sys.argv[1:] if argv is None else argv)],
        "tasks": scored,
    }
    if not distributed.is_main():
        return results
    for task in results["tasks"]:
        metrics = "  ".join(f"{k} {v:.4f}" for k, v in task.items() if "@" in k)
        at = "" if "dims" not in task else f" @ {task['dims'] or 'full'} dims"
        skipped = f"  ({task['skipped_rows']} bad rows skipped)" if task.get("skipped_rows") else ""
        extra = task.get("corpus_index")
        if extra and extra["approximate"]:
            skipped += (
                f"  (approximate: {extra['rows']} rows of {extra['path']} through its {extra['search']} index, "
                f"{extra['candidates']} per query)"
            )
        print(
            f"{task['task']}{at}: {task['num_queries']} queries, {task['num_candidates']} candidates  {metrics}{skipped}"
        )
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            json.dump(results, f, indent=2)
    return results


if __name__ == "__main__":
    main()
