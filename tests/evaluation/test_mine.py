"""Hard-negative mining: the rules on hand-set embeddings, blocks against a brute-force oracle,
the file format (fields kept, images, a second round), a tiny real BTok model through the CLI,
and the command line's error lines."""

import json
import math

import pytest
import torch

from btok_model.embedder.pooled import PooledEmbedder
from btok_model.mine import main as mine_main
from btok_model.mine import mine_file, mine_hard_negatives
from btok_model.training.mixed_dataset import load_examples
from tests.helpers.tiny import image, tiny_btok, tiny_vl_btok


class Lookup:
    """An embedder with a fixed vector per text (scores exact: binary fractions)."""

    def __init__(self, table: dict):
        self.table = table
        self.calls = []

    def encode(self, inputs, batch_size=32, show_progress_bar=False):
        self.calls.append(len(inputs))
        return torch.tensor([self.table[x] for x in inputs], dtype=torch.float32)


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


# q1 = e0, so a candidate [s, 1] scores s against it; the positive p1 scores 0.5.
RULES = Lookup(
    {
        "q1": [1.0, 0.0],
        "p1": [0.5, 1.0],
        "a": [0.625, 1.0],  # above the positive
        "b": [0.4375, 1.0],  # below the positive, above 0.75 x 0.5
        "c": [0.375, 1.0],  # exactly 0.75 x 0.5: "not above", kept
        "d": [0.375, 1.0],  # ties with c
        "e": [0.25, 1.0],
        "f": [0.125, 1.0],
    }
)


def _mine(corpus, n=2, skip=0, margin=0.75, model=RULES, **kwargs):
    out = mine_hard_negatives(
        model, ["q1"], ["p1"], corpus, num_negatives=n, skip_top=skip, max_score_margin=margin, **kwargs
    )
    return [out.pool[j] if j >= 0 else None for j in out.negatives[0].tolist()], out


@pytest.mark.parametrize(
    "skip, margin, expected",
    [
        (0, 1.0, ["b", "c"]),  # the guard at the positive's own score drops a only
        (0, 0.75, ["c", "d"]),  # threshold 0.375: a, b dropped; c at the threshold stays; c before d (tie)
        (1, 0.75, ["c", "d"]),  # the skipped rank (a) is one the guard drops anyway
        (2, 0.75, ["c", "d"]),
        (3, 0.75, ["d", "e"]),  # a, b, c skipped
        (3, 1.0, ["d", "e"]),
    ],
)
def test_rules_on_hand_set_scores(skip, margin, expected):
    picks, out = _mine(["a", "b", "c", "d", "e", "f"], skip=skip, margin=margin)
    assert picks == expected
    assert out.positive_scores.tolist() == [0.5]
    assert out.positive_rank.tolist() == [1]  # a scores above the positive
    assert out.guarded.tolist() == [1 if margin == 1.0 else 2]


def test_ties_follow_the_pool_order_and_short_lists_pad():
    picks, _ = _mine(["d", "c", "f", "e"])
    assert picks == ["d", "c"]  # d is met first in the pool
    picks, out = _mine(["a", "b", "c", "d", "e", "f"], n=5)
    assert picks == ["c", "d", "e", "f", None]
    assert out.negative_scores[0].tolist() == [0.375, 0.375, 0.25, 0.125, -math.inf]


def test_negative_positive_scores_keep_the_guard_below_the_positive():
    table = {"q": [1.0, 0.0], "p": [-0.5, 1.0], "x": [-0.5625, 1.0], "y": [-0.75, 1.0], "z": [-0.875, 1.0]}
    out = mine_hard_negatives(Lookup(table), ["q"], ["p"], ["x", "y", "z"], num_negatives=2, max_score_margin=0.75)
    # threshold -0.5 - 0.25 x 0.5 = -0.625 (not 0.75 x -0.5 = -0.375, which lies above the positive)
    assert [out.pool[j] for j in out.negatives[0].tolist()] == ["y", "z"]


