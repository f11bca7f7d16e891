"""The command lines on saved tiny Qwen2-VL / Qwen2.5-VL folders with image examples: train
(with a checkpoint), evaluate (the BTok model and the no-BTok baseline on the VL backbone),
reload in sentence-transformers; what fails before the first step."""

import json

import pytest
import torch

from btok_model import BTokModel
from btok_model.embedder.backbone import transformers_model
from btok_model.evaluate import main as evaluate_main
from btok_model.train import main as train_main
from tests.helpers.tiny import tiny_vl_backbone, vl_tokenizer
from tests.helpers.training import VL_EVAL, vl_folder, write_vl_data

TEXTS = ["a red square", "the sky is blue", "x"]


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_train_evaluate_and_reload_a_vision_language_backbone(tmp_path, family, float32_cpu, capsys):
    st = pytest.importorskip("sentence_transformers")
    backbone = vl_folder(tmp_path, family)
    train, evaluation = write_vl_data(tmp_path)
    out = tmp_path / "run"
    argv = ["--model", str(backbone), "--train-data", str(train), "--output-dir", str(out), "--batch-size", "2"]
    argv += ["--max-steps", "2", "--save-steps", "1", "--lora-r", "2", "--warmup-ratio", "0", "--logging-steps", "1"]
    assert train_main(argv) == 0
    assert "weights: float32: mocked: no bf16 flags" in capsys.readouterr().out
    state = json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())
    logs = [e for e in state["log_history"] if "loss" in e]
    assert len(logs) == 2 and all("generative_loss" in e for e in logs)
    model = BTokModel.from_pretrained(out)
    assert type(transformers_model(model.backbone)) is type(tiny_vl_backbone(family))
    assert model.processor is not None and model.tokenizer("a cat")["input_ids"] == vl_tokenizer()("a cat")["input_ids"]
    checkpoint = BTokModel.from_pretrained(out / "checkpoint-1")
    assert checkpoint.config.num_btoks == 4

    result = evaluate_main(["--model", str(out), "--data", str(evaluation), "--no-progress-bar"])
    queries = [
        {"text": e["query"], "image": str(tmp_path / e["query_image"])} if "query_image" in e else e["query"]
        for e in VL_EVAL
    ]
    candidates = [
        {"text": e["positive"], "image": str(tmp_path / e["positive_image"])}
        if "positive_image" in e
        else e["positive"]
        for e in VL_EVAL
    ]
    emb = model.encode(queries + candidates)
    ranks = (emb[:3] @ emb[3:].T).argsort(dim=1, descending=True)
    recall_at_1 = (ranks[:, 0] == torch.arange(3)).float().mean().item()
    assert result["tasks"][0]["recall@1"] == pytest.approx(recall_at_1, abs=1e-6)
    baseline = evaluate_main(
        ["--model", str(backbone), "--baseline", "last-token", "--data", str(evaluation), "--no-progress-bar"]
    )
    assert baseline["baseline"] == "last-token" and baseline["tasks"][0]["num_queries"] == 3

    loaded = st.SentenceTransformer(str(out), device="cpu", trust_remote_code=True)
    torch.testing.assert_close(loaded.encode(TEXTS, convert_to_tensor=True), model.encode(TEXTS), rtol=1e-5, atol=1e-6)


def test_failures_at_the_end_are_caught_before_the_first_step(tmp_path, capsys):
    train, _ = write_vl_data(tmp_path)
    (tmp_path / "a-file").write_text("")
    base = ["--model", "no/such-model", "--train-data", str(train)]
    with pytest.raises(SystemExit) as exit_:
        train_main([*base, "--output-dir", str(tmp_path / "a-file" / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1
    assert err[0].startswith(f"error: --output-dir {tmp_path / 'a-file' / 'run'}: cannot write there")
    with pytest.raises(SystemExit):
        train_main([*base, "--output-dir", str(tmp_path / "run"), "--source-block-size", "4"])
    assert capsys.readouterr().err.startswith("error: --source-block-size")
    with pytest.raises(SystemExit):
        train_main(["--train-data", str(train), "--output-dir", str(tmp_path / "run")])
    assert capsys.readouterr().err.strip() == "error: --model is required (or a --preset that names one)"
