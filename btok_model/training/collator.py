"""Training batches: the model's collator, GradCache chunks, the rows replaced.

:class:`TrainingCollator` calls ``model.collator`` (a
:class:`~btok_model.embedder.collate.BTokCollator`; no model inside, so it pickles). It keeps
no state between batches, so it runs in data-loader workers as well as in the training
process. Per batch it

* collates the targets when the run has a generative loss at all (``with_targets``); the
  trainer reads the step's generative weight where it computes the loss, and leaves the
  targets unscored (and a GradCache step's target tokens out of the forward) once it is 0.
* takes the :class:`~btok_model.training.bad_rows.BadRow` records off examples that replace
  rows which could not be decoded, and returns the batch in a :class:`ReplacedRows` then.
* splits the batch into GradCache chunks when it holds more than ``chunk_size`` examples or
  more than ``max_tokens`` tokens: a :class:`ChunkedBatch` of :class:`GradCacheChunk`, each
  holding the packed ``batch`` (with targets) and the packed ``embed_batch`` (the same
  sequences without any target, the queries' and the positives' alike, for the no-grad
  embedding pass: under the condensation mask no input or BTok row sees a target, so the
  embeddings do not change and the pass is cheaper). The candidates of all chunks,
  concatenated in chunk order, are the batch's candidates; ``positive_index`` points into them.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..embedder.packed_batch import BTokBatch, FieldMapping
from .bad_rows import BAD_ROWS_KEY, BadRow

__all__ = ["ChunkedBatch", "GradCacheChunk", "ReplacedRows", "TrainingCollator"]


@dataclass
class GradCacheChunk:
    """One chunk of a :class:`ChunkedBatch`.

    Attributes:
        batch: the chunk's examples, packed with their targets.
        embed_batch: the same sequences without any target (the no-grad embedding pass).
    """

    batch: BTokBatch
    embed_batch: BTokBatch


@dataclass
class ChunkedBatch(FieldMapping):
    """A GradCache batch: more examples than one forward pass holds, in chunks.

    Attributes:
        chunks: the chunks, in order.
        positive_index: int64 ``[Nq]``, each query's positive among the candidates of all
            chunks concatenated in chunk order.
        num_target_tokens: the scored target tokens of all chunks.
    """

    chunks: list[GradCacheChunk]
    positive_index: torch.Tensor
    num_target_tokens: int

    @property
    def num_queries(self) -> int:
        return self.positive_index.shape[0]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> ChunkedBatch:
        """The batch with every chunk on ``device`` (see :meth:`BTokBatch.to`)."""
        chunks = [GradCacheChunk(c.batch.to(device), c.embed_batch.to(device)) for c in self.chunks]
        return replace(self, chunks=chunks, positive_index=self.positive_index.to(device))


@dataclass
class ReplacedRows:
    """A batch some of whose examples replace rows that could not be decoded.

    Attributes:
        batch: the batch (the replacements in it).
        rows: the rows replaced, one record per replacement.
    """

    batch: BTokBatch | ChunkedBatch
    rows: list[BadRow]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> ReplacedRows:
        return replace(self, batch=self.batch.to(device, non_blocking=non_blocking))


class TrainingCollator:
    """Collate training batches for the Trainer (see the module docstring).

    Args:
        collator: the model's collator.
        with_targets: collate the examples' generative targets (False: the run has no generative loss).
        chunk_size: at most this many examples per forward pass (None: no limit).
        max_tokens: at most this many packed tokens per forward pass (None: no limit). A
            single example longer than this raises, naming it.
        sort_by_query_length: form the chunks after a stable sort of the examples by query
            length (tokens, placeholders expanded), as the authors' GradCache does before it
            chunks: their per-chunk generative weighting depends on which examples share a
            chunk. The contrastive loss does not depend on the order.
    """

    def __init__(
        self,
        collator,
        with_targets: bool = True,
        *,
        chunk_size: int | None = None,
        max_tokens: int | None = None,
        sort_by_query_length: bool = False,
    ):
        for name, value in (("chunk_size", chunk_size), ("max_tokens", max_tokens)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be None or an int >= 1, got {value!r}")
        self.collator = collator
        self.with_targets = with_targets
        self.chunk_size, self.max_tokens = chunk_size, max_tokens
        self.sort_by_query_length = sort_by_query_length

    def __call__(self, examples: list[dict]) -> BTokBatch | ChunkedBatch | ReplacedRows:
        rows = [row for ex in examples if isinstance(ex, dict) for row in ex.get(BAD_ROWS_KEY, ())]
        if not rows:
            return self._build(examples)
        examples = [{k: v for k, v in ex.items() if k != BAD_ROWS_KEY} for ex in examples]
        return ReplacedRows(self._build(examples), rows)

    def _build(self, examples: list[dict]) -> BTokBatch | ChunkedBatch:
        encoded = self.collator.encode_examples(examples, with_targets=self.with_targets)
        order = list(range(len(encoded)))
        if self.sort_by_query_length:
            order.sort(key=lambda i: (len(encoded[i].query), i))
        groups = self._chunks(encoded, order)
        if len(groups) == 1:
            return self.collator.pack(encoded)
        chunks, positive_index, offset = [], [], 0
        for group in groups:
            part = [encoded[i] for i in group]
            batch = self.collator.pack(part)
            has_targets = any(t is not None for ex in part for t in ex.targets())
            embed = self.collator.pack([ex.without_targets() for ex in part]) if has_targets else batch
            chunks.append(GradCacheChunk(batch, embed))
            positive_index.append(batch.positive_index + offset)
            offset += len(batch.btok_layout.seqlens) - batch.num_queries
        return ChunkedBatch(chunks, torch.cat(positive_index), sum(c.batch.num_target_tokens for c in chunks))

    def _chunks(self, encoded, order: list[int]) -> list[list[int]]:
        """Example groups, consecutive in ``order``, within ``chunk_size`` examples and ``max_tokens`` tokens."""
        k = self.collator.num_btoks
        groups, current, tokens = [], [], 0
        for i in order:
            ex = encoded[i]
            size = len(ex.query) + sum(len(c) for c in ex.candidates) + k * (1 + len(ex.candidates))
            size += sum(len(t.ids) for t in ex.targets() if t is not None)
            if self.max_tokens is not None and size > self.max_tokens:
                raise ValueError(
                    f"example {i} packs into {size} tokens (query, candidates and targets, {k} BToks each), more than "
                    f"the token budget max_tokens={self.max_tokens}; raise the budget or shorten the example"
                )
            full = (self.chunk_size is not None and len(current) == self.chunk_size) or (
                self.max_tokens is not None and tokens + size > self.max_tokens
            )
            if current and full:
                groups.append(current)
                current, tokens = [], 0
            current.append(i)
            tokens += size
        groups.append(current)
        return groups
