"""Evaluation files, the runner and ``python -m btok_model.evaluate`` end to end on tiny models."""

import copy
import json

import pytest
import torch

from btok_model.datasets import DataError
from btok_model.embedder.pooled import PooledEmbedder
from btok_model.embedder.precision import resolve_dtype
from btok_model.evaluate import main as evaluate_main
from btok_model.evaluation import EmbeddingScorer, TfidfTaskScorer, evaluate, load_task
from btok_model.evaluation.metrics import metrics_from_scores
from tests.helpers.tiny import char_tokenizer, tiny_backbone, tiny_btok


def _write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


PAIRS = [
    {"query": "a small furry pet", "positive": "cat"},
    {"query": "it barks", "positive": "dog"},
    {"query": "a pet that meows", "positive": "cat"},  # the same positive: one candidate, shared
    {"query": "frozen water", "positive": "ice"},
]


class _Lookup:
    """An embedder with fixed vectors per text, to check the runner's bookkeeping."""

    def __init__(self, table):
        self.table = table

    def encode(self, inputs, batch_size=32, show_progress_bar=False):
        return torch.nn.functional.normalize(torch.tensor([self.table[x] for x in inputs], dtype=torch.float32), dim=-1)


def test_pairs_pool_dedup_and_corpus(tmp_path):
    data = _write(tmp_path / "pairs.jsonl", PAIRS)
    corpus = _write(tmp_path / "corpus.jsonl", [{"text": "dog"}, {"text": "fish"}])
    task = load_task(data, corpus)
    assert task.candidates == ["cat", "dog", "ice", "fish"]
    assert task.positive_index.tolist() == [0, 1, 0, 2]


def test_runner_matches_direct_scores(tmp_path):
    task = load_task(_write(tmp_path / "pairs.jsonl", PAIRS), _write(tmp_path / "c.jsonl", [{"text": "fish"}]))
    table = {
        "a small furry pet": [1, 0, 0],
        "it barks": [0, 0, 1],
        "a pet that meows": [0.9, 0.1, 0],
        "frozen water": [0, 0.5, 0.5],
        "cat": [1, 0.1, 0],
        "dog": [0.5, 0, 1],
        "ice": [0, 1, 0.1],
        "fish": [0, 1, 0],
    }
    scorer = EmbeddingScorer(_Lookup(table))
    result = evaluate(task, scorer, block=3)
    q, c = scorer.encode(task.queries), scorer.encode(task.candidates)
    direct = metrics_from_scores(q @ c.T, task.positive_index)
    assert {k: result[k] for k in direct} == pytest.approx(direct)
    assert result["num_queries"] == 4 and result["num_candidates"] == 4 and result["layout"] == "pairs"
    assert "per_query" not in result


def test_runner_per_query_metrics(tmp_path):
    task = load_task(_write(tmp_path / "pairs.jsonl", PAIRS), _write(tmp_path / "c.jsonl", [{"text": "fish"}]))
    # candidates cat, dog, ice, fish; each query's positive lands at a chosen rank
    table = {
        "cat": [1, 0, 0, 0],
        "dog": [0, 1, 0, 0],
        "ice": [0, 0, 1, 0],
        "fish": [0, 0, 0, 1],
        "a small furry pet": [1, 0, 0, 0],  # cat first
        "it barks": [0, 0.5, 1, 0.5],  # dog tied with fish behind ice: rank 2 or 3
        "a pet that meows": [0.1, 0.2, 0.3, 0.4],  # cat last: rank 4
        "frozen water": [0, 0, 1, 1],  # ice tied with fish: rank 1 or 2
    }
    scorer = EmbeddingScorer(_Lookup(table))
    result = evaluate(task, scorer, block=3, per_query=True)
    per_query = result["per_query"]
    assert per_query["recall@1"] == pytest.approx([1.0, 0.0, 0.0, 0.5])
    assert per_query["mrr@10"] == pytest.approx([1.0, (1 / 2 + 1 / 3) / 2, 1 / 4, (1 + 1 / 2) / 2])
    for name, values in per_query.items():
        assert sum(values) / len(values) == pytest.approx(result[name])


