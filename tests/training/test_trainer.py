"""BTokTrainer: training lowers the loss, checkpoints load as BTok models, runs resume exactly."""

import dataclasses
import json
import os

import pytest
import torch

from btok_model import BTokModel
from btok_model.embedder.pooled import PooledEmbedder
from btok_model.training import train
from btok_model.training.checkpoints import TRAINABLE_STATE
from tests.helpers.numerics import assert_tensors_close
from tests.helpers.training import StopAt, examples, tiny_model, tiny_recipe, trainable

TEXTS = ["a small furry animal", "paris", "in water", "what bees make"]


def _batch_loss(model, batch_examples) -> float:
    model.eval()
    with torch.no_grad():
        return float(model(**model.collate(batch_examples)).loss)


def test_training_lowers_the_loss_and_logs_both_parts(tmp_path):
    recipe = tiny_recipe(max_steps=8, batch_size=8, generative_weight=1.0, generative_steps=5)
    model = tiny_model(recipe)
    data = examples(8)
    before = _batch_loss(model, data)
    settings = dataclasses.asdict(model.config)
    trainer = train(model, data, recipe, str(tmp_path), save=False)
    # The schedule set each step's weight for the loss; the model's settings never changed.
    assert dataclasses.asdict(model.config) == settings and model.collator.with_targets
    after = _batch_loss(model, data)
    assert after < 0.6 * before, (before, after)
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 8
    for step, entry in enumerate(logs):
        on = step < 5
        assert entry["generative_weight"] == (1.0 if on else 0.0)
        assert ("generative_loss" in entry) == on
        expected = entry["contrastive_loss"] + (entry["generative_loss"] if on else 0.0)
        assert entry["loss"] == pytest.approx(expected, rel=1e-3)


def test_last_token_baseline_trains(tmp_path):
    recipe = tiny_recipe(max_steps=6, batch_size=8, pooling="last", btoks=False)
    model = tiny_model(recipe, btoks=False)
    assert isinstance(model, PooledEmbedder)
    data = examples(8)
    before = _batch_loss(model, data)
    train(model, data, recipe, str(tmp_path), save=False)
    assert _batch_loss(model, data) < 0.6 * before


@pytest.mark.parametrize("lora_r", [0, 4], ids=["full", "lora"])
def test_checkpoint_loads_as_btok_model(tmp_path, lora_r):
    recipe = tiny_recipe(max_steps=2, save_steps=2, lora_r=lora_r, pooling="last")
    model = tiny_model(recipe)
    train(model, examples(8), recipe, str(tmp_path), save=False)
    checkpoint = tmp_path / "checkpoint-2"
    loaded = BTokModel.from_pretrained(checkpoint)
    assert loaded.config == model.config and loaded.config.pooling == "last"
    assert loaded.config.generative_weight == recipe.embedder.generative_weight
    expected, actual = model.encode(TEXTS), loaded.encode(TEXTS)
    if lora_r == 0:
        assert torch.equal(actual, expected)
    else:  # LoRA merged into the saved weights: equal to float rounding
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6)
    assert (checkpoint / TRAINABLE_STATE).is_file() == (lora_r > 0)


@pytest.mark.parametrize("chunk_size, workers", [(None, 0), (2, 2)], ids=["plain-in-process", "gradcache-2-workers"])
def test_resumed_run_continues_where_it_stopped(tmp_path, chunk_size, workers):
    """Stop after 2 of 4 steps, resume: the same weights as 4 straight steps (same data order,
    optimizer, scheduler and generative schedule, which switches off at step 3). The straight
    run reads its batches in the training process; the stopped and resumed ones with
    ``workers`` data-loader workers."""
    recipe = tiny_recipe(max_steps=4, batch_size=3, save_steps=2, lora_r=4, generative_steps=3, chunk_size=chunk_size)
    data = examples(12)
    straight = tiny_model(recipe)
    train(straight, data, recipe, str(tmp_path / "straight"), save=False)

    first = tiny_model(recipe)
    stopped = str(tmp_path / "stopped")
    read_by_workers = dataclasses.replace(recipe, dataloader_num_workers=workers)
    train(first, data, read_by_workers, stopped, save=False, callbacks=[StopAt(2)])
    resumed = tiny_model(recipe)  # built afresh, as a new process would
    trainer = train(resumed, data, read_by_workers, stopped, resume=f"{stopped}/checkpoint-2")
    assert trainer.args.dataloader_num_workers == workers
    assert trainer.state.global_step == 4
    assert_tensors_close(trainable(resumed), trainable(straight), 1e-6, "resumed weight")
    untouched = tiny_model(recipe)
    assert trainable(untouched).keys() == trainable(resumed).keys()
    moved = [n for n, p in trainable(untouched).items() if not torch.equal(p, trainable(resumed)[n])]
    assert moved, "the run changed nothing"

    state = json.loads((tmp_path / "stopped/checkpoint-4/trainer_state.json").read_text())
    weights = [e["generative_weight"] for e in state["log_history"] if "loss" in e]
    assert weights == [1.0, 1.0, 1.0, 0.0]


def test_resume_with_other_lora_settings_is_refused(tmp_path):
    recipe = tiny_recipe(max_steps=1, save_steps=1, lora_r=4)
    train(tiny_model(recipe), examples(4), recipe, str(tmp_path), save=False)
    other = tiny_recipe(max_steps=2, save_steps=1, lora_r=2)
    with pytest.raises(ValueError, match=r"trainable parameters differ|shape"):
        train(tiny_model(other), examples(4), other, str(tmp_path), resume=str(tmp_path / "checkpoint-1"))
    assert os.path.isdir(tmp_path / "checkpoint-1")


@pytest.mark.parametrize("chunk_size", [None, 3], ids=["plain", "gradcache"])
def test_bf16_autocast_matches_fp32(tmp_path, chunk_size):
    """``--bf16`` (autocast) runs through btok_triton and GradCache, with fp32's losses to bf16 precision."""
    logs = {}
    for bf16 in (False, True):
        recipe = tiny_recipe(max_steps=1, batch_size=8, bf16=bf16, chunk_size=chunk_size, generative_weight=2.0)
        trainer = train(tiny_model(recipe), examples(8), recipe, str(tmp_path / str(bf16)), save=False)
        logs[bf16] = trainer.state.log_history[0]
    for key in ("loss", "contrastive_loss", "generative_loss"):
        assert logs[True][key] == pytest.approx(logs[False][key], rel=3e-2), key
    assert logs[True]["loss"] != logs[False]["loss"], "bf16 autocast was not applied"


def test_workers_start_by_spawn_when_they_read_lance(tmp_path):
    """Lance is not fork-safe: data-loader workers that read a Lance table spawn; others fork."""
    from btok_model.training import DataSource, MixedDataset
    from btok_model.training.trainer import worker_start_method
    from tests.helpers.mmeb_train_data import ROWS, write_lance, write_parquet

    rows = {"VisDial": ROWS["VisDial"]}
    parquet = MixedDataset([DataSource(write_parquet(tmp_path / "p", rows), 1.0, "VisDial")])
    lance = MixedDataset([DataSource(write_lance(tmp_path / "l", rows), 1.0, "VisDial")])
    assert not parquet.reads_lance and lance.reads_lance
    assert worker_start_method(2, parquet) is None and worker_start_method(0, lance) is None
    assert worker_start_method(2, lance) == "spawn"
