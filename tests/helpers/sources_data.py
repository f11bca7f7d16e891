"""A few rows of the authors' other training sources, written in their real layouts, and the
examples they must read to.

The rows are shortened from the sample rows of the authors' docs
(``docs/en/datasets/train/{vidore,visrag,llavahound}/*.md`` of siryuson/BottleneckTokens), plus
edge cases. The expected examples are written by hand from the authors' loaders
(``src/vlm2emb/data/datasets/{vidore,visrag,llavahound}.py``) with the transforms of their
``configs/datasets/mmeb_train.yaml`` entries (``trailing_newline: preserve`` everywhere: no side
gets a final newline it does not have), the vision placeholder taken out: btok's collator
places the block (``placement`` / ``trailing_newline`` of the input dict).

* ViDoRe / VisRAG: ``ROOT/data/train-00000-of-00001.parquet`` (the Hugging Face layout) or
  ``ROOT/data/train.lance`` (the authors' repack), rows with an ``image`` struct {bytes, path}.
* LLaVA-Hound: ``ROOT/data/video_instruction/train/sft/<file>.lance`` and
  ``ROOT/data/train_300k.lance`` (video_id, frame_idx, image), or the public
  ``ROOT/video_instruction/train/sft/<file>.jsonl`` and ``ROOT/train_300k/<video>/<frame>``.

Images are tiny PNGs whose pixels say which row or frame they are (lossless: the decoded
pixels are compared exactly).
"""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

IMAGE_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def png(value: int, size: int = 28) -> bytes:
    """A ``size`` x ``size`` PNG whose every pixel is ``(value, 255 - value, 7)``."""
    pixels = np.zeros((size, size, 3), dtype=np.uint8)
    pixels[..., 0], pixels[..., 1], pixels[..., 2] = value, 255 - value, 7
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def pixel(image) -> int:
    """The value :func:`png` wrote into ``image`` (an RGB ``PIL.Image``)."""
    assert isinstance(image, Image.Image) and image.mode == "RGB"
    values = np.asarray(image)
    assert (values == values[0, 0]).all()
    return int(values[0, 0, 0])


OPTIONS = (
    "['A. The variance of the data decreases from panel a to panel d.', 'B. The variance of the data increases "
    "from panel a to panel d.', 'C. The data presents no variance in any of the panels.', 'D. The variance of the "
    "data is inconsistent across the panels.', '-']"
)

VIDORE_ROWS = [
    {  # arxiv_qa: multiple choice, the letter mapped to its option, the options appended to the query
        "image": {"bytes": png(10), "path": "1810.07757_2.jpg"},
        "image_filename": "images/1810.07757_2.jpg",
        "query": "Comparing panels a, b, c, and d, which statement best describes the data variance?",
        "answer": "D",
        "source": "arxiv_qa",
        "options": OPTIONS,
        "page": "",
        "model": "gpt4V",
        "prompt": "",
        "answer_type": None,
    },
    {  # pdf: the answer is a stringified list, kept as it is
        "image": {"bytes": png(20), "path": "page_9.jpg"},
        "image_filename": "data/scrapped_pdfs_split/pages_extracted/energy_train/page_9.jpg",
        "query": "What is the duration of the course mentioned in the image?",
        "answer": "['five to ten hours, not including field trips']",
        "source": "pdf",
        "options": None,
        "page": "9",
        "model": "sonnet",
        "prompt": "\n        You are an assistant specialized in Multimodal RAG tasks.\n",
        "answer_type": None,
    },
    {  # docvqa: a two-line query, no image path
        "image": {"bytes": png(30), "path": None},
        "image_filename": "0fd47b51ae9248ef36669b8619b1223f268edae3e7a44ac1e6cebbbfaaf69f96",
        "query": "What is the date?\nYour answer should be very brief.",
        "answer": "OCTOBER 17, 1995.",
        "source": "docvqa",
        "options": None,
        "page": None,
        "model": None,
        "prompt": None,
        "answer_type": None,
    },
    {  # CRLF and spaces normalised; "B" -> "B) blue" -> "blue"; the second line keeps its indent
        "image": {"bytes": png(40), "path": "x.png"},
        "image_filename": "x.png",
        "query": "  Where is the logo? \r\n",
        "answer": "B",
        "source": "arxiv_qa",
        "options": "['A) red', 'B) blue']",
        "page": None,
        "model": None,
        "prompt": None,
        "answer_type": None,
    },
]

