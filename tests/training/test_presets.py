"""The authors' recipe as presets: the resolved values, explicit flags over them, DoRA with a
Gaussian init, and a preset run on a tiny Qwen2-VL folder recorded in train_command.json."""

import json
from dataclasses import replace

import pytest
import torch

from btok_model import BTokModel
from btok_model.embedder.config import PooledConfig
from btok_model.train import main as train_main
from btok_model.train import parser, recipe_from_args, resolve_arguments
from btok_model.training.presets import PRESETS
from btok_model.training.recipe import Recipe, build_model, recipe_settings
from tests.helpers.tiny import EXAMPLES, adamw_step, char_tokenizer, tiny_backbone
from tests.helpers.training import vl_folder, write_vl_data

# The authors' values, read from github siryuson/BottleneckTokens (configs/presets/btoks_qwen2vl_2b_v1.yaml,
# configs/training/btoks_base.yaml, configs/peft/lora_default.yaml, configs/models/btoks_qwen2vl_2b_v1.yaml,
# src/vlm2emb/training/train.py), written out here independently of btok_model.training.presets.
AUTHORS = dict(
    num_btoks=4,
    pooling="mean",
    temperature=0.02,
    generative_weight=5.0,
    generative_steps=2000,
    generative_normalization="authors",
    btok_init="checkpoint",
    lora_r=16,
    lora_alpha=32,
    lora_dropout=0.05,
    lora_dora=True,
    lora_init="gaussian",
    lora_modules=["qkv_proj", "o_proj", "gate_up_proj", "down_proj", "k_proj", "q_proj", "out_proj", "v_proj"],
    lora_layers=None,
    max_steps=5000,
    batch_size=128,
    chunk_size=8,
    lr=5e-5,
    lr_scheduler="linear",
    weight_decay=0.01,
    warmup_steps=100,
    max_grad_norm=1.0,
    bf16=True,
    seed=42,
    logging_steps=1,
    save_steps=50,
    image_min_pixels=3136,
    image_max_pixels=1003520,
    video_min_pixels=3136,
    video_max_pixels=602112,
    source_block_size=512,
    source_block_mode="authors",
    save_adapters=True,
)
BASE = ["--train-data", "d.jsonl", "--output-dir", "out"]


def _parse(*flags):
    return parser().parse_args([*BASE, *flags])


def test_preset_resolves_to_the_authors_values_and_flags_win():
    args = _parse("--preset", "btoks-qwen2vl-2b-v1")
    values = resolve_arguments(args)
    assert values["model"] == ("Qwen/Qwen2-VL-2B-Instruct", "preset") and values["no_btoks"][0] is False
    recipe = recipe_from_args(args).to_dict()
    assert {k: recipe[k] for k in AUTHORS} == AUTHORS
    assert all(values[k][1] == "preset" for k in AUTHORS)
    assert values["max_length"] == (None, "default")
    # An explicit flag beats the preset, even when it gives the default's value.
    recipe = recipe_from_args(
        _parse("--preset", "btoks-qwen2vl-2b-v1", "--lr", "1e-4", "--no-bf16", "--max-length", "9")
    )
    assert (recipe.lr, recipe.bf16, recipe.embedder.max_length) == (1e-4, False, 9)
    assert recipe.embedder.temperature == 0.02 and recipe.lora_dora
    ratio = recipe_from_args(_parse("--preset", "btoks-qwen2vl-2b-v1", "--warmup-ratio", "0.1"))
    assert (ratio.warmup_ratio, ratio.warmup_steps) == (0.1, None)
    with pytest.raises(ValueError, match="--warmup-ratio or --warmup-steps, not both"):
        resolve_arguments(_parse("--warmup-ratio", "0.1", "--warmup-steps", "5"))
    # Without a preset: btok's plain defaults.
    assert recipe_from_args(_parse()) == Recipe()


def test_vlm2vec_preset_is_the_no_btok_baseline():
    args = _parse("--preset", "vlm2vec-qwen2vl-2b")
    values = resolve_arguments(args)
    recipe = recipe_from_args(args)
    assert values["no_btoks"] == (True, "preset") and recipe.embedder == PooledConfig(pooling="last")
    assert recipe.schedule.weight == 0 and recipe.generative_steps is None
    btok_only = ("num_btoks", "pooling", "generative_weight", "generative_steps", "generative_normalization")
    shared = {k: v for k, v in AUTHORS.items() if k not in (*btok_only, "btok_init")}
    assert {k: recipe.to_dict()[k] for k in shared} == shared


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_set_settings_by_their_field_names(preset):
    names = {f.name for f in recipe_settings()} | {"model", "no_btoks"}
    assert set(PRESETS[preset].values) <= names
    values = dict(PRESETS[preset].values)
    btoks = not values.pop("no_btoks")
    values.pop("model")
    assert Recipe.from_values(values, btoks=btoks).btoks == btoks


