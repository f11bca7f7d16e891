"""Two processes under FSDP2 (gloo) train and save exactly like one process on the whole batch."""

from types import SimpleNamespace

import pytest
import torch
import torch.multiprocessing as mp

from btok_model import BTokModel
from btok_model.embedder.pooled import PooledEmbedder
from btok_model.training import train
from tests.helpers.numerics import assert_tensors_close
from tests.helpers.training import case_data, examples, tiny_model, tiny_recipe, train_one_step, trainable
from tests.training.fsdp_worker import CASES, case_model, case_recipe, reference_dir, run

TEXTS = ["a small furry animal", "paris", "in water", "what bees make", "frozen water"]


def test_fsdp_ranks_equal_one_process_on_the_whole_batch_and_save_the_same_model(tmp_path, monkeypatch):
    """One SGD step (lr 1) of 2 ranks x 4 examples under FSDP2 -- full fine-tuning plain and
    GradCache, LoRA + BTok rows with GradCache, an untied LM head that only one rank's batch
    uses, the no-BTok baseline with LoRA -- gives the weights and logged losses of one process
    (no FSDP) with all 8; with bf16 mixed precision the losses agree to bf16 precision; with
    gradient accumulation (2 micro-batches of 2 GradCache chunks) FSDP gives the weights of DDP.
    A checkpoint and the final save gather the sharded weights into a folder that loads to the
    embeddings of the non-FSDP model (LoRA merged as without FSDP). A run stopped after its
    first step and resumed from its checkpoint ends with the weights of a straight run (AdamW;
    LoRA and full fine-tuning); a checkpoint written without FSDP is refused under FSDP, and one
    written under FSDP without it."""
    references = {}
    for lora_r, _, save, family, data in CASES.values():
        key = (lora_r, family, data)
        if key in references:
            continue
        recipe = case_recipe(8, lora_r, None, save=save, data=data)
        model = case_model(recipe, family, data)
        folder = tmp_path / reference_dir(*key)
        trainer = train_one_step(model, recipe, case_data(data), str(folder), save=save)
        untouched = trainable(case_model(recipe, family, data))
        references[key] = (untouched, trainable(model), trainer.state.log_history[0], folder)

    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the ranks inherit it: one thread each on a 2-core machine
    mp.spawn(run, args=(2, str(tmp_path)), nprocs=2, join=True)

    bf16 = torch.load(tmp_path / "bf16.pt")
    assert "param_dtype=torch.bfloat16" in bf16["policy"]
    fp32_log = torch.load(tmp_path / "lora-chunked.pt")["log"]
    for key in ("loss", "contrastive_loss", "generative_loss"):
        assert bf16["log"][key] == pytest.approx(fp32_log[key], rel=3e-2), key
    assert bf16["log"]["loss"] != fp32_log["loss"], "bf16 was not applied"

    accumulated = torch.load(tmp_path / "accumulated.pt")
    assert_tensors_close(accumulated[True]["weights"], accumulated[False]["weights"], 1e-5, "accumulated FSDP vs DDP")
    assert accumulated[True]["log"]["loss"] == pytest.approx(accumulated[False]["log"]["loss"], rel=1e-4)

    resume = torch.load(tmp_path / "resume.pt")
    for lora_r in (4, 0):
        assert resume[lora_r]["step"] == 2
        assert_tensors_close(resume[lora_r]["resumed"], resume[lora_r]["straight"], 1e-6, f"resumed weight {lora_r}")
    assert "no pytorch_model_fsdp.bin" in resume["refusal"]
    recipe = tiny_recipe(max_steps=2, batch_size=2, save_steps=1, lora_r=4)  # the worker's, without FSDP
    with pytest.raises(ValueError, match="written under FSDP"):
        checkpoint = tmp_path / "resume-4/stopped/checkpoint-1"
        train(tiny_model(recipe), examples(8), recipe, str(tmp_path / "not-fsdp"), resume=str(checkpoint))
    for name, (lora_r, _, saved, family, data) in CASES.items():
        untouched, trained, expected_log, folder = references[(lora_r, family, data)]
        result = torch.load(tmp_path / f"{name}.pt")
        expected = {n: untouched[n] - p for n, p in trained.items()}  # the gradient
        actual = {n: untouched[n] - p for n, p in result["weights"].items()}
        assert_tensors_close(actual, expected, 1e-5, f"{name} gradient")
        for key in ("loss", "contrastive_loss", "generative_loss"):
            if key in expected_log or key in result["log"]:
                assert abs(result["log"][key] - expected_log[key]) <= 1e-4 * abs(expected_log[key]), (name, key)
        if family == "qwen2":  # the untied head learnt from the one rank that scored a target
            assert expected["backbone.lm_head.weight"].abs().max() > 0
        if saved:
            load = PooledEmbedder if data == "baseline" else BTokModel
            expected_emb = load.from_pretrained(folder).encode(TEXTS)
            for saved_folder in (tmp_path / name, tmp_path / name / "checkpoint-1"):
                actual_emb = load.from_pretrained(saved_folder).encode(TEXTS)
                assert_tensors_close({"emb": actual_emb}, {"emb": expected_emb}, 1e-5, f"{saved_folder} save")


def test_fsdp_refusals(tmp_path):
    """FSDP1, a sharded state dict (it would save no loadable folder), save_on_each_node and
    fsdp_config without fsdp are refused with a message that says what to set."""
    from accelerate.utils import FullyShardedDataParallelPlugin

    from btok_model.training.checkpoints import configure_fsdp

    model = tiny_model(case_recipe(8, 0, None))
    args = SimpleNamespace(save_on_each_node=False)
    with pytest.raises(ValueError, match="FSDP2 only"):
        configure_fsdp(FullyShardedDataParallelPlugin(fsdp_version=1), model, args)
    with pytest.raises(ValueError, match="FULL_STATE_DICT"):
        plugin = FullyShardedDataParallelPlugin(fsdp_version=2, state_dict_type="SHARDED_STATE_DICT")
        configure_fsdp(plugin, model, args)
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, state_dict_type="FULL_STATE_DICT")
    with pytest.raises(ValueError, match="save_on_each_node"):
        configure_fsdp(plugin, model, SimpleNamespace(save_on_each_node=True))
    configure_fsdp(plugin, model, args)
    assert plugin.transformer_cls_names_to_wrap == ["LlamaDecoderLayer"]
    recipe = case_recipe(8, 0, None)
    recipe.fsdp_config = {"cpu_offload": True}
    with pytest.raises(ValueError, match="fsdp is off"):
        train(model, examples(8), recipe, str(tmp_path))


def test_cli_carries_fsdp_into_the_training_arguments(tmp_path):
    from btok_model.train import parser, recipe_from_args
    from btok_model.training.recipe import training_arguments

    config = tmp_path / "fsdp.json"
    config.write_text('{"reshard_after_forward": false}')
    base = ["--model", "m", "--train-data", "d.jsonl", "--output-dir", str(tmp_path)]
    recipe = recipe_from_args(parser().parse_args([*base, "--fsdp", "--fsdp-config", str(config)]))
    assert recipe.fsdp and recipe.to_dict()["fsdp_config"] == {"reshard_after_forward": False}
    args = training_arguments(recipe, str(tmp_path))
    assert args.fsdp and args.fsdp_config["version"] == 2 and args.fsdp_plugin_args["reshard_after_forward"] is False
    assert not recipe_from_args(parser().parse_args(base)).fsdp
