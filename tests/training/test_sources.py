"""The authors' other training sources (ViDoRe colpali_train_set, VisRAG in-domain, LLaVA-Hound
video) in their real layouts: the examples as the authors render them, bad rows named by file,
row and field, the authors' mixtures from a data root, collation through the tiny Qwen2-VL."""

import os

import pytest

from btok_model.datasets import DataError
from btok_model.datasets.llavahound_train import LlavaHoundSet
from btok_model.datasets.rendering import token_first
from btok_model.datasets.vidore_train import VidoreTrainSet
from btok_model.datasets.visrag_train import VisragTrainSet
from tests.helpers.sources_data import (
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
    write_image_rows,
    write_llavahound,
)

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
    with pytest.raises(
        DataError, match=r"no table of rows with images: expected .*train\.lance or .*train-\*\.parquet"
    ):
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


# --- the authors' mixtures from a data root --------------------------------------------------
FOLDERS = {
    "mmeb_train": "MMEB-train",
    "vidore": "vidore_colpali_train_set",
    "visrag": "openbmb_VisRAG-Ret-Train-In-domain-data",
    "llavahound": "ShareGPTVideo_train_video_and_instruction",
}
# Written by hand from the authors' configs/datasets/mmeb_train.yaml (weight) and
# btoks_mmeb_train.yaml (metadata.ntp_side): (weight, side) of the 25 v1 sources.
V1_MIXTURE = {
    **dict.fromkeys(("ImageNet_1K", "N24News", "DocVQA", "Visual7W", "VisualNews_i2t"), (1.0, "positive")),
    **dict.fromkeys(("MSCOCO_i2t",), (1.0, "positive")),
    **dict.fromkeys(("HatefulMemes", "VOC2007", "SUN397", "OK-VQA", "A-OKVQA"), (0.5, "positive")),
    **dict.fromkeys(("InfographicsVQA", "ChartQA"), (0.5, "positive")),
    "VisDial": (1.0, "query"),
    "CIRR": (0.5, "none"),
    "VisualNews_t2i": (1.0, "query"),
    "MSCOCO_t2i": (1.0, "query"),
    "NIGHTS": (0.5, "none"),
    "WebQA": (0.5, "both"),
    "MSCOCO": (1.0, "query"),
    "colpali_train_set": (10.0, "positive"),
    "visrag-indomain": (12.0, "query"),
    "video_caption_300k": (5.0, "positive"),
    "video_caption_300k-video": (5.0, "query"),
    "video_qa_240k": (5.0, "positive"),
}


def write_data_root(path, skip=()) -> str:
    """The authors' four folders under one data root: MMEB-train (parquet, two text rows per
    subset), ViDoRe (parquet), VisRAG (Lance), ShareGPTVideo (Lance)."""
    from btok_model.datasets.mmeb_train import SUBSETS
    from tests.helpers.mmeb_train_data import mmeb_row, write_parquet

    path = os.fspath(path)
    if "mmeb_train" not in skip:
        rows = {name: [mmeb_row(f"query {i} of {name}\n", "", f"positive {i}\n") for i in range(2)] for name in SUBSETS}
        write_parquet(os.path.join(path, FOLDERS["mmeb_train"]), rows)
    if "vidore" not in skip:
        write_image_rows(os.path.join(path, FOLDERS["vidore"]), VIDORE_ROWS, "parquet")
    if "visrag" not in skip:
        write_image_rows(os.path.join(path, FOLDERS["visrag"]), VISRAG_ROWS, "lance")
    if "llavahound" not in skip:
        write_llavahound(os.path.join(path, FOLDERS["llavahound"]), "lance")
    return path


