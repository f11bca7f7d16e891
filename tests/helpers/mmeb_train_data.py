"""A few MMEB-train rows written in its two real layouts, and the examples they must read to.

The rows are shortened from the sample rows of the ``train`` split in the authors' docs
(``docs/en/datasets/train/mmeb/*.md`` of siryuson/BottleneckTokens; text-only answers carry no
trailing newline there). The expected examples are written by hand from the transform each
subset gets in ``configs/datasets/mmeb_train.yaml`` (as their loader applies it: a side without
a ``trailing_newline`` rule keeps its text as stored, although the file's ``final positive``
comments show a newline), with the image token taken out: btok's collator places the image on
its own line before the text.

* parquet: ``ROOT/<Subset>/train-00000-of-00001.parquet``, images under ``ROOT/images/``.
* Lance: ``ROOT/data/<Subset>/train.lance`` and ``ROOT/data/images/<Subset>.lance`` (path, image bytes).
"""

from __future__ import annotations

import io
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

FIELDS = ("qry", "qry_image_path", "pos_text", "pos_image_path", "neg_text", "neg_image_path")
IMG = "<|image_1|>"


def mmeb_row(qry="", qry_image_path="", pos_text="", pos_image_path="", neg_text="", neg_image_path=""):
    return dict(zip(FIELDS, (qry, qry_image_path, pos_text, pos_image_path, neg_text, neg_image_path)))


# subset -> raw rows, as MMEB-train stores them
ROWS = {
    "ImageNet_1K": [  # classification; the authors empty its negatives
        mmeb_row(
            f"{IMG}\nRepresent the given image for classification\n",
            "images/ImageNet_1K/Train/n01440764_1.JPEG",
            "plane, carpenter's plane, woodworking plane",
            neg_text="tench, Tinca tinca",
        ),
        mmeb_row(
            f"{IMG} Represent the given image for classification  \n\n",
            "images/ImageNet_1K/Train/n01440764_2.JPEG",
            "abbey",
        ),
    ],
    "N24News": [  # classification with text negatives kept
        mmeb_row(
            f"{IMG}\nRepresent the given news image with the following caption for domain classification: "
            "Danai Gurira and Andre Holland in a theater.\n",
            "images/N24News/Train/N24News_image_0.jpg",
            "Theater",
            neg_text="Global Business",
        ),
    ],
    "ChartQA": [  # answers lose trailing spaces
        mmeb_row(
            f"{IMG}\nRepresent the given image with the following question: Is the value of Favorable 38 in 2015?\n",
            "images/ChartQA/Train/ChartQA_image_0.jpg",
            "Yes ",
            neg_text="No \t",
        ),
    ],
    "VisDial": [  # text query, image positive, image-only negative
        mmeb_row(
            "Represent the given dialogue about an image, which is used for image retrieval: Q:is this a child or "
            "adult\nA:adult\nQ:male or female\nA:male\n\n",
            "",
            f"{IMG}\nRepresent the given image\n",
            "images/VisDial/Train/VisDial_image_0.jpg",
            "",
            "images/VisDial/Train/VisDial_image_61616.jpg",
        ),
    ],
    "WebQA": [  # the query carries an image token without an image
        mmeb_row(
            f"{IMG}\nFind a Wikipedia image that answers this question: Which body part is found on both a 1913 D "
            "Barber half and a 1914 Barber Quarter?\n",
            "",
            f"{IMG}\nRepresent the given Wikipedia image with related text information: 1913-D Barber half obverse.\n",
            "images/WebQA/Train/30272327.jpg",
        ),
    ],
    "CIRR": [  # images on both sides
        mmeb_row(
            f"{IMG}\nGiven an image, find a similar everyday image with the described changes: Many hamster "
            "together playing in a different background.\n",
            "images/CIRR/Train/train-10108-0-img0.png",
            f"{IMG}\nRepresent the given image.\n",
            "images/CIRR/Train/train-11041-2-img0.png",
            f"{IMG}\nRepresent the given image.\n",
            "images/CIRR/Train/train-10108-0-img1.png",
        ),
    ],
    "A-OKVQA": [  # the second row has no query at all: the authors drop such rows here
        mmeb_row(
            f"{IMG}\nRepresent the given image with the following question: What is the man by the bags awaiting?\n",
            "images/A-OKVQA/Train/A-OKVQA_image_0.jpg",
            "cab",
            neg_text="train",
        ),
        mmeb_row(pos_text="bus\n"),
    ],
}


