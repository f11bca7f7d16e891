"""The example schema: the training example's keys once, and one record -> input rule."""

import json

import pytest

from btok_model.datasets.jsonl import DataError, read_jsonl
from btok_model.datasets.schema import (
    EXAMPLE_KEYS,
    FLAT_IMAGE_KEYS,
    JSONL_KEYS,
    example_input,
    make_input,
    read_side,
    record_input,
)


def test_keys():
    assert EXAMPLE_KEYS == ("query", "positive", "negatives", "target", "target_side", "source")
    assert FLAT_IMAGE_KEYS == {"query": "query_image", "positive": "positive_image"}
    assert set(EXAMPLE_KEYS) | {"query_image", "positive_image"} == JSONL_KEYS


def test_make_input():
    assert make_input("a") == "a" and make_input("a", None) == "a"
    assert make_input("a", "x.png") == {"text": "a", "image": "x.png"}
    assert make_input(None, "x.png") == {"text": None, "image": "x.png"}


def test_example_input_folds_the_flat_image_in():
    assert example_input({"query": "q", "positive": "p"}, "query") == "q"
    assert example_input({"query": "q", "query_image": None}, "query") == "q"
    assert example_input({"query": "q", "query_image": "a.png"}, "query") == {"text": "q", "image": "a.png"}
    assert example_input({"positive_image": "a.png"}, "positive") == {"text": None, "image": "a.png"}
    both = {"query": {"text": "q", "placement": "inline_end"}, "query_image": "a.png"}
    assert example_input(both, "query") == {"text": "q", "placement": "inline_end", "image": "a.png"}
    with pytest.raises(ValueError, match="field 'query_image' and field 'query' both give an image"):
        example_input({"query": {"text": "q", "image": "b.png"}, "query_image": "a.png"}, "query")


def test_record_input_reads_text_and_image(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    lines = [
        {"query": "q", "positive": "p"},
        {"query_image": "a.png", "positive": "p"},
        {"query": "q", "query_image": "a.png", "positive": "p"},
        {"positive": "p"},
        {"query": "q", "query_image": "gone.png"},
        {"text": "t", "image": "a.png"},
    ]
    path = tmp_path / "x.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    records = list(read_jsonl(path))
    image = str(tmp_path / "a.png")
    assert record_input(records[0], "query") == "q" and read_side(records[0], "positive") == ("p", None)
    assert record_input(records[1], "query") == {"text": None, "image": image}
    assert record_input(records[2], "query") == {"text": "q", "image": image}
    with pytest.raises(DataError, match=r"x.jsonl:4: missing field 'query'"):
        record_input(records[3], "query")
    with pytest.raises(DataError, match=r"x.jsonl:5: field 'query_image': image file 'gone.png' does not exist"):
        record_input(records[4], "query")
    assert record_input(records[5], "text", "image") == {"text": "t", "image": image}
