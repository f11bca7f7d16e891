"""The authors' two-pass formulation of the condensation objective (reference and benchmark peer).

Instead of one packed pass under the condensation mask, a target sees its sequence's input
only through a KV cache that holds the BTok keys/values alone, as the authors' trainer
computes it:

* pass 1 (:func:`~.btok_cache.btok_cache`) runs every ``[input | BToks]`` (queries and
  candidates), left-padded, with a KV cache; the embeddings pool the BToks' last-layer
  states, and the cache is cut to the BTok keys/values of the rows with a target. Positions:
  the model's own rope index (``get_rope_index`` of a Qwen2-VL / Qwen2.5-VL / Qwen3-VL, an image / video
  running through the vision tower here), ``0, 1, ...`` for a text model;
* pass 2 runs the targets, right-padded, against that cache (a target's image / video runs
  through the vision tower here), and scores the next-token loss. Positions, as the authors'
  trainer assigns them: ``S`` + the model's rope index of the target alone, ``S`` the number
  of tokens of the row's ``[input | BToks]`` (its attention mask's sum), on every M-RoPE axis.

Positions and masks are computed here from the model's own functions, not from the packing
code, so :class:`~btok_model.BTokModel`'s single pass is checked against an independent
computation: it must give the same generative loss, gradients and embeddings
(tests/embedder). It works with any attention backend that supports padding and a KV cache
(``"sdpa"``, ``"eager"``, ``"btok_triton"``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from .backbone import transformers_model
from .btok_cache import btok_cache, cache_kwarg, media_inputs, model_positions, pad_rows
from .collate import IGNORE_INDEX, Target
from .losses import next_token_loss
from .pooling import pool_btok_states

if TYPE_CHECKING:
    from .btok import BTokModel

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
    k, device = model.config.num_btoks, model.device
    causal_lm = transformers_model(model.backbone)
    pad_id = model.collator.pad_id
    media = media or [None] * len(inputs)
    # Pass 1: [input | BToks], the cache cut to the BToks' keys/values of the rows with a target.
    rows = [i for i, t in enumerate(targets) if t is not None]
    first = btok_cache(model, inputs, media, keep=rows)
    embeddings = pool_btok_states(first.btok_states, model.config.pooling)
    if not rows:
        return embeddings, None, 0

    # Pass 2: the targets, right-padded; positions start at each row's token count.
    target_ids, target_mask = pad_rows([targets[i].ids for i in rows], pad_id, left=False)
    labels, _ = pad_rows([targets[i].labels for i in rows], IGNORE_INDEX, left=False)
    target_media = [targets[i].media for i in rows]
    positions = model_positions(model.decoder, target_ids, target_mask, target_media) + first.token_counts[:, None]
    logits = causal_lm(
        input_ids=target_ids.to(device),
        attention_mask=torch.cat([torch.ones(len(rows), k, dtype=torch.long), target_mask], 1).to(device),
        position_ids=positions.to(device),
        use_cache=True,
        **media_inputs(target_media, device),
        **{cache_kwarg(causal_lm): first.cache},
    ).logits
    # Row j predicts token j + 1 of its target.
    next_labels = labels[:, 1:].to(device)
    num_tokens = int((next_labels != IGNORE_INDEX).sum())
    loss = next_token_loss(logits[:, :-1].flatten(0, 1), next_labels.flatten(), num_tokens)
    return embeddings, loss, num_tokens
