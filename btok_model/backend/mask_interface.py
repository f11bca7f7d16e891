"""The mask function registered for ``"btok_triton"`` in ``transformers.masking_utils``.

Without an entry in ``AttentionMaskInterface`` a model silently gets
``attention_mask=None`` for an unknown backend. Like ``flash_attention_mask``, this one
never builds a 4D mask: it passes the 2D padding mask through (or None when there is no
padding) and the attention function derives the packed layout from it. It also refuses
mask patterns the attention function cannot reproduce from a 2D mask.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import masking_utils

from .errors import UnsupportedModelFeatureError

__all__ = ["btok_mask"]

# Mask-function building blocks whose effect the attention function reproduces itself:
# causal or bidirectional (from ``module.is_causal``), packing (from position_ids),
# sliding windows (checked against the ``sliding_window`` kwarg), padding, offsets.
_SUPPORTED_LEAVES = {
    "causal_mask_function",
    "bidirectional_mask_function",
    "padding_mask_function.<locals>.inner_mask",
    "packed_sequence_mask_function.<locals>.inner_mask",
    "sliding_window_overlay.<locals>.inner_mask",
    "sliding_window_bidirectional_overlay.<locals>.inner_mask",
}
_SUPPORTED_WRAPPERS = {
    "and_masks.<locals>.and_mask",
    "remap_positions_for_packed_sequence.<locals>.inner_mask",
    "add_offsets_to_mask_function.<locals>.inner_mask",
}
_FEATURE_NAMES = {
    "or_masks.<locals>.or_mask": "an or_mask_function overlay (e.g. bidirectional attention over image tokens)",
    "blockwise_overlay.<locals>.inner_mask": "bidirectional blocks (block_sequence_ids)",
    "chunked_overlay.<locals>.inner_mask": "chunked attention (attention_chunk_size)",
}


def _children(fn: Callable) -> list[Callable]:
    """The mask functions a composed mask function closes over."""
    found = []
    for cell in fn.__closure__ or ():
        value = cell.cell_contents
        values = value if isinstance(value, (tuple, list)) else (value,)
        found += [v for v in values if callable(v) and hasattr(v, "__qualname__")]
    return found


@torch.compiler.disable
def check_mask_function(fn: Callable) -> bool:
    """Raise :class:`UnsupportedModelFeatureError` if ``fn`` is not a pattern we reproduce.

    ``fn`` is the ``mask_function`` transformers composes in ``create_causal_mask`` and
    friends (``and_masks(causal_mask_function, ...)`` and so on); its closures are walked
    and every building block must be known. It reads function names and closures, which
    ``torch.compile`` cannot trace: it runs eagerly there (one graph break per mask).
    """
    _check_mask_function(fn)
    return True


def _check_mask_function(fn: Callable) -> None:
    name = getattr(fn, "__qualname__", None) or type(fn).__name__
    if getattr(fn, "__module__", None) == masking_utils.__name__:
        if name in _SUPPORTED_LEAVES:
            return
        if name in _SUPPORTED_WRAPPERS:
            for child in _children(fn):
                _check_mask_function(child)
            return
    feature = _FEATURE_NAMES.get(name, f"a custom mask function ({getattr(fn, '__module__', '?')}.{name})")
    raise UnsupportedModelFeatureError(
        f'attn_implementation="btok_triton" does not support {feature}: this model builds a mask it cannot '
        'reproduce exactly. Use attn_implementation="sdpa" or "eager" for this model or input.'
    )


def btok_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int = 0,
    kv_offset: int = 0,
    mask_function: Callable = masking_utils.causal_mask_function,
    attention_mask: torch.Tensor | None = None,
    **kwargs,
) -> torch.Tensor | None:
    """The mask a model passes to ``"btok_triton"``: the 2D padding mask, or None.

    Same signature as ``transformers.masking_utils.flash_attention_mask``.

    Args:
        batch_size, q_length, kv_length, q_offset, kv_offset: as in ``sdpa_mask``.
        mask_function: the composed mask pattern; refused unless it is causal or
            bidirectional, possibly with packing, padding or a sliding window.
        attention_mask: bool ``[B, L]`` 2D padding mask (True = real token) or None.

    Returns:
        bool ``[B, min(L, kv_length)]`` (the last ``kv_length`` positions: with a static
        cache ``L`` may be shorter than ``kv_length``) when it has padding or is shorter
        than ``kv_length``, else None.
    """
    check_mask_function(mask_function)
    if attention_mask is None:
        return None
    attention_mask = attention_mask[:, -kv_length:]
    if attention_mask.shape[1] == kv_length and bool(attention_mask.all()):
        return None
    return attention_mask
