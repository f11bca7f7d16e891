"""``python -m btok_model.train`` end to end on a tiny saved backbone: flags, outputs, --resume."""

import json

import pytest

from btok_model import BTokModel
from btok_model.datasets import write_jsonl
from btok_model.train import main
from tests.helpers.tiny_models import char_tokenizer, tiny_backbone
from tests.helpers.training import examples


def test_train_cli(tmp_path):
    backbone = tmp_path / "backbone"
    tiny_backbone(vocab_size=None).save_pretrained(backbone)
    char_tokenizer().save_pretrained(backbone)
    write_jsonl(tmp_path / "a.jsonl", examples(6))
    write_jsonl(tmp_path / "b.jsonl", examples(12)[6:])
    out = tmp_path / "run"
    argv = [
        "--model",
        str(backbone),
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


def test_train_cli_on_an_mmeb_train_subset_and_a_jsonl_file(tmp_path, capsys):
    """--train-data with an MMEB-train parquet subset and a JSONL file, --target-side and
    --source-block-size: the run trains on single-source batches and records its sources.
    (Text-only rows: the tiny model here is a text model; images need a VL backbone.)"""
    from tests.helpers.mmeb_train_data import mmeb_row, write_parquet

    backbone = tmp_path / "backbone"
    tiny_backbone(vocab_size=None).save_pretrained(backbone)
    char_tokenizer().save_pretrained(backbone)
    rows = [mmeb_row(f"which news is this? {i}\n", "", f"label {i}\n", neg_text="other\n") for i in range(4)]
    root = write_parquet(tmp_path / "mmeb", {"N24News": rows, "VisDial": [mmeb_row("a dialogue\n", "", "an image\n")]})
    jsonl = str(tmp_path / "a.jsonl")
    write_jsonl(jsonl, examples(4))
    out = tmp_path / "run"
    argv = ["--model", str(backbone), "--train-data", f"{root}/N24News:3", f"{jsonl}:1", "--output-dir", str(out)]
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
