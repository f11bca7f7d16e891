"""The condensation mask of a packed layout for attention backends other than ``"btok_triton"``.

``"btok_triton"`` reads the :class:`~btok_kernels.CondensationLayout` itself (no mask is
built). The peers need it spelled out: ``"eager"`` and ``"sdpa"`` get a dense additive
``[1, 1, T, T]`` mask (O(T^2) memory, exact, for comparisons and benchmarks) and
``"flex_attention"`` a ``BlockMask``. transformers passes a 4D mask or a ``BlockMask`` to the
attention function as it is. The mask itself is :mod:`btok_kernels.mask`'s definition.
"""

from __future__ import annotations

import torch

from btok_kernels import CondensationLayout
from btok_kernels.mask import allowed_pairs, condensation_mask

__all__ = ["DENSE_MASK_IMPLEMENTATIONS", "condensation_attention_mask", "condensation_mask_mod"]

DENSE_MASK_IMPLEMENTATIONS = ("eager", "sdpa")


def condensation_mask_mod(layout: CondensationLayout, device):
    """The flex-attention ``mask_mod(batch, head, i, j) -> bool`` of a packed layout.

    Same sequence and :func:`btok_kernels.mask.allowed_pairs` on the positions relative to
    the sequence start. It broadcasts: index tensors ``i [T, 1]`` and ``j [1, T]`` give the
    dense ``[T, T]`` mask.
    """
    lens = torch.tensor(layout.seqlens, dtype=torch.long)
    seq = torch.repeat_interleave(torch.arange(lens.numel()), lens)  # [T] sequence of each token
    starts = torch.tensor(layout.host_cu_seqlens[:-1], dtype=torch.long)
    pos = torch.arange(layout.total_tokens) - starts[seq]  # [T] position in its sequence
    b = torch.tensor(layout.host_btok_start, dtype=torch.long)[seq]
    t = torch.tensor(layout.host_target_start, dtype=torch.long)[seq]
    seq, pos, b, t = (x.to(device) for x in (seq, pos, b, t))
    causal = getattr(layout, "causal", True)

    def mask_mod(batch, head, i, j):
        return (seq[i] == seq[j]) & allowed_pairs(pos[i], pos[j], b[i], t[i], causal)

    return mask_mod


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
