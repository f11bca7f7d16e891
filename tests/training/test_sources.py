"""The authors' other training sources (ViDoRe colpali_train_set, VisRAG in-domain, LLaVA-Hound
video) in their real layouts: the examples as the authors render them, bad rows named by file,
row and field, the authors' mixtures from a data root, collation through the tiny Qwen2-VL."""

import os

import pyarrow as pa
import pytest
from sources_fixture import (
    INSTRUCTIONS,
    SAMPLED,
    V1,
    V2,
    VIDORE_EXPECTED,
    VIDORE_ROWS,
    VISRAG_EXPECTED,
    VISRAG_ROWS,
    llavahound_expected,
    pixel,
    png,
    write_image_rows,
    write_llavahound,
)

from btok_model.datasets import DataError
from btok_model.datasets.llavahound_train import LlavaHoundSet, sample_frames
from btok_model.datasets.rendering import token_first
from btok_model.datasets.vidore_train import VidoreTrainSet
from btok_model.datasets.visrag_train import VisragTrainSet

LAYOUTS = ["parquet", "lance"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_vidore_reads_to_the_authors_examples(tmp_path, layout):
    data = VidoreTrainSet(write_image_rows(tmp_path, VIDORE_ROWS, layout))
    assert data.layout == layout and len(data) == len(VIDORE_EXPECTED)
    for example, (image, query, positive) in zip(data, VIDORE_EXPECTED):
        assert set(example) == {"query", "positive"}  # no negative
        assert example["positive"] == positive
        q = dict(example["query"])
        assert pixel(q.pop("image")) == image
        assert q == {"text": query, "trailing_newline": "preserve"}
    assert data.where(3).endswith("row 3")
    assert pixel(data[-1]["query"]["image"]) == 40


@pytest.mark.parametrize("layout", LAYOUTS)
def test_visrag_reads_to_the_authors_examples(tmp_path, layout):
    data = VisragTrainSet(write_image_rows(tmp_path, VISRAG_ROWS, layout))
    assert len(data) == len(VISRAG_EXPECTED)
    for example, (image, query, text) in zip(data, VISRAG_EXPECTED):
        assert example["query"] == query
        p = dict(example["positive"])
        assert pixel(p.pop("image")) == image
        assert p == {"text": text, "trailing_newline": "preserve"}


@pytest.mark.parametrize("layout", ["lance", "jsonl"])
def test_llavahound_reads_to_the_authors_examples(tmp_path, layout):
    root = write_llavahound(tmp_path, layout)
    for name, expected in llavahound_expected().items():
        data = LlavaHoundSet(root, name)
        assert data.layout == layout and len(data) == len(expected), name
        for example, (video, want) in zip(data, expected):
            side = "query" if isinstance(want["query"], dict) else "positive"
            got = {k: dict(v) if isinstance(v, dict) else v for k, v in example.items()}
            assert [pixel(frame) for frame in got[side].pop("video")] == SAMPLED[video], name
            assert got == want, name


def test_frame_sampling_is_the_authors():
    assert sample_frames(3) == [0, 1, 2]
    assert sample_frames(8) == list(range(8))
    assert sample_frames(10) == [0, 1, 2, 3, 5, 6, 7, 8]
    assert sample_frames(168) == [0, 21, 42, 63, 84, 105, 126, 147]  # the docs' c01_0001, c01_0022, ...


@pytest.mark.parametrize(
    "text, want",
    [
        ("<|image_pad|> what", "<|image_pad|>\nwhat"),  # leading the line
        ("a\n  <|image_pad|> \n  b  \n\n", "<|image_pad|>\na\nb\n\n"),  # own line: removed, lines stripped
        ("ask <|image_pad|>\n rest", "<|image_pad|>\nask\nrest"),  # ending the first line
        ("<image> x", "<|image_pad|>\nx"),  # legacy
        ("x<|image_pad|>y", "x<|image_pad|>y"),  # glued: left as it is
        ("<|image_pad|> a <|image_pad|>", "<|image_pad|> a <|image_pad|>"),  # twice: as it is
        ("<|image_pad|>", "<|image_pad|>"),
    ],
)
def test_token_first_is_the_authors_canonical_layout(text, want):
    assert token_first(text, "<|image_pad|>", ("<|image_1|>", "<image>")) == want


def _bad_image_rows(tmp_path, layout, rows):
    return write_image_rows(tmp_path / layout, rows, layout)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(
    "change, field, message",
    [
        ({"answer": " \n"}, "answer", "the positive .* is empty"),
        ({"query": "see <image> here"}, "query", "must hold the placeholder <\\|image_pad\\|> once"),
        ({"query": "x<video>"}, "query", "holds the vision placeholder '<video>'"),
        ({"answer": "<|video_pad|>"}, "answer", "holds the vision placeholder"),
        ({"image": None}, "image", "no image bytes"),
        ({"image": {"bytes": None, "path": "a.png"}}, "image", "no image bytes"),
    ],
    ids=["empty-answer", "legacy-token", "video-token", "token-in-answer", "no-image", "no-bytes"],
)
def test_bad_vidore_rows_name_file_row_and_field(tmp_path, layout, change, field, message):
    rows = [dict(VIDORE_ROWS[2]), dict(VIDORE_ROWS[1]), {**VIDORE_ROWS[2], **change}]
    root = _bad_image_rows(tmp_path, layout, rows)
    path = os.path.join(root, "data", "train-00000-of-00001.parquet" if layout == "parquet" else "train.lance")
    with pytest.raises(DataError, match=rf"^{path}: row 2, field '{field}': {message}"):
        VidoreTrainSet(root)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_bad_visrag_rows_and_tables_are_named(tmp_path, layout):
    root = _bad_image_rows(tmp_path, layout, [VISRAG_ROWS[0], {**VISRAG_ROWS[1], "query": "  "}])
    with pytest.raises(DataError, match=r"row 1, field 'query': the query is empty"):
        VisragTrainSet(root)
    root = _bad_image_rows(tmp_path / "q", layout, [VISRAG_ROWS[0], {**VISRAG_ROWS[1], "query": "<|image_1|> which?"}])
    with pytest.raises(DataError, match=r"row 1, field 'query': holds the vision placeholder '<\|image_1\|>'"):
        VisragTrainSet(root)
    root = _bad_image_rows(tmp_path / "s", layout, [{"query": "q", "image": VISRAG_ROWS[0]["image"]}])
    with pytest.raises(DataError, match=r"missing field\(s\) \['source'\]"):
        VisragTrainSet(root)
    with pytest.raises(DataError, match="no table of rows with images: expected .*train.lance or .*train-\\*.parquet"):
        VisragTrainSet(tmp_path / "nothing")


def test_an_undecodable_image_fails_when_taken_naming_the_row(tmp_path):
    rows = [VISRAG_ROWS[0], {**VISRAG_ROWS[1], "image": {"bytes": b"not a png", "path": "x"}}]
    data = VisragTrainSet(write_image_rows(tmp_path, rows, "lance"))
    assert pixel(data[0]["positive"]["image"]) == 50
    with pytest.raises(DataError, match=r"train.lance: row 1, field 'image': the image cannot be decoded"):
        data[1]


@pytest.mark.parametrize("layout", ["lance", "jsonl"])
@pytest.mark.parametrize(
    "conversations, video, field, message",
    [
        (
            [{"from": "human", "value": "describe it"}, {"from": "gpt", "value": "a cat"}],
            V1,
            "conversations",
            "must hold the placeholder <\\|video_pad\\|> once",
        ),
        (
            [{"from": "human", "value": "<video>\nq"}, {"from": "gpt", "value": " "}],
            V1,
            "conversations",
            "the assistant turn .* is empty",
        ),
        ([{"from": "human", "value": "<video>\nq"}], V1, "conversations", "must be a list of at least two turns"),
        (
            [{"from": "human", "value": "<video>\nq"}, {"from": "gpt", "value": "a cat"}],
            "nope",
            "video",
            "no frames for video 'nope'",
        ),
    ],
    ids=["no-placeholder", "empty-caption", "one-turn", "no-frames"],
)
def test_bad_llavahound_rows_name_file_row_and_field(tmp_path, layout, conversations, video, field, message):
    good = INSTRUCTIONS["train/sft/video_caption_300k"][0]
    rows = {"train/sft/video_caption_300k": [good, {"id": "x", "video": video, "conversations": conversations}]}
    root = write_llavahound(tmp_path, layout, rows)
    if layout == "lance":
        where = os.path.join(root, "data", "video_instruction", "train", "sft", "video_caption_300k.lance") + ": row 1,"
    else:
        where = os.path.join(root, "video_instruction", "train", "sft", "video_caption_300k.jsonl") + ":2:"
    with pytest.raises(DataError, match=rf"^{where} field '{field}': {message}"):
        LlavaHoundSet(root, "video_caption_300k")
    with pytest.raises(DataError, match="no LLaVA-Hound instructions train/sft/video_240k_caption_15k"):
        LlavaHoundSet(root, "video_qa_240k")


def test_a_bad_frame_fails_when_taken_naming_the_example(tmp_path):
    root = write_llavahound(tmp_path, "jsonl")
    with open(os.path.join(root, "train_300k", V2, "c01_0003.jpeg"), "wb") as f:
        f.write(b"broken")
    data = LlavaHoundSet(root, "video_qa_240k")
    with pytest.raises(DataError, match=r"video_240k_caption_15k.jsonl:1: frame .*c01_0003.jpeg: the frame cannot be"):
        data[0]