def test_candidate_lists(tmp_path):
    rows = [
        {"query": "a small furry pet", "candidates": ["dog", "cat", "ice"], "label": 1},
        {"query": "frozen water", "candidates": ["ice", "fish"], "label": 0},
        {"query": "it barks", "candidates": ["cat", {"text": "dog"}], "label": 1},
    ]
    task = load_task(_write(tmp_path / "lists.jsonl", rows))
    table = {
        "a small furry pet": [1, 0],
        "frozen water": [0, 1],
        "it barks": [1, 0],
        "dog": [0.9, 0.1],
        "cat": [1, 0],
        "ice": [0, 1],
        "fish": [0.1, 0.9],
    }
    result = evaluate(task, EmbeddingScorer(_Lookup(table)))
    # query 0: cat (1.0) beats dog; query 1: ice first; query 2: cat (1.0) beats dog (0.99) -> rank 2
    assert result["hit@1"] == pytest.approx(2 / 3)
    assert result["mrr@10"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert len(task.candidates) == 4


@pytest.mark.parametrize(
    "rows, message",
    [
        ([PAIRS[0], {"query": "q"}], ":2: missing field 'positive'"),
        ([PAIRS[0], "{oops"], ":2: not valid JSON"),
        ([{"query": "q", "candidates": ["a"], "label": 1}], r":1: field 'label' must be an int in \[0, 1\)"),
        ([{"query": "q", "candidates": ["a", ""], "label": 0}], r":1: candidates\[1\] is empty"),
        ([{"query": "q", "candidates": [{"image": "no.png"}], "label": 0}], r":1: candidates\[0\].image: image file"),
        ([{"query": "q", "positive": "p", "query_image": "x.png"}], ":1: field 'query_image': image file 'x.png'"),
        ([{"query": "q", "candidates": ["a"], "label": 0}, PAIRS[0]], ":2: unknown field"),
    ],
    ids=["missing", "json", "label", "empty-candidate", "candidate-image", "query-image", "mixed-layouts"],
)
def test_bad_evaluation_data(tmp_path, rows, message):
    path = _write(tmp_path / "bad.jsonl", rows)
    with pytest.raises(DataError, match=f"{path}{message}"):
        load_task(path)


def test_tfidf_refuses_images(tmp_path):
    (tmp_path / "cat.png").write_bytes(b"png")
    task = load_task(_write(tmp_path / "p.jsonl", [{"query": "q", "positive_image": "cat.png"}]))
    assert task.candidates == [{"text": None, "image": str(tmp_path / "cat.png")}]
    with pytest.raises(ValueError, match="TF-IDF scores text only"):
        evaluate(task, TfidfTaskScorer())


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_pooled_baseline_adds_no_tokens(pooling):
    tokenizer = char_tokenizer()
    size = len(tokenizer)
    backbone = tiny_backbone()
    reference = copy.deepcopy(backbone)
    reference.set_attn_implementation("eager")
    model = PooledEmbedder.from_backbone(backbone, tokenizer, pooling, attn_implementation="btok_triton")
    assert len(tokenizer) == size and backbone.get_input_embeddings().weight.shape[0] == 64
    texts = ["frozen water", "a cat", "it barks loudly today"]
    emb = model.encode(texts, batch_size=2)
    ids = tokenizer(texts[2])["input_ids"]
    with torch.no_grad():
        hidden = reference.model(input_ids=torch.tensor([ids])).last_hidden_state[0]
    pooled = hidden[-1] if pooling == "last" else hidden.mean(0)
    torch.testing.assert_close(emb[2], torch.nn.functional.normalize(pooled, dim=-1), rtol=1e-5, atol=1e-6)
    # The packed training pass pools the same states.
    batch = model.collate([{"query": texts[2], "positive": texts[0]}])
    with torch.no_grad():
        embedded = model.embed_batch(batch)
    torch.testing.assert_close(embedded.query_embeddings[0], emb[2], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(embedded.candidate_embeddings[0], emb[0], rtol=1e-5, atol=1e-6)
    # Padded batches (another attention backend) and both poolings from one pass agree.
    both = model.encode(texts, batch_size=3, poolings=("last", "mean")).split(emb.shape[1], dim=1)
    torch.testing.assert_close(both[("last", "mean").index(pooling)], emb, rtol=1e-5, atol=1e-6)
    model.backbone.set_attn_implementation("sdpa")
    torch.testing.assert_close(model.encode(texts, batch_size=3), emb, rtol=1e-5, atol=1e-6)


def test_cli_btok_model_baselines_and_tfidf(tmp_path):
    model = tiny_btok()
    model.save_pretrained(tmp_path / "btok")
    data = _write(tmp_path / "pairs.jsonl", PAIRS)
    out = tmp_path / "scores.json"
    result = evaluate_main(
        ["--model", str(tmp_path / "btok"), "--data", str(data), "--output", str(out), "--no-progress-bar"]
    )
    saved = json.loads(out.read_text())
    assert saved["tasks"][0]["num_candidates"] == 3 and saved == json.loads(json.dumps(result))
    emb = model.encode([p["query"] for p in PAIRS] + ["cat", "dog", "ice"])
    direct = metrics_from_scores(emb[:4] @ emb[4:].T, torch.tensor([0, 1, 0, 2]))
    assert {k: saved["tasks"][0][k] for k in direct} == pytest.approx(direct, abs=1e-6)
    # --baseline mean: the saved model's backbone without BToks, mean-pooled; its metrics are those of its scores
    pooled = PooledEmbedder.from_backbone(str(tmp_path / "btok"), pooling="mean", dtype=resolve_dtype(None).dtype)
    emb = pooled.eval().encode([p["query"] for p in PAIRS] + ["cat", "dog", "ice"])
    direct = metrics_from_scores(emb[:4] @ emb[4:].T, torch.tensor([0, 1, 0, 2]))
    # --baseline tfidf: only "a pet that meows" shares a character n-gram ("at ") with a candidate, its
    # positive "cat"; the other three queries tie all 3 candidates (expected recall@1 1/3, RR 11/18)
    tfidf = {"recall@1": (3 * (1 / 3) + 1) / 4, "mrr@10": (3 * (11 / 18) + 1) / 4}
    for baseline, want in (("mean", direct), ("tfidf", tfidf)):
        r = evaluate_main(
            ["--model", str(tmp_path / "btok"), "--baseline", baseline, "--data", str(data), "--no-progress-bar"]
        )
        assert r["baseline"] == baseline
        assert {k: r["tasks"][0][k] for k in want} == pytest.approx(want, abs=1e-6), baseline
    with pytest.raises(SystemExit, match="not a saved BTok model"):
        evaluate_main(["--model", str(tmp_path), "--data", str(data)])