def test_a_data_root_is_the_authors_v1_mixture(tmp_path):
    from btok_model.datasets.catalog import AUTHORS_V1_MIXTURE
    from btok_model.training.mixed_dataset import DataSource, parse_data_spec

    root = write_data_root(tmp_path)
    sources = parse_data_spec(root)
    assert {s.name: (s.weight, s.target_side) for s in sources} == V1_MIXTURE and len(sources) == 25
    assert sum(s.weight for s in sources) == 52.0 == AUTHORS_V1_MIXTURE.total_weight
    folders = {s.family: s.path for s in sources}
    assert folders == {family: os.path.join(root, folder) for family, folder in FOLDERS.items()}
    # scaled, one folder, one source, an MMEB-train root as before
    assert [s.weight for s in parse_data_spec(f"{root}:104")] == [2 * s.weight for s in sources]
    video = os.path.join(root, FOLDERS["llavahound"])
    assert [(s.name, s.weight) for s in parse_data_spec(video)] == [
        ("video_caption_300k", 5.0),
        ("video_caption_300k-video", 5.0),
        ("video_qa_240k", 5.0),
    ]
    assert parse_data_spec(os.path.join(video, "video_qa_240k") + ":2") == [
        DataSource(video, 2.0, "video_qa_240k", "positive", family="llavahound")
    ]
    vidore = os.path.join(root, FOLDERS["vidore"])
    assert parse_data_spec(vidore) == [DataSource(vidore, 10.0, "colpali_train_set", "positive", family="vidore")]
    mmeb = parse_data_spec(os.path.join(root, FOLDERS["mmeb_train"]))
    assert len(mmeb) == 20 and sum(s.weight for s in mmeb) == 15.0


def test_the_vlm2vec_mixture(tmp_path):
    from btok_model.datasets.catalog import VLM2VEC_MIXTURE
    from btok_model.training.mixed_dataset import parse_data_spec

    sources = parse_data_spec(write_data_root(tmp_path), mixture=VLM2VEC_MIXTURE)
    weights = {s.name: s.weight for s in sources}
    # configs/datasets/mmeb_train_optimized.yaml, by hand
    assert (weights["ImageNet_1K"], weights["N24News"], weights["VisDial"], weights["MSCOCO"]) == (3, 2, 3, 3)
    assert (weights["colpali_train_set"], weights["visrag-indomain"], weights["video_qa_240k"]) == (16, 17, 10)
    assert sum(weights.values()) == 100 and all(s.target_side is None for s in sources)


def test_missing_folders_and_sources_are_named(tmp_path):
    from btok_model.training.mixed_dataset import parse_data_spec

    root = write_data_root(tmp_path / "data", skip=("visrag", "llavahound"))
    with pytest.raises(
        DataError,
        match=r"a data root of the authors' mixture btoks_qwen2vl_2b_v1 without "
        r"\['openbmb_VisRAG-Ret-Train-In-domain-data', 'ShareGPTVideo_train_video_and_instruction'\].* give the "
        r"folders it has one by one: .*MMEB-train .*vidore_colpali_train_set$",
    ):
        parse_data_spec(root)
    video = write_llavahound(
        tmp_path / "video", "lance", {"train/sft/video_caption_300k": INSTRUCTIONS["train/sft/video_caption_300k"]}
    )
    with pytest.raises(DataError, match=r"a ShareGPTVideo folder without source\(s\) \['video_qa_240k'\]"):
        parse_data_spec(video)
    with pytest.raises(DataError, match=r"video_qa_240k: the ShareGPTVideo folder .* has no source video_qa_240k"):
        parse_data_spec(os.path.join(video, "video_qa_240k"))
    assert len(parse_data_spec(os.path.join(video, "video_caption_300k-video"))) == 1
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"a folder, not a JSONL file, a source's folder .* or a data root holding"):
        parse_data_spec(str(tmp_path / "empty"))


