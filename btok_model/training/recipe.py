"""The training recipe: settings, the model and the Trainer built from them.

``python -m btok_model.train`` and ``examples/wordnet_demo.py`` both go through
:func:`build_model` and :func:`train`, so a flag means the same thing everywhere. The
authors' own recipe is a preset (:mod:`.presets`), not the defaults.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import Field, asdict, dataclass, field, fields, replace

import torch

from ..embedder.config import (
    BTokConfig,
    EmbedderConfig,
    PooledConfig,
    parse_optional_float,
    parse_optional_int,
    setting,
    settings_of,
)
from ..embedder.losses import GENERATIVE_NORMALIZATIONS
from .bad_rows import ON_BAD_ROW
from .sampler import SOURCE_BLOCK_MODES
from .schedule import GenerativeSchedule

__all__ = ["LORA_INITS", "Recipe", "build_model", "lora_config", "recipe_settings", "train", "training_arguments"]

LORA_INITS = ("default", "gaussian")


def parse_layers(text: str) -> list[int] | None:
    """``"26-29"`` or ``"0,5,7"`` -> layer indices; ``"all"`` -> None."""
    if text.lower() in ("all", "none"):
        return None
    out = []
    try:
        for part in text.split(","):
            lo, sep, hi = part.partition("-")
            out += list(range(int(lo), int(hi) + 1)) if sep else [int(lo)]
    except ValueError:
        raise ValueError(f"expected layer indices like 26-29 or 0,5,7 (or 'all'), got {text!r}") from None
    return out


def parse_modules(text: str) -> str | list[str]:
    """``"all-linear"`` or comma-separated module names."""
    names = [m.strip() for m in text.split(",") if m.strip()]
    if not names:
        raise ValueError("give 'all-linear' or comma-separated module names")
    return "all-linear" if names == ["all-linear"] else names


def parse_json_file(path: str) -> dict:
    """The JSON object in the file ``path``."""
    try:
        with open(path) as f:
            value = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: {e}") from e
    if not isinstance(value, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


_CHUNKS = "batches larger than memory"
_MEDIA = "images and video (Qwen2-VL family)"
_ORDER = "training data order"
_LOGS = "logging and checkpoints"
_TRAINS = "what trains"
_OPTIM = "optimisation"
_READING = "reading the training data"


def parse_workers(text: str) -> int:
    """An int >= 0 (data-loader worker processes)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(f"must be an int >= 0, got {text!r}")
    return value


def _pixels(what: str, end: str) -> Field:
    return setting(None, parse=parse_optional_int, group=_MEDIA, help=f"{end} pixels per {what} (frame)")


