"""MaxSim and Matryoshka from the command line: train with ``--similarity maxsim
--matryoshka-dims``, evaluate with ``--similarity`` and ``--dims``, and the bad options."""

import json

import pytest
import torch

from btok_model import BTokModel
from btok_model.datasets import write_jsonl
from btok_model.embedder.similarity import maxsim, truncate
from btok_model.evaluate import main as evaluate_main
from btok_model.evaluation import load_task, metrics_from_scores
from btok_model.train import main as train_main
from tests.helpers.tiny import tiny_btok
from tests.helpers.training import examples


@pytest.fixture
def backbone(tmp_path, saved_backbone):
    write_jsonl(tmp_path / "train.jsonl", examples(8))
    return saved_backbone


def _train_argv(tmp_path, backbone, out, *extra):
    return [
        "--model",
        str(backbone),
        "--train-data",
        str(tmp_path / "train.jsonl"),
        "--output-dir",
        str(out),
        "--batch-size",
        "4",
        "--lora-r",
        "0",
        "--max-steps",
        "2",
        "--warmup-ratio",
        "0",
        "--save-steps",
        "0",
        "--logging-steps",
        "1",
        "--attn-implementation",
        "sdpa",
        *extra,
    ]


def test_train_maxsim_matryoshka_then_evaluate_at_each_dim(tmp_path, backbone, capsys):
    out = tmp_path / "run"
    flags = ["--similarity", "maxsim", "--matryoshka-dims", "16", "full", "--matryoshka-weights", "1", "0.5"]
    assert train_main(_train_argv(tmp_path, backbone, out, *flags)) == 0
    recipe = json.loads((out / "train_command.json").read_text())["recipe"]
    assert recipe["similarity"] == "maxsim" and recipe["matryoshka_dims"] == [16, "full"]
    assert recipe["matryoshka_weights"] == [1.0, 0.5]
    config = json.loads((out / "btok_config.json").read_text())
    assert config["similarity"] == "maxsim" and config["matryoshka_dims"] == [16, "full"]
    st_config = json.loads((out / "config_sentence_transformers.json").read_text())
    assert st_config["model_type"] == "MultiVectorEncoder" and st_config["similarity_fn_name"] == "maxsim"

    data = tmp_path / "test.jsonl"
    write_jsonl(
        data,
        [
            {"query": q, "positive": p}
            for q, p in [("frozen water", "ice"), ("a baby dog", "a puppy"), ("what bees make", "honey")]
        ],
    )
    common = ["--model", str(out), "--data", str(data), "--attn-implementation", "sdpa", "--device", "cpu"]
    common += ["--torch-dtype", "float32", "--no-progress-bar"]
    results = evaluate_main([*common, "--dims", "16", "full", "--output", str(tmp_path / "scores.json")])
    assert results["similarity"] == "maxsim" and results["dims"] == [16, None]
    assert [t["dims"] for t in results["tasks"]] == [16, None]
    printed = capsys.readouterr().out
    assert " @ 16 dims: 3 queries" in printed and " @ full dims: 3 queries" in printed

    # The same metrics directly: MaxSim of the truncated, re-normalised K vectors.
    model = BTokModel.from_pretrained(out, attn_implementation="sdpa")
    task = load_task(data)
    q = model.encode(task.queries, multi_vector=True)
    c = model.encode(task.candidates, multi_vector=True)
    for result, d in zip(results["tasks"], (16, 64)):
        expected = metrics_from_scores(maxsim(truncate(q, d), truncate(c, d)), task.positive_index)
        for name, value in expected.items():
            assert result[name] == pytest.approx(float(value), abs=1e-6), (d, name)

    cosine = evaluate_main([*common, "--similarity", "cosine"])
    assert cosine["similarity"] == "cosine" and cosine["dims"] is None and "dims" not in cosine["tasks"][0]
    pooled_q, pooled_c = model.encode(task.queries), model.encode(task.candidates)
    expected = metrics_from_scores(pooled_q @ pooled_c.T, task.positive_index)
    assert cosine["tasks"][0]["mrr@10"] == pytest.approx(float(expected["mrr@10"]), abs=1e-6)


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--matryoshka-dims", "16", "8"], "strictly increasing"),
        (["--matryoshka-dims", "8", "8"], "no duplicates"),
        (["--matryoshka-dims", "0", "full"], "expected an int >= 1 or 'full', got '0'"),
        (["--matryoshka-dims", "8", "full", "--matryoshka-weights", "1"], "one weight per Matryoshka dimension"),
        (["--matryoshka-weights", "1"], "one weight per Matryoshka dimension"),
        (["--matryoshka-dims", "16", "128"], "128 is larger than the embedding size 64"),
        (["--no-btoks", "--pooling", "last", "--similarity", "maxsim"], "a model without BToks has one vector"),
    ],
    ids=["decreasing", "duplicate", "zero", "weights-count", "weights-without-dims", "above-H", "maxsim-no-btoks"],
)
def test_bad_training_options_fail_before_the_first_step(tmp_path, backbone, capsys, flags, message):
    out = tmp_path / "bad"
    with pytest.raises(SystemExit):
        train_main(_train_argv(tmp_path, backbone, out, *flags))
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (out / "train_command.json").exists()  # nothing trained


def test_bad_evaluation_options(tmp_path, capsys):
    model_dir = tmp_path / "model"
    tiny_btok("llama", attn="sdpa").save_pretrained(model_dir)
    data = tmp_path / "test.jsonl"
    write_jsonl(data, [{"query": "frozen water", "positive": "ice"}])
    common = ["--data", str(data), "--attn-implementation", "sdpa", "--device", "cpu", "--no-progress-bar"]
    cases = [
        ([*common, "--model", str(model_dir), "--dims", "32", "16"], "--dims must be strictly increasing"),
        ([*common, "--model", str(model_dir), "--dims", "128"], "--dims: 128 is larger than the embedding size 64"),
        ([*common, "--baseline", "tfidf", "--dims", "16"], "--similarity and --dims apply to embedders"),
        ([*common, "--model", str(model_dir), "--baseline", "mean", "--similarity", "maxsim"], "a --baseline has one"),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as raised:
            evaluate_main(argv)
        assert message in str(raised.value), (argv, raised.value)
    torch.manual_seed(0)  # the cosine model scored by MaxSim: allowed (no extra training)
    results = evaluate_main([*common, "--model", str(model_dir), "--similarity", "maxsim"])
    assert results["similarity"] == "maxsim"
