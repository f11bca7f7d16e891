"""The authors' two-pass formulation of the condensation objective (reference and benchmark peer).

Instead of one packed pass under the condensation mask, a target sees its sequence's input
only through a KV cache that holds the BTok keys/values alone, as the authors' trainer
computes it:

* pass 1 runs every ``[input | BToks]`` (queries and candidates), left-padded so that every
  row's K BToks are its last K columns, with a KV cache; the embeddings pool the last K
  states. Positions: the model's own rope index on the padded rows (``get_rope_index`` of a
  Qwen2-VL / Qwen2.5-VL / Qwen3-VL, an image / video running through the vision tower here), ``0, 1,
  ...`` for a text model;
* the cache of every layer is cut to those last K columns (the BTok keys/values) of the rows
  with a target;
* pass 2 runs the targets, right-padded, against that cache (a target's image / video runs
  through the vision tower here), and scores the next-token loss. Positions, as the authors'
  trainer assigns them: ``S`` + the model's rope index of the target alone, ``S`` the number
  of tokens of the row's ``[input | BToks]`` (its attention mask's sum), on every M-RoPE axis.

Positions and masks are computed here from the model's own functions, not from the packing
code, so :class:`~btok_model.BTokModel`'s single pass is checked against an independent
computation: it must give the same generative loss, gradients and embeddings
(tests/embedder). It works with any attention backend that supports padding and a KV cache
(``"sdpa"``, ``"eager"``, ``"btok_triton"``).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from itertools import chain

import torch
from transformers import DynamicCache

from .collate import IGNORE_INDEX, Target
from .losses import next_token_loss
from .modeling import BTokModel, pool_btok_states
from .multimodal import MEDIA_BATCH_KEYS, concat_media

__all__ = ["TwoPassOutput", "two_pass_forward", "two_pass_sequences"]


@dataclass
class TwoPassOutput:
    """Attributes:
    query_embeddings: fp32 ``[Nq, H]``, L2-normalised (differentiable).
    candidate_embeddings: fp32 ``[Nc, H]`` (the positives, then the hard negatives).
    generative_loss: fp32 scalar (mean over scored target tokens) or None without targets.
    num_target_tokens: how many target tokens were scored.
    """

    query_embeddings: torch.Tensor
    candidate_embeddings: torch.Tensor
    generative_loss: torch.Tensor | None
    num_target_tokens: int


def two_pass_forward(model: BTokModel, examples: list[dict]) -> TwoPassOutput:
    """The two-pass losses of training examples, tokenised exactly as :meth:`BTokModel.collate`
    does (targets on the queries' and the positives' sequences alike)."""
    encoded = model.collator.encode_examples(examples)
    order = [(ex, 0) for ex in encoded] + [(ex, 1) for ex in encoded]
    order += [(ex, j) for ex in encoded for j in range(2, 1 + len(ex.candidates))]
    embeddings, loss, num_tokens = two_pass_sequences(
        model,
        [ex.query if j == 0 else ex.candidates[j - 1] for ex, j in order],
        [ex.targets()[j] for ex, j in order],
        [ex.media()[j] for ex, j in order],
    )
    n = len(encoded)
    return TwoPassOutput(embeddings[:n], embeddings[n:], loss, num_tokens)


def _cache_kwarg(module: torch.nn.Module) -> str:
    """transformers 5.24 renamed ``past_key_values`` to ``cache`` (the old name warns)."""
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


def _pad(rows: list[list[int]], value: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(values, mask)`` int64 ``[B, W]``: the rows padded with ``value`` on the left or right."""
    lens = torch.tensor([len(r) for r in rows])
    width = int(lens.max())
    cols = torch.arange(width)[None]
    mask = cols >= (width - lens)[:, None] if left else cols < lens[:, None]
    out = torch.full((len(rows), width), value, dtype=torch.long)
    out[mask] = torch.tensor(list(chain.from_iterable(rows)), dtype=torch.long)
    return out, mask.long()


def _positions(inner, ids: torch.Tensor, mask: torch.Tensor, media: list) -> torch.Tensor:
    """Positions of padded rows from the model's own function: a VL model's
    ``get_rope_index`` (``[3, B, W]``), else ``0, 1, ...`` over each row's tokens (``[B, W]``)."""
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


def two_pass_sequences(
    model: BTokModel,
    inputs: list[list[int]],
    targets: list[Target | None],
    media: list | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """The two-pass forward on token ids.

    Args:
        model: the BTok model (its backbone's attention implementation is used as it is).
        inputs: N input id lists (no BToks; vision placeholders expanded).
        targets: N targets (None: none), their ids placed after the input's BToks.
        media: N processed images / videos of the inputs (None entries: text), or None.

    Returns:
        ``(embeddings fp32 [N, H], generative loss fp32 scalar or None, scored target tokens)``.
    """
    k, device = model.num_btoks, model.device
    decoder, causal_lm = model._decoder, model._transformers_model
    pad_id = model.collator.pad_id
    media = media or [None] * len(inputs)
    pixels = lambda parts: {  # noqa: E731 -- the pixel inputs of these media, on the device
        key: value.to(device) for key, value in concat_media(parts, MEDIA_BATCH_KEYS).items()
    }

    # Pass 1: [input | BToks], left-padded, with a cache of every layer.
    ids, mask = _pad([x + model.btok_token_ids for x in inputs], pad_id, left=True)
    cache = DynamicCache()
    out = decoder(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        position_ids=_positions(decoder, ids, mask, media).to(device),
        use_cache=True,
        **pixels(media),
        **{_cache_kwarg(decoder): cache},
    )
    embeddings = pool_btok_states(out.last_hidden_state[:, -k:], model.pooling)

    rows = [i for i, t in enumerate(targets) if t is not None]
    if not rows:
        return embeddings, None, 0
    # Keep only the BTok keys/values (the last K columns) of the rows with a target.
    select = torch.tensor(rows, device=device)
    btok_cache = DynamicCache()
    for layer, entry in enumerate(cache.layers):
        btok_cache.update(entry.keys[select, :, -k:], entry.values[select, :, -k:], layer)

    # Pass 2: the targets, right-padded; positions start at each row's token count.
    target_ids, target_mask = _pad([targets[i].ids for i in rows], pad_id, left=False)
    labels, _ = _pad([targets[i].labels for i in rows], IGNORE_INDEX, left=False)
    target_media = [targets[i].media for i in rows]
    start = mask[rows].sum(1)  # [N']
    positions = _positions(decoder, target_ids, target_mask, target_media) + start[:, None]
    logits = causal_lm(
        input_ids=target_ids.to(device),
        attention_mask=torch.cat([torch.ones(len(rows), k, dtype=torch.long), target_mask], 1).to(device),
        position_ids=positions.to(device),
        use_cache=True,
        **pixels(target_media),
        **{_cache_kwarg(causal_lm): btok_cache},
    ).logits
    # Row j predicts token j + 1 of its target.
    next_labels = labels[:, 1:].to(device)
    num_tokens = int((next_labels != IGNORE_INDEX).sum())
    loss = next_token_loss(logits[:, :-1].flatten(0, 1), next_labels.flatten(), num_tokens)
    return embeddings, loss, num_tokens
