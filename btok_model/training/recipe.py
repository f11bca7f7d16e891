"""The training recipe: settings, the model and the Trainer built from them.

``python -m btok_model.train`` and ``examples/wordnet_demo.py`` both go through
:func:`build_model` and :func:`train`, so a flag means the same thing everywhere. The
authors' own recipe is a preset (:mod:`.presets`), not the defaults.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from .schedule import GenerativeSchedule

__all__ = ["LORA_INITS", "Recipe", "build_model", "lora_config", "train", "training_arguments"]


@dataclass
class Recipe:
    """Everything that decides a training run besides the model and the data.

    The method's settings default to the authors' (K = 4, mean pooling, temperature 0.02,
    generative weight 5.0 for the first 2,000 of 5,000 steps, LoRA r = 16); the optimiser,
    batch size, LoRA variant and BTok row init are btok's own plain choices (lr 1e-4, 3 %
    warm-up, no weight decay, 32 per process, plain LoRA with alpha 2 r on every linear layer
    of the language model, BTok rows from the vocabulary mean). The authors' full recipe is
    the preset ``btoks-qwen2vl-2b-v1`` (:mod:`btok_model.training.presets`).

    Attributes:
        num_btoks: K.
        pooling: ``"mean"`` over the K BToks (the method) or ``"last"``; for a model without
            BToks (:class:`~btok_model.embedder.pooled.PooledEmbedder`) ``"last-token"``
            or ``"mean"``.
        temperature: InfoNCE temperature.
        generative_weight, generative_steps: the generative schedule (steps None = always).
        generative_normalization: ``"token"`` (the generative loss is the mean over the global
            batch's target tokens) or ``"authors"`` (their per-chunk, per-side weighting by
            generating examples, :class:`~btok_model.embedder.losses.LossWeights`).
        btok_init: how the BTok rows start: ``"mean"`` of the vocabulary's rows, a copy of the
            ``"eos"`` row, or the backbone's own ``"checkpoint"`` rows for the new ids (see
            :func:`~btok_model.embedder.tokens.init_btok_rows`).
        lora_r: LoRA rank, 0 = full fine-tuning.
        lora_alpha: LoRA scale numerator (None: 2 x r).
        lora_dropout: LoRA dropout.
        lora_dora: DoRA (weight-decomposed LoRA, PEFT ``use_dora``).
        lora_init: ``"default"`` (PEFT's: Kaiming-uniform A, zero B) or ``"gaussian"`` (A from
            a normal distribution of std 1/r, zero B).
        lora_layers: indices of the decoder layers that get adapters (None: all).
        lora_modules: ``"all-linear"`` or the last names of the linear layers that get adapters
            (e.g. ``["q_proj", "v_proj"]``); always on the language model only (never a vision
            tower or the LM head), names it lacks ignored.
        max_steps: optimizer steps (overrides ``epochs`` when > 0).
        epochs: passes over the data when ``max_steps`` is 0 or less.
        batch_size: examples per step on each process (the contrastive batch of a rank).
        lr, weight_decay, lr_scheduler, max_grad_norm: the optimizer (AdamW) and schedule.
        warmup_ratio: warm-up as a fraction of the steps, unless ``warmup_steps`` is set.
        warmup_steps: warm-up in optimizer steps (None: use ``warmup_ratio``).
        bf16: bf16 autocast (mixed precision).
        gradient_checkpointing: recompute activations in the backward.
        seed: model init, data mixing and order.
        chunk_size, max_tokens: GradCache chunking (examples / packed tokens per forward pass).
        max_length: longest packed sequence accepted (None: the model's limit).
        image_min_pixels, image_max_pixels, video_min_pixels, video_max_pixels: the pixels per
            image / video frame the vision-language processor resizes to (None: the processor's own).
        source_block_size: blocks of this many examples from one training source each, the
            source drawn by weight (the authors' interleaved sampler; their preset uses 512);
            None: each source's weighted share, shuffled. A multiple of ``batch_size`` x ranks
            in ``"strict"`` mode.
        source_block_mode: ``"strict"`` (every rank's batch from one source at every step) or
            ``"authors"`` (their stride interleave and accelerate's hand-out: at 8 ranks x 128
            with blocks of 512, 64 examples from each of two sources per rank and step; see
            :mod:`~btok_model.training.sampler`).
        hard_negatives: score each query against its example's negatives too; False drops them
            (in-batch candidates only, as the authors' loss does).
        similarity: ``"cosine"`` (InfoNCE on the pooled embeddings, the method) or ``"maxsim"``
            (InfoNCE on MaxSim of the K BTok vectors / K; BTok models only).
        matryoshka_dims: InfoNCE summed over these leading dimensions (ints and ``"full"``,
            strictly increasing); None: the full embedding only.
        matryoshka_weights: one weight per Matryoshka dimension (None: 1 each).
        logging_steps, save_steps, save_total_limit: logging and checkpoints (save_steps 0: no
            intermediate checkpoints).
        save_adapters: the final model folder keeps the LoRA / DoRA adapters unmerged (base
            weights + ``adapter/``), as the authors save and evaluate them; False merges them into
            the weights (checkpoints are always merged, for resuming).
        fsdp: shard the model with FSDP2 under ``torchrun`` instead of replicating it (DDP).
        fsdp_config: more ``TrainingArguments.fsdp_config`` settings (``cpu_offload``,
            ``transformer_layer_cls_to_wrap``, ``reshard_after_forward``, ...; ``version``
            defaults to 2, the only one supported).
    """

    num_btoks: int = 4
    pooling: str = "mean"
    temperature: float = 0.02
    generative_weight: float = 5.0
    generative_steps: int | None = 2000
    generative_normalization: str = "token"
    btok_init: str = "mean"
    lora_r: int = 16
    lora_alpha: float | None = None
    lora_dropout: float = 0.0
    lora_dora: bool = False
    lora_init: str = "default"
    lora_layers: list[int] | None = None
    lora_modules: str | list[str] = "all-linear"
    max_steps: int = 5000
    epochs: float = 1.0
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    warmup_steps: int | None = None
    lr_scheduler: str = "linear"
    max_grad_norm: float = 1.0
    bf16: bool = False
    gradient_checkpointing: bool = False
    seed: int = 42
    chunk_size: int | None = None
    max_tokens: int | None = None
    max_length: int | None = None
    image_min_pixels: int | None = None
    image_max_pixels: int | None = None
    video_min_pixels: int | None = None
    video_max_pixels: int | None = None
    source_block_size: int | None = None
    source_block_mode: str = "strict"
    hard_negatives: bool = True
    similarity: str = "cosine"
    matryoshka_dims: list | None = None
    matryoshka_weights: list[float] | None = None
    logging_steps: int = 10
    save_steps: int = 500
    save_total_limit: int | None = 2
    fsdp: bool = False
    fsdp_config: dict | None = None
    save_adapters: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def schedule(self) -> GenerativeSchedule:
        return GenerativeSchedule(self.generative_weight, self.generative_steps)

    def to_dict(self) -> dict:
        return asdict(self)


LORA_INITS = ("default", "gaussian")


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


def build_model(backbone, recipe: Recipe, tokenizer=None, *, btoks: bool = True, **from_pretrained_kwargs):
    """A trainable embedder for ``recipe``.

    Args:
        backbone: a hub name / folder / ``"smollm2"``, a model instance, or a loaded
            :class:`~btok_model.embedder.backbone.Backbone` (loaded by
            :func:`~btok_model.embedder.backbone.load_backbone`: causal LMs and Qwen2-VL /
            Qwen2.5-VL with their processor).
        recipe: the settings (K, pooling, temperature, BTok init, LoRA, max_length, generative
            weight, pixel limits).
        tokenizer: a tokenizer or a name / folder (default: from ``backbone``).
        btoks: True: a :class:`~btok_model.BTokModel`; False: a
            :class:`~btok_model.embedder.pooled.PooledEmbedder` (no BToks, pooling
            ``recipe.pooling``, no generative loss).
        **from_pretrained_kwargs: ``attn_implementation`` (default ``"btok_triton"``) and, for
            loading by name, ``from_pretrained`` keywords (``dtype``, ``gguf_file``, ...).

    Raises:
        ValueError: pixel limits for a text-only backbone, or settings that do not fit it.
    """
    from ..embedder.backbone import load_backbone, set_pixel_limits
    from ..embedder.multimodal import is_vision_model

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
    # The adapters' random init follows recipe.seed (a run is reproducible from its recipe); the
    # caller's random state is left as it was.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        return _embedder(loaded, recipe, lora, btoks)


def _embedder(loaded, recipe: Recipe, lora, btoks: bool):
    """The BTok model or the no-BTok baseline on a loaded backbone (see :func:`build_model`)."""
    if btoks:
        from ..embedder.modeling import BTokModel

        return BTokModel.from_backbone(
            loaded,
            num_btoks=recipe.num_btoks,
            attn_implementation=None,
            lora=lora,
            pooling=recipe.pooling,
            temperature=recipe.temperature,
            generative_weight=recipe.generative_weight,
            max_length=recipe.max_length,
            btok_init=recipe.btok_init,
            similarity=recipe.similarity,
            matryoshka_dims=recipe.matryoshka_dims,
            matryoshka_weights=recipe.matryoshka_weights,
        )
    from ..embedder.pooled import PooledEmbedder

    if recipe.generative_weight != 0:
        raise ValueError("a model without BToks has no generative loss: set generative_weight to 0")
    if recipe.similarity != "cosine":
        raise ValueError(
            f"similarity {recipe.similarity!r} compares the K BTok vectors: a model without BToks has one vector "
            "(use similarity 'cosine')"
        )
    return PooledEmbedder.from_backbone(
        loaded,
        pooling=recipe.pooling,
        lora=lora,
        attn_implementation=None,
        temperature=recipe.temperature,
        max_length=recipe.max_length,
        matryoshka_dims=recipe.matryoshka_dims,
        matryoshka_weights=recipe.matryoshka_weights,
    )


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
        dataloader_num_workers=0,
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
    on_bad_row: str = "skip",
    **overrides,
):
    """Train ``model`` on ``dataset`` with ``recipe``; returns the :class:`BTokTrainer`.

    Args:
        model: from :func:`build_model`.
        dataset: a sequence of example dicts, or a :class:`~btok_model.training.mixed_dataset.MixedDataset`
            (read in the order of its sampler: weighted shares, or ``recipe.source_block_size`` blocks).
        recipe: the settings.
        output_dir: checkpoints (``checkpoint-<step>``) and, with ``save``, the final model.
        resume: a checkpoint folder, or True for the latest one in ``output_dir``.
        save: write the final model to ``output_dir`` (loadable with ``from_pretrained``).
        callbacks: ``transformers.TrainerCallback`` instances.
        on_bad_row: ``"skip"`` or ``"error"``, for a row that cannot be decoded (see
            :class:`~btok_model.training.trainer.BTokTrainer`).
        **overrides: ``TrainingArguments`` fields that replace the recipe's (e.g. ``dataloader_num_workers``).
    """
    from .trainer import BTokTrainer

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
        on_bad_row=on_bad_row,
    )
    trainer.train(resume_from_checkpoint=resume)
    if save:
        trainer.save_model(output_dir)
    return trainer
