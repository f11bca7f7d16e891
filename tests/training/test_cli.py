"""``python -m btok_model.train`` end to end on a tiny saved backbone: flags, outputs, --resume."""

import json
import re

import pytest

from btok_model import BTokModel
from btok_model.datasets import write_jsonl
from btok_model.train import main
from tests.helpers.training import examples


def test_train_cli(tmp_path, saved_backbone):
    write_jsonl(tmp_path / "a.jsonl", examples(6))
    write_jsonl(tmp_path / "b.jsonl", examples(12)[6:])
    out = tmp_path / "run"
    argv = [
        "--model",
        str(saved_backbone),
        "--train-data",
        f"{tmp_path / 'a.jsonl'}:0.5",
        f"{tmp_path / 'b.jsonl'}:0.5",
        "--output-dir",
        str(out),
        "--batch-size",
        "4",
        "--lora-r",
        "2",
        "--lora-layers",
        "1",
        "--grad-cache-chunk",
        "2",
        "--generative-weight",
        "2",
        "--generative-steps",
        "1",
        "--warmup-ratio",
        "0",
        "--save-steps",
        "1",
        "--logging-steps",
        "1",
        "--num-btoks",
        "2",
        "--temperature",
        "0.05",
    ]
    assert main([*argv, "--max-steps", "2"]) == 0
    command = json.loads((out / "train_command.json").read_text())
    assert command["recipe"]["lora_layers"] == [1] and command["examples_per_epoch"] == 12
    model = BTokModel.from_pretrained(out)
    cfg = model.config
    assert cfg.num_btoks == 2 and cfg.temperature == 0.05 and cfg.generative_weight == 2.0
    assert (out / "modules.json").is_file()  # sentence-transformers loads it too
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    logs = [e for e in state["log_history"] if "loss" in e]
    assert [e["generative_weight"] for e in logs] == [2.0, 0.0] and "generative_loss" not in logs[1]

    main([*argv, "--max-steps", "3", "--resume"])
    state = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3 and len([e for e in state["log_history"] if "loss" in e]) == 3


def test_lora_layers_pick_the_adapted_layers():
    from tests.helpers.training import tiny_model, tiny_recipe

    model = tiny_model(tiny_recipe(lora_r=2, lora_layers=[1]))
    lora = [n for n, p in model.named_parameters() if p.requires_grad and "lora_" in n]
    assert lora and all(".layers.1." in n for n in lora)
    assert {n.split(".layers.1.")[1].split(".lora_")[0] for n in lora} == {
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    }
    assert any("trainable_tokens" in n for n, p in model.named_parameters() if p.requires_grad)


def test_train_cli_on_an_mmeb_train_subset_and_a_jsonl_file(tmp_path, capsys, saved_backbone):
    """--train-data with an MMEB-train parquet subset and a JSONL file, --target-side and
    --source-block-size: the run trains on single-source batches and records its sources.
    (Text-only rows: the tiny model here is a text model; images need a VL backbone.)"""
    from tests.helpers.mmeb_train_data import mmeb_row, write_parquet

    rows = [mmeb_row(f"which news is this? {i}\n", "", f"label {i}\n", neg_text="other\n") for i in range(4)]
    root = write_parquet(tmp_path / "mmeb", {"N24News": rows, "VisDial": [mmeb_row("a dialogue\n", "", "an image\n")]})
    jsonl = str(tmp_path / "a.jsonl")
    write_jsonl(jsonl, examples(4))
    out = tmp_path / "run"
    argv = ["--model", str(saved_backbone), "--train-data", f"{root}/N24News:3", f"{jsonl}:1", "--output-dir", str(out)]
    argv += ["--target-side", f"{jsonl}=none", "--source-block-size", "2", "--batch-size", "2", "--max-steps", "2"]
    argv += ["--no-hard-negatives"]
    argv += ["--lora-r", "2", "--num-btoks", "2", "--save-steps", "0", "--warmup-ratio", "0", "--logging-steps", "1"]
    assert main(argv) == 0
    command = json.loads((out / "train_command.json").read_text())
    assert command["recipe"]["source_block_size"] == 2 and command["examples_per_epoch"] == 8
    assert command["recipe"]["hard_negatives"] is False
    assert [(s["name"], s["examples"], s["probability"], s["target_side"]) for s in command["sources"]] == [
        ("N24News", 4, 0.75, "positive"),
        (jsonl, 4, 0.25, "none"),
    ]
    assert command["sources"][0]["layout"] == "parquet" and command["sources"][0]["split"] == "train"
    BTokModel.from_pretrained(out)

    def error(*extra) -> str:
        with pytest.raises(SystemExit):
            main(["--model", "no/such-model", "--output-dir", str(tmp_path / "x"), *extra])
        return capsys.readouterr().err.strip().splitlines()[-1]

    assert "error: argument --target-side: 'VisDial': expected SOURCE=SIDE" in error(
        "--train-data", jsonl, "--target-side", "VisDial"
    )
    assert "names no training source ['Nope']" in error("--train-data", jsonl, "--target-side", "Nope=none")
    assert "without subset(s)" in error("--train-data", root)
    assert "no weight for" in error("--train-data", f"{root}/N24News", jsonl)
    assert "source_block_size=3 must be a multiple" in error(
        "--train-data", jsonl, "--source-block-size", "3", "--batch-size", "2"
    )


