"""Registration of ``"btok_triton"`` with transformers, by name (no patching)."""

from __future__ import annotations

from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface

from .attention import btok_attention_forward
from .mask_interface import btok_mask

__all__ = ["ATTN_IMPLEMENTATION", "is_registered", "register"]

ATTN_IMPLEMENTATION = "btok_triton"


def register() -> str:
    """Register the attention function and its mask function under ``"btok_triton"``.

    Idempotent. Both registries are needed: without the mask entry a model passes
    ``attention_mask=None`` to an unknown backend and padding would be silently ignored.

    Returns:
        The ``attn_implementation`` name to pass to ``from_pretrained``.
    """
    AttentionInterface.register(ATTN_IMPLEMENTATION, btok_attention_forward)
    AttentionMaskInterface.register(ATTN_IMPLEMENTATION, btok_mask)
    return ATTN_IMPLEMENTATION


def is_registered() -> bool:
    """Whether both registries map ``"btok_triton"`` to this package's functions."""
    return (
        AttentionInterface().get(ATTN_IMPLEMENTATION) is btok_attention_forward
        and AttentionMaskInterface().get(ATTN_IMPLEMENTATION) is btok_mask
    )
