"""Source-homogeneous blocks: one source per block, sources drawn by weight, one source per
step on every rank (accelerate's own batch sharding), and a resumed run continuing the order."""

import math

import numpy as np
import pytest
import torch

from btok_model.datasets import write_jsonl
from btok_model.training import DataSource, MixedDataset, SourceBlockSampler, check_block_size, train
from tests.helpers.training import StopAt, examples, rank_batches, tiny_model, tiny_recipe


def _source_of(sampler, index: np.ndarray) -> np.ndarray:
    return np.searchsorted(sampler.offsets, index, side="right") - 1


def test_blocks_are_single_source_and_use_each_source_without_replacement():
    sizes = [5, 37, 100]
    sampler = SourceBlockSampler(sizes, [1.0, 0.5, 2.0], block_size=4, seed=3)
    order = sampler.order()
    assert len(sampler) == len(order) == 144  # 142 examples rounded up to whole blocks
    blocks = _source_of(sampler, order).reshape(-1, 4)
    assert (blocks == blocks[:, :1]).all(), "a block mixes sources"
    assert (blocks[:, 0] == sampler.block_sources()).all()
    for s, size in enumerate(sizes):
        rows = order[_source_of(sampler, order) == s] - sampler.offsets[s]
        for start in range(0, len(rows), size):  # each pass over a source is a permutation of its rows
            part = rows[start : start + size]
            assert len(set(part.tolist())) == len(part), f"source {s} repeats a row before using them all"
    assert (order == SourceBlockSampler(sizes, [1.0, 0.5, 2.0], 4, seed=3).order()).all()
    assert not (order == sampler.order(epoch=1)).all()


def test_block_sources_follow_the_weights():
    """Over 20,000 blocks each source's count is within 4 binomial standard deviations of
    blocks x weight / sum(weights) (deterministic seed); equal weights would be far outside."""
    weights = [1.0, 0.5, 2.5]
    n = 20_000
    sampler = SourceBlockSampler([3, 50, 7], weights, block_size=2, seed=0, num_samples=2 * n)
    counts = np.bincount(sampler.block_sources(), minlength=3)
    assert counts.sum() == n

    def within(p: np.ndarray) -> bool:
        return bool((np.abs(counts - n * p) <= 4 * np.sqrt(n * p * (1 - p))).all())

    assert within(np.array(weights) / sum(weights)), counts
    assert not within(np.full(3, 1 / 3)), "the check cannot tell the weights from uniform"


@pytest.mark.parametrize("accumulation", [1, 2])
def test_every_rank_draws_one_source_per_step(accumulation):
    per_device, ranks = 3, 2
    block = per_device * ranks * accumulation * 2
    check_block_size(block, per_device, ranks, accumulation)
    sampler = SourceBlockSampler([7, 40, 19], [1.0, 1.0, 2.0], block_size=block, seed=5)
    batches = rank_batches(sampler, per_device, ranks)
    steps = len(batches[0]) // accumulation
    assert steps * per_device * ranks * accumulation == len(sampler)
    dealt = []
    for step in range(steps):
        micro = [b for r in range(ranks) for b in batches[r][step * accumulation : (step + 1) * accumulation]]
        sources = set(_source_of(sampler, np.array(micro).ravel()).tolist())
        assert len(sources) == 1, f"step {step} mixes sources {sources}"
        for m in range(accumulation):  # accelerate deals consecutive batches to the ranks in turn
            dealt += [i for r in range(ranks) for i in batches[r][step * accumulation + m]]
    assert dealt == sampler.order().tolist()

    # A block of one rank's batch would put two sources in one step: refused, and shown here.
    with pytest.raises(ValueError, match=rf"multiple of .* = {per_device * ranks * accumulation}"):
        check_block_size(per_device, per_device, ranks, accumulation)
    narrow = SourceBlockSampler([7, 40, 19], [1.0, 1.0, 2.0], block_size=per_device, seed=5)
    batches = rank_batches(narrow, per_device, ranks)
    assert any(len(set(_source_of(narrow, np.array([b[s] for b in batches])).ravel().tolist())) > 1 for s in range(5))