def test_exclusions_other_positives_the_query_and_existing_negatives(tmp_path):
    table = {
        "q1": [1.0, 0.0],
        "p1": [1.0, 0.0],  # scores 1 against q1, as the query itself does
        "c": [0.75, 0.0],  # q1's other positive
        "e": [0.5, 0.5],
        "f": [0.25, 0.25],
        "q2": [0.0, 1.0],
        "p2": [0.0, 1.0],
    }
    rows = [
        {"query": "q1", "positive": "p1", "source": "s", "target": "t"},
        {"query": "q1", "positive": "c"},
        {"query": "q2", "positive": "p2", "negatives": ["e"]},
    ]
    data = _write(tmp_path / "pairs.jsonl", rows)
    corpus = _write(tmp_path / "corpus.jsonl", [{"text": "q1"}, {"text": "e"}, {"text": "f"}])
    out = tmp_path / "out" / "mined.jsonl"
    summary = mine_file(Lookup(table), data, out, corpus, num_negatives=2, max_score_margin=1.0)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines[0] == {**rows[0], "negatives": ["e", "f"]}  # not p1, c (q1's positives) nor "q1" itself
    assert lines[1] == {**rows[1], "negatives": ["e", "f"]}
    # its own first, then f (0.25), then p1 of the candidates tied at 0 (p1, c, q1: the pool's first)
    assert lines[2]["negatives"] == ["e", "f", "p1"]
    assert summary["lines"] == 3 and summary["pool"] == 6 and summary["short_lines"] == 0
    assert summary["positive_first"] == 1.0
    assert load_examples(out)[2]["negatives"] == ["e", "f", "p1"]  # the output is training data


def _oracle(emb: dict, queries, positives, pool, n, skip, margin, exclude):
    """Brute force in float64 over the whole score row."""
    out = []
    for i, (q, p) in enumerate(zip(queries, positives)):
        banned = {pp for qq, pp in zip(queries, positives) if qq == q} | {q} | set(exclude[i])
        pos = sum(a * b for a, b in zip(emb[q], emb[p]))
        threshold = pos - (1 - margin) * abs(pos)
        scored = [(sum(a * b for a, b in zip(emb[q], emb[c])), j) for j, c in enumerate(pool) if c not in banned]
        ranked = sorted(scored, key=lambda t: (-t[0], t[1]))[skip:]
        out.append([pool[j] for s, j in ranked if s <= threshold][:n])
    return out


def test_blocks_equal_one_block_and_a_brute_force_oracle():
    gen = torch.Generator().manual_seed(0)
    texts = [f"t{i}" for i in range(40)]
    # small integer vectors / 4: exact fp32 dot products, with many ties
    emb = {t: (torch.randint(-2, 3, (6,), generator=gen).float() / 4).tolist() for t in texts}
    model = Lookup(emb)
    queries = [texts[i % 9] for i in range(25)]  # repeated queries, some with several positives
    positives = [texts[9 + (i * 7) % 13] for i in range(25)]
    corpus = texts[15:] + texts[9:12]  # overlaps the positives (deduplicated)
    exclude = [[texts[30]] if i % 4 == 0 else [] for i in range(25)]
    for n, skip, margin in [(3, 0, 1.0), (4, 2, 0.5), (2, 1, 0.9)]:
        results = []
        for qb, cb in [(1024, 16384), (1, 1), (4, 3), (7, 5)]:
            model.calls = []
            out = mine_hard_negatives(
                model,
                queries,
                positives,
                corpus,
                num_negatives=n,
                skip_top=skip,
                max_score_margin=margin,
                exclude=exclude,
                query_block=qb,
                corpus_block=cb,
            )
            results.append([[out.pool[j] for j in row if j >= 0] for row in out.negatives.tolist()])
            # the 9 distinct queries, then the pool of 31 (13 positives, 18 more), a block at a time
            assert sum(model.calls) == 9 + 31 and max(model.calls) <= cb
        assert all(r == results[0] for r in results[1:])
        assert results[0] == _oracle(emb, queries, positives, out.pool, n, skip, margin, exclude)


