"""``attn_implementation="btok_triton"``: the transformers attention function.

It keeps ``sdpa_attention_forward``'s signature and return shape, and turns each call into a
packed layout for the condensation kernel: ``btok_layout=`` in the forward kwargs (a BTok
batch's mask; causal modules only), a 2D padding mask (``[pad | tokens | pad]`` segments, or
unpadded and scattered back: ``btok_padding_mode``), ``cu_seq_lens_q/k``, packed
``position_ids`` (honoured with or without a KV cache, as ``"flash_attention_2"`` does), or none
(causal varlen, or a bidirectional layout for a non-causal module such as a vision tower). Calls
the kernel cannot compute (KV-cache decoding, a non-square non-causal call) go to an exact SDPA
fallback, logged once at DEBUG level; features it cannot compute exactly raise
:class:`~btok_model.UnsupportedModelFeatureError`. The kernel runs with the model's
:class:`~btok_model.backend.kernel_settings.KernelSettings`, read from the calling module's
``config``. The cases one by one: docs/kernel.md ("transformers backend"); the design: docs/design.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from btok_kernels import CondensationLayout, condensation_attention

from .boundaries import (
    cu_seqlens_layout,
    memoized,
    padding_layout,
    padding_mode,
    position_ids_layout,
    rows_layout,
)
from .errors import UnsupportedModelFeatureError
from .fallback import bidirectional_attention, decode_attention
from .kernel_settings import KernelSettings, kernel_settings

__all__ = ["btok_attention_forward"]

_USE_INSTEAD = 'Use attn_implementation="sdpa" or "eager" for this model.'


def _unsupported(feature: str) -> UnsupportedModelFeatureError:
    return UnsupportedModelFeatureError(f'attn_implementation="btok_triton" does not support {feature}. {_USE_INSTEAD}')


def _check_features(module, attention_mask, dropout, softcap, kwargs) -> None:
    """Refuse what the kernel cannot compute exactly, naming the model feature."""
    if dropout:
        raise _unsupported(
            f"attention dropout (dropout={dropout} while training{_model_name(module)}); set the config's "
            "attention_dropout to 0.0"
        )
    if softcap is not None:
        raise _unsupported(f"attention logit softcapping (softcap={softcap}{_model_name(module)})")
    if kwargs.get("s_aux") is not None:
        raise _unsupported(f"attention sinks (s_aux{_model_name(module)})")
    if kwargs.get("position_bias") is not None:
        raise _unsupported(f"a relative position bias (position_bias{_model_name(module)})")
    if attention_mask is not None and (not isinstance(attention_mask, torch.Tensor) or attention_mask.dim() != 2):
        shape = tuple(attention_mask.shape) if hasattr(attention_mask, "shape") else type(attention_mask).__name__
        raise _unsupported(
            f"a custom 4D attention mask (got {shape}); pass a 2D padding mask [batch, seq], packed "
            "position_ids, or btok_layout= for the condensation mask"
        )


def _model_name(module) -> str:
    config = getattr(module, "config", None)
    model_type = getattr(config, "model_type", None)
    return f", model_type={model_type!r}" if model_type else ""


def _check_sliding_window(sliding_window: int | None, longest_span: int) -> None:
    """A window at least as long as every sequence never cuts: exact, so allowed."""
    if sliding_window is not None and longest_span > sliding_window:
        raise _unsupported(
            f"sliding-window attention (sliding_window={sliding_window}) on sequences longer than the window "
            f"(longest: {longest_span} tokens)"
        )


def _packed_layout(
    query, attention_mask, btok_layout, position_ids, cu_seq_lens_q, cu_seq_lens_k, pad_mode, causal: bool
):
    """Layout of the ``B * S`` flattened tokens of a square call, and the unpad index or None.

    Non-causal calls get bidirectional layouts and ignore ``btok_layout`` (meant for the
    text model) and ``position_ids`` (``"sdpa"`` does not pack bidirectional attention).
    """
    batch_size, _, seq_len, _ = query.shape
    if btok_layout is not None and causal:
        return _check_btok_layout(btok_layout, query, attention_mask).to(query.device), None
    if attention_mask is not None:
        mode = padding_mode(pad_mode)
        return memoized(attention_mask, ("mask", mode, causal), lambda: padding_layout(attention_mask, mode, causal))
    if cu_seq_lens_q is not None:
        if batch_size != 1:
            raise ValueError(f"btok_triton: cu_seq_lens_q needs a packed batch of size 1, got batch size {batch_size}")
        return memoized(
            cu_seq_lens_q,
            ("cu", id(cu_seq_lens_k), causal),
            lambda: (cu_seqlens_layout(cu_seq_lens_q, cu_seq_lens_k, causal), None),
        )
    if causal and position_ids is not None and position_ids.dim() <= 2 and seq_len > 1:
        return memoized(
            position_ids, ("pos", batch_size), lambda: (position_ids_layout(position_ids, batch_size), None)
        )
    return rows_layout(batch_size, seq_len, query.device, causal), None


def _check_btok_layout(layout, query, attention_mask) -> CondensationLayout:
    if not isinstance(layout, CondensationLayout):
        raise TypeError(f"btok_layout must be a btok_kernels.CondensationLayout, got {type(layout).__name__}")
    batch_size, _, seq_len, _ = query.shape
    if batch_size != 1 or layout.total_tokens != seq_len:
        raise ValueError(
            f"btok_layout packs {layout.total_tokens} tokens into one row: input_ids must have shape "
            f"[1, {layout.total_tokens}], got a batch of shape [{batch_size}, {seq_len}]"
        )
    if attention_mask is not None:
        raise ValueError("btok_layout describes a packed batch without padding: do not pass a padding attention_mask")
    return layout


def _square(query, key, value, scaling, layout, index, settings: KernelSettings):
    """Condensation kernel on the flattened ``[B, S]`` tokens; returns ``[B, S, Hq, D]``."""
    batch_size, num_heads, seq_len, head_dim = query.shape
    q, k, v = (x.transpose(1, 2).reshape(batch_size * seq_len, x.shape[1], x.shape[3]) for x in (query, key, value))
    if index is not None:
        q, k, v = q[index], k[index], v[index]
    out = condensation_attention(
        q,
        k,
        v,
        layout,
        softmax_scale=scaling,
        backend=settings.backend or "auto",
        fused_dq=settings.fused_dq,
        autotune=settings.autotune,
    )
    if index is not None:
        out = out.new_zeros(batch_size * seq_len, num_heads, head_dim).index_copy(0, index, out)
    return out.view(batch_size, seq_len, num_heads, head_dim)


def btok_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    btok_layout: CondensationLayout | None = None,
    position_ids: torch.Tensor | None = None,
    cu_seq_lens_q: torch.Tensor | None = None,
    cu_seq_lens_k: torch.Tensor | None = None,
    btok_padding_mode: str | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Attention for ``attn_implementation="btok_triton"`` (same contract as ``"sdpa"``).

    Args:
        module: the calling attention module (``is_causal`` and ``config`` are read: the
            config carries the model's :class:`~btok_model.backend.kernel_settings.KernelSettings`).
        query: ``[B, Hq, Sq, D]``; key, value: ``[B, Hkv, Sk, D]`` (``Hq % Hkv == 0``;
            a smaller value head dim is zero-padded and the output cropped).
        attention_mask: None, or the bool ``[B, L]`` padding mask from
            :func:`btok_model.backend.mask_interface.btok_mask`. A 4D mask is refused.
        dropout: must be 0 (attention dropout is refused).
        scaling: softmax scale (None: ``1 / sqrt(D)``).
        is_causal: overrides ``module.is_causal``.
        sliding_window: allowed only when no sequence is longer than the window.
        softcap: must be None (logit softcapping is refused).
        btok_layout: :class:`~btok_kernels.CondensationLayout` of a packed ``[1, T]``
            batch: applies the condensation mask (or, if bidirectional, no mask inside each
            sequence). Ignored by non-causal modules (a vision tower sees the forward
            kwargs too); refused with padding or a KV cache.
        position_ids: ``[B or 1, S]``; positions that do not grow by 1 (e.g. restart at 0)
            start a new packed sequence, as with ``"sdpa"``. Used only without a mask.
        cu_seq_lens_q, cu_seq_lens_k: int ``[n + 1]`` packed boundaries (padding-free path,
            and the varlen vision towers of models that call attention flash-style).
        btok_padding_mode: how a 2D padding mask is run: "segments" (the padded rows as
            ``[pad | tokens | pad]`` sequences, nothing gathered), "unpad" (gather the real
            tokens, scatter the output back) or "auto" (segments unless the pad rows add more
            than a quarter of the real attention pairs, or a row has holes). Pass it to the
            model's forward like ``btok_layout``; None: the model's kernel settings, else the
            environment variable ``BTOK_PADDING_MODE``, else "auto". Exact either way; it only
            changes speed.

    Returns:
        ``(attn_output [B, Sq, Hq, Dv], None)``: no attention weights, as with ``"sdpa"``.
    """
    _check_features(module, attention_mask, dropout, softcap, kwargs)
    if torch.is_autocast_enabled(query.device.type):
        # Under autocast RoPE leaves q and k in fp32 beside a half-precision v: compute in the
        # autocast dtype, as SDPA does.
        dtype = torch.get_autocast_dtype(query.device.type)
        query, key, value = query.to(dtype), key.to(dtype), value.to(dtype)
    v_head_dim = value.shape[-1]
    if v_head_dim != query.shape[-1]:
        if v_head_dim > query.shape[-1]:
            raise _unsupported(f"a value head dim ({v_head_dim}) larger than the query head dim ({query.shape[-1]})")
        value = F.pad(value, (0, query.shape[-1] - v_head_dim))
    is_causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    if attention_mask is not None and attention_mask.shape[-1] < key.shape[2]:
        # Static cache: the slots past the mask are not written yet. Dropping them makes a
        # static-cache prefill square again, so it runs on the kernel.
        key, value = key[:, :, : attention_mask.shape[-1]], value[:, :, : attention_mask.shape[-1]]
    q_len, k_len = query.shape[2], key.shape[2]

    if q_len != k_len:
        _check_sliding_window(sliding_window, k_len)
        if not is_causal:
            if cu_seq_lens_q is not None:
                raise ValueError(
                    f"btok_triton: cu_seq_lens_q with {q_len} queries and {k_len} keys; packed boundaries need "
                    "self-attention (as many queries as keys)"
                )
            out = bidirectional_attention(query, key, value, attention_mask, scaling)
        else:
            if btok_layout is not None:
                raise ValueError("btok_layout does not apply to KV-cache decoding (fewer queries than keys)")
            out = decode_attention(query, key, value, attention_mask, scaling)
    else:
        settings = kernel_settings(module)
        layout, index = _packed_layout(
            query,
            attention_mask,
            btok_layout,
            position_ids,
            cu_seq_lens_q,
            cu_seq_lens_k,
            btok_padding_mode if btok_padding_mode is not None else settings.padding_mode,
            is_causal,
        )
        # Unpadded rows with holes are shorter than their span in the padded row, which is
        # what a sliding window measures.
        _check_sliding_window(sliding_window, q_len if index is not None else layout.max_seqlen)
        out = _square(query, key, value, scaling, layout, index, settings)
    return out[..., :v_head_dim], None