VIDORE_EXPECTED = [
    (
        10,
        "Comparing panels a, b, c, and d, which statement best describes the data variance? Options: " + OPTIONS,
        "The variance of the data is inconsistent across the panels.",
    ),
    (
        20,
        "What is the duration of the course mentioned in the image?",
        "['five to ten hours, not including field trips']",
    ),
    (30, "What is the date?\nYour answer should be very brief.", "OCTOBER 17, 1995."),
    (40, "Where is the logo?\n Options: ['A) red', 'B) blue']", "blue"),
]

VISRAG_ROWS = [
    {
        "query": "which are the countries with Chinese speaking population other than China according to this "
        "infographic?",
        "image": {"bytes": png(50), "path": "1.png"},
        "source": "InfoVQA",
    },
    {
        "query": "In subfigure (b), which relationship does the blue dotted line indicate?",
        "image": {"bytes": png(60), "path": "129.png"},
        "source": "ArxivQA",
    },
    {  # a source without instructions: the question alone, the image alone
        "query": "  a question  \n",
        "image": {"bytes": png(70), "path": "2.png"},
        "source": "Other",
    },
]

VISRAG_EXPECTED = [  # (image, query, positive text)
    (
        50,
        (
            "This query is related to retrieving an infographic that visually presents statistical or factual "
            "information using charts, icons, and structured layouts. The retrieved image should contain the "
            "necessary visual elements to provide the best context for answering the query: which are the countries "
            "with Chinese speaking population other than China according to this infographic?"
        ),
        "An infographic with structured data, charts, and annotations.",
    ),
    (
        60,
        (
            "This query is related to retrieving a relevant figure from an ArXiv research paper. The retrieved figure "
            "should contain scientific plots, mathematical visualizations, or experimental results that best address "
            "the query: In subfigure (b), which relationship does the blue dotted line indicate?"
        ),
        "A figure from a research paper, including plots or experimental results.",
    ),
    (70, "a question\n", None),
]


def write_image_rows(root, rows, layout: str, row_group_size: int = 2) -> str:
    """ViDoRe / VisRAG rows in the parquet layout (row groups of 2) or the Lance layout (two fragments)."""
    root = os.fspath(root)
    os.makedirs(os.path.join(root, "data"), exist_ok=True)
    columns = {name: [row.get(name) for row in rows] for name in rows[0]}
    fields = [(name, IMAGE_TYPE if name == "image" else pa.string()) for name in columns]
    table = pa.table({name: pa.array(values, type=dict(fields)[name]) for name, values in columns.items()})
    if layout == "parquet":
        pq.write_table(table, os.path.join(root, "data", "train-00000-of-00001.parquet"), row_group_size=row_group_size)
    else:
        import lance

        path = os.path.join(root, "data", "train.lance")
        lance.write_dataset(table.slice(0, 2), path)
        if table.num_rows > 2:
            lance.write_dataset(table.slice(2), path, mode="append")
    return root


# --- LLaVA-Hound ---------------------------------------------------------------------------
V1, V2 = "v_--0edUL8zmA-Scene-001", "OO7MpplyI2s"
# Frame names whose numbers do not sort as text ("frame_10" < "frame_3"); the pixel value of
# each frame is its number.
FRAMES = {
    V1: [f"frame_{n}.jpeg" for n in (1, 3, 5, 7, 9, 10, 12, 14, 16, 18)],  # 10: sample 8 of them
    V2: [f"c01_000{n}.jpeg" for n in (1, 2, 3, 4)],  # 4: all of them
}
# 10 frames: int(i * 10 / 8) for i < 8 -> positions 0 1 2 3 5 6 7 8
SAMPLED = {V1: [1, 3, 5, 7, 10, 12, 14, 16], V2: [1, 2, 3, 4]}

