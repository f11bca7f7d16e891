"""Training sources: every bad line is reported with its file and line; the --train-data
syntax (JSONL files, MMEB-train roots and subsets); weighted mixing, source and target-side tags."""

import json
import os
from collections import Counter

import pytest

from btok_model.datasets import DataError, write_jsonl
from btok_model.datasets.mmeb_train import SUBSETS
from btok_model.train import main as train_main
from btok_model.training.mixed_dataset import (
    DataSource,
    MixedDataset,
    load_examples,
    parse_data_spec,
    with_target_sides,
)
from tests.helpers.mmeb_train_data import ROWS, mmeb_row, write_lance, write_parquet


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


def test_the_cli_reports_bad_data_before_loading_a_model(tmp_path, capsys):
    path = _write(tmp_path / "train.jsonl", [GOOD, {"query": "q"}])
    with pytest.raises(SystemExit) as exit_:
        train_main(["--model", "no/such-model", "--train-data", str(path), "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and err == [f"error: {path}:2: missing field 'positive' (fields present: ['query'])"]


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
    assert parse_data_spec("a.jsonl") == [DataSource("a.jsonl")]
    assert parse_data_spec("dir/a.jsonl:0.25") == [DataSource("dir/a.jsonl", 0.25)]
    assert parse_data_spec("c:/x/a.jsonl") == [DataSource("c:/x/a.jsonl")]
    with pytest.raises(ValueError, match="weight must be a number > 0"):
        parse_data_spec("a.jsonl:0")


def test_weighted_mixing(tmp_path):
    a = _write(tmp_path / "a.jsonl", [{"query": f"a{i}", "positive": "p"} for i in range(10)])
    b = _write(tmp_path / "b.jsonl", [{"query": f"b{i}", "positive": "p"} for i in range(30)])
    mixed = MixedDataset([DataSource(str(a), 0.7), DataSource(str(b), 0.3)])
    sampler = mixed.sampler(seed=1)
    queries = [mixed[i]["query"] for i in sampler]
    assert len(mixed) == len(sampler) == 40 and sampler.counts == [28, 12]
    uses = Counter(q for q in queries if q.startswith("a"))
    assert sorted(uses) == sorted(f"a{i}" for i in range(10)) and set(uses.values()) == {2, 3}  # 10 + 10 + 8
    assert len({q for q in queries if q.startswith("b")}) == 12  # no repeats while the file has enough
    assert list(mixed.sampler(seed=1)) == list(sampler)  # a function of the seed and the epoch
    sampler.set_epoch(1)
    again = [mixed[i]["query"] for i in sampler]
    assert Counter(q[0] for q in again) == Counter({"a": 28, "b": 12})
    assert {q for q in again if q[0] == "b"} != {q for q in queries if q[0] == "b"}  # other b rows in epoch 1
    unweighted = MixedDataset([DataSource(str(a)), DataSource(str(b))]).sampler(seed=0)
    assert unweighted.counts == [10, 30] and sorted(unweighted) == list(range(40))
    with pytest.raises(ValueError, match="weight to every training file or to none"):
        MixedDataset([DataSource(str(a), 0.5), DataSource(str(b))])


def _text_root(path, layout="parquet", skip=()):
    """An MMEB-train root of every subset, two text-only rows each."""
    rows = {
        name: [mmeb_row(f"query {i} of {name}\n", "", f"positive {i}\n") for i in range(2)]
        for name in SUBSETS
        if name not in skip
    }
    return (write_parquet if layout == "parquet" else write_lance)(path, rows)


@pytest.mark.parametrize("layout", ["parquet", "lance"])
def test_a_root_is_the_20_subsets_with_the_authors_weights_and_sides(tmp_path, layout):
    root = _text_root(tmp_path, layout)
    sources = parse_data_spec(root)
    assert [s.subset for s in sources] == list(SUBSETS)
    assert sum(s.weight for s in sources) == 15.0  # ten subsets at 1, ten at 0.5
    assert {
        s.subset: (s.weight, s.target_side) for s in sources if s.subset in ("VisDial", "CIRR", "WebQA", "ChartQA")
    } == {
        "VisDial": (1.0, "query"),
        "CIRR": (0.5, "none"),
        "WebQA": (0.5, "both"),
        "ChartQA": (0.5, "positive"),
    }
    scaled = parse_data_spec(f"{root}:3")
    assert [s.weight for s in scaled] == pytest.approx([s.weight * 3 / 15 for s in sources])
    one = parse_data_spec(os.path.join(root, "NIGHTS") + ":2")
    assert one == [DataSource(root, 2.0, "NIGHTS", "none")]
    assert parse_data_spec(os.path.join(root, "MSCOCO")) == [DataSource(root, 1.0, "MSCOCO", "query")]


def test_root_errors(tmp_path):
    root = _text_root(tmp_path / "partial", skip=("NIGHTS", "WebQA"))
    with pytest.raises(DataError, match=r"without subset\(s\) \['NIGHTS', 'WebQA'\]"):
        parse_data_spec(root)
    assert parse_data_spec(os.path.join(root, "VisDial")) == [DataSource(root, 1.0, "VisDial", "query")]
    with pytest.raises(DataError, match="has no subset NIGHTS"):
        parse_data_spec(os.path.join(root, "NIGHTS"))
    (tmp_path / "other").mkdir()
    with pytest.raises(DataError, match="a folder, not a JSONL file, a source's folder"):
        parse_data_spec(str(tmp_path / "other"))
    write_lance(root, {"VisDial": [mmeb_row("q\n", "", "p\n")]})
    with pytest.raises(DataError, match=r"holds VisDial in both the parquet layout .* and the Lance layout"):
        parse_data_spec(os.path.join(root, "VisDial"))
    with pytest.raises(ValueError, match="weight must be a number > 0"):
        parse_data_spec(f"{root}:-1")


def test_mixed_dataset_tags_examples_with_source_and_target_side(tmp_path):
    root = write_parquet(tmp_path / "mmeb", {"VisDial": ROWS["VisDial"], "N24News": ROWS["N24News"]})
    write_jsonl(tmp_path / "a.jsonl", [{"query": "q", "positive": "p"}])
    sources = parse_data_spec(os.path.join(root, "VisDial")) + parse_data_spec(os.path.join(root, "N24News") + ":3")
    sources += parse_data_spec(f"{tmp_path / 'a.jsonl'}:1")
    mixed = MixedDataset(with_target_sides(sources, {"VisDial": "none", str(tmp_path / "a.jsonl"): "query"}))
    assert mixed.sizes == [1, 1, 1] and mixed.weights == [1.0, 3.0, 1.0]
    assert [(mixed[i]["source"], mixed[i]["target_side"]) for i in range(3)] == [
        ("VisDial", "none"),
        ("N24News", "positive"),
        (str(tmp_path / "a.jsonl"), "query"),
    ]
    assert mixed[2] == {"query": "q", "positive": "p", "source": str(tmp_path / "a.jsonl"), "target_side": "query"}
    assert [d["probability"] for d in mixed.describe()] == [0.2, 0.6, 0.2]
    assert "negatives" in mixed[0] and "negatives" in mixed[1]  # VisDial's image, N24News' text
    assert all("negatives" not in MixedDataset(sources, hard_negatives=False)[i] for i in range(3))
    with pytest.raises(ValueError, match="names no training source"):
        with_target_sides(sources, {"Nope": "none"})
    with pytest.raises(ValueError, match="no weight for"):
        MixedDataset(sources[:2] + [DataSource(str(tmp_path / "a.jsonl"))])
    with pytest.raises(ValueError, match=r"given twice"):
        MixedDataset(sources + sources[:1])
