"""The training recipe: settings with the authors' defaults, the model and the Trainer built from them.

``python -m btok_model.train`` and ``examples/wordnet_demo.py`` both go through
:func:`build_model` and :func:`train`, so a flag means the same thing everywhere.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

import torch

from .schedule import GenerativeSchedule

__all__ = ["Recipe", "build_model", "lora_config", "train", "training_arguments"]


@dataclass
class Recipe:
    """Everything that decides a training run besides the model and the data.

    Defaults follow the authors' released configs where they state one (K = 4,
    temperature 0.02, generative weight 5.0 for the first 2,000 of 5,000 steps, LoRA r = 16);
    the batch size, learning rate, warmup and LoRA alpha/dropout are common choices of
    ours, not theirs.

    Attributes:
        num_btoks: K.
        pooling: ``"mean"`` over the K BToks (the method) or ``"last"``; for a model without
            BToks (:class:`~btok_model.evaluation.baselines.PooledEmbedder`) ``"last-token"``
            or ``"mean"``.
        temperature: InfoNCE temperature.
        generative_weight, generative_steps: the generative schedule (steps None = always).
        lora_r: LoRA rank, 0 = full fine-tuning.
        lora_alpha: LoRA scale numerator (None: 2 x r).
        lora_dropout: LoRA dropout.
        lora_layers: indices of the layers that get adapters (None: all).
        lora_modules: PEFT ``target_modules`` (default every linear layer but the LM head).
        max_steps: optimizer steps (overrides ``epochs`` when > 0).
        epochs: passes over the data when ``max_steps`` is 0 or less.
        batch_size: examples per step on each process (the contrastive batch of a rank).
        lr, weight_decay, warmup_ratio, lr_scheduler, max_grad_norm: the optimizer (AdamW).
        bf16: bf16 autocast (mixed precision).
        gradient_checkpointing: recompute activations in the backward.
        seed: model init, data mixing and order.
        chunk_size, max_tokens: GradCache chunking (examples / packed tokens per forward pass).
        max_length: longest packed sequence accepted (None: the model's limit).
        logging_steps, save_steps, save_total_limit: logging and checkpoints (save_steps 0: no
            intermediate checkpoints).
        fsdp: shard the model with FSDP2 under ``torchrun`` instead of replicating it (DDP).
        fsdp_config: more ``TrainingArguments.fsdp_config`` settings (``cpu_offload``,
            ``transformer_layer_cls_to_wrap``, ``reshard_after_forward``, ...; ``version``
            defaults to 2, the only one supported).
        source_block_size: blocks of this many examples from one training source each, the
            source drawn by weight (the authors' interleaved sampler; their preset uses 512);
            None: each source's weighted share, shuffled. A multiple of ``batch_size`` x ranks.
    """

    num_btoks: int = 4
    pooling: str = "mean"
    temperature: float = 0.02
    generative_weight: float = 5.0
    generative_steps: int | None = 2000
    lora_r: int = 16
    lora_alpha: float | None = None
    lora_dropout: float = 0.0
    lora_layers: list[int] | None = None
    lora_modules: str | list[str] = "all-linear"
    max_steps: int = 5000
    epochs: float = 1.0
    batch_size: int = 32
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    lr_scheduler: str = "linear"
    max_grad_norm: float = 1.0
    bf16: bool = False
    gradient_checkpointing: bool = False
    seed: int = 42
    chunk_size: int | None = None
    max_tokens: int | None = None
    max_length: int | None = None
    logging_steps: int = 10
    save_steps: int = 500
    save_total_limit: int | None = 2
    fsdp: bool = False
    fsdp_config: dict | None = None
    source_block_size: int | None = None
    extra: dict = field(default_factory=dict)

    @property
    def schedule(self) -> GenerativeSchedule:
        return GenerativeSchedule(self.generative_weight, self.generative_steps)

    def to_dict(self) -> dict:
        return asdict(self)


def lora_config(recipe: Recipe, backbone=None):
    """The ``peft.LoraConfig`` of ``recipe`` (None for full fine-tuning).

    With ``lora_layers`` and the default ``"all-linear"`` modules, PEFT needs the module names
    spelt out; they are read from ``backbone`` (every linear layer but the LM head).
    """
    if recipe.lora_r < 0:
        raise ValueError(f"lora_r must be >= 0 (0 = full fine-tuning), got {recipe.lora_r}")
    if recipe.lora_r == 0:
        return None
    import peft

    modules = recipe.lora_modules
    if recipe.lora_layers is not None and isinstance(modules, str):
        if modules != "all-linear" or backbone is None:
            raise ValueError(
                "lora_layers needs lora_modules as a list of module names (or 'all-linear' and a backbone)"
            )
        modules = _linear_names(backbone)
    alpha = recipe.lora_alpha if recipe.lora_alpha is not None else 2 * recipe.lora_r
    return peft.LoraConfig(
        r=recipe.lora_r,
        lora_alpha=alpha,
        lora_dropout=recipe.lora_dropout,
        target_modules=modules,
        layers_to_transform=recipe.lora_layers,
    )


def _linear_names(model) -> list[str]:
    head = model.get_output_embeddings()
    return sorted(
        {
            name.rsplit(".", 1)[-1]
            for name, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and m is not head
        }
    )


def _load(backbone, tokenizer, kwargs: dict):
    """``(model, tokenizer)`` from a name / folder (``kwargs`` such as ``gguf_file`` serve both) or an instance."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if isinstance(backbone, torch.nn.Module):
        if tokenizer is None:
            raise ValueError("pass the tokenizer with a model instance")
        impl = kwargs.pop("attn_implementation", None)
        if kwargs:
            raise ValueError(f"from_pretrained kwargs {sorted(kwargs)} apply only when loading by name")
        if impl is not None:
            backbone.set_attn_implementation(impl)
        model = backbone
    else:
        model = AutoModelForCausalLM.from_pretrained(backbone, **kwargs)
    if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)):
        tok_kwargs = {k: kwargs[k] for k in ("gguf_file", "revision", "trust_remote_code") if k in kwargs}
        tokenizer = AutoTokenizer.from_pretrained(tokenizer or backbone, **tok_kwargs)
    return model, tokenizer


