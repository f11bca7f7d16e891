"""The BTok tokens: added to the tokenizer, given embedding rows, and made trainable.

Three ways to train a BTok model (``from_backbone(lora=..., freeze_backbone=...)``):

==========================  ============================================================
full fine-tuning (default)  every weight trains, the BTok rows with the embedding matrix
LoRA (``lora=r`` or a       PEFT LoRA adapters + PEFT ``trainable_token_indices``: of the
``peft.LoraConfig``)        embedding matrix only the K BTok rows train
frozen backbone             PEFT ``TrainableTokensConfig``: only the K BTok rows train
(``freeze_backbone=True``)
==========================  ============================================================

PEFT keeps the trainable rows as separate parameters, so the other rows stay bit-identical
under any optimizer (a gradient mask would not: weight decay still moves masked rows). With
tied input/output embeddings (SmolLM2, Qwen2-VL-2B) PEFT ties the LM head's BTok rows to the
same parameters. LoRA adapters go on the language model's linear layers only
(:func:`lora_target_modules`): a vision tower and the LM head stay frozen.
"""

from __future__ import annotations

import copy
import re
import warnings

import torch

__all__ = ["BTOK_INITS", "add_btok_tokens", "init_btok_rows", "lora_target_modules", "make_trainable", "wrap_peft"]

BTOK_INITS = ("mean", "eos", "checkpoint")


def add_btok_tokens(tokenizer, tokens: list[str]) -> tuple[list[int], bool]:
    """Add ``tokens`` to ``tokenizer`` as special tokens (in place) unless it already has them.

    Args:
        tokenizer: a transformers tokenizer.
        tokens: the K BTok strings.

    Returns:
        ``(btok_ids, added)``: the K token ids, and whether they were added now (then
        they are the last K ids, and the ids before them are the original vocabulary).

    Raises:
        ValueError: when some but not all of the tokens exist (a tokenizer made for another
            number of BToks).
    """
    vocab = tokenizer.get_vocab()
    present = [t for t in tokens if t in vocab]
    if present and len(present) != len(tokens):
        raise ValueError(
            f"the tokenizer already has {present} but not {[t for t in tokens if t not in vocab]}: it was made "
            f"for a different number of BToks; pass num_btoks={len(present)} or a tokenizer without BTok tokens"
        )
    if not present:
        tokenizer.add_tokens(tokens, special_tokens=True)
    ids = tokenizer.convert_tokens_to_ids(tokens)
    if len(set(ids)) != len(tokens) or any(i is None or i == tokenizer.unk_token_id for i in ids):
        raise ValueError(f"the tokenizer did not give the BTok tokens {tokens} distinct ids (got {ids})")
    return ids, not present