# Every flag of a recipe setting, as the train command spelled them before they were built from
# the fields (issue 26): the names stay, and each maps to its setting.
RECIPE_FLAGS = {
    "--num-btoks": "num_btoks",
    "--pooling": "pooling",
    "--temperature": "temperature",
    "--generative-weight": "generative_weight",
    "--generative-steps": "generative_steps",
    "--generative-normalization": "generative_normalization",
    "--btok-init": "btok_init",
    "--similarity": "similarity",
    "--matryoshka-dims": "matryoshka_dims",
    "--matryoshka-weights": "matryoshka_weights",
    "--max-length": "max_length",
    "--lora-r": "lora_r",
    "--lora-alpha": "lora_alpha",
    "--lora-dropout": "lora_dropout",
    "--lora-dora": "lora_dora",
    "--lora-init": "lora_init",
    "--lora-modules": "lora_modules",
    "--lora-layers": "lora_layers",
    "--max-steps": "max_steps",
    "--epochs": "epochs",
    "--batch-size": "batch_size",
    "--lr": "lr",
    "--weight-decay": "weight_decay",
    "--warmup-ratio": "warmup_ratio",
    "--warmup-steps": "warmup_steps",
    "--lr-scheduler": "lr_scheduler",
    "--max-grad-norm": "max_grad_norm",
    "--bf16": "bf16",
    "--gradient-checkpointing": "gradient_checkpointing",
    "--seed": "seed",
    "--max-tokens-per-batch": "max_tokens",
    "--grad-cache-chunk": "chunk_size",
    "--image-min-pixels": "image_min_pixels",
    "--image-max-pixels": "image_max_pixels",
    "--video-min-pixels": "video_min_pixels",
    "--video-max-pixels": "video_max_pixels",
    "--hard-negatives": "hard_negatives",
    "--source-block-size": "source_block_size",
    "--source-block-mode": "source_block_mode",
    "--logging-steps": "logging_steps",
    "--save-steps": "save_steps",
    "--save-total-limit": "save_total_limit",
    "--save-adapters": "save_adapters",
    "--fsdp": "fsdp",
    "--fsdp-config": "fsdp_config",
    "--on-bad-row": "on_bad_row",
    "--dataloader-num-workers": "dataloader_num_workers",
}


