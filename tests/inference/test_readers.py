"""Row readers: JSONL / parquet / Lance / image folders read in blocks, bad rows named by file and row."""

from __future__ import annotations

import json
import os

import pytest

from btok_model.datasets.jsonl import DataError
from btok_model.inference.readers import open_rows
from tests.helpers.tiny import image

pa = pytest.importorskip("pyarrow")

ROWS = [
    {"id": "a", "text": "a small cat", "lang": "en", "n": 1},
    {"id": "b", "text": "a red fruit", "lang": "fr", "n": 2},
    {"id": "c", "text": "a tall tree", "lang": "de", "n": 3},
    {"id": "d", "text": "the sea", "lang": "en", "n": 4},
    {"id": "e", "text": "cold", "lang": "en", "n": 5},
]


def _jsonl(path, rows, blank_after: int | None = None) -> str:
    with open(path, "w") as f:
        for i, row in enumerate(rows):
            f.write(json.dumps(row) + "\n")
            if i == blank_after:
                f.write("\n")
    return str(path)


def _sources(tmp_path, rows) -> dict[str, str]:
    import lance
    import pyarrow.parquet as pq

    table = pa.Table.from_pylist(rows)
    pq.write_table(table, tmp_path / "c.parquet", row_group_size=2)
    lance.write_dataset(table, str(tmp_path / "c.lance"))
    return {
        "jsonl": _jsonl(tmp_path / "c.jsonl", rows, blank_after=1),
        "parquet": str(tmp_path / "c.parquet"),
        "lance": str(tmp_path / "c.lance"),
    }


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "lance"])
def test_reads_blocks_in_row_order(tmp_path, kind):
    path = _sources(tmp_path, ROWS)[kind]
    reader = open_rows(path, keep_columns=("lang", "n"))
    assert (reader.kind, reader.num_rows, reader.has_media) == (kind, 5, False)
    got = []
    for lo in range(0, 5, 2):  # blocks of 2 cut across the blank line and the row groups
        rows, bad = reader.read(range(lo, min(lo + 2, 5)))
        assert bad == []
        got += rows
    assert [r.row for r in got] == list(range(5))
    assert [r.id for r in got] == ["a", "b", "c", "d", "e"]
    assert [r.input for r in got] == [row["text"] for row in ROWS]
    assert [r.keep for r in got] == [{"lang": row["lang"], "n": row["n"]} for row in ROWS]
    assert dict(reader.keep_types()) == {"lang": pa.string(), "n": pa.int64()}
    if kind == "jsonl":  # the line after the blank one is line 4
        assert got[2].where == f"{path}:4"


def test_row_number_is_the_id_without_an_id_field(tmp_path):
    reader = open_rows(_jsonl(tmp_path / "c.jsonl", [{"text": "x"}, {"text": "y"}]))
    assert [r.id for r in reader.read(range(2))[0]] == ["0", "1"]


def test_bad_text_rows_are_named_by_file_and_line(tmp_path):
    rows = [{"text": "fine"}, {"text": "   "}, {"other": 1}, {"text": "an <|image_pad|> without image"}, {"text": 3}]
    path = _jsonl(tmp_path / "bad.jsonl", rows)
    reader = open_rows(path)
    bad = reader.scan()
    assert [(b.row, b.where) for b in bad] == [(1, f"{path}:2"), (2, f"{path}:3"), (3, f"{path}:4"), (4, f"{path}:5")]
    assert "empty" in bad[0].reason and "no field 'text'" in bad[1].reason
    assert "placeholder" in bad[2].reason and "must be a string" in bad[3].reason
    good, bad_read = reader.read(range(5))
    assert [r.row for r in good] == [0] and [b.row for b in bad_read] == [1, 2, 3, 4]


def test_unknown_keep_column_and_kind_are_refused(tmp_path):
    path = _jsonl(tmp_path / "c.jsonl", ROWS)
    with pytest.raises(DataError, match=r"--keep-columns \['nope'\]"):
        open_rows(path, keep_columns=("nope",))
    with pytest.raises(DataError, match=r"not a \.jsonl"):
        (tmp_path / "c.csv").write_text("x")
        open_rows(tmp_path / "c.csv")
    with pytest.raises(DataError, match=r"c2.jsonl:2: not valid JSON"):
        (tmp_path / "c2.jsonl").write_text('{"text": "a"}\n{"text": \n')
        open_rows(tmp_path / "c2.jsonl")


