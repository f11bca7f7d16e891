"""``source_block_mode="authors"``: vlm2emb's stride interleave and accelerate's hand-out of
per-device batches, checked rank by rank against a direct computation of their order."""

from collections import Counter

import numpy as np
import pytest

from btok_model.training import SourceBlockSampler, check_block_size
from btok_model.training.sampler import authors_stride
from tests.helpers.training import rank_batches

SIZES, WEIGHTS = [1500, 2600, 900], [1.0, 2.0, 1.0]
PER_DEVICE, BLOCK, STEPS = 128, 512, 6


def _their_order(stream: list[int], per_device: int, ranks: int) -> list[int]:
    """vlm2emb ``BatchInterleaveSampler._apply_stride_interleave``, written out as their loops."""
    if ranks <= 1:
        return list(stream)
    window = per_device * ranks
    out = []
    for pos in range(0, len(stream), window):
        step = stream[pos : pos + window]
        if len(step) < window:
            out.extend(step)
            continue
        for offset in range(per_device):
            for gpu in range(ranks):
                out.append(step[gpu * per_device + offset])
    return out


def _sources(sampler, indices) -> list[int]:
    return sampler.sources_of(np.asarray(indices)).tolist()


@pytest.mark.parametrize("ranks", [1, 2, 4, 8], ids=lambda r: f"{r}-ranks")
def test_each_rank_gets_the_authors_examples(ranks):
    total = STEPS * PER_DEVICE * 8
    kwargs = dict(block_size=BLOCK, seed=7, num_samples=total)
    sampler = SourceBlockSampler(SIZES, WEIGHTS, **kwargs, mode="authors", per_device=PER_DEVICE, world_size=ranks)
    check_block_size(BLOCK, PER_DEVICE, ranks, mode="authors")
    stream = SourceBlockSampler(SIZES, WEIGHTS, **kwargs).order().tolist()  # the blocks before the stride
    theirs = _their_order(stream, PER_DEVICE, ranks)
    window = PER_DEVICE * ranks
    got = rank_batches(sampler, PER_DEVICE, ranks)  # accelerate's real hand-out
    assert all(len(batches) == total // window for batches in got)
    blocks = [_sources(sampler, stream[b : b + BLOCK])[0] for b in range(0, total, BLOCK)]
    for step in range(total // window):
        for rank in range(ranks):
            start = step * window + rank * PER_DEVICE
            assert got[rank][step] == theirs[start : start + PER_DEVICE], (step, rank)
            composition = Counter(_sources(sampler, got[rank][step]))
            # The blocks the step's window spans, each giving every rank an equal part.
            spanned = blocks[step * window // BLOCK : -(-(step + 1) * window // BLOCK)]
            expected = Counter()
            for source in spanned:
                expected[source] += PER_DEVICE * BLOCK // max(window, BLOCK)
            assert composition == expected, (step, rank, composition, expected)
    if ranks == 8:  # 8 x 128 with blocks of 512: 64 examples of each of two blocks per rank and step
        mixed = [s for s in range(total // window) if blocks[2 * s] != blocks[2 * s + 1]]
        assert mixed, "the seed must draw two different sources in some step"
        assert Counter(_sources(sampler, got[3][mixed[0]])).most_common(1)[0][1] == 64
    else:  # a step inside one block: one source per step on every rank
        assert all(len(set(_sources(sampler, got[r][s]))) == 1 for r in range(ranks) for s in range(len(got[r])))


def test_the_stride_reads_each_window_column_wise():
    order = np.arange(2 * 3 * 2 + 5)
    strided = authors_stride(order, per_device=3, world_size=2)
    expected = [0, 3, 1, 4, 2, 5, 6, 9, 7, 10, 8, 11, 12, 13, 14, 15, 16]
    assert strided.tolist() == _their_order(order.tolist(), 3, 2) == expected
    assert authors_stride(order, 3, 1) is order


def test_block_checks_by_mode():
    with pytest.raises(ValueError, match=r"multiple of .* = 1024.*source_block_mode 'authors'"):
        check_block_size(BLOCK, PER_DEVICE, 8)
    check_block_size(BLOCK, PER_DEVICE, 8, mode="authors")
    with pytest.raises(ValueError, match="multiple of per_device_train_batch_size=128"):
        check_block_size(500, PER_DEVICE, 8, mode="authors")
    with pytest.raises(ValueError, match="source_block_mode must be one of"):
        check_block_size(BLOCK, PER_DEVICE, 8, mode="mixed")
    with pytest.raises(ValueError, match="needs per_device"):
        SourceBlockSampler(SIZES, WEIGHTS, BLOCK, mode="authors")
