"""The first pass of the authors' formulation: ``[input | BToks]`` with a KV cache, cut to the BToks.

Every ``[input | BToks]`` runs once, left-padded so that every row's K BToks are its last K
columns, with a KV cache of every layer; the cache is then cut to those last K columns, the
BToks' keys and values. A target placed after the BToks under the condensation mask sees
exactly these (and itself), so a second pass against this cache computes what the packed pass
computes on its target rows: :mod:`.twopass` scores training targets that way and
:mod:`.generation` decodes text from it.

Positions come from the model's own functions (a Qwen2-VL / Qwen2.5-VL's ``get_rope_index``,
an image / video running through the vision tower here; ``0, 1, ...`` for a text model), not
from btok's packing, so the packed pass is checked against an independent computation. A
target continues at ``S`` + the model's rope index of the target alone, ``S`` the row's token
count (input + K BToks, its attention mask's sum), as the authors' trainer starts it.

Works with any attention backend that supports padding and a KV cache (``"sdpa"``,
``"eager"``, ``"btok_triton"``).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from itertools import chain
from typing import TYPE_CHECKING

import torch
from transformers import DynamicCache

from .media import MEDIA_BATCH_KEYS, Media, concat_media

if TYPE_CHECKING:  # a BTokModel; its module imports this one, so the annotation names its base class
    from .base import Embedder

__all__ = ["BTokCache", "btok_cache", "cache_kwarg", "media_inputs", "model_positions", "pad_rows"]


@dataclass
class BTokCache:
    """The first pass of N ``[input | BToks]`` rows.

    Attributes:
        btok_states: ``[N, K, H]`` last-layer states of every row's BToks (the model's dtype).
        cache: a ``DynamicCache`` holding, per layer, only the BToks' keys and values of the
            kept rows: ``[N', Hkv, K, D]``.
        btok_positions: int64 ``[N', K]`` (``[3, N', K]`` for M-RoPE): the kept rows' BTok
            positions in the first pass.
        token_counts: int64 ``[N']``: ``S`` of each kept row, the tokens of its ``[input |
            BToks]``; a target's positions start there.
    """

    btok_states: torch.Tensor
    cache: DynamicCache
    btok_positions: torch.Tensor
    token_counts: torch.Tensor


def cache_kwarg(module: torch.nn.Module) -> str:
    """The name ``module.forward`` (and ``generate``) takes a KV cache by: transformers 5.24
    renamed ``past_key_values`` to ``cache`` (the old name warns)."""
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


def pad_rows(rows: list[list[int]], value: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values, mask)`` int64 ``[B, W]``: the rows padded with ``value`` on the left or right."""
    lens = torch.tensor([len(r) for r in rows])
    width = int(lens.max())
    cols = torch.arange(width)[None]
    mask = cols >= (width - lens)[:, None] if left else cols < lens[:, None]
    out = torch.full((len(rows), width), value, dtype=torch.long)
    out[mask] = torch.tensor(list(chain.from_iterable(rows)), dtype=torch.long)
    return out, mask.long()


def model_positions(inner, ids: torch.Tensor, mask: torch.Tensor, media: list) -> torch.Tensor:
    """Positions of padded rows from the model's own function: a VL model's
    ``get_rope_index`` (``[3, B, W]``), else ``0, 1, ...`` over each row's tokens (``[B, W]``).

    Args:
        inner: the model without its LM head (a Qwen2-VL ``Qwen2VLModel`` has the rope index).
        ids, mask: int64 ``[B, W]`` padded ids and their attention mask.
        media: B processed images / videos (None entries: text only).
    """
    text = (mask.cumsum(-1) - 1).clamp_min(0)
    if not hasattr(inner, "get_rope_index"):
        return text
    config = inner.config
    # The model's token types (0 text, 1 image, 2 video), as its processor returns them.
    types = (ids == config.image_token_id).long() + 2 * (ids == config.video_token_id).long()
    grids = concat_media(media, ("image_grid_thw", "video_grid_thw", "second_per_grid_ts"))
    kwargs = {key: grids.get(key) for key in ("image_grid_thw", "video_grid_thw")}
    if "second_per_grid_ts" in inspect.signature(inner.get_rope_index).parameters:
        kwargs["second_per_grid_ts"] = grids.get("second_per_grid_ts")
    return inner.get_rope_index(ids * mask, types * mask, attention_mask=mask, **kwargs)[0]


def media_inputs(media: list[Media | None], device: torch.device) -> dict[str, torch.Tensor]:
    """The pixel inputs (:data:`~.media.MEDIA_BATCH_KEYS`) of these media, on ``device``."""
    return {key: value.to(device) for key, value in concat_media(media, MEDIA_BATCH_KEYS).items()}


def btok_cache(
    model: Embedder,
    inputs: list[list[int]],
    media: list[Media | None] | None = None,
    keep: list[int] | None = None,
) -> BTokCache:
    """Run ``[input | BToks]`` rows once and keep only the BToks' keys and values.

    Gradients flow as the caller's grad mode allows (the two-pass reference trains through it).

    Args:
        model: the BTok model (its backbone's attention implementation is used as it is).
        inputs: N input id lists (no BToks; vision placeholders expanded).
        media: N processed images / videos of the inputs (None entries: text), or None.
        keep: the rows whose BTok keys / values, positions and token counts to keep (in this
            order), or None for all.

    Returns:
        the :class:`BTokCache`.
    """
    k, device = model.config.num_btoks, model.device
    decoder = model.decoder
    media = media or [None] * len(inputs)
    ids, mask = pad_rows([x + model.btok_token_ids for x in inputs], model.collator.pad_id, left=True)
    positions = model_positions(decoder, ids, mask, media)
    cache = DynamicCache()
    out = decoder(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        position_ids=positions.to(device),
        use_cache=True,
        **media_inputs(media, device),
        **{cache_kwarg(decoder): cache},
    )
    rows = torch.arange(len(inputs)) if keep is None else torch.tensor(keep, dtype=torch.long)
    select = rows.to(device)
    kept = DynamicCache()
    for layer, entry in enumerate(cache.layers):
        kept.update(entry.keys[select, :, -k:], entry.values[select, :, -k:], layer)
    return BTokCache(
        btok_states=out.last_hidden_state[:, -k:].clone(),  # a copy: the [N, W, H] states can go
        cache=kept,
        btok_positions=positions[..., rows, -k:],
        token_counts=mask[rows].sum(1),
    )
