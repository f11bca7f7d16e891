"""Training files: every bad line is reported with its file and line; weighted mixing."""

import json

import pytest

from btok_model.datasets import DataError
from btok_model.train import main as train_main
from btok_model.training.data import DataSource, MixedDataset, load_examples, parse_data_spec


def _write(path, lines):
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


GOOD = {"query": "q", "positive": "p"}


@pytest.mark.parametrize(
    "bad, message",
    [
        ('{"query": "q", "positive": ', "not valid JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        ({"query": "q"}, "missing field 'positive'"),
        ({"positive": "p"}, "missing field 'query'"),
        ({"query": "  ", "positive": "p"}, "field 'query' is empty"),
        ({"query": 3, "positive": "p"}, "field 'query' must be a string, got int"),
        ({"query": "q", "positive": "p", "negatives": "n"}, "field 'negatives' must be a list of strings"),
        ({"query": "q", "positive": "p", "negatives": ["n", ""]}, r"negatives\[1\] is empty"),
        ({"query": "q", "positive": "p", "target": 5}, "field 'target' must be a string or null"),
        ({"query": "q", "positive": "p", "negative": ["n"]}, r"unknown field\(s\) \['negative'\]"),
        ({"query": "q", "positive": "p", "target_side": "qry"}, "field 'target_side': must be one of"),
        ({"query": "q", "positive": "p", "target_side": "none", "target": "t"}, "field 'target': .* 'none'"),
        ({"query": "q", "positive": "p", "source": ["a"]}, "field 'source': must be a str"),
        (
            {"query": "q", "positive": "p", "query_image": "img/missing.png"},
            "image file 'img/missing.png' does not exist",
        ),
    ],
    ids=[
        "not-json",
        "not-object",
        "no-positive",
        "no-query",
        "empty",
        "not-str",
        "negatives-str",
        "empty-negative",
        "target-type",
        "unknown-field",
        "target-side",
        "side-conflicts-target",
        "source-type",
        "missing-image",
    ],
)
def test_bad_line_names_file_and_line(tmp_path, bad, message):
    path = _write(tmp_path / "train.jsonl", [GOOD, "", GOOD, bad, GOOD])
    with pytest.raises(DataError, match=rf"^{path}:4: .*{message}"):
        load_examples(path)


def test_the_cli_reports_bad_data_before_loading_a_model(tmp_path):
    path = _write(tmp_path / "train.jsonl", [GOOD, {"query": "q"}])
    with pytest.raises(DataError, match=rf"{path}:2: missing field 'positive'"):
        train_main(["--model", "no/such-model", "--train-data", str(path), "--output-dir", str(tmp_path / "out")])


def test_fields_and_images(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "cat.png").write_bytes(b"\x89PNG")
    path = _write(
        tmp_path / "train.jsonl",
        [
            {"query": "q", "positive": "p", "negatives": ["n1", "n2"], "target": None},
            {"query_image": "img/cat.png", "positive": "a cat"},
            {"query": "q", "positive": "p", "target": ""},
            {"query": "q", "positive": "p", "target_side": "query", "source": "MSCOCO_t2i"},
        ],
    )
    first, second, third, fourth = load_examples(path)
    assert first == {"query": "q", "positive": "p", "negatives": ["n1", "n2"], "target": None}
    assert second == {"query_image": str(tmp_path / "img" / "cat.png"), "positive": "a cat"}
    assert third["target"] == ""
    assert fourth == {"query": "q", "positive": "p", "target_side": "query", "source": "MSCOCO_t2i"}


def test_empty_file(tmp_path):
    with pytest.raises(DataError, match="no examples"):
        load_examples(_write(tmp_path / "e.jsonl", [""]))


def test_parse_data_spec():
    assert parse_data_spec("a.jsonl") == DataSource("a.jsonl")
    assert parse_data_spec("dir/a.jsonl:0.25") == DataSource("dir/a.jsonl", 0.25)
    assert parse_data_spec("c:/x/a.jsonl") == DataSource("c:/x/a.jsonl")
    with pytest.raises(ValueError, match="weight must be a number > 0"):
        parse_data_spec("a.jsonl:0")


def test_weighted_mixing(tmp_path):
    a = _write(tmp_path / "a.jsonl", [{"query": f"a{i}", "positive": "p"} for i in range(10)])
    b = _write(tmp_path / "b.jsonl", [{"query": f"b{i}", "positive": "p"} for i in range(30)])
    mixed = MixedDataset([DataSource(str(a), 0.7), DataSource(str(b), 0.3)], seed=1)
    queries = [mixed[i]["query"] for i in range(len(mixed))]
    assert len(mixed) == 40 and mixed.counts == [28, 12]
    assert sum(q.startswith("a") for q in queries) == 28
    assert sorted(set(q for q in queries if q.startswith("a"))) == sorted(f"a{i}" for i in range(10))  # cycled
    assert len(set(q for q in queries if q.startswith("b"))) == 12  # no repeats while the file has enough
    assert queries == [
        MixedDataset([DataSource(str(a), 0.7), DataSource(str(b), 0.3)], seed=1)[i]["query"] for i in range(40)
    ]
    unweighted = MixedDataset([DataSource(str(a)), DataSource(str(b))])
    assert unweighted.counts == [10, 30]
    with pytest.raises(ValueError, match="weight to every training file or to none"):
        MixedDataset([DataSource(str(a), 0.5), DataSource(str(b))])
