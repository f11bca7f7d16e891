"""Evaluation during ``python -m btok_model.train``: metrics in the log, the best checkpoint kept and loaded."""

import json

import pytest
import torch

from btok_model import BTokModel
from btok_model.datasets import write_jsonl
from btok_model.evaluation import EmbeddingScorer, evaluate, load_task
from btok_model.train import main
from tests.helpers.training import PAIRS, examples


@pytest.fixture
def run(tmp_path, saved_backbone):
    write_jsonl(tmp_path / "train.jsonl", examples(12))
    write_jsonl(tmp_path / "eval.jsonl", [{"query": q, "positive": p} for q, p, _, _ in PAIRS])
    argv = [
        "--model", str(saved_backbone), "--train-data", str(tmp_path / "train.jsonl"),
        "--output-dir", str(tmp_path / "run"), "--batch-size", "4", "--lora-r", "0", "--lr", "3e-3",
        "--warmup-ratio", "0", "--logging-steps", "1", "--num-btoks", "2", "--generative-weight", "1",
        "--max-steps", "4",
    ]  # fmt: skip
    return tmp_path, argv


def test_metrics_logged_and_best_checkpoint_kept(run):
    tmp_path, argv = run
    eval_file = str(tmp_path / "eval.jsonl")
    flags = ["--eval-data", eval_file, "--eval-steps", "2", "--save-steps", "2"]
    assert main([*argv, *flags, "--metric-for-best-model", "eval_recall@10", "--load-best-model-at-end"]) == 0
    out = tmp_path / "run"
    state = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())
    logged = {e["step"]: e for e in state["log_history"] if "eval_recall@1" in e}
    assert sorted(logged) == [2, 4]
    assert all("loss" in e and "contrastive_loss" in e and "eval_mrr@10" in e for e in logged.values())
    values = [logged[s]["eval_recall@10"] for s in (2, 4)]
    best_step = (2, 4)[values.index(max(values))]  # the first of equal values stays best
    assert best_step == 2  # (recall@10 is 1 at both steps here) so loading the best below is not a no-op
    # the Trainer's own record, which its checkpoint rotation (save_total_limit) spares
    assert state["best_metric"] == max(values) and state["best_global_step"] == best_step
    assert state["best_model_checkpoint"] == str(out / f"checkpoint-{best_step}")
    # The logged metrics are those of the saved weights (full fine-tuning: the checkpoint is exact).
    task = load_task(eval_file)
    for step in (2, 4):
        model = BTokModel.from_pretrained(out / f"checkpoint-{step}")
        again = evaluate(task, EmbeddingScorer(model))
        for name in ("recall@1", "recall@5", "mrr@10", "ndcg@10"):
            assert logged[step][f"eval_{name}"] == pytest.approx(again[name], abs=1e-12), (step, name)
    # --load-best-model-at-end: the final folder holds the best checkpoint's weights
    texts = [q for q, _, _, _ in PAIRS[:4]]
    final = BTokModel.from_pretrained(out).encode(texts)
    best = BTokModel.from_pretrained(out / f"checkpoint-{best_step}").encode(texts)
    assert torch.equal(final, best)


def test_bad_flags_fail_before_training(run):
    tmp_path, argv = run
    eval_file = str(tmp_path / "eval.jsonl")
    cases = [
        (["--metric-for-best-model", "recall@1"], "need --eval-data"),
        (["--eval-data", eval_file, "--metric-for-best-model", "recall@2"], "'recall@2' is not one of the evaluation"),
        (
            ["--eval-data", eval_file, "--eval-steps", "2", "--save-steps", "3", "--metric-for-best-model", "mrr@10"],
            "save every multiple of 2 steps",
        ),
        (["--eval-data", str(tmp_path / "missing.jsonl")], "no such file or folder"),
        (["--eval-data", eval_file, "--eval-limit", "3"], "apply to MMEB-V2"),
        (["--eval-data", eval_file, "--eval-steps", "0"], "eval_steps must be an int >= 1"),
    ]
    for flags, message in cases:
        with pytest.raises(SystemExit, match=message):
            main([*argv, *flags])
    assert not (tmp_path / "run").exists()  # nothing started