@torch.no_grad()
def init_btok_rows(model, btok_ids: list[int], source_rows: int, init: str = "mean", eos_id: int | None = None) -> None:
    """Give the BTok ids embedding rows (resizing the matrix if needed), in place.

    ``init="mean"`` (btok's default): every BTok row starts as the mean of the first
    ``source_rows`` input-embedding rows (the tokenizer's vocabulary before the BToks were
    added), and an untied LM head's BTok rows as the mean of its rows. Why the mean: it has the
    scale and direction statistics of a real input embedding, so the first layers see an
    in-distribution vector (a zero or random row would not be: RMSNorm of a near-zero vector
    blows it up); it carries no word meaning, unlike a copy of a real token such as EOS, which
    the model has learnt to treat as a sequence end; and with a tied LM head its logit stays
    near the average logit, so a new token takes little probability mass from real tokens in
    the generative loss (the argument of transformers' ``mean_resizing``). Rows of padded
    vocabularies past the tokenizer (Qwen) are never averaged.

    ``init="eos"``: every BTok input-embedding row is a copy of the EOS token's row (with a tied
    LM head the head's rows too); an untied LM head's BTok rows take the mean of its rows as
    above. btok copies the EOS row whether or not the matrix grows.

    ``init="checkpoint"`` (the authors' recipe on a backbone with spare rows): the BTok ids
    keep the rows the checkpoint already has for them, input embedding and LM head alike;
    nothing is written. The authors' injector (vlm2emb ``BToksTokenInjector.on_processor``)
    copies the EOS row only when ``len(tokenizer)`` exceeds the embedding rows; when the matrix
    has spare rows it changes nothing. Qwen2-VL-2B-Instruct is such a case: 151,936 rows (its
    config's ``vocab_size``) for a 151,657-token tokenizer, so its BToks (ids 151,657-151,660)
    start from padding rows no token ever trained. Where the ids do not fit, ``"checkpoint"``
    raises (the authors would resize and copy EOS: that is ``"eos"``).

    With ``"mean"`` and ``"eos"`` the K rows start equal; their positions tell them apart from
    the first step (RoPE), and training separates them.

    Args:
        model: the transformers model (not PEFT-wrapped).
        btok_ids: the K ids.
        source_rows: how many leading rows are the original vocabulary (>= 1).
        init: ``"mean"``, ``"eos"`` or ``"checkpoint"``.
        eos_id: the EOS token id (``init="eos"``), one of the first ``source_rows`` ids.

    Raises:
        ValueError: an unknown ``init``; ``"eos"`` without an EOS id among the original ids;
            ``"checkpoint"`` when the embedding matrix (or an untied LM head) has no row for
            the largest BTok id (the message gives both sizes).
    """
    if init not in BTOK_INITS:
        raise ValueError(f"btok_init must be one of {BTOK_INITS}, got {init!r}")
    if init == "eos" and (eos_id is None or not 0 <= eos_id < source_rows):
        raise ValueError(
            f"btok_init='eos' needs the tokenizer's EOS token among its original {source_rows} ids, got eos id {eos_id}"
        )
    needed = max(btok_ids) + 1
    if init == "checkpoint":
        _check_checkpoint_rows(model, btok_ids, needed)
        return
    if model.get_input_embeddings().weight.shape[0] < needed:
        model.resize_token_embeddings(needed, mean_resizing=False)
    index = torch.tensor(btok_ids)
    embedding = model.get_input_embeddings()
    if init == "eos":
        weight = embedding.weight
        weight[index.to(weight.device)] = weight[eos_id].clone()
    else:
        _set_rows_to_mean(embedding, index, source_rows)
    output = model.get_output_embeddings()
    if output is not None and output.weight is not embedding.weight:
        _set_rows_to_mean(output, index, source_rows)


def _check_checkpoint_rows(model, btok_ids: list[int], needed: int) -> None:
    """Raise unless the input embedding and an LM head have a row for every BTok id."""
    output = model.get_output_embeddings()
    matrices = [("input embedding", model.get_input_embeddings())]
    if output is not None and output.weight is not matrices[0][1].weight:
        matrices.append(("LM head", output))
    for name, module in matrices:
        rows = module.weight.shape[0]
        if rows < needed:
            raise ValueError(
                f"btok_init='checkpoint' keeps the backbone's own rows for the BTok ids "
                f"{min(btok_ids)}..{max(btok_ids)}, "
                f"but its {name} has {rows} rows (ids 0..{rows - 1}) and the ids need {needed}: the tokenizer has "
                f"no spare rows in this checkpoint; use btok_init='eos' (the authors' choice when the matrix grows) "
                "or 'mean'"
            )


def _set_rows_to_mean(module: torch.nn.Module, index: torch.Tensor, source_rows: int) -> None:
    weight = module.weight
    rows = min(source_rows, weight.shape[0])
    if rows < 1:
        raise ValueError("the embedding matrix has no rows to initialise the BTok rows from")
    index = index.to(weight.device)
    weight[index] = weight[:rows].float().mean(0).to(weight.dtype)
    bias = getattr(module, "bias", None)
    if bias is not None:
        bias[index] = bias[:rows].float().mean().to(bias.dtype)


def make_trainable(model, btok_ids: list[int], lora=None, freeze_backbone: bool = False):
    """Choose what trains: everything, LoRA adapters + BTok rows, or the BTok rows only.

    Args:
        model: the transformers model, BTok rows already initialised.
        btok_ids: the K ids whose embedding rows must train in every mode (``[]``: a model
            without BToks, which has no frozen-backbone mode).
        lora: None or 0 (no LoRA), an int ``r`` > 0 (LoRA of rank r on every linear layer of
            the language model, :func:`lora_target_modules`; ``lora_alpha = 2 r``, no
            dropout), or a ``peft.LoraConfig`` (copied; the BTok ids are added to its
            ``trainable_token_indices``; its own ``target_modules`` apply).
        freeze_backbone: without LoRA, train the BTok rows only.

    Returns:
        ``model`` itself (full fine-tuning) or a ``peft.PeftModel`` around it.
    """
    config = _peft_config(model, btok_ids, lora, freeze_backbone)
    if config is None:
        model.requires_grad_(True)
        return model
    return wrap_peft(model, config)


