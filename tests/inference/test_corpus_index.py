"""``mine`` / ``evaluate --corpus-index``: an ``embed`` output as the extra candidates of a pool.

Exact (the default) equals the same runs with ``--corpus`` on the same rows (the same JSON, the
same mined file); ``--ann`` is said to be approximate in the outputs, and on a few thousand
vectors its hits recall the exact top-k; a model other than the one that embedded the output is
refused before anything is embedded; two gloo ranks give what one process gives.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from btok_model.evaluate import main as evaluate_main
from btok_model.mine import main as mine_main
from tests.helpers.tiny import tiny_btok

lance = pytest.importorskip("lance")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FAST = ["--no-progress-bar", "--device", "cpu", "--attn-implementation", "sdpa"]
# Recall@10 of the pool's ANN hits against the exact top-10 of the output's pool rows, default
# search (nprobes 20, refine_factor 10), 4,000 clustered 32-dim vectors: measured 1.0 for IVF_PQ
# (2026-12-07); the bound leaves room for Lance's unseeded PQ training.
RECALL_BOUND = 0.9


def _write(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _embed(model_dir, data, output, *more) -> str:
    from btok_model.embed import main as embed_main

    embed_main(
        ["--model", model_dir, "--data", data, "--output", output, "--no-progress-bar"]
        + ["--attn-implementation", "sdpa", "--dtype", "float32", *more]
    )
    return output


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("corpus_index")
    model = str(tmp / "model")
    tiny_btok(seed=3).save_pretrained(model)
    other = str(tmp / "other")
    tiny_btok(seed=4).save_pretrained(other)
    mine_rows = [
        {"query": f"what is thing {i % 13}", "positive": f"thing {i % 9} is " + "z" * (i % 4)}
        | ({"negatives": [f"extra {i % 5}"]} if i % 3 == 0 else {})
        for i in range(29)
    ]
    eval_rows = [
        {"query": r["query"] + " " + "q" * (i % 3), "positive": r["positive"]} for i, r in enumerate(mine_rows)
    ]
    # 300 rows (an ANN index needs 256): repeated lines, rows equal to a positive, to a query and
    # to an existing negative, so the pool's deduplication and the exclusions are exercised.
    corpus = [
        {"text": "thing 1 is z" if i % 10 == 0 else "what is thing 2" if i == 7 else f"extra {i % 290}"}
        for i in range(300)
    ]
    corpus_file = _write(tmp / "corpus.jsonl", corpus)
    lance_path = _embed(model, corpus_file, str(tmp / "corpus.lance"), "--keep-columns", "text", "--index")
    return {
        "tmp": tmp,
        "model": model,
        "other": other,
        "mine": _write(tmp / "mine.jsonl", mine_rows),
        "eval": _write(tmp / "eval.jsonl", eval_rows),
        "corpus": corpus_file,
        "lance": lance_path,
    }


def _json(path):
    with open(path) as f:
        return json.load(f)


def _drop(value, keys):
    if isinstance(value, dict):
        return {k: _drop(v, keys) for k, v in value.items() if k not in keys}
    if isinstance(value, list):
        return [_drop(v, keys) for v in value]
    return value


def _evaluate(files, name, *more):
    out = str(files["tmp"] / f"{name}.json")
    evaluate_main(["--model", files["model"], "--data", files["eval"], "--output", out, *FAST, *more])
    return _json(out)


def _mine(files, name, *more):
    out = files["tmp"] / f"{name}.jsonl"
    argv = ["--model", files["model"], "--data", files["mine"], "--output", str(out), *FAST]
    summary = mine_main(argv + ["--negatives", "3", "--skip-top", "1", "--corpus-block", "64", *more])
    return out.read_text(), summary


@pytest.mark.parametrize("dims", [[], ["--dims", "16", "full"]], ids=["full", "dims-16-full"])
def test_evaluate_exact_equals_corpus_file(files, dims):
    by_file = _evaluate(files, "by_file", "--corpus", files["corpus"], *dims)
    by_index = _evaluate(files, "by_index", "--corpus-index", files["lance"], *dims)
    assert _drop(by_index, ("seconds", "command", "corpus_index")) == _drop(by_file, ("seconds", "command"))
    pool = by_index["tasks"][0]["corpus_index"]
    # 300 rows: 30 equal a positive, 8 repeat an earlier row; they count once, as --corpus counts them
    assert pool == {"path": files["lance"], "rows": 262, "output_rows": 300, "search": "exact", "approximate": False}
    assert by_index["tasks"][0]["num_candidates"] == 29 + 262  # the 29 distinct positives first
    assert 0 < by_file["tasks"][0]["mrr@10"] < 1


def test_mine_exact_equals_corpus_file(files):
    by_file, file_summary = _mine(files, "mined_file", "--corpus", files["corpus"])
    by_index, index_summary = _mine(files, "mined_index", "--corpus-index", files["lance"])
    assert by_index == by_file
    assert index_summary["corpus_index"]["search"] == "exact" and not index_summary["corpus_index"]["approximate"]
    # scores agree to float rounding (embed encoded the rows in other batches); counts exactly
    keys = ("corpus", "corpus_index", "output", "mean_negative_score")
    assert _drop(index_summary, keys) == _drop(file_summary, keys)
    assert math.isclose(index_summary["mean_negative_score"], file_summary["mean_negative_score"], rel_tol=1e-6)
    lines = [json.loads(line) for line in by_index.splitlines()]
    mined = [n for line in lines for n in line.get("negatives", [])]
    assert "what is thing 2" not in [
        n for line in lines if line["query"] == "what is thing 2" for n in line["negatives"]
    ]
    assert any(n.startswith("extra") for n in mined) and all(len(line["negatives"]) >= 3 for line in lines)


def test_ann_is_reported_approximate(files, capsys):
    exact = _evaluate(files, "exact", "--corpus-index", files["lance"])
    ann = _evaluate(files, "ann", "--corpus-index", files["lance"], "--ann", "--ann-candidates", "30")
    printed = capsys.readouterr().out
    pool = ann["tasks"][0]["corpus_index"]
    assert pool["approximate"] is True and pool["search"] == "IVF_PQ" and pool["candidates"] == 30
    assert "approximate: 262 rows of" in printed and "IVF_PQ index" in printed
    # 300 rows in 17 partitions, 20 probed: the index sees every row and re-ranks on stored vectors
    for name in ("recall@1", "recall@10", "mrr@10"):
        assert math.isclose(ann["tasks"][0][name], exact["tasks"][0][name], abs_tol=0.05), name
    # the false-negative guard drops about 20 rows per line here: --ann-candidates (100) must see past them
    mined, summary = _mine(files, "mined_ann", "--corpus-index", files["lance"], "--ann")
    assert summary["corpus_index"]["approximate"] is True and summary["corpus_index"]["search"] == "IVF_PQ"
    assert summary["corpus_index"]["candidates"] == 100 and summary["short_lines"] == 0
    exact_lines, _ = _mine(files, "mined_exact", "--corpus-index", files["lance"])
    pairs = [
        (set(json.loads(a)["negatives"]), set(json.loads(b)["negatives"]))
        for a, b in zip(mined.splitlines(), exact_lines.splitlines())
    ]
    assert np.mean([len(a & b) / len(b) for a, b in pairs]) >= 0.9


def _user_error(capsys, run, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        run(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def test_another_model_is_refused_before_anything_is_embedded(files, capsys, monkeypatch):
    import btok_model.embedder.encode as engine

    def refuse(*args, **kwargs):
        raise AssertionError("something was embedded")

    monkeypatch.setattr(engine, "iter_encoded_blocks", refuse)
    monkeypatch.setattr(engine, "encode_block", refuse)
    for run, data, extra in ((evaluate_main, files["eval"], []), (mine_main, files["mine"], ["--output", "x.jsonl"])):
        argv = ["--model", files["other"], "--data", data, "--corpus-index", files["lance"], *FAST, *extra]
        line = _user_error(capsys, run, argv)
        assert line.startswith(f"error: --corpus-index: {files['lance']} was embedded by {files['model']}"), line
        assert "same model" in line


def test_user_errors(files, capsys, tmp_path):
    plain = _embed(files["model"], files["corpus"], str(tmp_path / "plain.lance"), "--limit", "20")
    mine = ["--model", files["model"], "--data", files["mine"], "--output", str(tmp_path / "m.jsonl"), *FAST]
    line = _user_error(capsys, mine_main, mine + ["--corpus-index", plain])
    assert "--keep-columns text" in line, line
    line = _user_error(capsys, mine_main, mine + ["--corpus-index", files["lance"], "--corpus", files["corpus"]])
    assert "not both" in line
    line = _user_error(capsys, mine_main, mine + ["--ann"])
    assert "--ann searches the ANN index of a --corpus-index" in line
    ev = ["--model", files["model"], "--data", files["eval"], *FAST]
    line = _user_error(capsys, evaluate_main, ev + ["--corpus-index", plain, "--ann"])
    assert "has no ANN index" in line, line
    line = _user_error(capsys, evaluate_main, ev + ["--corpus-index", files["lance"], "--ann", "--ann-candidates", "5"])
    assert "--ann-candidates must be an int >= 10" in line
    line = _user_error(capsys, evaluate_main, ev + ["--corpus-index", str(tmp_path / "none.lance")])
    assert "no such Lance table" in line
    short = _embed(files["model"], files["corpus"], str(tmp_path / "short.lance"), "--limit", "20", "--dims", "16")
    line = _user_error(capsys, evaluate_main, ev + ["--corpus-index", short])
    assert line.startswith(f"error: --corpus-index: {short} stores 16-dim vectors") and "full-size" in line, line


def test_pool_ann_recall_against_exact(tmp_path):
    """A pool of 50 head rows and 4,000 output rows (40 of them equal to a head input, left out):
    the ANN hits against the exact top-10 of the pool's output rows."""
    import pyarrow as pa

    from btok_model.embedder.encode import EncodedShard
    from btok_model.inference.index import build_index
    from btok_model.inference.lance_store import EmbeddingStore, output_schema
    from btok_model.inference.pools import IndexPool, PoolOptions, open_pool_index
    from btok_model.inference.readers import Row
    from btok_model.inference.scoring import merge_topk, topk

    n, dim, head = 4000, 32, 50
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(40, dim, generator=g)
    vectors = torch.nn.functional.normalize(
        centres[torch.randint(0, 40, (n,), generator=g)] + 0.5 * torch.randn(n, dim, generator=g), dim=-1
    )
    texts = [f"head {i % head}" if i % 100 == 0 else f"row {i}" for i in range(n)]
    settings = {"weights": "w", "fields": {"text": "text", "image": "image", "video": "video"}, "source_kind": "jsonl"}
    schema = output_schema(dim, "float32", None, [("text", pa.string())], {"format": 1, "settings": settings})
    path = str(tmp_path / "p.lance")
    store = EmbeddingStore.open(path, schema, block_size=1000, dtype="float32")
    for b in range(4):
        rows = [Row(i, f"r{i}", None, {"text": texts[i]}) for i in range(1000 * b, 1000 * (b + 1))]
        store.write_block(b, rows, vectors[1000 * b : 1000 * (b + 1)].numpy())
    store.finish(4)
    build_index(path, index_type="IVF_PQ")
    options = PoolOptions(path, ann=True, candidates=20)
    pool = IndexPool(open_pool_index(options), options, {(f"head {i}", None): i for i in range(head)})
    assert pool.num_rows == head + n - 40 and pool.describe()["approximate"]
    queries = torch.nn.functional.normalize(vectors[:64] + 0.3 * torch.randn(64, dim, generator=g), dim=-1)

    whole = pool.shard(lambda lo, hi: torch.zeros(hi - lo, dim), 512, shard=False)
    rows = EncodedShard(whole.embeddings[head:], head, pool.num_rows, pool.num_rows, 512)
    exact = topk(queries, rows, 10)
    ann = merge_topk([pool.ann(queries, shard=False)], 10)
    kept = set(range(head, pool.num_rows))
    assert set(ann.indices[ann.indices >= 0].tolist()) <= kept  # the 40 left-out rows never come back
    # rows 0 and 100 are left out ("head 0"): pool indices head, head + 99 hold output rows 1, 101
    assert torch.equal(whole.embeddings[head], vectors[1]) and torch.equal(whole.embeddings[head + 99], vectors[101])
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(ann.indices.tolist(), exact.indices.tolist())])
    assert recall >= RECALL_BOUND, f"recall@10 {recall:.3f} < {RECALL_BOUND}"


def _run_driver(out, files, nproc: int | None) -> None:
    env = {**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
        if nproc
        else [sys.executable]
    )
    inputs = [files["model"], files["eval"], files["mine"], files["lance"]]
    command = [*launcher, "-m", "tests.inference.corpus_index_ranks", str(out), *inputs]
    done = subprocess.run(command, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]


def test_two_gloo_ranks_equal_one(files):
    one, two = files["tmp"] / "one", files["tmp"] / "two"
    one.mkdir()
    two.mkdir()
    _run_driver(one, files, None)
    _run_driver(two, files, 2)
    assert (one / "world.txt").read_text() == "1" and (two / "world.txt").read_text() == "2"
    for name in ("exact", "ann"):
        a, b = (_json(run / f"evaluate_{name}.json") for run in (one, two))
        assert _drop(a, ("seconds", "command", "output")) == _drop(b, ("seconds", "command", "output"))
        assert a["tasks"][0]["corpus_index"]["approximate"] is (name == "ann")
        assert (one / f"mined_{name}.jsonl").read_bytes() == (two / f"mined_{name}.jsonl").read_bytes()
    keys = ("output",)
    assert _drop(_json(one / "mine_summaries.json"), keys) == _drop(_json(two / "mine_summaries.json"), keys)