def test_cli_on_a_tiny_btok_model(tmp_path):
    model = tiny_btok()
    model.save_pretrained(tmp_path / "btok")
    rows = [
        {"query": "a small furry pet", "positive": "cat", "source": "pets"},
        {"query": "it barks", "positive": "dog", "target": None},
        {"query": "frozen water", "positive": "ice"},
        {"query": "a yellow fruit", "positive": "banana"},
    ]
    data = _write(tmp_path / "pairs.jsonl", rows)
    corpus = _write(tmp_path / "corpus.jsonl", [{"text": w} for w in ("fish", "snow", "apple", "cat", "stone")])
    out = tmp_path / "mined.jsonl"
    args = ["--model", str(tmp_path / "btok"), "--data", data, "--corpus", corpus, "--output", str(out)]
    summary = mine_main(
        [
            *args,
            "--negatives",
            "3",
            "--skip-top",
            "1",
            "--max-score-margin",
            "1",
            "--torch-dtype",
            "float32",
            "--no-progress-bar",
        ]
    )
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    # the oracle on the model's own embeddings
    pool = ["cat", "dog", "ice", "banana", "fish", "snow", "apple", "stone"]
    emb = model.encode([r["query"] for r in rows] + pool)
    table = dict(zip([r["query"] for r in rows] + pool, emb.double().tolist()))
    expected = _oracle(table, [r["query"] for r in rows], [r["positive"] for r in rows], pool, 3, 1, 1.0, [[]] * 4)
    assert [line["negatives"] for line in lines] == expected
    assert [{k: v for k, v in line.items() if k != "negatives"} for line in lines] == rows
    assert summary["pool"] == 8 and summary["lines"] == 4
    # a no-BTok baseline on the same backbone folder, as evaluate takes it
    baseline = PooledEmbedder.from_backbone(str(tmp_path / "btok"), pooling="mean", dtype=torch.float32)
    mine_main([*args, "--baseline", "mean", "--max-score-margin", "1", "--torch-dtype", "float32", "--no-progress-bar"])
    emb = baseline.encode([r["query"] for r in rows] + pool)
    table = dict(zip([r["query"] for r in rows] + pool, emb.double().tolist()))
    expected = _oracle(table, [r["query"] for r in rows], [r["positive"] for r in rows], pool, 4, 0, 1.0, [[]] * 4)
    assert [json.loads(line).get("negatives", []) for line in out.read_text().splitlines()] == expected
    assert sum(map(len, expected)) >= 4  # (a line none of whose candidates scores below its positive has none)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--negatives", "0"], "--negatives must be an int >= 1, got 0"),
        (["--skip-top", "-1"], "--skip-top must be an int >= 0"),
        (["--max-score-margin", "0"], r"--max-score-margin must lie in \(0, 1\], got 0.0"),
        (["--max-score-margin", "1.5"], r"--max-score-margin must lie in \(0, 1\]"),
        (["--corpus-block", "0"], "--corpus-block must be an int >= 1"),
        (["--corpus", "MISSING/corpus.jsonl"], "corpus.jsonl: no such file"),
        (["--data", "MISSING/pairs.jsonl"], "pairs.jsonl: no such file"),
        (["--data", "BAD"], r"bad.jsonl:2: missing field 'positive'"),
    ],
)
def test_cli_errors_are_one_line_before_a_model_loads(tmp_path, capsys, flags, message):
    good = _write(tmp_path / "pairs.jsonl", [{"query": "q", "positive": "p"}])
    bad = _write(tmp_path / "bad.jsonl", [{"query": "q", "positive": "p"}, {"query": "r"}])
    flags = [f.replace("MISSING", str(tmp_path / "nowhere")).replace("BAD", bad) for f in flags]
    base = {"--model": str(tmp_path / "no-model"), "--data": good, "--output": str(tmp_path / "o.jsonl")}
    base.update(dict(zip(flags[::2], flags[1::2])))
    with pytest.raises(SystemExit) as err:
        mine_main([x for kv in base.items() for x in kv])
    assert err.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert __import__("re").search(message, lines[0]), lines[0]


