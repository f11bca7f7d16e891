"""The condensation mask as a dense boolean tensor, for small cases, peers and plots.

The kernels never build it: they derive the same pattern tile by tile from the layout's
integers. This module is the package's one written-out definition of the mask; use it
wherever a dense mask is needed (dense-mask peers, plots, small checks). Memory is
``O(L^2)``: do not call it on long packs.

Per sequence, with positions ``i`` (row) and ``j`` (key) relative to its start,
``b`` its BTok start and ``t`` its target start::

    causal:         allowed(i, j) = (j <= i) and not (i >= t and j < b)
    bidirectional:  allowed(i, j) = True  (every key of the sequence; b = 0, t = len)
"""

from __future__ import annotations

import torch

__all__ = ["allowed_pairs", "condensation_mask", "condensation_mask_mod", "sequence_mask"]


def allowed_pairs(
    rows: torch.Tensor, keys: torch.Tensor, btok_start: int, target_start: int, causal: bool = True
) -> torch.Tensor:
    """The mask on index tensors that broadcast against each other.

    Args:
        rows: integer row positions relative to the sequence start, e.g. ``[R, 1]``.
        keys: integer key positions relative to the sequence start, e.g. ``[1, C]``.
        btok_start, target_start: ``b`` and ``t`` of the sequence.
        causal: False: no ``j <= i`` condition (with ``b = 0`` every pair is allowed).

    Returns:
        bool, the broadcast shape of ``rows`` and ``keys`` (True = attend).
    """
    cut = (rows >= target_start) & (keys < btok_start)
    if not causal:
        return ~cut
    return (keys <= rows) & ~cut


def sequence_mask(
    length: int, btok_start: int, target_start: int, *, causal: bool = True, device: torch.device | str | None = None
) -> torch.Tensor:
    """The mask of one sequence ``[query | BToks | target]``.

    Args:
        length: the sequence length ``L`` (>= 0).
        btok_start: ``b``, the first BTok row (``0 <= b <= t``).
        target_start: ``t``, the first target row (``t <= L``; ``t = L``: no target).
        causal: False for a bidirectional sequence (every row attends every key).
        device: where the mask is built (default: CPU).

    Returns:
        bool ``[L, L]``, True where row ``i`` may attend key ``j``.
    """
    for name, x in (("length", length), ("btok_start", btok_start), ("target_start", target_start)):
        if isinstance(x, bool) or not isinstance(x, int):
            raise ValueError(f"{name} must be an int, got {type(x).__name__}")
    if not 0 <= btok_start <= target_start <= length:
        raise ValueError(
            f"need 0 <= btok_start <= target_start <= length, got btok_start={btok_start}, "
            f"target_start={target_start}, length={length}"
        )
    pos = torch.arange(length, device=device)
    return allowed_pairs(pos[:, None], pos[None, :], btok_start, target_start, causal)


def condensation_mask(layout, device: torch.device | str | None = None) -> torch.Tensor:
    """The mask of a whole packed batch: block-diagonal over its sequences.

    Args:
        layout: a :class:`~btok_kernels.CondensationLayout` (causal or bidirectional).
        device: where the mask is built (default: the layout's device).

    Returns:
        bool ``[T, T]`` with ``T = layout.total_tokens``, True where packed row ``r`` may
        attend packed key ``c`` (never across sequences).
    """
    device = layout.device if device is None else torch.device(device)
    total = layout.total_tokens
    mask = torch.zeros(total, total, dtype=torch.bool, device=device)
    cu = layout.host_cu_seqlens
    causal = layout.is_causal
    for s, (b, t) in enumerate(zip(layout.host_btok_start, layout.host_target_start)):
        start, end = cu[s], cu[s + 1]
        mask[start:end, start:end] = sequence_mask(end - start, b, t, causal=causal, device=device)
    return mask


def condensation_mask_mod(layout, device: torch.device | str | None = None):
    """FlexAttention's ``mask_mod(batch, head, i, j) -> bool`` of a packed layout.

    Same sequence and :func:`allowed_pairs` on the positions relative to the sequence start,
    causal or bidirectional as the layout says (``layout.is_causal``). It broadcasts: index
    tensors ``i [T, 1]`` and ``j [1, T]`` give :func:`condensation_mask`'s ``[T, T]``.

    Args:
        layout: a :class:`~btok_kernels.CondensationLayout` of a ``[1, T]`` pack.
        device: where the per-token tables live (default: the layout's device); built from
            the layout's host integers, so nothing waits for the GPU.

    Returns:
        ``mask_mod(batch, head, i, j)``: ``batch`` and ``head`` are ignored, ``i`` / ``j``
        integer packed row / key indices; bool of their broadcast shape (True = attend).
    """
    device = layout.device if device is None else torch.device(device)
    lens = torch.tensor(layout.seqlens, dtype=torch.long)
    seq = torch.repeat_interleave(torch.arange(lens.numel()), lens)  # [T] sequence of each token
    starts = torch.tensor(layout.host_cu_seqlens[:-1], dtype=torch.long)
    pos = torch.arange(layout.total_tokens) - starts[seq]  # [T] position in its sequence
    b = torch.tensor(layout.host_btok_start, dtype=torch.long)[seq]
    t = torch.tensor(layout.host_target_start, dtype=torch.long)[seq]
    seq, pos, b, t = (x.to(device) for x in (seq, pos, b, t))
    causal = layout.is_causal

    def mask_mod(batch, head, i, j):
        return (seq[i] == seq[j]) & allowed_pairs(pos[i], pos[j], b[i], t[i], causal)

    return mask_mod