def expected(image) -> dict[str, list[dict]]:
    """The examples of :data:`ROWS`, written by hand; ``image(path)`` gives an image's value."""
    return {
        "ImageNet_1K": [
            {
                "query": {
                    "text": "Represent the given image for classification\n",
                    "image": image("images/ImageNet_1K/Train/n01440764_1.JPEG"),
                },
                "positive": "plane, carpenter's plane, woodworking plane",
            },
            {
                "query": {
                    "text": "Represent the given image for classification\n",
                    "image": image("images/ImageNet_1K/Train/n01440764_2.JPEG"),
                },
                "positive": "abbey",
            },
        ],
        "N24News": [
            {
                "query": {
                    "text": "Represent the given news image with the following caption for domain classification: "
                    "Danai Gurira and Andre Holland in a theater.\n",
                    "image": image("images/N24News/Train/N24News_image_0.jpg"),
                },
                "positive": "Theater",
                "negatives": ["Global Business"],
            }
        ],
        "ChartQA": [
            {
                "query": {
                    "text": "Represent the given image with the following question: Is the value of Favorable 38 in "
                    "2015?\n",
                    "image": image("images/ChartQA/Train/ChartQA_image_0.jpg"),
                },
                "positive": "Yes",
                "negatives": ["No"],
            }
        ],
        "VisDial": [
            {
                "query": "Represent the given dialogue about an image, which is used for image retrieval:\nQ:is this "
                "a child or adult\nA:adult\nQ:male or female\nA:male\n",
                "positive": {
                    "text": "Represent the given image\n",
                    "image": image("images/VisDial/Train/VisDial_image_0.jpg"),
                },
                "negatives": [{"text": None, "image": image("images/VisDial/Train/VisDial_image_61616.jpg")}],
            }
        ],
        "WebQA": [
            {
                "query": "Find a Wikipedia image that answers this question: Which body part is found on both a 1913 D "
                "Barber half and a 1914 Barber Quarter?\n",
                "positive": {
                    "text": "Represent the given Wikipedia image with related text information: 1913-D Barber half "
                    "obverse.\n",
                    "image": image("images/WebQA/Train/30272327.jpg"),
                },
            }
        ],
        "CIRR": [
            {
                "query": {
                    "text": "Given an image, find a similar everyday image with the described changes: Many hamster "
                    "together playing in a different background.\n",
                    "image": image("images/CIRR/Train/train-10108-0-img0.png"),
                },
                "positive": {
                    "text": "Represent the given image.\n",
                    "image": image("images/CIRR/Train/train-11041-2-img0.png"),
                },
            }
        ],
        "A-OKVQA": [
            {
                "query": {
                    "text": "Represent the given image with the following question: What is the man by the bags "
                    "awaiting?\n",
                    "image": image("images/A-OKVQA/Train/A-OKVQA_image_0.jpg"),
                },
                "positive": "cab",
                "negatives": ["train"],
            }
        ],
    }


def image_bytes(key: str) -> bytes:
    """A small PNG whose pixels depend on ``key`` (so a wrong image is told apart)."""
    seed = sum(key.encode()) * 7919 % 2**31
    pixels = np.random.default_rng(seed).integers(0, 256, (28, 42, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def image_keys(rows: list[dict]) -> list[str]:
    return sorted({r[f] for r in rows for f in ("qry_image_path", "pos_image_path", "neg_image_path") if r[f]})


def write_parquet(root, rows: dict[str, list[dict]] | None = None, split: str = "train", images: bool = True) -> str:
    """``rows`` (default :data:`ROWS`) in the parquet layout under ``root``, with their image files."""
    rows = ROWS if rows is None else rows
    for subset, subset_rows in rows.items():
        os.makedirs(os.path.join(root, subset), exist_ok=True)
        pq.write_table(pa.Table.from_pylist(subset_rows), os.path.join(root, subset, f"{split}-00000-of-00001.parquet"))
        for key in image_keys(subset_rows) if images else []:
            path = os.path.join(root, key)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(image_bytes(key))
    return str(root)


def write_lance(
    root, rows: dict[str, list[dict]] | None = None, split: str = "train", not_images: tuple[str, ...] = ()
) -> str:
    """``rows`` (default :data:`ROWS`) in the authors' Lance layout under ``root``; the image paths
    in ``not_images`` get bytes that are not an image."""
    import lance

    rows = ROWS if rows is None else rows
    for subset, subset_rows in rows.items():
        lance.write_dataset(pa.Table.from_pylist(subset_rows), os.path.join(root, "data", subset, f"{split}.lance"))
        keys = image_keys(subset_rows)
        schema = pa.schema([pa.field("path", pa.string()), pa.field("image", pa.binary())])
        stored = [{"path": k, "image": b"\xff\xd8 not a jpeg" if k in not_images else image_bytes(k)} for k in keys]
        table = pa.Table.from_pylist(stored, schema=schema)
        lance.write_dataset(table, os.path.join(root, "data", "images", f"{subset}.lance"))
    return str(root)
