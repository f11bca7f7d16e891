"""The condensation mask of a packed layout for attention backends other than ``"btok_triton"``.

``"btok_triton"`` reads the :class:`~btok_kernels.CondensationLayout` itself (no mask is
built). The peers need it spelled out: ``"eager"`` and ``"sdpa"`` get a dense additive
``[1, 1, T, T]`` mask (O(T^2) memory, exact, for comparisons and benchmarks) and
``"flex_attention"`` a ``BlockMask``. transformers passes a 4D mask or a ``BlockMask`` to the
attention function as it is. The mask itself, and its flex ``mask_mod``, are
:mod:`btok_kernels.mask`'s definitions.
"""

from __future__ import annotations

import torch

from btok_kernels import CondensationLayout
from btok_kernels.mask import condensation_mask, condensation_mask_mod

__all__ = ["DENSE_MASK_IMPLEMENTATIONS", "condensation_attention_mask"]

DENSE_MASK_IMPLEMENTATIONS = ("eager", "sdpa")


def condensation_attention_mask(layout: CondensationLayout, attn_implementation: str, dtype: torch.dtype, device):
    """The mask of ``layout`` in the form ``attn_implementation`` takes as ``attention_mask``.

    Args:
        layout: the packed ``[1, T]`` batch.
        attn_implementation: ``"eager"``, ``"sdpa"`` or ``"flex_attention"``.
        dtype: the model's compute dtype (the additive mask's dtype).
        device: where the mask lives.

    Returns:
        additive ``[1, 1, T, T]`` tensor of ``dtype`` (0 allowed, dtype min masked), or a
        flex ``BlockMask`` for ``"flex_attention"``.
    """
    if attn_implementation == "flex_attention":
        from torch.nn.attention.flex_attention import create_block_mask

        total = layout.total_tokens
        return create_block_mask(condensation_mask_mod(layout, device), 1, None, total, total, device=device)
    if attn_implementation not in DENSE_MASK_IMPLEMENTATIONS:
        raise ValueError(
            f"attn_implementation={attn_implementation!r} cannot apply the condensation mask of a packed BTok batch; "
            'use "btok_triton" (fused, no mask), "flex_attention", "sdpa" or "eager" (dense mask)'
        )
    allowed = condensation_mask(layout, device)  # [T, T]
    return torch.where(allowed, 0.0, torch.finfo(dtype).min).to(dtype)[None, None]