@dataclass
class Recipe:
    """Everything that decides a training run besides the model and the data.

    ``embedder`` holds the method's settings, the model's own
    (:class:`~btok_model.embedder.config.BTokConfig`, or
    :class:`~btok_model.embedder.config.PooledConfig` for a model without BToks); the other
    fields decide the training. Each setting is documented by its field's ``help`` (``python -m
    btok_model.train --help`` prints them); :func:`recipe_settings` lists them all.

    The method's settings default to the authors' (K = 4, mean pooling, temperature 0.02,
    generative weight 5.0 for the first 2,000 of 5,000 steps, LoRA r = 16); the optimiser,
    batch size, LoRA variant and BTok row init are btok's own plain choices (lr 1e-4, 3 %
    warm-up, no weight decay, 32 per process, plain LoRA with alpha 2 r on every linear layer
    of the language model, BTok rows from the vocabulary mean). The authors' full recipe is
    the preset ``btoks-qwen2vl-2b-v1`` (:mod:`btok_model.training.presets`). Build one from
    flat values (flag names) with :meth:`from_values`.

    Attributes:
        embedder: the model's settings.
        extra: free-form notes kept with the recipe.
    """

    embedder: EmbedderConfig = field(default_factory=BTokConfig)
    generative_steps: int | None = setting(
        2000, parse=parse_optional_int, help="steps the generative loss stays on ('all' = whole run)"
    )
    generative_normalization: str = setting(
        "token",
        choices=GENERATIVE_NORMALIZATIONS,
        help="the generative loss as the mean over the batch's target tokens, or the authors' weighting (per "
        "GradCache chunk, formed after sorting by query length, and per side: the token mean times generating "
        "examples / examples per rank)",
    )
    lora_r: int = setting(16, group=_TRAINS, help="LoRA rank; 0 = full fine-tuning")
    lora_alpha: float | None = setting(
        None, group=_TRAINS, parse=parse_optional_float, shown="2 x r", help="LoRA alpha (the scale's numerator)"
    )
    lora_dropout: float = setting(0.0, group=_TRAINS, help="LoRA dropout")
    lora_dora: bool = setting(False, group=_TRAINS, help="DoRA (weight-decomposed LoRA, PEFT use_dora)")
    lora_init: str = setting(
        "default",
        group=_TRAINS,
        choices=LORA_INITS,
        help="LoRA A init: PEFT's default (Kaiming-uniform A) or gaussian (std 1/r); B starts at zero",
    )
    lora_layers: list[int] | None = setting(
        None, group=_TRAINS, parse=parse_layers, shown="all", help="layers with adapters, e.g. 26-29 or 0,3,5"
    )
    lora_modules: str | list[str] = setting(
        "all-linear",
        group=_TRAINS,
        parse=parse_modules,
        help="'all-linear' or comma-separated layer names (q_proj,v_proj,...), on the language model only (never "
        "a vision tower or the LM head; names it lacks ignored)",
    )
    max_steps: int = setting(5000, group=_OPTIM, help="optimizer steps (0: use --epochs)")
    epochs: float = setting(1.0, group=_OPTIM, help="passes over the data when --max-steps is 0")
    batch_size: int = setting(32, group=_OPTIM, help="examples per step and process (the contrastive batch of a rank)")
    lr: float = setting(1e-4, group=_OPTIM, help="AdamW learning rate")
    weight_decay: float = setting(0.0, group=_OPTIM, help="AdamW weight decay")
    warmup_ratio: float = setting(0.03, group=_OPTIM, help="warm-up as a fraction of the steps")
    warmup_steps: int | None = setting(
        None, group=_OPTIM, parse=parse_optional_int, help="warm-up in steps (replaces --warmup-ratio)"
    )
    lr_scheduler: str = setting("linear", group=_OPTIM, help="a transformers scheduler name")
    max_grad_norm: float = setting(1.0, group=_OPTIM, help="gradient clipping; 0 disables it")
    bf16: bool = setting(
        False,
        group=_OPTIM,
        help="bf16 mixed precision (from a preset: only where the device computes bf16 natively)",
    )
    gradient_checkpointing: bool = setting(False, group=_OPTIM, help="recompute activations in the backward")
    seed: int = setting(42, group=_OPTIM, help="model init, data mixing and order")
    chunk_size: int | None = setting(
        None,
        group=_CHUNKS,
        flag="--grad-cache-chunk",
        parse=parse_optional_int,
        help="examples per forward pass; a larger batch runs in GradCache chunks (same loss and gradients)",
    )
    max_tokens: int | None = setting(
        None,
        group=_CHUNKS,
        flag="--max-tokens-per-batch",
        parse=parse_optional_int,
        help="token budget of one packed forward pass; a larger batch runs in GradCache chunks",
    )
    image_min_pixels: int | None = _pixels("image", "min")
    image_max_pixels: int | None = _pixels("image", "max")
    video_min_pixels: int | None = _pixels("video", "min")
    video_max_pixels: int | None = _pixels("video", "max")
    source_block_size: int | None = setting(
        None,
        group=_ORDER,
        parse=parse_optional_int,
        help="blocks of N examples from one training source each, the source drawn by weight (the authors' "
        "interleaved sampler; none: each source's weighted share, shuffled)",
    )
    source_block_mode: str = setting(
        "strict",
        group=_ORDER,
        choices=SOURCE_BLOCK_MODES,
        help="strict: every rank's batch from one source at every step (the block a multiple of the global batch); "
        "authors: their stride interleave, several sources per step once a step spans several blocks",
    )
    hard_negatives: bool = setting(
        True,
        group=_ORDER,
        help="score each query against its example's negatives too (--no-hard-negatives: in-batch candidates only, "
        "as the authors' loss)",
    )
    on_bad_row: str = setting(
        "skip",
        group=_READING,
        choices=ON_BAD_ROW,
        help="a training row whose image cannot be decoded: replace it by another draw from its source, count "
        "and name it (skip), or stop after saving a checkpoint (error)",
    )
    dataloader_num_workers: int = setting(
        0,
        group=_READING,
        parse=parse_workers,
        metavar="N",
        help="processes that read, decode and collate the training batches (0: the training process)",
    )
    logging_steps: int = setting(10, group=_LOGS, help="log every this many steps")
    save_steps: int = setting(500, group=_LOGS, help="checkpoint every this many steps; 0: no intermediate checkpoints")
    save_total_limit: int | None = setting(
        2, group=_LOGS, parse=parse_optional_int, help="checkpoints kept (none: all)"
    )
    fsdp: bool = setting(
        False,
        group="sharding (torchrun)",
        help="shard the model with FSDP2 (accelerate's, one unit per decoder layer) instead of replicating it with DDP",
    )
    fsdp_config: dict | None = setting(
        None,
        group="sharding (torchrun)",
        parse=parse_json_file,
        metavar="JSON",
        help="a JSON file of more TrainingArguments.fsdp_config settings (cpu_offload, transformer_layer_cls_to_wrap, "
        "reshard_after_forward, ...; version 2, the only one supported); needs --fsdp",
    )
    save_adapters: bool = setting(
        False,
        group=_LOGS,
        help="the final model keeps its LoRA/DoRA adapters unmerged (base weights + adapter/), as the authors save "
        "and evaluate them; checkpoints stay merged",
    )
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.embedder, (BTokConfig, PooledConfig)):
            raise TypeError(f"embedder must be a BTokConfig or a PooledConfig, got {type(self.embedder).__name__}")
        if self.on_bad_row not in ON_BAD_ROW:
            raise ValueError(f"on_bad_row must be one of {ON_BAD_ROW}, got {self.on_bad_row!r}")
        workers = self.dataloader_num_workers
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
            raise ValueError(f"dataloader_num_workers must be an int >= 0, got {workers!r}")

    @property
    def btoks(self) -> bool:
        """Whether the recipe trains a BTok model (else the no-BTok baseline)."""
        return isinstance(self.embedder, BTokConfig)

    @property
    def schedule(self) -> GenerativeSchedule:
        return GenerativeSchedule(self.embedder.generative_weight, self.generative_steps)

    @classmethod
    def from_values(cls, values: Mapping[str, object], btoks: bool = True) -> Recipe:
        """A recipe from flat values named as the settings (the train command's argument names):
        the fields of the embedder's config and of the recipe; the rest default.

        Args:
            values: ``{name: value}``.
            btoks: build a :class:`BTokConfig`; False: a :class:`PooledConfig`, the BTok model's
                own settings (``num_btoks``, ``generative_weight``, ``btok_init``, ...) ignored.

        Raises:
            ValueError: an unknown name, or a bad setting (named).
        """
        own = {f.name for f in fields(cls)} - {"embedder"}
        config_class = BTokConfig if btoks else PooledConfig
        for_config = {f.name for f in fields(config_class)}
        known = own | {f.name for f in fields(BTokConfig)} | {f.name for f in fields(PooledConfig)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown recipe settings {unknown}")
        embedder = config_class(**{name: value for name, value in values.items() if name in for_config})
        return cls(embedder=embedder, **{name: value for name, value in values.items() if name in own})

    def to_dict(self) -> dict:
        """Every value, flat (as :meth:`from_values` takes them): the embedder's settings (its
        ``generative_weight`` included) and the recipe's."""
        values = asdict(self)
        embedder = values.pop("embedder")
        return {**embedder, "generative_weight": self.embedder.generative_weight, **values}


def recipe_settings() -> list[Field]:
    """Every setting of a recipe with a command-line flag (:func:`~btok_model.embedder.config.setting`):
    a BTok model's settings, then the recipe's own."""
    return settings_of(BTokConfig) + settings_of(Recipe)


def lora_config(recipe: Recipe, backbone):
    """The ``peft.LoraConfig`` of ``recipe`` (None for full fine-tuning), its adapters on the
    language model of ``backbone`` (the transformers model; see
    :func:`~btok_model.embedder.tokens.lora_target_modules`)."""
    if recipe.lora_r < 0:
        raise ValueError(f"lora_r must be >= 0 (0 = full fine-tuning), got {recipe.lora_r}")
    if recipe.lora_r == 0:
        return None
    if recipe.lora_init not in LORA_INITS:
        raise ValueError(f"lora_init must be one of {LORA_INITS}, got {recipe.lora_init!r}")
    import peft

    from ..embedder.tokens import lora_target_modules

    alpha = recipe.lora_alpha if recipe.lora_alpha is not None else 2 * recipe.lora_r
    return peft.LoraConfig(
        r=recipe.lora_r,
        lora_alpha=alpha,
        lora_dropout=recipe.lora_dropout,
        target_modules=lora_target_modules(backbone, recipe.lora_modules, recipe.lora_layers),
        use_dora=recipe.lora_dora,
        init_lora_weights=True if recipe.lora_init == "default" else recipe.lora_init,
    )


def build_model(backbone, recipe: Recipe, tokenizer=None, *, btoks: bool | None = None, **from_pretrained_kwargs):
    """A trainable embedder for ``recipe``.

    Args:
        backbone: a hub name / folder / ``"smollm2"``, a model instance, or a loaded
            :class:`~btok_model.embedder.backbone.Backbone` (loaded by
            :func:`~btok_model.embedder.backbone.load_backbone`: causal LMs and Qwen2-VL /
            Qwen2.5-VL with their processor).
        recipe: the settings: ``recipe.embedder`` builds the model (a
            :class:`~btok_model.BTokModel` for a ``BTokConfig``, a
            :class:`~btok_model.embedder.pooled.PooledEmbedder` for a ``PooledConfig``), the
            LoRA fields its adapters, the pixel limits its processor.
        tokenizer: a tokenizer or a name / folder (default: from ``backbone``).
        btoks: None (what ``recipe.embedder`` says), or that value checked against it.
        **from_pretrained_kwargs: ``attn_implementation`` (default ``"btok_triton"``) and, for
            loading by name, ``from_pretrained`` keywords (``dtype``, ``gguf_file``, ...).

    Raises:
        ValueError: pixel limits for a text-only backbone, ``btoks`` against the recipe, or
            settings that do not fit the backbone.
    """
    from ..embedder.backbone import load_backbone, set_pixel_limits
    from ..embedder.multimodal import is_vision_model

    if btoks is not None and btoks != recipe.btoks:
        raise ValueError(
            f"btoks={btoks} but the recipe's embedder is a {type(recipe.embedder).__name__} (build the recipe with "
            f"Recipe.from_values(..., btoks={btoks}))"
        )
    impl = from_pretrained_kwargs.pop("attn_implementation", "btok_triton")
    loaded = load_backbone(backbone, tokenizer, None, impl, **from_pretrained_kwargs)
    image = (recipe.image_min_pixels, recipe.image_max_pixels)
    video = (recipe.video_min_pixels, recipe.video_max_pixels)
    if any(v is not None for v in image + video):
        if not is_vision_model(loaded.model):
            raise ValueError(
                f"image / video pixel limits apply to vision-language backbones; {type(loaded.model).__name__} is "
                "text-only (unset them: --image-min-pixels none --image-max-pixels none ...)"
            )
        set_pixel_limits(loaded.processor, image, video)
    lora = lora_config(recipe, loaded.model)
    if recipe.btoks:
        from ..embedder.btok import BTokModel as embedder_class
    else:
        from ..embedder.pooled import PooledEmbedder as embedder_class
    # The adapters' random init follows recipe.seed (a run is reproducible from its recipe); the
    # caller's random state is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        return embedder_class.from_backbone(loaded, attn_implementation=None, config=recipe.embedder, lora=lora)


def training_arguments(recipe: Recipe, output_dir: str, **overrides):
    """``transformers.TrainingArguments`` for ``recipe`` (``overrides`` win)."""
    from transformers import TrainingArguments

    values = dict(
        output_dir=output_dir,
        max_steps=recipe.max_steps if recipe.max_steps and recipe.max_steps > 0 else -1,
        num_train_epochs=recipe.epochs,
        per_device_train_batch_size=recipe.batch_size,
        learning_rate=recipe.lr,
        weight_decay=recipe.weight_decay,
        # An int is steps; a float below 1 a fraction of the steps (transformers 5 has no warmup_ratio).
        warmup_steps=recipe.warmup_steps if recipe.warmup_steps is not None else recipe.warmup_ratio,
        lr_scheduler_type=recipe.lr_scheduler,
        max_grad_norm=recipe.max_grad_norm,
        bf16=recipe.bf16,
        seed=recipe.seed,
        logging_steps=recipe.logging_steps,
        save_strategy="steps" if recipe.save_steps > 0 else "no",
        save_steps=recipe.save_steps if recipe.save_steps > 0 else 500,
        save_total_limit=recipe.save_total_limit,
        report_to="none",
        remove_unused_columns=False,
        dataloader_num_workers=recipe.dataloader_num_workers,
        # An untied LM head is unused on steps without targets; DDP must not wait for its gradient.
        ddp_find_unused_parameters=True,
        use_cpu=not torch.cuda.is_available(),
    )
    if recipe.gradient_checkpointing:
        # transformers 5.24 renamed the option; 5.17 knows only the old name.
        name = (
            "activation_checkpointing" if "activation_checkpointing" in _argument_names() else "gradient_checkpointing"
        )
        values[name] = True
        values[f"{name}_kwargs"] = {"use_reentrant": False}
    if recipe.fsdp:
        values["fsdp"] = True
        values["fsdp_config"] = {"version": 2, **(recipe.fsdp_config or {})}
    elif recipe.fsdp_config:
        raise ValueError("fsdp_config is set but fsdp is off: set fsdp=True (--fsdp) to shard the model")
    values.update(overrides)
    return TrainingArguments(**values)


def _argument_names() -> set[str]:
    import dataclasses

    from transformers import TrainingArguments

    return {f.name for f in dataclasses.fields(TrainingArguments)}


def train(
    model,
    dataset,
    recipe: Recipe,
    output_dir: str,
    *,
    resume: str | bool | None = None,
    save: bool = True,
    callbacks: list | None = None,
    on_bad_row: str | None = None,
    **overrides,
):
    """Run a training recipe: train ``model`` on ``dataset`` with the settings of ``recipe`` on a
    :class:`BTokTrainer`, and return the trainer. The function behind ``python -m btok_model.train``
    (the command line, :mod:`btok_model.train`, builds the model and dataset and calls it).

    Args:
        model: from :func:`build_model`.
        dataset: a sequence of example dicts, or a :class:`~btok_model.training.mixed_dataset.MixedDataset`
            (read in the order of its sampler: weighted shares, or ``recipe.source_block_size`` blocks).
        recipe: the settings.
        output_dir: checkpoints (``checkpoint-<step>``) and, with ``save``, the final model.
        resume: a checkpoint folder, or True for the latest one in ``output_dir``.
        save: write the final model to ``output_dir`` (loadable with ``from_pretrained``).
        callbacks: ``transformers.TrainerCallback`` instances.
        on_bad_row: deprecated, set ``recipe.on_bad_row`` (the value given wins, with a warning).
        **overrides: ``TrainingArguments`` fields that replace the recipe's (e.g. ``dataloader_num_workers``).
    """
    from .trainer import BTokTrainer

    if on_bad_row is not None:
        from ..deprecation import warn_deprecated

        warn_deprecated("train(on_bad_row=...) is deprecated: set recipe.on_bad_row (--on-bad-row)")
        recipe = replace(recipe, on_bad_row=on_bad_row)
    torch.manual_seed(recipe.seed)
    args = training_arguments(recipe, output_dir, **overrides)
    trainer = BTokTrainer(
        model,
        args,
        dataset,
        schedule=recipe.schedule,
        chunk_size=recipe.chunk_size,
        max_tokens=recipe.max_tokens,
        source_block_size=recipe.source_block_size,
        source_block_mode=recipe.source_block_mode,
        generative_normalization=recipe.generative_normalization,
        save_adapters=recipe.save_adapters,
        callbacks=callbacks,
        on_bad_row=recipe.on_bad_row,
    )
    trainer.train(resume_from_checkpoint=resume)
    if save:
        trainer.save_model(output_dir)
    return trainer
