"""Two gloo ranks under ``torchrun`` give what one process gives: ``evaluate`` (pairs with a corpus,
candidate lists, MaxSim at two Matryoshka sizes), ``mine`` and ``evaluate --mmeb-v2`` on the
fixture root (sparse and exhaustive qrels, graded gains), on tiny random models.

Both runs go through :mod:`tests.helpers.two_ranks` in a subprocess, with encode blocks small
enough that each rank gets several; the outputs must match byte for byte but for timings and
the output paths they name.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.helpers.mmeb_v2_data import FIXTURE_DATASETS, write_fixture
from tests.helpers.tiny import tiny_btok

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _run(out, inputs, nproc: int | None) -> None:
    env = {**os.environ, "PYTHONPATH": REPO, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    launcher = (
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
        if nproc
        else [sys.executable]
    )
    command = [*launcher, "-m", "tests.helpers.two_ranks", str(out), *inputs]
    done = subprocess.run(command, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("torchrun")
    tiny_btok().save_pretrained(tmp / "btok")
    # Some queries repeat their positive (rank 1), most do not: metrics away from 0 and 1.
    pairs = [
        {
            "query": f"pos {i % 11} " + "y" * (i % 5) if i % 3 == 0 else f"query {i} " + "x" * (i % 7),
            "positive": f"pos {i % 11} " + "y" * (i % 5),
        }
        for i in range(37)
    ]
    lists = [
        {
            "query": f"c {(i * 2) % 17}" if i % 4 == 0 else f"q {i}",
            "candidates": [f"c {(i * j) % 17}" for j in range(1, 6)],
            "label": i % 5,
        }
        for i in range(19)
    ]
    mine_rows = [
        {"query": f"what is thing {i % 13}", "positive": f"thing {i % 9} is " + "z" * (i % 4)}
        | ({"negatives": [f"extra {i % 5}"]} if i % 3 == 0 else {})
        for i in range(29)
    ]
    inputs = [
        str(tmp / "btok"),
        _write(tmp / "pairs.jsonl", pairs),
        _write(tmp / "corpus.jsonl", [{"text": f"extra {i}"} for i in range(23)]),
        _write(tmp / "lists.jsonl", lists),
        _write(tmp / "mine.jsonl", mine_rows),
        write_fixture(str(tmp / "mmeb")),
    ]
    (tmp / "one").mkdir()
    (tmp / "two").mkdir()
    _run(tmp / "one", inputs, None)
    _run(tmp / "two", inputs, 2)
    return tmp / "one", tmp / "two"


def _json(path):
    with open(path) as f:
        return json.load(f)


def _drop(value, keys=("seconds", "command", "output")):
    """``value`` without timings and the output paths it names."""
    if isinstance(value, dict):
        return {k: _drop(v, keys) for k, v in value.items() if k not in keys}
    if isinstance(value, list):
        return [_drop(v, keys) for v in value]
    return value


def test_two_ranks_ran(runs):
    one, two = runs
    assert (one / "world.txt").read_text() == "1" and (two / "world.txt").read_text() == "2"


@pytest.mark.parametrize("name", ["pairs.json", "lists.json", "lists_maxsim.json"])
def test_evaluate_two_ranks_equal_one(runs, name):
    one, two = (_json(run / name) for run in runs)
    assert _drop(one) == _drop(two)
    scores = [t["recall@1"] for t in one["tasks"]] + [t["mrr@10"] for t in one["tasks"]]
    assert all(0 < s < 1 for s in scores), scores  # neither all found nor none: ranks matter
    if name == "lists_maxsim.json":
        assert [t["dims"] for t in one["tasks"]] == [16, None] and one["similarity"] == "maxsim"


def test_mine_two_ranks_equal_one(runs):
    one, two = runs
    assert (one / "mined.jsonl").read_bytes() == (two / "mined.jsonl").read_bytes()
    assert _drop(_json(one / "mine_summary.json")) == _drop(_json(two / "mine_summary.json"))
    lines = [json.loads(line) for line in (one / "mined.jsonl").read_text().splitlines()]
    assert len(lines) == 29 and all(len(line["negatives"]) >= 3 for line in lines)


def test_mmeb_v2_two_ranks_equal_one(runs):
    one, two = runs
    a, b = _json(one / "mmeb" / "results.json"), _json(two / "mmeb" / "results.json")
    assert _drop(a) == _drop(b)
    assert [r["dataset"] for r in a["datasets"]] == list(FIXTURE_DATASETS)
    assert {r["sparse_queries"] > 0 for r in a["datasets"]} == {True, False}  # both qrels modes ran
    assert (one / "mmeb" / "results.md").read_text() == (two / "mmeb" / "results.md").read_text()
    for name in FIXTURE_DATASETS:
        assert _drop(_json(one / "mmeb" / "datasets" / f"{name}.json")) == _drop(
            _json(two / "mmeb" / "datasets" / f"{name}.json")
        )


def test_scorer_two_ranks_equal_one_and_brute_force(runs):
    from btok_model.embedder.similarity import maxsim
    from btok_model.inference.scoring import rank_counts

    one, two = (torch.load(run / "scoring.pt") for run in runs)
    q, c, lists, relevant = one["queries"], one["candidates"], one["lists"], one["relevant"]
    for similarity in ("cosine", "maxsim"):
        a, b = one[similarity], two[similarity]
        assert all(torch.equal(a["counts"][k], b["counts"][k]) for k in ("targets", "greater", "equal"))
        assert torch.equal(a["values"], b["values"]) and torch.equal(a["indices"], b["indices"])
        scores = maxsim(q, c) if similarity == "maxsim" else q[:, 0] @ c[:, 0].T
        order = [sorted(range(27), key=lambda j: (-scores[i, j].item(), j))[:6] for i in range(10)]
        assert b["indices"].tolist() == order
        for i, members in enumerate(lists):
            members = list(range(27)) if members is None else members
            column = members.index(int(relevant[i, 0]))
            greater, equal = rank_counts(scores[i, members][None], torch.tensor([column]))
            assert (b["counts"]["greater"][i, 0], b["counts"]["equal"][i, 0] - 1) == (greater[0], equal[0])


def test_a_rank_without_rows_takes_part(runs):
    one, two = runs
    a, b = torch.load(one / "scoring.pt")["one_block"], torch.load(two / "scoring.pt")["one_block"]
    assert torch.equal(a["queries"], b["queries"]) and a["queries"].shape == (3, 64)
    assert torch.equal(a["greater"], b["greater"]) and torch.equal(a["indices"], b["indices"])
    assert a["rows"] == (0, 3) and b["rows"] == (0, 0)  # rank 0 has no block of its own: the last rank takes it
    rank1 = torch.load(two / "one_block_rank1.pt")
    assert rank1["rows"] == (0, 3)
    assert torch.equal(rank1["queries"], a["queries"]) and torch.equal(rank1["greater"], a["greater"])