def test_cli_error_for_a_model_that_is_not_there(tmp_path, capsys):
    data = _write(tmp_path / "pairs.jsonl", [{"query": "q", "positive": "p"}])
    with pytest.raises(SystemExit):
        mine_main(["--model", str(tmp_path / "none"), "--data", data, "--output", str(tmp_path / "o.jsonl")])
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "not a saved BTok model" in err and len(err.splitlines()) == 1


def test_images_with_a_tiny_vl_model(tmp_path):
    model = tiny_vl_btok(video=False)
    folder = tmp_path / "data"
    folder.mkdir()
    for i in range(5):
        image(28 + 14 * (i % 3), 42, seed=i).save(folder / f"im{i}.png")
    rows = [
        {"query": "a red square", "positive_image": "im0.png"},
        {"query": "a blue circle", "positive": "photo", "positive_image": "im1.png", "negatives": ["not this"]},
        {"query_image": "im2.png", "positive": "a caption"},
    ]
    data = _write(folder / "pairs.jsonl", rows)
    corpus = _write(folder / "corpus.jsonl", [{"image": "im3.png"}, {"text": "a scan", "image": "im4.png"}])
    out = tmp_path / "mined" / "out.jsonl"
    mine_file(model, data, out, corpus, num_negatives=2, max_score_margin=1.0)
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines[1]["positive_image"] == "../data/im1.png" and lines[2]["query_image"] == "../data/im2.png"
    assert lines[1]["negatives"][0] == "not this"
    # the oracle on the model's embeddings; a candidate is its text and image

    def path(i):
        return str(folder / f"im{i}.png")

    pool = [
        {"text": None, "image": path(0)},
        {"text": "photo", "image": path(1)},
        "a caption",
        {"text": None, "image": path(3)},
        {"text": "a scan", "image": path(4)},
    ]
    queries = ["a red square", "a blue circle", {"text": None, "image": path(2)}]
    emb = model.encode(queries + pool).double()
    names = [f"q{i}" for i in range(3)] + [f"c{i}" for i in range(5)]
    expected = _oracle(dict(zip(names, emb.tolist())), names[:3], ["c0", "c1", "c2"], names[3:], 2, 0, 1.0, [[]] * 3)
    written = {
        "c0": {"image": "../data/im0.png"},
        "c1": {"text": "photo", "image": "../data/im1.png"},
        "c2": "a caption",
        "c3": {"image": "../data/im3.png"},
        "c4": {"text": "a scan", "image": "../data/im4.png"},
    }
    assert [line["negatives"][-len(e) :] if e else [] for line, e in zip(lines, expected)] == [
        [written[c] for c in e] for e in expected
    ]
    examples = load_examples(out)  # training reads it back, images resolved, and the VL collator packs it
    assert any(isinstance(n, dict) for ex in examples for n in ex.get("negatives", []))
    batch = model.collate(examples)
    assert batch["input_ids"].shape[0] == 1


@pytest.mark.parametrize(
    "negatives, message",
    [
        ([{"text": "x", "img": "a.png"}], r"negatives\[0\] has unknown field\(s\) \['img'\]"),
        ([{}], r"negatives\[0\] has neither 'text' nor 'image'"),
        (["ok", {"image": "none.png"}], r"negatives\[1\].image: image file 'none.png' does not exist"),
        ([3], r"negatives\[0\] must be a string or an object"),
    ],
)
def test_training_reads_negative_objects_and_names_bad_ones(tmp_path, negatives, message):
    from btok_model.datasets import DataError

    data = _write(tmp_path / "t.jsonl", [{"query": "q", "positive": "p", "negatives": negatives}])
    with pytest.raises(DataError, match=r"t.jsonl:1: " + message):
        load_examples(data)
