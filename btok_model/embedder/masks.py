"""The condensation mask of a packed layout for attention backends other than ``"btok_triton"``.

``"btok_triton"`` reads the :class:`~btok_kernels.CondensationLayout` itself (no mask is
built). The peers need it spelled out: ``"eager"`` and ``"sdpa"`` get a dense additive
``[1, 1, T, T]`` mask (O(T^2) memory, exact, for comparisons and benchmarks) and
``"flex_attention"`` a ``BlockMask``. transformers passes a 4D mask or a ``BlockMask`` to the
attention function as it is.
"""

from __future__ import annotations

import torch

from btok_kernels import CondensationLayout

__all__ = ["DENSE_MASK_IMPLEMENTATIONS", "condensation_attention_mask", "token_segments"]

DENSE_MASK_IMPLEMENTATIONS = ("eager", "sdpa")


def token_segments(layout: CondensationLayout, device) -> tuple[torch.Tensor, ...]:
    """Per token: ``(sequence id, position in its sequence, b, t)`` of its sequence, int64 ``[T]``."""
    lens = torch.tensor(layout.seqlens, dtype=torch.long)
    seq = torch.repeat_interleave(torch.arange(lens.numel()), lens)
    starts = torch.tensor(layout.host_cu_seqlens[:-1], dtype=torch.long)
    pos = torch.arange(layout.total_tokens) - starts[seq]
    b = torch.tensor(layout.host_btok_start, dtype=torch.long)[seq]
    t = torch.tensor(layout.host_target_start, dtype=torch.long)[seq]
    return tuple(x.to(device) for x in (seq, pos, b, t))


def condensation_attention_mask(
    layout: CondensationLayout, attn_implementation: str, dtype: torch.dtype, device
) -> torch.Tensor:
    """The mask of ``layout`` as ``attn_implementation`` takes it as ``attention_mask``.

    ``allowed(i, j) = same sequence and j <= i and not (i >= t and j < b)``.

    Args:
        layout: the packed ``[1, T]`` batch.
        attn_implementation: ``"eager"``, ``"sdpa"`` or ``"flex_attention"``.
        dtype: the model's compute dtype (the additive mask's dtype).
        device: where the mask lives.

    Returns:
        additive ``[1, 1, T, T]`` tensor of ``dtype`` (0 allowed, dtype min masked), or a
        flex ``BlockMask`` for ``"flex_attention"``.
    """
    seq, pos, b, t = token_segments(layout, device)
    if attn_implementation == "flex_attention":
        from torch.nn.attention.flex_attention import create_block_mask

        def mask_mod(batch, head, i, j):
            return (seq[i] == seq[j]) & (pos[j] <= pos[i]) & ~((pos[i] >= t[i]) & (pos[j] < b[i]))

        total = layout.total_tokens
        return create_block_mask(mask_mod, 1, None, total, total, device=device)
    if attn_implementation not in DENSE_MASK_IMPLEMENTATIONS:
        raise ValueError(
            f"attn_implementation={attn_implementation!r} cannot apply the condensation mask of a packed BTok batch; "
            'use "btok_triton" (fused, no mask), "flex_attention", "sdpa" or "eager" (dense mask)'
        )
    row, col = (slice(None), None), (None, slice(None))
    allowed = (
        (seq[row] == seq[col])
        & (pos[col] <= pos[row])
        & ~((pos[row] >= t[row]) & (pos[col] < b[row]))
    )  # [T, T]
    return torch.where(allowed, 0.0, torch.finfo(dtype).min).to(dtype)[None, None]
