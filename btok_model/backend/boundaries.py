"""Packed-varlen layouts for the ways transformers describes sequence boundaries.

Every function here turns one description (a 2D padding mask, packed ``position_ids``,
``cu_seq_lens``) of a ``[B, S]`` batch into a :class:`~btok_kernels.CondensationLayout`
over the ``B * S`` flattened tokens, with plain causal attention inside each sequence, or
bidirectional attention (``causal=False``: non-causal modules such as vision towers).
Each costs one host synchronisation (the layout keeps its integers on the host).
"""

from __future__ import annotations

import functools
import os
import weakref
from collections import OrderedDict
from collections.abc import Callable

import torch

from btok_kernels import CondensationLayout

__all__ = [
    "PADDING_MODES",
    "cu_seqlens_layout",
    "memoized",
    "padding_layout",
    "padding_mode",
    "position_ids_layout",
    "rows_layout",
]


def _varlen(cu: list[int], device: torch.device, causal: bool) -> CondensationLayout:
    build = CondensationLayout.causal if causal else CondensationLayout.bidirectional
    return build(cu, device=device)


@functools.lru_cache(maxsize=16)
def rows_layout(batch_size: int, seq_len: int, device: torch.device, causal: bool = True) -> CondensationLayout:
    """Each of the ``batch_size`` rows is one sequence of ``seq_len`` tokens (cached per shape).

    Built outside inference mode: a layout first built under ``torch.inference_mode`` (an
    ``encode()``) would hold inference tensors, which a later training step on the same shape
    cannot save for its backward.
    """
    with torch.inference_mode(False):
        return _varlen([r * seq_len for r in range(batch_size + 1)], device, causal)


_MEMO: OrderedDict[int, tuple] = OrderedDict()
_MEMO_SIZE = 8


def memoized(source: torch.Tensor, key: tuple, build: Callable[[], tuple]) -> tuple:
    """``build()``, reused while ``source`` is the same, unmodified tensor and ``key`` matches.

    A model passes the same mask / position_ids tensor to every layer of one forward: the
    layout (and its host synchronisation) is then built once per forward, not per layer.
    Identity is checked through a weak reference, in-place edits through the version counter.
    """
    # Inference tensors have no version counter; under torch.compile the graph is rebuilt anyway.
    if source.is_inference() or torch.compiler.is_compiling():
        return build()
    entry = _MEMO.get(id(source))
    if entry is not None and entry[0]() is source and entry[1] == source._version and entry[2] == key:
        return entry[3]
    result = build()
    _MEMO[id(source)] = (weakref.ref(source), source._version, key, result)
    _MEMO.move_to_end(id(source))
    while len(_MEMO) > _MEMO_SIZE:
        _MEMO.popitem(last=False)
    return result


PADDING_MODES = ("auto", "segments", "unpad")
# "auto" keeps the padded tensors (no gather/scatter) while the pad rows add at most this
# fraction of the attention pairs the real tokens need; beyond it, unpadding is cheaper.
MAX_PAD_PAIR_FRACTION = 0.25


def padding_mode(mode: str | None = None) -> str:
    """The padding mode: ``mode`` if given (the ``btok_padding_mode=`` forward kwarg), else the
    environment variable ``BTOK_PADDING_MODE``, else "auto"."""
    if mode is not None:
        if mode not in PADDING_MODES:
            raise ValueError(f"btok_padding_mode must be one of {PADDING_MODES}, got {mode!r}")
        return mode
    mode = os.environ.get("BTOK_PADDING_MODE", "").strip() or "auto"
    if mode not in PADDING_MODES:
        raise ValueError(f"environment variable BTOK_PADDING_MODE must be one of {PADDING_MODES}, got {mode!r}")
    return mode