INSTRUCTIONS = {
    "train/sft/video_caption_300k": [
        {
            "id": V1,
            "video": V1,
            "conversations": [
                {
                    "from": "human",
                    "value": "<video>\nWrite an in-depth depiction of the video, covering all its aspects.",
                },
                {"from": "gpt", "value": "The video opens with a view of an indoor court."},
            ],
        },
        {  # the placeholder on the last line moves to the front; the caption keeps its final newline
            "id": V2,
            "video": V2,
            "conversations": [
                {"from": "human", "value": "Elaborate on the visual elements of the video in detail.\n<video>"},
                {"from": "gpt", "value": "A fluffy cat tilts its head.  \n"},
            ],
        },
    ],
    "train/sft/video_240k_caption_15k": [
        {
            "id": f"{V2}_qa",
            "video": V2,
            "conversations": [
                {"from": "human", "value": "<video>\nWhat is the setting of the video?"},
                {"from": "gpt", "value": "The setting appears to be a newsroom."},
            ],
        },
    ],
}


def llavahound_expected() -> dict:
    """source -> [(video, example without frames)] (frames: :data:`SAMPLED` of the video)."""
    preserve = {"trailing_newline": "preserve"}
    video_positive = {"placement": "inline_end", "trailing_newline": "preserve"}
    return {
        "video_caption_300k": [
            (
                V1,
                {
                    "query": {
                        "text": "Write an in-depth depiction of the video, covering all its aspects.",
                        **preserve,
                    },
                    "positive": "The video opens with a view of an indoor court.",
                },
            ),
            (
                V2,
                {
                    "query": {"text": "Elaborate on the visual elements of the video in detail.", **preserve},
                    "positive": "A fluffy cat tilts its head.\n",
                },
            ),
        ],
        "video_caption_300k-video": [
            (
                V1,
                {
                    "query": "Find a video that contains the following visual content: The video opens with a view "
                    "of an indoor court.",
                    "positive": {"text": "Understand the content of the provided video:", **video_positive},
                },
            ),
            (
                V2,
                {
                    "query": "Find a video that contains the following visual content: A fluffy cat tilts its head.\n",
                    "positive": {"text": "Understand the content of the provided video:", **video_positive},
                },
            ),
        ],
        "video_qa_240k": [
            (
                V2,
                {
                    "query": {
                        "text": "Answer a question based on the content of a video.\nWhat is the setting of the video?",
                        **preserve,
                    },
                    "positive": "The setting appears to be a newsroom.",
                },
            ),
        ],
    }


def _frame_number(name: str) -> int:
    return int(name.rsplit("_", 1)[1].split(".")[0])


def write_llavahound(root, layout: str, instructions=None, frames=None) -> str:
    """The instruction files and frames in the Lance layout (frame rows shuffled) or the public one."""
    root = os.fspath(root)
    instructions = INSTRUCTIONS if instructions is None else instructions
    frames = FRAMES if frames is None else frames
    if layout == "lance":
        import lance

        for file, rows in instructions.items():
            path = os.path.join(root, "data", "video_instruction", f"{file}.lance")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            lance.write_dataset(pa.Table.from_pylist(rows), path)
        frame_rows = [
            {"video_id": video, "frame_idx": name, "image": png(_frame_number(name))}
            for video, names in frames.items()
            for name in names
        ]
        order = np.random.default_rng(0).permutation(len(frame_rows))
        schema = pa.schema([("video_id", pa.string()), ("frame_idx", pa.string()), ("image", pa.binary())])
        lance.write_dataset(
            pa.Table.from_pylist([frame_rows[i] for i in order], schema=schema),
            os.path.join(root, "data", "train_300k.lance"),
        )
    else:
        for file, rows in instructions.items():
            path = os.path.join(root, "video_instruction", f"{file}.jsonl")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.writelines(json.dumps(row) + "\n" for row in rows)
        for video, names in frames.items():
            os.makedirs(os.path.join(root, "train_300k", video), exist_ok=True)
            for name in names:
                with open(os.path.join(root, "train_300k", video, name), "wb") as f:
                    f.write(png(_frame_number(name)))
    return root
