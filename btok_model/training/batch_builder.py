"""Training batches: the model's collator, the generative schedule and GradCache chunks.

:class:`TrainingCollator` wraps a copy of ``model.collator`` (a
:class:`~btok_model.embedder.collate.BTokCollator`; no model inside, so it pickles). Per
batch it

* decides whether targets are collated at all, from the generative schedule and the index
  of the optimizer step the batch belongs to. It counts the batches it has built, so it must
  run in the training process in order (``dataloader_num_workers=0``, the default); the
  Trainer's prefetching does not disturb it, and :meth:`TrainingCollator.start_at` places
  the count when a run resumes.
* splits the batch into GradCache chunks when it holds more than ``chunk_size`` examples or
  more than ``max_tokens`` tokens. A chunked batch is ``{"chunks": [...], "positive_index",
  "num_target_tokens"}``; each chunk holds the packed ``batch`` (with targets) and the packed
  ``embed_batch`` (the same sequences without any target, the queries' and the positives'
  alike, for the no-grad embedding pass: under the condensation mask no input or BTok row
  sees a target, so the embeddings do not change and the pass is cheaper). The candidates of
  all chunks, concatenated in chunk order, are the batch's candidates; ``positive_index``
  points into them.
"""

from __future__ import annotations

import copy

import torch

from .schedule import GenerativeSchedule

__all__ = ["TrainingCollator", "is_chunked"]


def is_chunked(batch: dict) -> bool:
    """Whether ``batch`` is a GradCache batch of chunks."""
    return "chunks" in batch


class TrainingCollator:
    """Collate training batches for the Trainer (see the module docstring).

    Args:
        collator: the model's collator (copied; the copy's ``with_targets`` follows the schedule).
        schedule: the generative weight per optimizer step.
        chunk_size: at most this many examples per forward pass (None: no limit).
        max_tokens: at most this many packed tokens per forward pass (None: no limit). A
            single example longer than this raises, naming it.
        gradient_accumulation_steps: batches per optimizer step.
    """

    def __init__(
        self,
        collator,
        schedule: GenerativeSchedule,
        *,
        chunk_size: int | None = None,
        max_tokens: int | None = None,
        gradient_accumulation_steps: int = 1,
    ):
        for name, value in (("chunk_size", chunk_size), ("max_tokens", max_tokens)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be None or an int >= 1, got {value!r}")
        self.collator = copy.copy(collator)
        self.schedule = schedule
        self.chunk_size, self.max_tokens = chunk_size, max_tokens
        self.gradient_accumulation_steps = gradient_accumulation_steps
        self.batches_built = 0

    def start_at(self, step: int) -> None:
        """The next batch belongs to optimizer step ``step``."""
        self.batches_built = step * self.gradient_accumulation_steps

    def __call__(self, examples: list[dict]) -> dict:
        step = self.batches_built // self.gradient_accumulation_steps
        self.batches_built += 1
        self.collator.with_targets = self.schedule.weight_at(step) != 0
        encoded = self.collator.encode_examples(examples)
        groups = self._chunks(encoded)
        if len(groups) == 1:
            return self.collator.pack(encoded)
        chunks, positive_index, offset = [], [], 0
        for group in groups:
            part = [encoded[i] for i in group]
            batch = self.collator.pack(part)
            has_targets = any(t is not None for ex in part for t in ex.targets())
            embed = self.collator.pack([ex.without_targets() for ex in part]) if has_targets else batch
            chunks.append({"batch": batch, "embed_batch": embed})
            positive_index.append(batch["positive_index"] + offset)
            offset += batch["candidate_btok_index"].shape[0]
        return {
            "chunks": chunks,
            "positive_index": torch.cat(positive_index),
            "num_target_tokens": sum(c["batch"]["num_target_tokens"] for c in chunks),
        }

    def _chunks(self, encoded) -> list[list[int]]:
        """Consecutive example groups within ``chunk_size`` examples and ``max_tokens`` tokens."""
        k = self.collator.num_btoks
        groups, current, tokens = [], [], 0
        for i, ex in enumerate(encoded):
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
