"""``python -m btok_model.search``: a query embedded by the output's model, its hits equal to the
brute-force top-k of the stored vectors; another model, or MaxSim without K vectors, refused."""

from __future__ import annotations

import json

import pytest
import torch

from btok_model import BTokModel
from btok_model.embed import main as embed
from btok_model.embedder.encode import encode
from btok_model.inference.index import Index
from btok_model.search import main as search
from tests.helpers.tiny import tiny_btok

pytest.importorskip("lance")
pytestmark = pytest.mark.usefixtures("one_torch_thread")

TEXTS = [
    "a small cat",
    "a big dog",
    "the red fruit",
    "a tall tree",
    "cold water",
    "the old book",
    "blue sky",
    "hot sun",
]
FAST = ["--attn-implementation", "sdpa"]


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    root = tmp_path_factory.mktemp("search")
    model_dir = str(root / "model")
    tiny_btok(seed=5).save_pretrained(model_dir)
    data = root / "c.jsonl"
    data.write_text(
        "".join(json.dumps({"id": f"t{i}", "text": t, "tag": t.split()[-1]}) + "\n" for i, t in enumerate(TEXTS))
    )
    out = str(root / "c.lance")
    argv = ["--model", model_dir, "--data", str(data), "--output", out, "--dtype", "float32", "--multi-vector"]
    argv += ["--keep-columns", "tag"]
    embed([*argv, "--no-progress-bar", *FAST])
    model = BTokModel.from_pretrained(model_dir, attn_implementation="sdpa").eval()
    return model_dir, out, model


def _user_error(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        search(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


@pytest.mark.parametrize("similarity", ["cosine", "maxsim"])
def test_hits_are_the_brute_force_top_k(embedded, capsys, similarity):
    _, out, model = embedded
    queries = ["a furry cat", "sunny weather"]
    argv = [
        "--index",
        out,
        "--query",
        queries[0],
        "--query",
        queries[1],
        "-k",
        "3",
        "--json",
        "--similarity",
        similarity,
    ]
    argv += ["--show", "tag"]
    result = search([*argv, *FAST])  # --model defaults to the one recorded in the output
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed == result and result["search"] == "exact"
    multi = similarity == "maxsim"
    q = encode(model, queries, multi_vector=multi).double()
    stored = Index(out).vectors(column="vectors" if multi else "vector").double()
    scores = torch.einsum("qah,cbh->qcab", q, stored).amax(-1).sum(-1) if multi else q @ stored.T
    best = scores.topk(3, dim=1)
    for got, values, rows in zip(result["queries"], best.values, best.indices):
        assert [h["id"] for h in got["hits"]] == [f"t{i}" for i in rows.tolist()]
        assert [h["tag"] for h in got["hits"]] == [TEXTS[i].split()[-1] for i in rows.tolist()]
        torch.testing.assert_close(
            torch.tensor([h["score"] for h in got["hits"]], dtype=torch.float64), values, atol=2e-6, rtol=0
        )


def test_another_model_is_refused(embedded, tmp_path, capsys):
    _, out, _ = embedded
    other = str(tmp_path / "other")
    tiny_btok(seed=6).save_pretrained(other)
    err = _user_error(capsys, ["--index", out, "--model", other, "--query", "cat", *FAST])
    assert "queries must be embedded by the same model" in err


def test_user_errors(embedded, tmp_path, capsys):
    model_dir, out, _ = embedded
    assert "give --query" in _user_error(capsys, ["--index", out, *FAST])
    assert "--show ['nope']" in _user_error(capsys, ["--index", out, "--query", "x", "--show", "nope", *FAST])
    assert "no such Lance table" in _user_error(capsys, ["--index", str(tmp_path / "none.lance"), "--query", "x"])
    data = tmp_path / "c.jsonl"
    data.write_text(json.dumps({"text": "one"}) + "\n")
    single = str(tmp_path / "single.lance")
    embed(["--model", model_dir, "--data", str(data), "--output", single, "--no-progress-bar", *FAST])
    err = _user_error(capsys, ["--index", single, "--query", "x", "--similarity", "maxsim", *FAST])
    assert "without --multi-vector" in err