def test_dora_with_gaussian_init_trains_saves_and_reloads(tmp_path):
    recipe = Recipe(lora_r=4, lora_alpha=8, lora_dora=True, lora_init="gaussian", lora_modules="q_proj,v_proj")
    torch.manual_seed(0)
    model = build_model(tiny_backbone("qwen2"), recipe, char_tokenizer())
    adapted = {n.split(".lora_")[0] for n, p in model.named_parameters() if p.requires_grad and ".lora_" in n}
    assert adapted and {n.rsplit(".", 1)[-1] for n in adapted} == {"q_proj", "v_proj"}
    magnitudes = [n for n, _ in model.named_parameters() if "lora_magnitude_vector" in n]
    assert len(magnitudes) == len(adapted), "DoRA keeps a magnitude vector per adapted layer"
    a = next(p for n, p in model.named_parameters() if "lora_A" in n)
    b = next(p for n, p in model.named_parameters() if "lora_B" in n)
    assert torch.count_nonzero(b) == 0 and abs(a.std().item() - 1 / 4) < 0.05  # PEFT's gaussian: std 1/r
    adamw_step(model, EXAMPLES)
    model.save_pretrained(tmp_path)
    again = BTokModel.from_pretrained(tmp_path)
    texts = ["what is a cat?", "paris", "x"]
    torch.testing.assert_close(again.encode(texts), model.encode(texts), rtol=1e-5, atol=1e-5)


def test_the_seed_fixes_the_adapters_init():
    """A run is reproducible from its recipe: the LoRA adapters' random init follows its seed
    (before, it drew from whatever state the caller's generator was in)."""
    recipe = Recipe(lora_r=2, lora_dora=True, lora_init="gaussian", seed=3)
    models = []
    for draw in range(3):
        torch.manual_seed(100 + draw)
        models.append(build_model(tiny_backbone("qwen2"), replace(recipe, seed=3 + draw // 2), char_tokenizer()))
    adapters = [{n: p for n, p in m.named_parameters() if "lora_A" in n} for m in models]
    assert adapters[0] and all(torch.equal(adapters[0][n], adapters[1][n]) for n in adapters[0])
    assert not any(torch.equal(adapters[0][n], adapters[2][n]) for n in adapters[0])


def test_preset_run_on_a_tiny_vision_language_folder(tmp_path, float32_cpu, capsys):
    backbone = vl_folder(tmp_path, "qwen2_vl")
    train, _ = write_vl_data(tmp_path)
    out = tmp_path / "run"
    overrides = ["--max-steps", "1", "--batch-size", "2", "--lora-r", "2", "--source-block-size", "none"]
    argv = ["--preset", "btoks-qwen2vl-2b-v1", "--model", str(backbone), "--train-data", str(train)]
    assert train_main([*argv, "--output-dir", str(out), *overrides]) == 0
    printed = capsys.readouterr().out
    assert "bf16 mixed precision off (asked by the preset): mocked: no bf16 flags" in printed
    command = json.loads((out / "train_command.json").read_text())
    assert command["preset"] == "btoks-qwen2vl-2b-v1" and command["model"] == str(backbone)
    changed = dict(max_steps=1, batch_size=2, lora_r=2, source_block_size=None, bf16=False)
    assert {k: command["recipe"][k] for k in AUTHORS} == {**AUTHORS, **changed}
    assert {k: command["from"][k] for k in changed} == {k: "flag" for k in changed if k != "bf16"} | {"bf16": "preset"}
    assert command["from"]["lr"] == "preset" and command["from"]["model"] == "flag"
    from safetensors.torch import load_file

    trained = list(load_file(out / "trainable_parameters.safetensors"))  # what trained, kept for resuming
    adapted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trained if ".lora_" in n}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "down_proj"}, "the authors' list, language model only"
    assert all(".language_model." in n for n in trained if ".lora_" in n)
    assert any("lora_magnitude_vector" in n for n in trained), "DoRA"
    saved = json.loads((out / "preprocessor_config.json").read_text())["size"]
    assert saved == {"shortest_edge": 3136, "longest_edge": 1003520}
    assert (out / "adapter" / "adapter_config.json").is_file(), "the final model keeps its adapters unmerged"
    assert (out / "checkpoint-1").is_dir() and not (out / "checkpoint-1" / "adapter").exists(), "checkpoints: merged"
    model = BTokModel.from_pretrained(out)
    assert hasattr(model.backbone, "peft_config")
    cfg = model.config
    assert cfg.num_btoks == 4 and cfg.temperature == 0.02 and cfg.generative_weight == 5.0
