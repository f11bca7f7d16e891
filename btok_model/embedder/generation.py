"""Decoding the bottleneck: text generated from the BToks' keys and values alone.

What a target learns to generate under the condensation mask is what the K BToks of an input
let it generate: its rows see the BToks and the target before them, never the input. This
module runs that as inference (the authors ship it as ``generate_from_btoks_cache``):

1. each ``[input | BToks]`` runs once (:func:`~.btok_cache.btok_cache`, images and videos
   through a VL backbone's vision tower) and the KV cache keeps only the BToks' keys and
   values;
2. transformers' ``generate`` continues from that cache with the target prefix
   (``BTokConfig.target_prefix``, ``<|im_start|>assistant\\n`` by default), at the positions
   training gives a target: ``S, S + 1, ...`` with ``S`` the row's token count (input + K
   BToks), on every M-RoPE axis (the prefix is text, so the model's rope index of the target
   alone is ``0, 1, ...``). ``generate`` is handed the BTok ids followed by the prefix, the
   cache holding the BTok columns, an all-ones attention mask and these positions; it feeds
   the prefix, then one token at a time with positions growing by 1, identically in
   transformers 5.17 and 5.24;
3. generation stops at the target suffix (``<|im_end|>`` by default: a one-token suffix is
   an EOS id for ``generate``, a longer one a stopping criterion) or at an EOS id, per row.

The first generated token's logits are those of the last prefix row of a packed training pass
over ``[input | BToks | prefix + text]``, and every later step's those of the next target row
(tests/embedder/test_generation.py checks both on Llama and Qwen2-VL with an image).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from .backbone import transformers_model
from .btok_cache import btok_cache, cache_kwarg
from .collate import ExampleError

if TYPE_CHECKING:  # a BTokModel; its module imports this one, so the annotation names its base class
    from .base import Embedder

__all__ = ["EndsWithIds", "generate_from_btoks"]

# generate() arguments this module sets itself (the prompt, its cache, positions and mask).
_OWN_ARGUMENTS = (
    "input_ids",
    "inputs",
    "inputs_embeds",
    "attention_mask",
    "position_ids",
    "cache",
    "past_key_values",
    "cache_position",
    "pixel_values",
    "image_grid_thw",
    "pixel_values_videos",
    "video_grid_thw",
    "mm_token_type_ids",
    "return_dict_in_generate",
)


class EndsWithIds(StoppingCriteria):
    """Stops each row once its generated tokens end with ``ids``.

    Args:
        ids: the stop sequence (>= 1 id).
        prompt_length: columns of the prompt before the generated tokens (never matched).
    """

    def __init__(self, ids: Sequence[int], prompt_length: int):
        self.ids = torch.tensor(list(ids), dtype=torch.long)
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        """bool ``[B]``: which rows of ``input_ids`` (int64 ``[B, L]``) end with the stop ids."""
        n = self.ids.numel()
        if input_ids.shape[1] - self.prompt_length < n:
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        if self.ids.device != input_ids.device:  # once: later steps compare on the device
            self.ids = self.ids.to(input_ids.device)
        return (input_ids[:, -n:] == self.ids).all(-1)


def generate_from_btoks(
    model: Embedder,
    inputs: Sequence,
    max_new_tokens: int = 32,
    *,
    batch_size: int = 16,
    return_ids: bool = False,
    **generate_kwargs,
) -> list[str] | tuple[list[str], list[list[int]]]:
    """Text generated from each input's BToks alone (see the module docstring).

    Args:
        model: the BTok model (its backbone's attention implementation is used: the first
            pass runs on it, decoding with a cache runs its KV-cache path).
        inputs: N inputs as :meth:`~btok_model.BTokModel.encode` takes them: strings, or for a
            Qwen2-VL / Qwen2.5-VL backbone ``{"text": ..., "image": ..., "video": ...}`` dicts.
        max_new_tokens: the most tokens generated per input (>= 1).
        batch_size: inputs per first pass and ``generate`` call (sorted by length, results in
            input order).
        return_ids: also return each input's generated ids.
        **generate_kwargs: passed to transformers' ``generate``: greedy by default
            (``do_sample=False``); ``do_sample=True, temperature=..., top_p=...`` sample.
            ``eos_token_id``: the EOS ids (default: the tokenizer's and the model generation
            config's; the suffix always stops); ``min_new_tokens`` holds back EOS and a
            one-token suffix; ``stopping_criteria`` are added to the suffix stop (a row they
            stop keeps the ``pad_token_id`` padding ``generate`` writes after it). One sequence
            per input: ``num_beams`` and ``num_return_sequences`` must be 1.

    Returns:
        N strings: the generated text up to (not including) the target suffix or EOS, decoded
        without special tokens; with ``return_ids`` also N lists of the generated ids (the
        suffix / EOS that ended one included, padding after it not).

    Raises:
        ExampleError: an input that cannot be embedded, or one whose ``[input | BToks |
            prefix]`` + ``max_new_tokens`` exceeds the model's length limit, named by index.
        ValueError: bad arguments, an empty target prefix (training never scores the first
            target token then, so nothing predicts it from the BToks).
    """
    _check_arguments(max_new_tokens, batch_size, generate_kwargs)
    collator = model.collator
    prefix, suffix = collator.prefix_ids, collator.suffix_ids
    if not prefix:
        raise ValueError(
            "generate_from_btoks needs a non-empty target_prefix (BTokConfig.target_prefix): without one, training "
            "never scores a target's first token, so nothing predicts it from the BToks"
        )
    sequences, media = collator.encode_for_embedding(inputs)
    k = model.config.num_btoks
    if collator.max_length is not None:
        for i, seq in enumerate(sequences):
            length = len(seq) + len(prefix) + max_new_tokens
            if length > collator.max_length:
                raise ExampleError(
                    f"text {i}: the text + {k} BToks + the target prefix + max_new_tokens={max_new_tokens} is {length} "
                    f"tokens, longer than {collator.limit_name}"
                )
    causal_lm = transformers_model(model.backbone)
    eos = generate_kwargs.pop("eos_token_id", None)
    if eos is None:
        eos = [model.tokenizer.eos_token_id, *_as_list(causal_lm.generation_config.eos_token_id)]
    # A one-token suffix stops as an EOS id does (min_new_tokens then applies to it too).
    eos = sorted({int(i) for i in _as_list(eos) + (suffix if len(suffix) == 1 else []) if i is not None})
    generate_kwargs.setdefault("do_sample", False)
    generate_kwargs.setdefault("pad_token_id", collator.pad_id)

    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
    generated: list[list[int]] = [[] for _ in sequences]
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                rows = order[start : start + batch_size]
                first = btok_cache(model, [sequences[i][:-k] for i in rows], [media[i] for i in rows])
                out = _continue(model, first, prefix, suffix, eos, max_new_tokens, dict(generate_kwargs))
                for i, ids in zip(rows, out):
                    generated[i] = _until_stop(ids, suffix, eos)
    finally:
        model.train(was_training)
    texts = [model.tokenizer.decode(_without_stop(ids, suffix, eos), skip_special_tokens=True) for ids in generated]
    return (texts, generated) if return_ids else texts


def _continue(model, first, prefix, suffix, eos, max_new_tokens, generate_kwargs) -> list[list[int]]:
    """The ids ``generate`` appends after ``[BToks | prefix]`` for each row of ``first`` (a
    :class:`~.btok_cache.BTokCache` of all rows), padding after a stop included."""
    k, device = model.config.num_btoks, model.device
    n, p = first.token_counts.shape[0], len(prefix)
    causal_lm = transformers_model(model.backbone)
    prompt = torch.tensor([model.btok_token_ids + prefix] * n, dtype=torch.long)
    # The prefix continues at S, S + 1, ... (every M-RoPE axis); the BTok columns are in the
    # cache, so only their shape matters to generate, which slices positions to the fed tokens.
    prefix_positions = first.token_counts[:, None] + torch.arange(p)  # [n, P]
    if first.btok_positions.dim() == 3:
        prefix_positions = prefix_positions.expand(3, n, p)
    positions = torch.cat([first.btok_positions, prefix_positions], -1)
    stops = StoppingCriteriaList(generate_kwargs.pop("stopping_criteria", None) or [])
    if len(suffix) > 1:
        stops.append(EndsWithIds(suffix, k + p))
    out = causal_lm.generate(
        input_ids=prompt.to(device),
        attention_mask=torch.ones(n, k + p, dtype=torch.long, device=device),
        position_ids=positions.to(device),
        max_new_tokens=max_new_tokens,
        eos_token_id=eos or None,
        stopping_criteria=stops,
        **{cache_kwarg(causal_lm): first.cache},
        **generate_kwargs,
    )
    return out[:, k + p :].tolist()


def _until_stop(ids: list[int], suffix: list[int], eos: list[int]) -> list[int]:
    """``ids`` up to and including the first EOS id or the first complete suffix."""
    n = len(suffix)
    for j, token in enumerate(ids):
        if token in eos or (n and ids[max(0, j + 1 - n) : j + 1] == suffix):
            return ids[: j + 1]
    return ids


def _without_stop(ids: list[int], suffix: list[int], eos: list[int]) -> list[int]:
    """:func:`_until_stop`'s ids without the suffix or EOS that ended them."""
    if ids and ids[-1] in eos:
        return ids[:-1]
    if suffix and ids[-len(suffix) :] == suffix:
        return ids[: -len(suffix)]
    return ids


def _as_list(value) -> list:
    if value is None:
        return []
    if isinstance(value, torch.Tensor):
        return value.flatten().tolist()
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _check_arguments(max_new_tokens, batch_size, generate_kwargs: dict) -> None:
    """Raise ValueError naming the first bad argument."""
    for name, value in (("max_new_tokens", max_new_tokens), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    own = sorted(set(generate_kwargs) & set(_OWN_ARGUMENTS))
    if own:
        raise ValueError(
            f"generate_from_btoks sets {own} itself (the BTok cache, the target prefix and its positions); "
            "pass the inputs as `inputs`"
        )
    for name in ("num_beams", "num_return_sequences"):
        if generate_kwargs.get(name, 1) != 1:
            raise ValueError(
                f"{name}={generate_kwargs[name]!r} is not supported: generate_from_btoks returns one sequence per input "
                "(greedy by default, or sampling with do_sample=True)"
            )
