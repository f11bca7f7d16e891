"""The order in which training examples are drawn from several sources.

Sources sit side by side in one index space (source ``i`` holds indices ``offsets[i] ..
offsets[i] + sizes[i] - 1``, as in :class:`~btok_model.training.mixed_dataset.MixedDataset`). A weight
is a source's expected share of the examples: the probability that the next example (or
block) comes from it. Two orders:

* :class:`MixtureSampler` -- each epoch, source ``i`` contributes exactly its share of the
  epoch's examples (largest remainders), and everything is shuffled together.
* :class:`SourceBlockSampler` -- the authors' interleaved sampler: the epoch is a run of blocks
  of ``block_size`` consecutive indices, each block from one source drawn at random by weight.
  Two ways the blocks reach the ranks (``mode``):

  - ``"strict"``: the stream as it is. With blocks a multiple of the global batch
    (:func:`check_block_size`), every rank's batch at every step comes from one source, so
    in-batch and gathered negatives are negatives of one task.
  - ``"authors"``: vlm2emb's ``BatchInterleaveSampler`` with its stride interleave
    (:func:`authors_stride`): each window of ``per_device x world_size`` indices is read
    column-wise, then the Trainer (accelerate) deals consecutive per-device batches to the
    ranks in turn. Rank ``r``'s ``j``-th example of a step is the window's index
    ``(k % W) * per_device + k // W`` with ``k = r * per_device + j``. Blocks of any multiple of
    ``per_device`` are accepted; where a window spans several blocks, every rank's batch holds
    an equal part of each (at 8 x 128 with blocks of 512: 64 examples from each of two sources).

Within a source, rows come without replacement from a random permutation, a fresh one each
time the source is used up. An epoch's order is a function of ``(seed, epoch)`` alone:
every rank builds the same one, and a resumed run the one it left.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["SOURCE_BLOCK_MODES", "MixtureSampler", "SourceBlockSampler", "authors_stride", "check_block_size", "shares"]

# How source blocks reach the ranks (see the module docstring).
SOURCE_BLOCK_MODES = ("strict", "authors")


def shares(weights: list[float], total: int) -> list[int]:
    """Split ``total`` in proportion to ``weights`` (largest remainders; the counts sum to ``total``)."""
    norm = sum(weights)
    exact = [w / norm * total for w in weights]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: exact[i] - counts[i], reverse=True)
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def check_block_size(
    block_size: int, per_device: int, world_size: int, accumulation: int = 1, mode: str = "strict"
) -> None:
    """Check that blocks of ``block_size`` line up with the Trainer's steps.

    The Trainer (accelerate) batches the sampler's stream ``per_device`` indices at a time and
    deals the batches to the ranks in turn, so one optimizer step consumes
    ``per_device x world_size x accumulation`` consecutive indices. In ``"strict"`` mode a
    block size that is a multiple of that puts every rank's batch, at every accumulated
    micro-step of every step, inside one block: one source per step. In ``"authors"`` mode a
    multiple of ``per_device`` is enough (the authors' own check).

    Raises:
        ValueError: it is not a multiple (the message gives the sizes that fit), or an unknown mode.
    """
    if mode not in SOURCE_BLOCK_MODES:
        raise ValueError(f"source_block_mode must be one of {SOURCE_BLOCK_MODES}, got {mode!r}")
    for name, value in (
        ("source_block_size", block_size),
        ("per_device_train_batch_size", per_device),
        ("world_size", world_size),
        ("gradient_accumulation_steps", accumulation),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    if mode == "authors":
        if block_size % per_device:
            raise ValueError(
                f"source_block_size={block_size} must be a multiple of per_device_train_batch_size={per_device} "
                "(source_block_mode 'authors', as the authors' sampler requires)"
            )
        return
    step = per_device * world_size * accumulation
    if block_size % step:
        below = block_size // step * step
        fits = " or ".join(str(n) for n in (below, below + step) if n > 0)
        raise ValueError(
            f"source_block_size={block_size} must be a multiple of the examples one optimizer step takes, "
            f"per_device_train_batch_size x world_size x gradient_accumulation_steps = {per_device} x {world_size} x "
            f"{accumulation} = {step}, so that every rank draws from one source at every step (the nearest that "
            f"fit: {fits}; or source_block_mode 'authors': the authors' stride, several sources per step)"
        )


def authors_stride(order: np.ndarray, per_device: int, world_size: int) -> np.ndarray:
    """The authors' stride interleave of a stream (vlm2emb ``_apply_stride_interleave``).

    Each full window of ``per_device x world_size`` indices, viewed as ``[world_size,
    per_device]``, is read column by column; an incomplete last window stays as it is; one
    rank leaves the stream unchanged.

    Args:
        order: int64 ``[n]``, the sampler's stream.
        per_device: examples per rank and step.
        world_size: ranks.

    Returns:
        int64 ``[n]``.
    """
    if world_size <= 1:
        return order
    window = per_device * world_size
    full = len(order) // window * window
    head = order[:full].reshape(-1, world_size, per_device).transpose(0, 2, 1).reshape(-1)
    return np.concatenate([head, order[full:]])


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
        mode: ``"strict"`` (the stream of blocks) or ``"authors"`` (their stride interleave
            for ``per_device`` x ``world_size``, :func:`authors_stride`).
        per_device: examples per rank and step (``"authors"`` mode).
        world_size: ranks (``"authors"`` mode).
    """

    def __init__(
        self,
        sizes: list[int],
        weights: list[float],
        block_size: int,
        seed: int = 0,
        num_samples: int | None = None,
        *,
        mode: str = "strict",
        per_device: int | None = None,
        world_size: int = 1,
    ):
        super().__init__(sizes, weights, seed)
        if mode not in SOURCE_BLOCK_MODES:
            raise ValueError(f"source_block_mode must be one of {SOURCE_BLOCK_MODES}, got {mode!r}")
        if mode == "authors":
            for name, value in (("per_device", per_device), ("world_size", world_size)):
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ValueError(f"source_block_mode 'authors' needs {name} as an int >= 1, got {value!r}")
        self.mode, self.per_device, self.world_size = mode, per_device, world_size
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

    def sources_of(self, indices: np.ndarray) -> np.ndarray:
        """The source of each index, int64."""
        return np.searchsorted(self.offsets, indices, side="right") - 1

    def block_sources(self, epoch: int | None = None) -> np.ndarray:
        """The source of each block of epoch ``epoch`` (default: the current one), int64
        ``[num_blocks]`` (``"strict"`` mode: in ``"authors"`` mode the stream is strided)."""
        if self.mode != "strict":
            raise ValueError("block_sources reads the blocks of a 'strict' stream; this sampler strides them")
        return self.sources_of(self.order(epoch)[:: self.block_size])

    def _build(self, rng: np.random.Generator) -> np.ndarray:
        picks = rng.choice(len(self.sizes), size=self.num_blocks, p=self.probabilities)
        sources = [_Source(size, rng) for size in self.sizes]
        order = np.empty(self.num_blocks * self.block_size, dtype=np.int64)
        for b, s in enumerate(picks):
            order[b * self.block_size : (b + 1) * self.block_size] = self.offsets[s] + sources[s].take(self.block_size)
        if self.mode == "authors":
            order = authors_stride(order, self.per_device, self.world_size)
        return order