def test_a_resumed_run_on_several_ranks_draws_the_epoch_it_resumes_in(tmp_path):
    """On 2+ ranks accelerate wraps the batches per rank, and a resumed run's skip of the batches
    already trained hides the sampler from the Trainer's ``set_epoch``: the epoch is set from the
    step count instead, as the Trainer counts epochs when it resumes."""
    from accelerate.data_loader import prepare_data_loader, skip_first_batches

    from btok_model.training import BTokTrainer, training_arguments

    data = examples(12)
    write_jsonl(tmp_path / "a.jsonl", data[:6])
    write_jsonl(tmp_path / "b.jsonl", data[6:])
    mixed = MixedDataset([DataSource(str(tmp_path / "a.jsonl"), 1.0), DataSource(str(tmp_path / "b.jsonl"), 3.0)])
    recipe = tiny_recipe(batch_size=2)
    trainer = BTokTrainer(tiny_model(recipe), training_arguments(recipe, str(tmp_path)), mixed, source_block_size=4)
    sampler = trainer.mixture_sampler
    # rank 0 of 2: 3 batches of 2 per epoch; a run resumed at step 4 is in epoch 1, one batch in
    loader = torch.utils.data.DataLoader(mixed, batch_size=2, sampler=sampler, collate_fn=lambda x: x)
    rank0 = prepare_data_loader(loader, num_processes=2, process_index=0, put_on_device=False)
    skipped = skip_first_batches(rank0, 1)
    skipped.set_epoch(1)
    assert sampler.epoch == 0, "accelerate now reaches the sampler: the step-count epoch may be unneeded"

    trainer.callback_handler.train_dataloader = rank0
    trainer.state.global_step = 4
    trainer.callback_handler.on_epoch_begin(trainer.args, trainer.state, trainer.control)
    assert sampler.epoch == 1
    second = [MixedDataset.__getitem__(mixed, i) for i in sampler.order(1)[4:6]]  # rank 0's 2nd batch of epoch 1
    assert next(iter(skipped)) == second


class _LoggedMixture(MixedDataset):
    """Records the indices the dataloader fetches."""

    def __init__(self, sources):
        super().__init__(sources)
        self.fetched = []

    def __getitem__(self, i):
        self.fetched.append(i)
        return super().__getitem__(i)


def test_the_trainer_draws_blocks_and_a_resumed_run_continues_their_order(tmp_path):
    """Two sources, blocks of 4, batches of 4: 2 steps per epoch. A run stopped at step 3 (in
    epoch 1) and resumed fetches what an uninterrupted run fetches at step 4, epoch 1's order."""
    data = examples(8)
    write_jsonl(tmp_path / "a.jsonl", data[:4])
    write_jsonl(tmp_path / "b.jsonl", data[4:])
    sources = [DataSource(str(tmp_path / "a.jsonl"), 1.0), DataSource(str(tmp_path / "b.jsonl"), 3.0)]
    recipe = tiny_recipe(max_steps=4, batch_size=4, source_block_size=4, save_steps=3, lora_r=2)
    order = {e: _LoggedMixture(sources).sampler(recipe.seed, 4).order(e).tolist() for e in (0, 1)}
    assert order[0][4:] != order[1][4:]

    straight = _LoggedMixture(sources)
    train(tiny_model(recipe), straight, recipe, str(tmp_path / "straight"), save=False)
    assert straight.fetched == order[0] + order[1]
    for start in range(0, 16, 4):
        assert len({MixedDataset.__getitem__(straight, i)["source"] for i in straight.fetched[start : start + 4]}) == 1

    stopped = _LoggedMixture(sources)
    train(tiny_model(recipe), stopped, recipe, str(tmp_path / "stopped"), save=False, callbacks=[StopAt(3)])
    resumed = _LoggedMixture(sources)
    trainer = train(tiny_model(recipe), resumed, recipe, str(tmp_path / "stopped"), resume=True, save=False)
    assert trainer.state.global_step == 4
    assert resumed.fetched == order[1][4:], "the resumed step did not get epoch 1's second batch"

    with pytest.raises(ValueError, match=r"source_block_size=3 must be a multiple .* = 2"):
        train(tiny_model(recipe), straight, tiny_recipe(batch_size=2, source_block_size=3), str(tmp_path / "x"))
    with pytest.raises(ValueError, match="source_block_size needs a MixedDataset"):
        train(tiny_model(recipe), data, tiny_recipe(batch_size=2, source_block_size=4), str(tmp_path / "y"))
    assert math.isclose(sum(d["probability"] for d in straight.describe()), 1.0)
