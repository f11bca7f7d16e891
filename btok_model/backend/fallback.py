"""Exact fallbacks through ``torch.nn.functional.scaled_dot_product_attention``.

The condensation kernel computes square self-attention (queries and keys are the same
tokens) on packed sequences, causal or bidirectional. Calls with fewer queries than keys
are outside that and go through SDPA with an explicit boolean mask instead; they are rare
or cheap in BTok work:

* KV-cache decoding (``generate``): causal, aligned bottom-right (the queries are the last
  ``Sq`` of the ``Sk`` keys)::

      Sq = 2, Sk = 5:   keys  0 1 2 3 4
                query 0:      x x x x .
                query 1:      x x x x x

* non-square non-causal calls: every query sees every real key.

Each kind logs once per process at DEBUG level on the ``"btok_model"`` logger when it
first runs.
"""

from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F

__all__ = ["bidirectional_attention", "decode_attention"]

logger = logging.getLogger("btok_model")


@functools.cache
def _log_once(kind: str) -> None:
    logger.debug(
        'attn_implementation="btok_triton": %s runs through the exact SDPA fallback with a dense mask '
        "(the kernel computes square self-attention only); logged once per process",
        kind,
    )


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
    _log_once("KV-cache decoding (fewer queries than keys)")
    q_len, k_len = query.shape[2], key.shape[2]
    rows = torch.arange(q_len, device=query.device)[:, None] + (k_len - q_len)
    allowed = (torch.arange(k_len, device=query.device)[None, :] <= rows)[None, None]
    if padding_mask is not None:
        allowed = allowed & padding_mask.to(torch.bool)[:, None, None, :]
    return _sdpa(query, key, value, allowed, scaling)


def bidirectional_attention(query, key, value, padding_mask, scaling):
    """Non-causal attention of ``Sq`` queries on ``Sk`` keys, over real keys only.

    Args:
        query: ``[B, Hq, Sq, D]``; key, value: ``[B, Hkv, Sk, D]``.
        padding_mask: bool ``[B, Sk]`` or None.
        scaling: softmax scale (None: ``1 / sqrt(D)``).

    Returns:
        ``[B, Sq, Hq, D]``.
    """
    _log_once("a non-causal call with fewer queries than keys")
    allowed = None
    if padding_mask is not None:
        allowed = padding_mask.to(torch.bool)[:, None, None, :]
    return _sdpa(query, key, value, allowed, scaling)
