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
same parameters.
"""

from __future__ import annotations

import copy
import warnings

import torch

__all__ = ["add_btok_tokens", "init_btok_rows", "make_trainable", "wrap_peft"]


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
def init_btok_rows(model, btok_ids: list[int], source_rows: int) -> None:
    """Give the BTok ids embedding rows (resizing the matrix if needed), in place.

    Every BTok row starts as the mean of the first ``source_rows`` input-embedding rows
    (the tokenizer's vocabulary before the BToks were added), and an untied LM head's BTok
    rows as the mean of its rows. Why the mean: it has the scale and direction statistics
    of a real input embedding, so the first layers see an in-distribution vector (a zero or
    random row would not be: RMSNorm of a near-zero vector blows it up); it carries no word
    meaning, unlike a copy of a real token such as EOS, which the model has learnt to treat
    as a sequence end; and with a tied LM head its logit stays near the average logit, so
    a new token takes little probability mass from real tokens in the generative loss (the
    argument of transformers' ``mean_resizing``). The K rows start equal; their positions
    tell them apart from the first step (RoPE), and training separates them.
    Rows of padded vocabularies past the tokenizer (Qwen) are never averaged.

    Args:
        model: the transformers model (not PEFT-wrapped).
        btok_ids: the K ids.
        source_rows: how many leading rows to average (>= 1).
    """
    needed = max(btok_ids) + 1
    if model.get_input_embeddings().weight.shape[0] < needed:
        model.resize_token_embeddings(needed, mean_resizing=False)
    index = torch.tensor(btok_ids)
    _set_rows_to_mean(model.get_input_embeddings(), index, source_rows)
    output = model.get_output_embeddings()
    if output is not None and output.weight is not model.get_input_embeddings().weight:
        _set_rows_to_mean(output, index, source_rows)


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


def make_trainable(
    model, btok_ids: list[int], lora=None, freeze_backbone: bool = False, lora_targets: str | None = None
):
    """Choose what trains: everything, LoRA adapters + BTok rows, or the BTok rows only.

    Args:
        model: the transformers model, BTok rows already initialised.
        btok_ids: the K ids whose embedding rows must train in every mode.
        lora: None or 0 (no LoRA), an int ``r`` > 0 (LoRA of rank r on the linear layers
            ``lora_targets`` names, ``lora_alpha = 2 r``, no dropout), or a
            ``peft.LoraConfig`` (copied; the BTok ids are added to its
            ``trainable_token_indices``; its own ``target_modules`` apply).
        freeze_backbone: without LoRA, train the BTok rows only.
        lora_targets: PEFT ``target_modules`` for a LoRA rank; None: every linear layer
            except the LM head (``"all-linear"``). A VL model passes its language model's
            layers (:func:`~btok_model.embedder.multimodal.language_model_lora_targets`),
            keeping the vision tower frozen.

    Returns:
        ``model`` itself (full fine-tuning) or a ``peft.PeftModel`` around it.
    """
    config = _peft_config(btok_ids, lora, freeze_backbone, lora_targets or "all-linear")
    if config is None:
        model.requires_grad_(True)
        return model
    return wrap_peft(model, config)


def wrap_peft(model, config):
    import peft

    with warnings.catch_warnings():
        # PEFT reads transformers' deprecated alias `is_gradient_checkpointing` (5.24); the
        # FutureWarning is about PEFT's code, not the user's.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return peft.get_peft_model(model, config)


def _peft_config(btok_ids: list[int], lora, freeze_backbone: bool, targets: str):
    if lora is None or (isinstance(lora, int) and not isinstance(lora, bool) and lora == 0):
        if not freeze_backbone:
            return None
        import peft

        return peft.TrainableTokensConfig(token_indices=list(btok_ids))
    import peft

    if isinstance(lora, bool) or not isinstance(lora, (int, peft.LoraConfig)):
        raise ValueError(f"lora must be None, an int rank >= 0 or a peft.LoraConfig, got {lora!r}")
    if isinstance(lora, int):
        if lora < 0:
            raise ValueError(f"lora (the LoRA rank) must be >= 0, got {lora}")
        # The LM head stays out: PEFT's "all-linear" skips the output layer.
        return peft.LoraConfig(
            r=lora, lora_alpha=2 * lora, lora_dropout=0.0, target_modules=targets, trainable_token_indices=btok_ids
        )
    config = copy.deepcopy(lora)
    config.trainable_token_indices = _merge_token_indices(config.trainable_token_indices, btok_ids)
    return config


def _merge_token_indices(existing, btok_ids: list[int]):
    """The user's ``trainable_token_indices`` with the BTok ids added to the input embedding."""
    if existing is None:
        return list(btok_ids)
    if isinstance(existing, dict):
        raise ValueError(
            "LoraConfig.trainable_token_indices is a dict (per-layer indices): BTokModel cannot tell which entry "
            "is the input embedding; pass a list of extra token ids instead, or None"
        )
    return sorted(set(existing) | set(btok_ids))