def lora_target_modules(model, modules: str | list[str] = "all-linear", layers: list[int] | None = None) -> str:
    """A PEFT ``target_modules`` regex for LoRA on the language model only.

    It matches the linear layers inside the model's decoder (``get_decoder()``: not a vision
    tower, not the LM head) whose last name is in ``modules``, in the decoder layers ``layers``.
    Names the decoder does not have are ignored (the authors' list names ``qkv_proj``,
    ``gate_up_proj`` and ``out_proj`` for other families), as PEFT ignores them in a list.

    Args:
        model: the transformers model (not PEFT-wrapped).
        modules: ``"all-linear"`` (every linear layer of the decoder) or leaf names such as
            ``["q_proj", "v_proj"]`` (a comma-separated string works too).
        layers: decoder layer indices, or None for all.

    Raises:
        ValueError: no decoder found, or nothing matches (naming what the decoder has).
    """
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    prefix = next((name for name, module in model.named_modules() if module is decoder and name), None)
    if prefix is None:
        raise ValueError(f"cannot find the language model inside {type(model).__name__} to put LoRA adapters on")
    leaves = sorted(
        {name.rsplit(".", 1)[-1] for name, m in decoder.named_modules() if isinstance(m, torch.nn.Linear) and name}
    )
    if isinstance(modules, str) and modules != "all-linear":
        modules = [m.strip() for m in modules.split(",") if m.strip()]
    wanted = leaves if modules == "all-linear" else [m for m in leaves if m in set(modules)]
    if not wanted:
        raise ValueError(f"LoRA target modules {modules} match no linear layer of the language model; it has {leaves}")
    where = r".*"
    if layers is not None:
        count = len(getattr(decoder, "layers", ()))
        bad = [i for i in layers if not 0 <= i < count]
        if not layers or bad:
            raise ValueError(f"LoRA layers must be indices in [0, {count}) of the decoder's layers, got {layers}")
        where = rf"layers\.({'|'.join(str(i) for i in sorted(set(layers)))})\..*"
    return rf"{re.escape(prefix)}\.{where}\.({'|'.join(map(re.escape, wanted))})"


def wrap_peft(model, config):
    import peft

    with warnings.catch_warnings():
        # PEFT reads transformers' deprecated alias `is_gradient_checkpointing` (5.24); the
        # FutureWarning is about PEFT's code, not the user's.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return peft.get_peft_model(model, config)


def _peft_config(model, btok_ids: list[int], lora, freeze_backbone: bool):
    if lora is None or (isinstance(lora, int) and not isinstance(lora, bool) and lora == 0):
        if not freeze_backbone:
            return None
        if not btok_ids:
            raise ValueError("freeze_backbone=True without LoRA trains only the BTok rows, and this model has none")
        import peft

        return peft.TrainableTokensConfig(token_indices=list(btok_ids))
    import peft

    if isinstance(lora, bool) or not isinstance(lora, (int, peft.LoraConfig)):
        raise ValueError(f"lora must be None, an int rank >= 0 or a peft.LoraConfig, got {lora!r}")
    if isinstance(lora, int):
        if lora < 0:
            raise ValueError(f"lora (the LoRA rank) must be >= 0, got {lora}")
        return peft.LoraConfig(
            r=lora,
            lora_alpha=2 * lora,
            lora_dropout=0.0,
            target_modules=lora_target_modules(model),
            trainable_token_indices=list(btok_ids) or None,
        )
    config = copy.deepcopy(lora)
    config.trainable_token_indices = _merge_token_indices(config.trainable_token_indices, btok_ids)
    return config


def _merge_token_indices(existing, btok_ids: list[int]):
    """The user's ``trainable_token_indices`` with the BTok ids added to the input embedding."""
    if not btok_ids:
        return existing
    if existing is None:
        return list(btok_ids)
    if isinstance(existing, dict):
        raise ValueError(
            "LoraConfig.trainable_token_indices is a dict (per-layer indices): BTokModel cannot tell which entry "
            "is the input embedding; pass a list of extra token ids instead, or None"
        )
    return sorted(set(existing) | set(btok_ids))