def test_the_mixture_tags_and_collates_through_the_tiny_qwen2_vl(tmp_path):
    """Examples of every new source, tagged with their source and side, collate in one batch:
    a page image query (ViDoRe), a page image positive generating its query (VisRAG), a video
    query, and a video positive at the end of its line generating its query (LLaVA-Hound)."""
    from btok_model.training.mixed_dataset import MixedDataset, parse_data_spec
    from tests.helpers.tiny import IMAGE_TOKEN, VIDEO_TOKEN, VISION_END, VISION_START, tiny_vl_btok

    data = MixedDataset([s for s in parse_data_spec(write_data_root(tmp_path)) if s.family != "mmeb_train"])
    assert [d["name"] for d in data.describe()] == list(V1_MIXTURE)[20:]
    assert [d["layout"] for d in data.describe()] == ["parquet", "lance", "lance", "lance", "lance"]
    start = dict(zip((d["name"] for d in data.describe()), data.offsets))
    picks = {
        "colpali_train_set": 2,
        "visrag-indomain": 2,
        "video_caption_300k": 0,
        "video_caption_300k-video": 0,
    }
    examples = [data[start[name] + i] for name, i in picks.items()]
    assert [(ex["source"], ex["target_side"]) for ex in examples] == [
        ("colpali_train_set", "positive"),
        ("visrag-indomain", "query"),
        ("video_caption_300k", "positive"),
        ("video_caption_300k-video", "query"),
    ]
    model = tiny_vl_btok()
    batch = model.collate(examples)
    tok, k = model.tokenizer, len(model.btok_token_ids)
    # one image per page (the visrag positive's image also in no target: its side generates the query)
    assert batch["image_grid_thw"].shape[0] == 2 and batch["video_grid_thw"].shape[0] == 2
    cu = batch["btok_layout"].host_cu_seqlens
    seqs = [batch["input_ids"][0, a:b].tolist() for a, b in zip(cu[:-1], cu[1:])]
    video = [VISION_START] + [VIDEO_TOKEN] * 4 + [VISION_END]  # 8 frames of 28 px: 4 x 1 x 1 merged patches
    # the LLaVA-Hound video positive: its text, a space, the video block, no newline, then the BToks
    positive = tok("Understand the content of the provided video: ", add_special_tokens=False)["input_ids"] + video
    assert seqs[4 + 3][: len(positive) + k] == positive + model.btok_token_ids
    # the video query: the block on its own line, the text without a final newline
    query = video + tok("\nWrite an in-depth depiction of the video, covering all its aspects.")["input_ids"]
    assert seqs[2][: len(query) + k] == query + model.btok_token_ids
    # the ViDoRe query: the page on its own line, the two-line question without a final newline,
    # the BToks, then its target (the answer)
    page = [VISION_START, IMAGE_TOKEN, VISION_END]
    query = page + tok("\nWhat is the date?\nYour answer should be very brief.")["input_ids"]
    target = tok("<|im_start|>assistant\nOCTOBER 17, 1995.<|im_end|>", add_special_tokens=False)["input_ids"]
    assert seqs[0] == query + model.btok_token_ids + target


def test_the_cli_names_a_missing_folder_before_loading_a_model(tmp_path, capsys):
    from btok_model.train import main as train_main

    root = write_data_root(tmp_path / "data", skip=("llavahound",))
    with pytest.raises(SystemExit):
        train_main(["--model", "no/such-model", "--train-data", root, "--output-dir", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and "without ['ShareGPTVideo_train_video_and_instruction']" in err


def test_a_parquet_file_without_statistics_is_checked_row_by_row(tmp_path):
    """The image check reads a row group's images only when its statistics cannot say it has
    none missing: without statistics every group is read, and the missing one is still found."""
    import pyarrow.parquet as pq

    rows = [VISRAG_ROWS[0], VISRAG_ROWS[1], VISRAG_ROWS[0], {**VISRAG_ROWS[1], "image": None}]
    root = write_image_rows(tmp_path, rows, "parquet")
    path = os.path.join(root, "data", "train-00000-of-00001.parquet")
    pq.write_table(pq.read_table(path), path, row_group_size=2, write_statistics=False)
    assert pq.ParquetFile(path).metadata.row_group(1).column(1).statistics is None
    with pytest.raises(DataError, match=rf"^{path}: row 3, field 'image': no image bytes"):
        VisragTrainSet(root)


def test_each_preset_reads_a_data_root_with_its_own_mixture(tmp_path):
    """``--preset vlm2vec-qwen2vl-2b`` weighs the authors' sources as mmeb_train_optimized.yaml,
    ``btoks-qwen2vl-2b-v1`` (and no preset) as the v1 mixture."""
    from btok_model.train import parser, training_sources

    root = write_data_root(tmp_path)

    def weights(*preset):
        args = parser().parse_args([*preset, "--train-data", root, "--output-dir", str(tmp_path / "out")])
        return {s.name: s.weight for s in training_sources(args)}

    v1, vlm2vec = weights("--preset", "btoks-qwen2vl-2b-v1"), weights("--preset", "vlm2vec-qwen2vl-2b")
    assert weights() == v1 and sum(v1.values()) == 52 and sum(vlm2vec.values()) == 100
    assert (v1["colpali_train_set"], vlm2vec["colpali_train_set"]) == (10, 16)
