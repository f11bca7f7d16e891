"""A folder ``python -m btok_model.train --no-btoks`` wrote (a PooledEmbedder, its pooling recorded
in ``pooled_config.json``) loads as what it is in evaluate, mine, embed and search: no
``--baseline`` needed; a ``--baseline`` that contradicts the record is one ``error:`` line."""

import json

import pytest
import torch

from btok_model.datasets import write_jsonl
from btok_model.embed import main as embed_main
from btok_model.embedder.pooled import PooledEmbedder
from btok_model.evaluate import load_embedder, parser
from btok_model.evaluate import main as evaluate_main
from btok_model.evaluation.metrics import metrics_from_scores
from btok_model.mine import main as mine_main
from btok_model.search import main as search_main
from btok_model.train import main as train_main
from tests.helpers.tiny import char_tokenizer, tiny_backbone
from tests.helpers.training import examples

PAIRS = [
    {"query": "a small furry pet", "positive": "cat"},
    {"query": "it barks", "positive": "dog"},
    {"query": "frozen water", "positive": "ice"},
    {"query": "a yellow fruit", "positive": "banana"},
]
FAST = ["--torch-dtype", "float32", "--device", "cpu", "--attn-implementation", "sdpa", "--no-progress-bar"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """``(the --no-btoks --pooling mean run's folder, its backbone's folder, pairs.jsonl)``."""
    tmp = tmp_path_factory.mktemp("no_btoks")
    backbone = tmp / "backbone"
    tiny_backbone(vocab_size=None).save_pretrained(backbone)
    char_tokenizer().save_pretrained(backbone)
    write_jsonl(tmp / "train.jsonl", examples(8))
    write_jsonl(tmp / "pairs.jsonl", PAIRS)
    out = tmp / "run"
    argv = ["--model", str(backbone), "--train-data", str(tmp / "train.jsonl"), "--output-dir", str(out)]
    argv += ["--no-btoks", "--pooling", "mean", "--batch-size", "4", "--max-steps", "1", "--lora-r", "0"]
    argv += ["--warmup-ratio", "0", "--logging-steps", "1", "--torch-dtype", "float32"]
    assert train_main(argv) == 0
    assert json.loads((out / "pooled_config.json").read_text())["pooling"] == "mean"
    return out, backbone, tmp / "pairs.jsonl"


def _one_error_line(capsys, run) -> str:
    with pytest.raises(SystemExit) as stop:
        run()
    assert stop.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    errors = [line for line in lines if line.startswith("error:")]  # model loading's progress bars share stderr
    assert len(errors) == 1 and errors[0] == lines[-1] and "Traceback" not in err, lines
    return errors[0]


def test_evaluate_loads_it_with_its_recorded_pooling(folders):
    out, _, pairs = folders
    saved = PooledEmbedder.from_pretrained(out, attn_implementation="sdpa", dtype=torch.float32)
    assert saved.config.pooling == "mean"
    texts = [p["query"] for p in PAIRS] + ["cat", "dog", "ice", "banana"]
    for baseline in ([], ["--baseline", "mean"]):  # no --baseline, or the one it was trained with
        model = load_embedder(parser().parse_args(["--model", str(out), *FAST, *baseline]))
        assert isinstance(model, PooledEmbedder) and model.config == saved.config
        torch.testing.assert_close(model.encode(texts), saved.encode(texts), rtol=0, atol=0)
    as_last = PooledEmbedder.from_backbone(str(out), pooling="last", dtype=torch.float32)
    assert not torch.allclose(as_last.encode(texts), saved.encode(texts))  # the pooling tells them apart
    result = evaluate_main(["--model", str(out), "--data", str(pairs), *FAST])
    emb = saved.encode(texts)
    direct = metrics_from_scores(emb[:4] @ emb[4:].T, torch.arange(4))
    assert {k: result["tasks"][0][k] for k in direct} == pytest.approx(direct, abs=1e-6)
    assert result["baseline"] is None and result["similarity"] == "cosine"


def test_a_contradicting_baseline_and_maxsim_are_one_error_line(folders, capsys):
    out, _, pairs = folders
    base = ["--model", str(out), "--data", str(pairs), *FAST]
    line = _one_error_line(capsys, lambda: evaluate_main([*base, "--baseline", "last-token"]))
    assert line == (
        f"error: --baseline last-token: {out} was trained with --no-btoks --pooling mean; leave --baseline out "
        "(or give --baseline mean)"
    )
    line = _one_error_line(capsys, lambda: evaluate_main([*base, "--similarity", "maxsim"]))
    assert line == (
        "error: --similarity maxsim scores the K BTok vectors of a BTok model; "
        f"{out} (trained with --no-btoks) has one vector per input"
    )
    mined = str(out.parent / "mined.jsonl")
    line = _one_error_line(capsys, lambda: mine_main([*base, "--output", mined, "--baseline", "last-token"]))
    assert "was trained with --no-btoks --pooling mean" in line


def test_a_folder_without_a_record_still_needs_a_baseline(folders, capsys):
    _, backbone, pairs = folders
    line = _one_error_line(capsys, lambda: evaluate_main(["--model", str(backbone), "--data", str(pairs), *FAST]))
    assert "is not a saved BTok model" in line and "--baseline last-token|mean" in line
    result = evaluate_main(["--model", str(backbone), "--data", str(pairs), "--baseline", "last-token", *FAST])
    assert result["baseline"] == "last-token"


def test_mine_embed_and_search_take_it_without_a_baseline(folders, capsys):
    pytest.importorskip("lance")
    out, _, pairs = folders
    mined = out.parent / "mined.jsonl"
    summary = mine_main(["--model", str(out), "--data", str(pairs), "--output", str(mined), "--negatives", "1", *FAST])
    assert summary["lines"] == 4 and summary["baseline"] is None
    corpus = out.parent / "corpus.jsonl"
    write_jsonl(corpus, [{"id": f"w{i}", "text": w} for i, w in enumerate(["cat", "dog", "ice", "banana"])])
    index = out.parent / "corpus.lance"
    embedded = embed_main(["--model", str(out), "--data", str(corpus), "--output", str(index), *FAST])
    assert embedded["rows"] == 4
    capsys.readouterr()
    line = _one_error_line(
        capsys,
        lambda: embed_main(
            ["--model", str(out), "--data", str(corpus), "--output", str(out.parent / "m.lance"), "--multi-vector"]
            + FAST
        ),
    )
    assert line.endswith(f"{out} without BToks has none")
    found = search_main(
        ["--index", str(index), "--query", "cat", "-k", "1", "--exact", *FAST[:-1]]
    )  # the recorded model
    assert found["queries"][0]["hits"][0]["id"] == "w0"
