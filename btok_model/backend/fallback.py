"""Exact fallbacks through ``torch.nn.functional.scaled_dot_product_attention``.

The condensation kernel computes square (queries and keys are the same tokens) causal
attention on packed sequences. Two kinds of call are outside that and go through SDPA
with an explicit boolean mask instead; both are rare or cheap in BTok work:

* KV-cache decoding (``generate``): fewer queries than keys; causal is aligned
  bottom-right (the queries are the last ``Sq`` of the ``Sk`` keys)::

      Sq = 2, Sk = 5:   keys  0 1 2 3 4
                query 0:      x x x x .
                query 1:      x x x x x

* non-causal calls (``module.is_causal`` False, e.g. vision towers): every query sees
  every real key of its own sequence.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["bidirectional_attention", "decode_attention"]


def _sdpa(query, key, value, allowed, scaling):
    """SDPA on ``[B, H, S, D]`` tensors with a bool mask ``[B or 1, 1, Sq, Sk]`` (or None).

    Rows with no allowed key (only pad rows) are opened to every key so that they stay
    finite; their output is meaningless, as with ``"sdpa"``. Returns ``[B, Sq, Hq, D]``.
    """
    if allowed is not None:
        allowed = allowed | ~allowed.any(-1, keepdim=True)
    gqa = query.shape[1] != key.shape[1]
    out = F.scaled_dot_product_attention(query, key, value, attn_mask=allowed, scale=scaling, enable_gqa=gqa)
    return out.transpose(1, 2)


def decode_attention(query, key, value, padding_mask, scaling):
    """Causal attention of ``Sq`` new queries on ``Sk >= Sq`` cached keys, bottom-right aligned.

    Args:
        query: ``[B, Hq, Sq, D]``; key, value: ``[B, Hkv, Sk, D]``.
        padding_mask: bool ``[B, Sk]`` (True = real token) or None.
        scaling: softmax scale (None: ``1 / sqrt(D)``).

    Returns:
        ``[B, Sq, Hq, D]``.
    """
    q_len, k_len = query.shape[2], key.shape[2]
    rows = torch.arange(q_len, device=query.device)[:, None] + (k_len - q_len)
    allowed = (torch.arange(k_len, device=query.device)[None, :] <= rows)[None, None]
    if padding_mask is not None:
        allowed = allowed & padding_mask.to(torch.bool)[:, None, None, :]
    return _sdpa(query, key, value, allowed, scaling)


def bidirectional_attention(query, key, value, padding_mask, cu_seqlens, scaling):
    """Non-causal attention, within each packed sequence and over real keys only.

    Args:
        query: ``[B, Hq, Sq, D]``; key, value: ``[B, Hkv, Sk, D]``.
        padding_mask: bool ``[B, Sk]`` or None.
        cu_seqlens: int ``[n + 1]`` boundaries of sequences packed along the single row of a
            ``B = 1``, ``Sq = Sk`` batch (transformers' ``cu_seq_lens_q``), or None.
        scaling: softmax scale (None: ``1 / sqrt(D)``).

    Returns:
        ``[B, Sq, Hq, D]``.
    """
    allowed = None
    if padding_mask is not None:
        allowed = padding_mask.to(torch.bool)[:, None, None, :]
    if cu_seqlens is not None:
        pos = torch.arange(key.shape[2], device=query.device)
        seq = torch.searchsorted(cu_seqlens.to(device=query.device, dtype=torch.long), pos, right=True)
        same = (seq[:, None] == seq[None, :])[None, None]
        allowed = same if allowed is None else allowed & same
    return _sdpa(query, key, value, allowed, scaling)