def test_image_folder_rows_and_corrupt_image(tmp_path):
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    image(32, 40, 0).save(folder / "b.png")
    image(28, 28, 1).save(folder / "sub" / "a.jpg")
    (folder / "c.jpg").write_bytes(b"not a jpeg")
    (folder / "notes.txt").write_text("not an image")
    reader = open_rows(folder)
    assert reader.kind == "images" and reader.has_media and reader.num_rows == 3
    assert reader.scan() == []  # decoding is left to the block read
    good, bad = reader.read(range(3))
    assert [r.id for r in good] == ["b.png", os.path.join("sub", "a.jpg")]
    assert good[0].input["image"].size == (40, 32) and good[0].input["text"] is None
    assert [(b.row, b.where) for b in bad] == [(1, os.path.join(str(folder), "c.jpg"))]
    assert "cannot decode" in bad[0].reason


def test_rows_with_image_fields(tmp_path):
    """JSONL: paths relative to the file, the authors' placeholder rendered, a missing file found
    by the scan. Parquet: image bytes, a corrupt one found when its block is read."""
    import io

    import pyarrow.parquet as pq

    image(28, 28, 2).save(tmp_path / "x.png")
    rows = [
        {"id": "p", "text": "<|image_pad|>\nRepresent the given image.", "image": "x.png"},
        {"id": "r", "text": "missing", "image": "nowhere.png"},
    ]
    path = _jsonl(tmp_path / "img.jsonl", rows)
    reader = open_rows(path)
    assert reader.has_media
    assert [(b.row, b.where, "does not exist" in b.reason) for b in reader.scan()] == [(1, f"{path}:2", True)]
    good, bad = reader.read(range(2))
    assert good[0].input["text"] == "Represent the given image." and good[0].input["image"].size == (28, 28)
    assert [b.where for b in bad] == [f"{path}:2"]

    buffer = io.BytesIO()
    image(30, 28, 3).save(buffer, format="PNG")
    table = pa.table({"image": [buffer.getvalue(), b"garbage", None], "text": [None, "x", "only text"]})
    pq.write_table(table, tmp_path / "img.parquet")
    reader = open_rows(tmp_path / "img.parquet")
    assert reader.scan() == []  # bytes are decoded with their block
    good, bad = reader.read(range(3))
    assert [r.row for r in good] == [0, 2]
    assert good[0].input["text"] is None and good[0].input["image"].size == (28, 30)
    assert good[1].input == "only text"
    assert [(b.row, "cannot decode the image bytes" in b.reason) for b in bad] == [(1, True)]


def test_rows_with_video_frames(tmp_path):
    """A video is a list of frame files: a missing frame is found by the scan, a corrupt one
    when its block is read; fps is passed on."""
    for i in range(3):
        image(28, 28, 10 + i).save(tmp_path / f"f{i}.png")
    (tmp_path / "bad.png").write_bytes(b"broken")
    rows = [
        {"id": "v0", "text": "a clip", "video": ["f0.png", "f1.png", "f2.png"], "fps": 1.0},
        {"id": "v1", "video": ["f0.png", "gone.png"]},
        {"id": "v2", "video": ["f0.png", "bad.png"]},
        {"id": "v3", "video": []},
    ]
    path = _jsonl(tmp_path / "v.jsonl", rows)
    reader = open_rows(path)
    assert [(b.row, b.where) for b in reader.scan()] == [(1, f"{path}:2"), (3, f"{path}:4")]
    good, bad = reader.read(range(4))
    assert [r.id for r in good] == ["v0"]
    assert good[0].input["text"] == "a clip" and len(good[0].input["video"]) == 3 and good[0].input["fps"] == 1.0
    assert [b.row for b in bad] == [1, 2, 3] and "cannot decode" in bad[1].reason
