"""Pooling: the last-layer states an embedder pools, and how they become its embeddings.

An embedder pools a group of states per input: a BTok model the K BToks after it, the no-BTok
baseline the input's own tokens (which rows: the embedder's ``_pooled_rows``). A group becomes
one L2-normalised vector by its ``"mean"`` or its ``"last"`` state (the ``pooling`` setting,
:data:`~btok_model.embedder.config.POOLINGS`), or, multi-vector, stays its K states, each
L2-normalised.

* :func:`pool_btok_states` -- N equal groups ``[N, K, H]`` -> ``[N, H]``.
* :func:`pool_token_groups` / :func:`stack_token_groups` -- groups back to back ``[M, H]`` ->
  ``[n, H]`` / ``[n, K, H]``.
* :class:`PoolingPlan` -- where a batch's pooled rows sit and how they reduce, moved to the
  device before the forward is queued; :func:`sequence_spans` / :func:`padded_spans` give the
  sequences of a packed row / of padded rows it is planned from.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from btok_kernels import CondensationLayout

from .packed_batch import to_device

__all__ = [
    "PoolingPlan",
    "padded_spans",
    "pool_btok_states",
    "pool_token_groups",
    "sequence_spans",
    "stack_token_groups",
]


def pool_btok_states(states: torch.Tensor, pooling: str) -> torch.Tensor:
    """The embeddings of N equal groups of pooled states (the K BToks of each input).

    Args:
        states: ``[N, K, H]`` any float dtype.
        pooling: ``"mean"`` (mean over the K states) or ``"last"`` (the last one).

    Returns:
        fp32 ``[N, H]``, L2-normalised.
    """
    states = states.float()
    pooled = states.mean(1) if pooling == "mean" else states[:, -1]
    return nn.functional.normalize(pooled, dim=-1)


def pool_token_groups(states: torch.Tensor, counts: torch.Tensor, pooling: str) -> torch.Tensor:
    """The embeddings of consecutive groups of pooled states, one group per input.

    Args:
        states: ``[M, H]`` any float dtype, the groups back to back.
        counts: int64 ``[n]`` on the host, each group's size (>= 1; they sum to M).
        pooling: ``"mean"`` or ``"last"``.

    Returns:
        fp32 ``[n, H]``, L2-normalised. Equal groups go through :func:`pool_btok_states`.
    """
    n = counts.numel()
    if n and bool((counts == counts[0]).all()):
        return pool_btok_states(states.view(n, int(counts[0]), -1), pooling)
    if pooling == "last":
        pooled = states[(torch.cumsum(counts, 0) - 1).to(states.device)].float()
    else:
        group = torch.repeat_interleave(torch.arange(n), counts).to(states.device)
        sums = states.new_zeros((n, states.shape[-1]), dtype=torch.float32).index_add_(0, group, states.float())
        pooled = sums / counts.to(states.device, torch.float32)[:, None]
    return nn.functional.normalize(pooled, dim=-1)


def stack_token_groups(states: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """The multi-vector embeddings of equal groups of pooled states: each state L2-normalised.

    Args:
        states: ``[M, H]`` any float dtype, the groups back to back.
        counts: int64 ``[n]`` on the host, each group's size; all equal (K).

    Returns:
        fp32 ``[n, K, H]``.
    """
    n = counts.numel()
    if n and not bool((counts == counts[0]).all()):
        raise ValueError(f"multi-vector embeddings need the same number of vectors per input, got {counts.tolist()}")
    k = int(counts[0]) if n else 0
    return nn.functional.normalize(states.float().view(n, k, -1), dim=-1)


@dataclass(frozen=True)
class PoolingPlan:
    """Where the pooled states of a batch's sequences sit in its flattened last-layer states,
    and how they reduce.

    Attributes:
        rows: int64 ``[M]`` on the model's device, the pooled rows, sequence by sequence.
        counts: int64 ``[n]`` on the host, how many rows each sequence has.
        pooling: ``"mean"`` or ``"last"``.
    """

    rows: torch.Tensor
    counts: torch.Tensor
    pooling: str

    @classmethod
    def on_device(cls, rows: torch.Tensor, counts: torch.Tensor, pooling: str, device: torch.device) -> PoolingPlan:
        """A plan with ``rows`` moved to ``device`` (before the forward is queued: a copy from
        pageable host memory after it would wait for it)."""
        return cls(to_device(rows, device), counts, pooling)

    def pool(self, hidden: torch.Tensor, multi_vector: bool = False, first: int = 0, stop: int | None = None):
        """The embeddings of sequences ``first .. stop - 1`` (default: all) from the flattened
        states ``hidden [T, H]``: fp32 ``[n, H]`` (:func:`pool_token_groups`), or with
        ``multi_vector`` ``[n, K, H]`` (:func:`stack_token_groups`)."""
        counts = self.counts[first:stop]
        lo = int(self.counts[:first].sum())
        states = hidden[self.rows[lo : lo + int(counts.sum())]]
        return stack_token_groups(states, counts) if multi_vector else pool_token_groups(states, counts, self.pooling)


def sequence_spans(layout: CondensationLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """int64 ``(starts [n], input ends [n])`` of a packed layout's sequences, from its host
    integers (a sequence's input ends where its BToks start)."""
    starts = torch.tensor(layout.host_cu_seqlens[:-1], dtype=torch.long)
    return starts, starts + torch.tensor(layout.host_btok_start, dtype=torch.long)


def padded_spans(attention_mask: torch.Tensor, num_btoks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """int64 ``(starts [B], input ends [B])`` of right-padded ``[input | BToks]`` rows in their
    flattened ``[B * S]`` states (row ``b`` starts at ``b * S``; its K BToks are its last real
    tokens)."""
    width, lengths = attention_mask.shape[1], attention_mask.sum(1).cpu()
    starts = torch.arange(attention_mask.shape[0]) * width
    return starts, starts + lengths - num_btoks