def test_recipe_flags_come_from_the_settings_fields():
    """One flag per setting field, named as before, its help the field's, its default the
    Recipe's (a BTokConfig's for the method settings); nothing given: the default recipe."""
    from btok_model.embedder.config import SETTING, BTokConfig
    from btok_model.train import parser, recipe_from_args, resolve_arguments
    from btok_model.training.recipe import Recipe, recipe_settings

    p = parser()
    actions = {flag: a for a in p._actions for flag in a.option_strings}
    assert {flag: actions[flag].dest for flag in RECIPE_FLAGS} == RECIPE_FLAGS
    fields = {f.name: f for f in recipe_settings()}
    assert set(fields) == set(RECIPE_FLAGS.values())
    defaults = Recipe().to_dict()
    for flag, name in RECIPE_FLAGS.items():
        help_text = actions[flag].help
        assert help_text.startswith(fields[name].metadata[SETTING]["help"]), flag
        assert help_text.endswith(f"(default: {fields[name].metadata[SETTING].get('shown', defaults[name])})"), flag
    args = p.parse_args(["--train-data", "d", "--output-dir", "o"])
    assert recipe_from_args(args) == Recipe() and Recipe().embedder == BTokConfig()
    assert all(source == "default" for source in (s for _, s in resolve_arguments(args).values()))
    flags = ["--matryoshka-dims", "8", "full", "--lora-layers", "0-2", "--no-btoks", "--pooling", "last"]
    flags += ["--max-length", "none", "--grad-cache-chunk", "4"]
    flags += ["--on-bad-row", "error", "--dataloader-num-workers", "3"]
    given = p.parse_args(["--train-data", "d", "--output-dir", "o", *flags])
    recipe = recipe_from_args(given)
    assert not recipe.btoks and recipe.embedder.pooling == "last" and recipe.embedder.max_length is None
    assert recipe.embedder.matryoshka_dims == [8, "full"] and recipe.lora_layers == [0, 1, 2]
    assert recipe.chunk_size == 4 and recipe.schedule.weight == 0
    assert recipe.on_bad_row == "error" and recipe.dataloader_num_workers == 3


@pytest.mark.parametrize(
    "values, message",
    [
        ({"on_bad_row": "retry"}, "on_bad_row must be one of ('skip', 'error'), got 'retry'"),
        ({"dataloader_num_workers": -1}, "dataloader_num_workers must be an int >= 0, got -1"),
        ({"dataloader_num_workers": 1.5}, "dataloader_num_workers must be an int >= 0, got 1.5"),
    ],
    ids=["on-bad-row", "negative-workers", "float-workers"],
)
def test_a_recipe_refuses_bad_reading_settings(values, message):
    from btok_model.training.recipe import Recipe

    with pytest.raises(ValueError, match=re.escape(message)):
        Recipe.from_values(values)


def test_the_reading_settings_reach_the_trainer_and_the_old_keyword_warns(tmp_path):
    """``recipe.dataloader_num_workers`` and ``recipe.on_bad_row`` are what the trainer runs
    with; ``train(on_bad_row=...)`` still works, with a DeprecationWarning, and wins."""
    from btok_model.training import train
    from tests.helpers.training import examples, tiny_model, tiny_recipe

    recipe = tiny_recipe(max_steps=1, batch_size=2, on_bad_row="error", dataloader_num_workers=1)
    trainer = train(tiny_model(recipe), examples(2), recipe, str(tmp_path / "a"), save=False)
    assert trainer.args.dataloader_num_workers == 1 and trainer.on_bad_row == "error"
    with pytest.warns(DeprecationWarning, match=r"train\(on_bad_row=...\) is deprecated"):
        trainer = train(tiny_model(recipe), examples(2), recipe, str(tmp_path / "b"), save=False, on_bad_row="skip")
    assert trainer.on_bad_row == "skip"


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--matryoshka-dims", "x"], "argument --matryoshka-dims: expected an int >= 1 or 'full', got 'x'"),
        (["--max-length", "ten"], "argument --max-length: expected an int or 'none', got 'ten'"),
        (["--btok-init", "zeros"], "argument --btok-init: invalid choice: 'zeros'"),
        (["--lora-layers", "a-b"], "argument --lora-layers: expected layer indices"),
    ],
    ids=["dim", "max-length", "btok-init", "layers"],
)
def test_a_bad_flag_value_is_one_error_line(capsys, flags, message):
    from btok_model.train import parser

    with pytest.raises(SystemExit) as exit_info:
        parser().parse_args(["--train-data", "d", "--output-dir", "o", *flags])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