def build_model(backbone, recipe: Recipe, tokenizer=None, *, btoks: bool = True, **from_pretrained_kwargs):
    """A trainable embedder for ``recipe``.

    Args:
        backbone: a name / folder for ``AutoModelForCausalLM`` or a model instance.
        recipe: the settings (K, pooling, temperature, LoRA, max_length, generative weight).
        tokenizer: a tokenizer or a name / folder (default: from ``backbone``).
        btoks: True: a :class:`~btok_model.BTokModel`; False: a
            :class:`~btok_model.evaluation.baselines.PooledEmbedder` (no BToks, pooling
            ``recipe.pooling``, no generative loss).
        **from_pretrained_kwargs: ``attn_implementation`` (default ``"btok_triton"``) and, for
            loading by name, ``from_pretrained`` keywords (``gguf_file``, ``dtype``, ...).
    """
    from_pretrained_kwargs.setdefault("attn_implementation", "btok_triton")
    model, tokenizer = _load(backbone, tokenizer, from_pretrained_kwargs)
    lora = lora_config(recipe, model)
    if btoks:
        from ..embedder.modeling import BTokModel

        return BTokModel.from_backbone(
            model,
            num_btoks=recipe.num_btoks,
            tokenizer=tokenizer,
            attn_implementation=None,
            lora=lora,
            pooling=recipe.pooling,
            temperature=recipe.temperature,
            generative_weight=recipe.generative_weight,
            max_length=recipe.max_length,
        )
    from ..evaluation.baselines import PooledEmbedder

    if recipe.generative_weight != 0:
        raise ValueError("a model without BToks has no generative loss: set generative_weight to 0")
    return PooledEmbedder.from_backbone(
        model, tokenizer, recipe.pooling, lora=lora, temperature=recipe.temperature, max_length=recipe.max_length
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
        warmup_steps=recipe.warmup_ratio,  # a float below 1 is a fraction of the steps
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
    **overrides,
):
    """Train ``model`` on ``dataset`` with ``recipe``; returns the :class:`BTokTrainer`.

    Args:
        model: from :func:`build_model`.
        dataset: a sequence of example dicts, or a :class:`~btok_model.training.data.MixedDataset`
            (read in the order of its sampler: weighted shares, or ``recipe.source_block_size`` blocks).
        recipe: the settings.
        output_dir: checkpoints (``checkpoint-<step>``) and, with ``save``, the final model.
        resume: a checkpoint folder, or True for the latest one in ``output_dir``.
        save: write the final model to ``output_dir`` (loadable with ``from_pretrained``).
        callbacks: ``transformers.TrainerCallback`` instances.
        **overrides: ``TrainingArguments`` fields that replace the recipe's.
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
        callbacks=callbacks,
    )
    trainer.train(resume_from_checkpoint=resume)
    if save:
        trainer.save_model(output_dir)
    return trainer
