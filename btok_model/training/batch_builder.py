"""Training batches: the model's collator, the generative schedule and GradCache chunks.

:class:`TrainingCollator` calls ``model.collator`` (a
:class:`~btok_model.embedder.collate.BTokCollator`; no model inside, so it pickles). Per
batch it

* decides whether targets are collated at all, from the generative schedule and the index
  of the optimizer step the batch belongs to (passed to the collator with the examples). It
  counts the batches it has built, so it must run in the training process in order
  (``dataloader_num_workers=0``, the default); the Trainer's prefetching does not disturb it,
  :meth:`TrainingCollator.start_at` places the count when a run resumes, and
  :meth:`TrainingCollator.take_built_step` tells the trainer which step the next batch it
  trains on was built for.
* splits the batch into GradCache chunks when it holds more than ``chunk_size`` examples or
  more than ``max_tokens`` tokens: a :class:`ChunkedBatch` of :class:`GradCacheChunk`, each
  holding the packed ``batch`` (with targets) and the packed ``embed_batch`` (the same
  sequences without any target, the queries' and the positives' alike, for the no-grad
  embedding pass: under the condensation mask no input or BTok row sees a target, so the
  embeddings do not change and the pass is cheaper). The candidates of all chunks,
  concatenated in chunk order, are the batch's candidates; ``positive_index`` points into them.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, replace

import torch

from ..embedder.packed_batch import BTokBatch, FieldMapping
from .schedule import GenerativeSchedule

__all__ = ["ChunkedBatch", "GradCacheChunk", "TrainingCollator"]


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


class TrainingCollator:
    """Collate training batches for the Trainer (see the module docstring).

    Args:
        collator: the model's collator (asked for targets while the schedule's weight is not 0).
        schedule: the generative weight per optimizer step.
        chunk_size: at most this many examples per forward pass (None: no limit).
        max_tokens: at most this many packed tokens per forward pass (None: no limit). A
            single example longer than this raises, naming it.
        gradient_accumulation_steps: batches per optimizer step.
        sort_by_query_length: form the chunks after a stable sort of the examples by query
            length (tokens, placeholders expanded), as the authors' GradCache does before it
            chunks: their per-chunk generative weighting depends on which examples share a
            chunk. The contrastive loss does not depend on the order.
    """

    def __init__(
        self,
        collator,
        schedule: GenerativeSchedule,
        *,
        chunk_size: int | None = None,
        max_tokens: int | None = None,
        gradient_accumulation_steps: int = 1,
        sort_by_query_length: bool = False,
    ):
        for name, value in (("chunk_size", chunk_size), ("max_tokens", max_tokens)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be None or an int >= 1, got {value!r}")
        self.collator = collator
        self.schedule = schedule
        self.chunk_size, self.max_tokens = chunk_size, max_tokens
        self.gradient_accumulation_steps = gradient_accumulation_steps
        self.sort_by_query_length = sort_by_query_length
        self.batches_built = 0
        self.built_steps: deque[int] = deque()  # the step of each batch built and not yet taken

    def start_at(self, step: int) -> None:
        """The next batch belongs to optimizer step ``step``."""
        self.batches_built = step * self.gradient_accumulation_steps
        self.built_steps.clear()

    def take_built_step(self) -> int | None:
        """The optimizer step the oldest batch not yet taken was built for (None: none built)."""
        return self.built_steps.popleft() if self.built_steps else None

    def __call__(self, examples: list[dict]) -> BTokBatch | ChunkedBatch:
        step = self.batches_built // self.gradient_accumulation_steps
        self.batches_built += 1
        self.built_steps.append(step)
        encoded = self.collator.encode_examples(examples, with_targets=self.schedule.weight_at(step) != 0)
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
