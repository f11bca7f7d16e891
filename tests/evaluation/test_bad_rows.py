"""Bad rows in evaluate and mine: an input the model refuses (a text longer than it accepts, an
image that does not decode, an empty text) stops the run naming its file and line before
anything is embedded, or with ``--on-bad-row skip`` is left out, counted and reported."""

import json

import pytest

from btok_model.evaluate import main as evaluate_main
from btok_model.evaluation import EmbeddingScorer, evaluate, load_task
from btok_model.mine import main as mine_main
from tests.helpers.tiny import image, tiny_btok, tiny_vl_btok

TOO_LONG = "e" * 300  # the tiny model's max_position_embeddings is 256


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad_rows") / "btok"
    tiny_btok().save_pretrained(folder)
    return str(folder)


PAIRS = [
    {"query": "a small furry pet", "positive": "cat"},
    {"query": "it barks", "positive": "dog"},
    {"query": TOO_LONG, "positive": "cat"},
    {"query": "frozen water", "positive": "ice"},
    {"query": "it meows", "positive": TOO_LONG},
]


class _Counting:
    """Counts what reaches the embedder's forward."""

    def __init__(self, model):
        self.model, self.rows = model, 0
        forward = model._last_hidden_states

        def counted(*args, **kwargs):
            self.rows += 1
            return forward(*args, **kwargs)

        model._last_hidden_states = counted


def test_evaluate_names_the_file_and_line_before_embedding(tmp_path):
    path = _write(tmp_path / "pairs.jsonl", PAIRS)
    model = tiny_btok()
    seen = _Counting(model)
    with pytest.raises(
        ValueError,
        match=rf"{path}:3: the text \+ K BToks is 304 tokens, longer than .*\(and 1 more bad rows\); --on-bad-row skip",
    ):
        evaluate(load_task(path), EmbeddingScorer(model))
    assert seen.rows == 0  # nothing was embedded


def test_evaluate_skip_leaves_out_and_reports(tmp_path, saved, capsys):
    path = _write(tmp_path / "pairs.jsonl", PAIRS)
    good = _write(tmp_path / "good.jsonl", [PAIRS[i] for i in (0, 1, 3)])
    argv = ["--model", saved, "--no-progress-bar", "--device", "cpu"]
    skipped = evaluate_main([*argv, "--data", path, "--on-bad-row", "skip", "--output", str(tmp_path / "s.json")])
    task = skipped["tasks"][0]
    # line 3 (its query) and line 5 (its positive) go; "cat" stays a candidate through line 1
    assert task["skipped_rows"] == 2 and task["num_queries"] == 3 and task["num_candidates"] == 3
    assert [m.split(": ")[0] for m in task["skipped"]] == [f"{path}:3", f"{path}:5 positive"]
    assert "(2 bad rows skipped)" in capsys.readouterr().out
    clean = evaluate_main([*argv, "--data", good])["tasks"][0]
    assert {k: v for k, v in task.items() if "@" in k} == {k: v for k, v in clean.items() if "@" in k}
    with pytest.raises(SystemExit, match=rf"error: {path}:3: .*longer than"):
        evaluate_main([*argv, "--data", path])


def test_empty_text_at_loading(tmp_path, saved):
    rows = [PAIRS[0], {"query": "  ", "positive": "dog"}, PAIRS[3]]
    path = _write(tmp_path / "pairs.jsonl", rows)
    with pytest.raises(SystemExit, match=rf"error: {path}:2: field 'query' is empty"):
        evaluate_main(["--model", saved, "--data", path, "--no-progress-bar"])
    task = load_task(path, on_bad_row="skip")
    assert task.queries == ["a small furry pet", "frozen water"] and task.skipped == [
        f"{path}:2: field 'query' is empty"
    ]


def test_candidate_lists_skip_a_bad_candidate(tmp_path):
    rows = [
        {"query": "a small furry pet", "candidates": ["dog", "cat", TOO_LONG], "label": 1},
        {"query": "frozen water", "candidates": [TOO_LONG, "ice"], "label": 0},  # its relevant one is bad
        {"query": "it barks", "candidates": ["cat", "dog"], "label": 1},
    ]
    task = load_task(_write(tmp_path / "lists.jsonl", rows))
    model = tiny_btok()
    result = evaluate(task, EmbeddingScorer(model), on_bad_row="skip")
    assert result["num_queries"] == 2 and result["num_candidates"] == 3 and result["skipped_rows"] == 1
    assert result["skipped"][0].startswith(f"{task.name}:1 candidates[2]: ")


def test_an_unreadable_image_is_named(tmp_path):
    image(28, 28, 1).save(tmp_path / "cat.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    rows = [
        {"query": "a cat", "positive_image": "cat.png"},
        {"query": "a broken cat", "positive_image": "broken.png"},
    ]
    path = _write(tmp_path / "pairs.jsonl", rows)
    scorer = EmbeddingScorer(tiny_vl_btok())
    with pytest.raises(ValueError, match=rf"{path}:2 positive: cannot read image file .*broken.png"):
        evaluate(load_task(path), scorer)
    result = evaluate(load_task(path), scorer, on_bad_row="skip")
    assert result["num_queries"] == 1 and result["skipped_rows"] == 1


def test_mine_names_or_skips_bad_lines(tmp_path, saved):
    rows = [
        {"query": "a small furry pet", "positive": "cat"},
        {"query": "it barks", "positive": TOO_LONG, "source": "kept"},
        {"query": "frozen water", "positive": "ice"},
        {"query": "a yellow fruit", "positive": "banana"},
    ]
    data = _write(tmp_path / "pairs.jsonl", rows)
    corpus = _write(tmp_path / "corpus.jsonl", [{"text": "fish"}, {"text": TOO_LONG}, {"text": "tree"}])
    argv = ["--model", saved, "--data", data, "--corpus", corpus, "--negatives", "2", "--no-progress-bar"]
    with pytest.raises(SystemExit):
        mine_main([*argv, "--output", str(tmp_path / "out.jsonl")])
    out = tmp_path / "mined.jsonl"
    summary = mine_main([*argv, "--output", str(out), "--on-bad-row", "skip"])
    assert summary["skipped_lines"] == 1 and summary["skipped_corpus"] == 1 and summary["lines"] == 3
    assert summary["skipped"][0].startswith(f"{data}:2: field 'positive': ")
    assert summary["skipped"][1].startswith(f"{corpus}:2: ")
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines[1] == rows[1]  # written unchanged, nothing mined for it
    assert summary["pool"] == 5  # cat, ice, banana, fish, tree: neither bad input is a candidate
    assert all(TOO_LONG not in line.get("negatives", []) for line in lines)


def test_mine_error_line(tmp_path, saved, capsys):
    rows = [{"query": "a small furry pet", "positive": "cat"}, {"query": TOO_LONG, "positive": "dog"}]
    data = _write(tmp_path / "pairs.jsonl", rows)
    with pytest.raises(SystemExit) as err:
        mine_main(["--model", saved, "--data", data, "--output", str(tmp_path / "o.jsonl"), "--no-progress-bar"])
    assert err.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"error: {data}:2: field 'query': ") and "longer than" in line
