"""The order in which training examples are drawn from several sources.

Sources sit side by side in one index space (source ``i`` holds indices ``offsets[i] ..
offsets[i] + sizes[i] - 1``, as in :class:`~btok_model.training.mixed_dataset.MixedDataset`). A weight
is a source's expected share of the examples: the probability that the next example (or
block) comes from it. Two orders:

* :class:`MixtureSampler` -- each epoch, source ``i`` contributes exactly its share of the
  epoch's examples (largest remainders), and everything is shuffled together.
* :class:`SourceBlockSampler` -- the authors' interleaved sampler: the epoch is a run of blocks
  of ``block_size`` consecutive indices, each block from one source drawn at random by weight.
  With blocks a multiple of the global batch (:func:`check_block_size`), every rank's batch
  at every step comes from one source, so in-batch and gathered negatives are negatives of
  one task.

Within a source, rows come without replacement from a random permutation, a fresh one each
time the source is used up. An epoch's order is a function of ``(seed, epoch)`` alone:
every rank builds the same one, and a resumed run the one it left.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["MixtureSampler", "SourceBlockSampler", "check_block_size", "shares"]


def shares(weights: list[float], total: int) -> list[int]:
    """Split ``total`` in proportion to ``weights`` (largest remainders; the counts sum to ``total``)."""
    norm = sum(weights)
    exact = [w / norm * total for w in weights]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: exact[i] - counts[i], reverse=True)
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def check_block_size(block_size: int, per_device: int, world_size: int, accumulation: int = 1) -> None:
    """Check that blocks of ``block_size`` line up with the Trainer's steps.

    The Trainer (accelerate) batches the sampler's stream ``per_device`` indices at a time and
    deals the batches to the ranks in turn, so one optimizer step consumes
    ``per_device x world_size x accumulation`` consecutive indices. A block size that is a
    multiple of that puts every rank's batch, at every accumulated micro-step of every step,
    inside one block: one source per step.

    Raises:
        ValueError: it is not a multiple (the message gives the sizes that fit).
    """
    for name, value in (
        ("source_block_size", block_size),
        ("per_device_train_batch_size", per_device),
        ("world_size", world_size),
        ("gradient_accumulation_steps", accumulation),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    step = per_device * world_size * accumulation
    if block_size % step:
        below = block_size // step * step
        fits = " or ".join(str(n) for n in (below, below + step) if n > 0)
        raise ValueError(
            f"source_block_size={block_size} must be a multiple of the examples one optimizer step takes, "
            f"per_device_train_batch_size x world_size x gradient_accumulation_steps = {per_device} x {world_size} x "
            f"{accumulation} = {step}, so that every rank draws from one source at every step (the nearest that "
            f"fit: {fits})"
        )


class _Source:
    """The rows of one source, handed out without replacement; a fresh permutation when used up."""

    def __init__(self, size: int, rng: np.random.Generator):
        self.size, self.rng = size, rng
        self.order = np.empty(0, dtype=np.int64)
        self.used = 0

    def take(self, n: int) -> np.ndarray:
        """The next ``n`` rows (int64 ``[n]``)."""
        out = []
        while n > 0:
            if self.used == len(self.order):
                self.order, self.used = self.rng.permutation(self.size).astype(np.int64), 0
            part = self.order[self.used : self.used + n]
            self.used += len(part)
            n -= len(part)
            out.append(part)
        return np.concatenate(out) if out else np.empty(0, dtype=np.int64)


class _EpochSampler(torch.utils.data.Sampler[int]):
    """Shared parts: the sources, the seed, the epoch, and the epoch's order cached."""

    def __init__(self, sizes: list[int], weights: list[float], seed: int):
        sizes, weights = list(sizes), [float(w) for w in weights]
        if not sizes or len(sizes) != len(weights):
            raise ValueError(f"need one weight per source, got {len(sizes)} sizes and {len(weights)} weights")
        if any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in sizes):
            raise ValueError(f"every source needs at least one example, got sizes {sizes}")
        if not all(np.isfinite(w) and w > 0 for w in weights):
            raise ValueError(f"weights must be finite numbers > 0, got {weights}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"seed must be an int >= 0, got {seed!r}")
        self.sizes, self.weights, self.seed = sizes, weights, seed
        self.offsets = np.cumsum([0] + sizes[:-1]).astype(np.int64)
        self.epoch = 0
        self._cached: tuple[int, np.ndarray] | None = None

    def set_epoch(self, epoch: int) -> None:
        """Use the order of epoch ``epoch`` (the Trainer calls this before each epoch)."""
        self.epoch = int(epoch)

    def order(self, epoch: int | None = None) -> np.ndarray:
        """The indices of epoch ``epoch`` (default: the current one), int64 ``[len(self)]``."""
        epoch = self.epoch if epoch is None else int(epoch)
        if self._cached is None or self._cached[0] != epoch:
            self._cached = (epoch, self._build(np.random.default_rng([self.seed, epoch])))
        return self._cached[1]

    def __iter__(self):
        return iter(self.order().tolist())

    def _build(self, rng: np.random.Generator) -> np.ndarray:
        raise NotImplementedError


class MixtureSampler(_EpochSampler):
    """Each epoch, source ``i`` gives ``counts[i]`` examples (its weight's share of
    ``num_samples``), all shuffled together.

    Args:
        sizes: examples per source.
        weights: one per source (> 0).
        seed: with the epoch, decides everything.
        num_samples: examples per epoch (default: the sources' total size).
    """

    def __init__(self, sizes: list[int], weights: list[float], seed: int = 0, num_samples: int | None = None):
        super().__init__(sizes, weights, seed)
        total = sum(self.sizes) if num_samples is None else num_samples
        if isinstance(total, bool) or not isinstance(total, int) or total < 1:
            raise ValueError(f"num_samples must be an int >= 1, got {num_samples!r}")
        self.counts = shares(self.weights, total)

    def __len__(self) -> int:
        return sum(self.counts)

    def _build(self, rng: np.random.Generator) -> np.ndarray:
        parts = [off + _Source(size, rng).take(n) for off, size, n in zip(self.offsets, self.sizes, self.counts)]
        order = np.concatenate(parts)
        rng.shuffle(order)
        return order


class SourceBlockSampler(_EpochSampler):
    """Blocks of ``block_size`` consecutive indices from one source each, the source of each
    block drawn independently with probability ``weight / sum(weights)``.

    Args:
        sizes: examples per source.
        weights: one per source (> 0).
        block_size: examples per block.
        seed: with the epoch, decides everything.
        num_samples: examples per epoch, rounded up to whole blocks (default: the sources'
            total size). The authors instead end an epoch once every source has been used up;
            with a step count (``max_steps``) the two give the same stream of blocks.
    """

    def __init__(
        self, sizes: list[int], weights: list[float], block_size: int, seed: int = 0, num_samples: int | None = None
    ):
        super().__init__(sizes, weights, seed)
        if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"block_size must be an int >= 1, got {block_size!r}")
        total = sum(self.sizes) if num_samples is None else num_samples
        if isinstance(total, bool) or not isinstance(total, int) or total < 1:
            raise ValueError(f"num_samples must be an int >= 1, got {num_samples!r}")
        self.block_size = block_size
        self.num_blocks = -(-total // block_size)
        self.probabilities = np.asarray(self.weights) / sum(self.weights)

    def __len__(self) -> int:
        return self.num_blocks * self.block_size

    def block_sources(self, epoch: int | None = None) -> np.ndarray:
        """The source of each block of epoch ``epoch`` (default: the current one), int64 ``[num_blocks]``."""
        starts = self.order(epoch)[:: self.block_size]
        return np.searchsorted(self.offsets, starts, side="right") - 1

    def _build(self, rng: np.random.Generator) -> np.ndarray:
        picks = rng.choice(len(self.sizes), size=self.num_blocks, p=self.probabilities)
        sources = [_Source(size, rng) for size in self.sizes]
        order = np.empty(self.num_blocks * self.block_size, dtype=np.int64)
        for b, s in enumerate(picks):
            order[b * self.block_size : (b + 1) * self.block_size] = self.offsets[s] + sources[s].take(self.block_size)
        return order
