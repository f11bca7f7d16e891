"""MMEB-train in its parquet layout and the authors' Lance repack: the same examples, the
authors' rendering, bad rows named by file, row and field."""

import os

import numpy as np
import pytest
from PIL import Image

from btok_model.datasets import DataError, MmebTrainSubset
from btok_model.datasets.mmeb_train import SUBSETS, render_side
from tests.helpers.mmeb_train_data import IMG, ROWS, expected, mmeb_row, write_lance, write_parquet


def _pixels(value):
    """An image value (a path or a PIL image) as an array, to compare the two layouts."""
    if isinstance(value, str):
        with Image.open(value) as image:
            return np.asarray(image.convert("RGB"))
    assert isinstance(value, Image.Image) and value.mode == "RGB"
    return np.asarray(value)


def _comparable(value):
    """``value`` with every ``{"text", "image"}`` input's image replaced by its pixels (as bytes)."""
    if isinstance(value, dict):
        return {k: (_pixels(v).tobytes() if k == "image" else _comparable(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_comparable(v) for v in value]
    return value


def test_parquet_and_lance_read_to_the_expected_examples(tmp_path):
    parquet = write_parquet(tmp_path / "parquet")
    lance = write_lance(tmp_path / "lance")
    want = expected(lambda key: os.path.join(parquet, key))
    for subset in ROWS:
        from_parquet = MmebTrainSubset(parquet, subset)
        from_lance = MmebTrainSubset(lance, subset)
        assert (from_parquet.layout, from_lance.layout) == ("parquet", "lance")
        assert list(from_parquet) == want[subset], subset
        assert _comparable(list(from_lance)) == _comparable(want[subset]), subset
        assert from_parquet.dropped == from_lance.dropped == (1 if subset == "A-OKVQA" else 0)


@pytest.mark.parametrize(
    "subset, row, field, message",
    [
        (
            "N24News",
            mmeb_row(f"{IMG}\nq\n", "images/N24News/missing.jpg", "p\n"),
            "qry_image_path",
            "image file .* does not exist",
        ),
        ("N24News", mmeb_row(f"{IMG}\nq\n", "images/N24News/a.jpg", " \n"), "pos_text", "the positive is empty"),
        ("ImageNet_1K", mmeb_row("", "", "p\n"), "qry", "the query is empty"),
        ("N24News", mmeb_row(f"{IMG}\nq\n", "", "p\n"), "qry", "image token but the row gives no image"),
        ("N24News", mmeb_row("q\n", "images/N24News/a.jpg", "p\n"), "qry", "does not start with the image token"),
        ("N24News", mmeb_row(f"{IMG}\nq {IMG}\n", "images/N24News/a.jpg", "p\n"), "qry", "more than one image token"),
        (
            "N24News",
            mmeb_row("q\n", "", "p\n", neg_text=f"{IMG} n\n"),
            "neg_text",
            "image token but the row gives no image",
        ),
    ],
    ids=[
        "missing-image",
        "empty-text",
        "empty-row",
        "token-without-image",
        "image-without-token",
        "two-tokens",
        "negative",
    ],
)
def test_bad_rows_name_file_row_and_field(tmp_path, subset, row, field, message):
    good = mmeb_row(f"{IMG}\nq\n", "images/N24News/a.jpg", "p\n")
    if subset == "ImageNet_1K":
        good = mmeb_row(f"{IMG}\nq\n", "images/ImageNet_1K/a.jpg", "p\n")
    root = write_parquet(tmp_path, {subset: [good, row]})
    if "missing" in row["qry_image_path"]:
        os.remove(os.path.join(root, row["qry_image_path"]))
    path = os.path.join(root, subset, "train-00000-of-00001.parquet")
    with pytest.raises(DataError, match=rf"^{path}: row 1, field '{field}': .*{message}"):
        MmebTrainSubset(root, subset)


def test_bad_columns_and_lance_tables_are_named(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = write_parquet(tmp_path / "p", {"N24News": [mmeb_row("q\n", "", "p\n")]})
    path = os.path.join(root, "N24News", "train-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist([{**mmeb_row("q\n", "", "p\n"), "qry_inst": "x"}]), path)
    with pytest.raises(DataError, match=rf"^{path}: unknown field\(s\) \['qry_inst'\]"):
        MmebTrainSubset(root, "N24News")
    pq.write_table(pa.Table.from_pylist([{"qry": "q\n", "pos_text": "p\n", "qry_image_path": ""}]), path)
    with pytest.raises(DataError, match=rf"^{path}: missing field\(s\) \['pos_image_path'\]"):
        MmebTrainSubset(root, "N24News")
    pq.write_table(pa.Table.from_pylist([{**mmeb_row("q\n", "", "p\n"), "neg_text": 3}]), path)
    with pytest.raises(DataError, match=rf"^{path}: field 'neg_text' must hold strings"):
        MmebTrainSubset(root, "N24News")
    # an empty query outside the two subsets whose empty rows the authors drop
    write_parquet(tmp_path / "q", {"VisDial": [mmeb_row(pos_text="p\n")]})
    with pytest.raises(DataError, match="row 0, field 'qry': the query is empty"):
        MmebTrainSubset(tmp_path / "q", "VisDial")

    lance = write_lance(tmp_path / "l", {"WebQA": ROWS["WebQA"]})
    import lance as lance_lib

    images = os.path.join(lance, "data", "images", "WebQA.lance")
    schema = pa.schema([pa.field("path", pa.string()), pa.field("image", pa.binary())])
    lance_lib.write_dataset(pa.Table.from_pylist([], schema=schema), images, mode="overwrite")
    rows = os.path.join(lance, "data", "WebQA", "train.lance")
    with pytest.raises(DataError, match=rf"^{rows}: row 0, field 'pos_image_path': image .* is not in the image table"):
        MmebTrainSubset(lance, "WebQA")
    with pytest.raises(DataError, match="no MMEB-train subset CIRR"):
        MmebTrainSubset(lance, "CIRR")
    with pytest.raises(DataError, match="'Nope' is not an MMEB-train subset"):
        MmebTrainSubset(lance, "Nope")


def test_a_subset_of_only_empty_rows_is_an_error(tmp_path):
    root = write_parquet(tmp_path, {"OK-VQA": [mmeb_row(pos_text="p\n"), mmeb_row("q\n")]})
    with pytest.raises(DataError, match=r"OK-VQA/train-00000-of-00001\.parquet: no rows"):
        MmebTrainSubset(root, "OK-VQA")


def test_examples_collate_with_the_multimodal_collator(tmp_path):
    """The examples are what the VL collator takes: images by path or decoded, image-only negatives."""
    from tests.helpers.tiny import tiny_vl_btok

    model = tiny_vl_btok()
    for root in (write_parquet(tmp_path / "p"), write_lance(tmp_path / "l")):
        examples = [MmebTrainSubset(root, name)[0] for name in ("CIRR", "VisDial", "WebQA", "N24News")]
        batch = model.collate(examples)
        # Inputs: CIRR 2, VisDial 2, WebQA 1, N24News 1; targets (default side "positive": the
        # query's BToks generate the positive as embedded, its image too): CIRR, VisDial, WebQA 1 each.
        assert batch["image_grid_thw"].shape[0] == (2 + 2 + 1 + 1) + 3
        assert (
            len(batch.btok_layout.seqlens) - batch.num_queries == 4 + 2
        )  # 4 positives + VisDial's and N24News' negatives


@pytest.mark.parametrize(
    "subset, side, raw, has_image, want",
    [
        ("N24News", "query", "<|image_1|>\nnews\n", True, "news\n"),
        ("N24News", "query", "<image>  news  \r\n\r\n", True, "news\n"),  # legacy token, CRLF, spaces
        ("N24News", "query", "<|image_1|>", True, None),  # the image alone
        ("MSCOCO", "positive", "<|image_1|>\nthe object", True, "the object\n"),  # a newline added
        ("VisDial", "negative", "", True, None),  # image-only negative kept
        ("VisDial", "query", "image retrieval: Q:hi\nA:yo\n\n", False, "image retrieval:\nQ:hi\nA:yo\n"),
        ("WebQA", "query", "<|image_1|>\nwhich coin?\n", False, "which coin?\n"),
        ("ChartQA", "positive", "10.5 \t", False, "10.5"),
        ("ImageNet_1K", "positive", "plane ", False, "plane "),  # no rule: as stored
    ],
)
def test_render_side(subset, side, raw, has_image, want):
    assert render_side(raw, has_image, getattr(SUBSETS[subset], side)) == want