def padding_layout(
    mask: torch.Tensor, mode: str = "auto", causal: bool = True
) -> tuple[CondensationLayout, torch.Tensor | None]:
    """Layout of a padded batch from its 2D padding mask.

    Args:
        mask: bool ``[B, S]``, True for real tokens (left, right or both-sided padding).
        mode: ``"segments"``, ``"unpad"`` or ``"auto"`` (segments unless the pad rows would
            add more than ``MAX_PAD_PAIR_FRACTION`` of the real attention pairs).
        causal: False: each row's real tokens attend all real tokens of the row.

    Returns:
        ``(layout, index)``. Segments mode (possible when the real tokens of every row are
        contiguous, which is what a tokenizer produces): ``index`` is None and the layout
        covers all ``B * S`` tokens, each row split into up to three sequences
        ``[left pad | tokens | right pad]``, so real tokens attend exactly the real tokens
        before them (all of them when not ``causal``) and nothing is gathered; pad rows
        get finite, meaningless outputs, as with ``"sdpa"``. Unpad mode (always used when
        a row has holes): ``index`` is the int64 ``[T]`` flat position of each real token
        and the layout covers only those.
    """
    mask = mask.to(torch.bool)
    seq_len = mask.shape[1]
    pos = torch.arange(seq_len, device=mask.device)
    count = mask.sum(1)
    first = torch.where(mask, pos, seq_len).amin(1)
    last = torch.where(mask, pos, -1).amax(1)
    contiguous = (count == 0) | (last - first + 1 == count)
    counts, firsts, ok = torch.stack([count, first, contiguous.long()]).tolist()
    if all(ok) and mode != "unpad":
        lefts = [left if n else seq_len for n, left in zip(counts, firsts)]
        pad_pairs = _pad_pairs(counts, lefts, seq_len, causal)
        if mode == "segments" or pad_pairs <= MAX_PAD_PAIR_FRACTION * _pairs(counts, causal):
            cu = [0]
            for r, (n, left) in enumerate(zip(counts, lefts)):
                base = r * seq_len
                cu += [base + left, base + left + n, base + seq_len]
            return _varlen(cu, mask.device, causal), None
    cu = [0]
    for n in counts:
        cu.append(cu[-1] + n)
    index = mask.reshape(-1).nonzero().squeeze(1)
    return _varlen(cu, mask.device, causal), index


def _pairs(lengths, causal: bool) -> int:
    return sum(n * (n + 1) // 2 if causal else n * n for n in lengths)


def _pad_pairs(counts, lefts, seq_len, causal: bool) -> int:
    return _pairs(lefts, causal) + _pairs((seq_len - left - n for n, left in zip(counts, lefts)), causal)


def position_ids_layout(position_ids: torch.Tensor, batch_size: int) -> CondensationLayout:
    """Layout of a batch whose rows may pack several sequences, found from ``position_ids``.

    Same rule as ``"sdpa"`` (``transformers.masking_utils.find_packed_sequence_indices``):
    a new sequence starts at every row start and wherever the position does not grow by
    exactly 1 (e.g. restarts at 0).

    Args:
        position_ids: int ``[B, S]`` or ``[1, S]`` (broadcast over the batch) or ``[S]``.
        batch_size: ``B``.
    """
    if position_ids.dim() == 1:
        position_ids = position_ids[None]
    position_ids = position_ids.expand(batch_size, -1)
    seq_len = position_ids.shape[1]
    starts = torch.ones_like(position_ids, dtype=torch.bool)
    starts[:, 1:] = position_ids.diff(dim=1) != 1
    cu = starts.reshape(-1).nonzero().squeeze(1).tolist() + [batch_size * seq_len]
    return CondensationLayout.causal(cu, device=position_ids.device)


def cu_seqlens_layout(
    cu_seq_lens_q: torch.Tensor, cu_seq_lens_k: torch.Tensor | None, causal: bool = True
) -> CondensationLayout:
    """Layout from the ``cu_seq_lens_q/k`` kwargs of transformers' padding-free path.

    Args:
        cu_seq_lens_q, cu_seq_lens_k: int ``[n + 1]``; self-attention needs them equal.
        causal: False for a non-causal module (each sequence attends all of itself).
    """
    cu_q = [int(x) for x in cu_seq_lens_q.tolist()]
    same_k = cu_seq_lens_k is None or cu_seq_lens_k is cu_seq_lens_q
    if not same_k and [int(x) for x in cu_seq_lens_k.tolist()] != cu_q:
        raise ValueError(
            "btok_triton: cu_seq_lens_q and cu_seq_lens_k differ; packed self-attention needs the same "
            "sequence boundaries for queries and keys"
        )
    return _varlen(cu_q, cu_seq_lens_q.device, causal)
