"""The authors' two-pass formulation of the condensation objective (reference and benchmark peer).

Instead of one packed pass under the condensation mask, the target sees the query only
through a KV cache that holds the BTok keys/values alone:

* pass 1 runs ``[query | BToks]``, left-padded so that every row's K BToks are its last K
  columns, with a KV cache; the query embeddings pool the last K states (a Qwen2-VL /
  Qwen2.5-VL query's image / video runs through the vision tower here, positions from the
  model's own rope index);
* the cache of every layer is cut to those last K columns (the BTok keys/values);
* pass 2 runs the targets, right-padded, against that cache, with positions continuing
  after the BToks (last BTok position + 1 + j, on every M-RoPE axis), and scores the
  next-token loss.

It works with any attention backend that supports padding and a KV cache (``"sdpa"``,
``"eager"``, ``"btok_triton"``). :class:`~btok_model.BTokModel`'s single pass must give the
same generative loss, gradients and query embeddings (tests/embedder).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from itertools import chain

import torch
from transformers import DynamicCache

from .collate import IGNORE_INDEX
from .losses import next_token_loss
from .modeling import BTokModel, pool_btok_states
from .multimodal import MEDIA_BATCH_KEYS, MultimodalCollator, concat_media

__all__ = ["TwoPassOutput", "two_pass_forward", "two_pass_ids"]


@dataclass
class TwoPassOutput:
    """Attributes:
    query_embeddings: fp32 ``[N, H]``, L2-normalised (differentiable).
    generative_loss: fp32 scalar (mean over scored target tokens) or None without targets.
    num_target_tokens: how many target tokens were scored.
    """

    query_embeddings: torch.Tensor
    generative_loss: torch.Tensor | None
    num_target_tokens: int


def two_pass_forward(model: BTokModel, examples: list[dict]) -> TwoPassOutput:
    """The two-pass loss of training examples, tokenised exactly as :meth:`BTokModel.collate` does."""
    encoded = model.collator.encode_examples(examples)
    return two_pass_ids(
        model,
        [ex.query for ex in encoded],
        [ex.target for ex in encoded],
        [ex.unscored for ex in encoded],
        [ex.query_media for ex in encoded],
    )


def _cache_kwarg(module: torch.nn.Module) -> str:
    """transformers 5.24 renamed ``past_key_values`` to ``cache`` (the old name warns)."""
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


def _left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(ids, mask, positions)`` int64 ``[B, W]``, rows right-aligned, positions 0.. per row."""
    lens = torch.tensor([len(r) for r in rows])
    width = int(lens.max())
    cols = torch.arange(width)[None]
    mask = cols >= (width - lens)[:, None]
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    ids[mask] = torch.tensor(list(chain.from_iterable(rows)), dtype=torch.long)
    return ids, mask.long(), (cols - (width - lens)[:, None]).clamp_min(0)


def _right_pad(rows: list[list[int]], value: int) -> tuple[torch.Tensor, torch.Tensor]:
    lens = torch.tensor([len(r) for r in rows])
    mask = torch.arange(int(lens.max()))[None] < lens[:, None]
    ids = torch.full(mask.shape, value, dtype=torch.long)
    ids[mask] = torch.tensor(list(chain.from_iterable(rows)), dtype=torch.long)
    return ids, mask.long()


def two_pass_ids(
    model: BTokModel,
    queries: list[list[int]],
    targets: list[list[int]],
    unscored: list[int],
    media: list | None = None,
) -> TwoPassOutput:
    """The two-pass forward on token ids.

    Args:
        model: the BTok model (its backbone's attention implementation is used as it is).
        queries: N query id lists (no BToks; vision placeholders expanded).
        targets: N target id lists (prefix + text + suffix; ``[]``: no target).
        unscored: N counts of leading target ids that get no loss.
        media: N processed images / videos of the queries (None entries: text), or None.
    """
    k, device = model.num_btoks, model.device
    decoder, causal_lm = model._decoder, model._transformers_model
    collator = model.collator
    pad_id = collator.pad_id

    # Pass 1: [query | BToks], left-padded, with a cache of every layer.
    ids, mask, positions = _left_pad([q + model.btok_token_ids for q in queries], pad_id)
    pixels = {}
    if isinstance(collator, MultimodalCollator):  # M-RoPE positions [3, N, W] from the model's rope index
        media = media or [None] * len(queries)
        positions = collator.rope_positions(ids, mask, media)
        pixels = {key: value.to(device) for key, value in concat_media(media, MEDIA_BATCH_KEYS).items()}
    elif media is not None and any(m is not None for m in media):
        raise ValueError("images or videos need a Qwen2-VL / Qwen2.5-VL BTok model")
    cache = DynamicCache()
    out = decoder(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        position_ids=positions.to(device),
        use_cache=True,
        **pixels,
        **{_cache_kwarg(decoder): cache},
    )
    query_embeddings = pool_btok_states(out.last_hidden_state[:, -k:], model.pooling)

    rows = [i for i, t in enumerate(targets) if t]
    if not rows:
        return TwoPassOutput(query_embeddings, None, 0)
    # Keep only the BTok keys/values (the last K columns) of the rows with a target.
    select = torch.tensor(rows, device=device)
    btok_cache = DynamicCache()
    for layer, entry in enumerate(cache.layers):
        btok_cache.update(entry.keys[select, :, -k:], entry.values[select, :, -k:], layer)

    # Pass 2: the targets, right-padded, positions continuing after the BToks.
    target_ids, target_mask = _right_pad([targets[i] for i in rows], pad_id)
    labels, _ = _right_pad([[IGNORE_INDEX] * unscored[i] + targets[i][unscored[i] :] for i in rows], IGNORE_INDEX)
    # Continue after each row's last BTok (the last column), on every axis of the positions.
    start = positions[..., select.cpu(), -1] + 1  # [N'] or [3, N']
    target_positions = start[..., None] + torch.arange(target_ids.shape[1])
    logits = causal_lm(
        input_ids=target_ids.to(device),
        attention_mask=torch.cat([torch.ones(len(rows), k, dtype=torch.long), target_mask], 1).to(device),
        position_ids=target_positions.to(device),
        use_cache=True,
        **{_cache_kwarg(causal_lm): btok_cache},
    ).logits
    # Row j predicts token j + 1 of its target.
    next_labels = labels[:, 1:].to(device)
    num_tokens = int((next_labels != IGNORE_INDEX).sum())
    loss = next_token_loss(logits[:, :-1].flatten(0, 1), next_labels.flatten(), num_tokens)
    return TwoPassOutput(query_embeddings, loss, num_tokens)
