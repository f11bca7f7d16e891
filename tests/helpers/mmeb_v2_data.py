"""Tiny MMEB-V2 datasets in the authors' Lance layout, with real (random-pixel) images and frames.

Four datasets, one per kind the runner has to handle:

* ``ImageNet-1K`` (image classification): image queries, text labels, sparse qrels (every
  query against every label);
* ``MSCOCO_t2i`` (image retrieval): text queries, image candidates, sparse qrels;
* ``Video-MME`` (video QA): video queries (10 stored frames, 8 sampled), each with its own
  options: exhaustive qrels;
* ``ViDoRe_arxivqa`` (visual documents): text queries, page images, sparse graded qrels with
  several relevant pages, string ids.

Columns follow the authors' conversion (``qry_text``/``qry_inst``/``qry_img_path``/``image``
for image queries, ``tgt_text``/``tgt_inst``/``tgt_img_path``/``image`` for image candidates,
the raw annotation fields plus ``video`` for video queries, ``query`` for document queries).
Texts are lower-case so the tiny character tokenizer reads them, and short enough for the
tiny model's 256 positions.
"""

from __future__ import annotations

import io
import json
import os

import numpy as np

FIXTURE_DATASETS = ("ImageNet-1K", "MSCOCO_t2i", "Video-MME", "ViDoRe_arxivqa")


def png(seed: int, height: int = 28, width: int = 28) -> bytes:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def write_table(path: str, rows: list[dict], schema=None) -> None:
    import lance
    import pyarrow as pa

    lance.write_dataset(pa.Table.from_pylist(rows, schema=schema), path, mode="create")


def qrels_schema(id_type):
    import pyarrow as pa

    return pa.schema(
        [
            pa.field("query_id", id_type, nullable=False),
            pa.field("mode", pa.string(), nullable=False),
            pa.field("candidate_ids", pa.list_(id_type)),
            pa.field("candidate_scores", pa.list_(pa.float32())),
        ]
    )


def write_dataset(root: str, folder: str, queries: list, candidates: list, qrels: list, metadata: dict) -> str:
    import pyarrow as pa

    path = os.path.join(root, folder)
    os.makedirs(path)
    write_table(os.path.join(path, "queries.lance"), queries)
    write_table(os.path.join(path, "candidates.lance"), candidates)
    id_type = pa.string() if isinstance(qrels[0]["query_id"], str) else pa.int64()
    write_table(os.path.join(path, "qrels.lance"), qrels, qrels_schema(id_type))
    with open(os.path.join(path, "metadata.json"), "w") as f:
        json.dump(metadata, f)
    return path


def _sparse(query_id, ids, scores=None):
    return {
        "query_id": query_id,
        "mode": "sparse",
        "candidate_ids": ids,
        "candidate_scores": scores or [1.0] * len(ids),
    }


def write_fixture(root: str) -> str:
    """Write the four datasets under ``root`` (the benchmark root); returns ``root``."""
    labels = ["tench", "goldfish", "white shark", "tiger shark", "hammerhead"]
    write_dataset(
        root,
        "image-tasks/ImageNet-1K",
        [
            {
                "id": i,
                "qry_text": "<|image_1|>\nrepresent the given image for classification\n",
                "qry_inst": None,
                "qry_img_path": f"imagenet/{i}.png",
                "image": png(i, 28 + 14 * (i % 3), 28 + 14 * (i % 2)),
            }
            for i in range(4)
        ],
        [{"id": i, "text": t} for i, t in enumerate(labels)],
        [_sparse(i, [label]) for i, label in enumerate([0, 3, 1, 4])],
        {"name": "ImageNet-1K", "modality": "image", "task_type": "image_classification"},
    )
    captions = ["a dog on a couch", "two boats at sea", "a red bus in town"]
    write_dataset(
        root,
        "image-tasks/MSCOCO_t2i",
        [
            {
                "id": i,
                "qry_text": f"find me an everyday image that matches the given caption: {c}\n",
                "qry_inst": None,
                "qry_img_path": None,
                "image": None,
            }
            for i, c in enumerate(captions)
        ],
        [
            {
                "id": i,
                "tgt_text": "<|image_1|>\nrepresent the given image.\n",
                "tgt_inst": None,
                "tgt_img_path": f"coco/{i}.png",
                "image": png(100 + i, 42, 28),
            }
            for i in range(4)
        ],
        [_sparse(0, [2]), _sparse(1, [0]), _sparse(2, [3])],
        {"name": "MSCOCO_t2i", "modality": "image", "task_type": "image_retrieval"},
    )
    options = [["a. yes", "b. no", "c. maybe"], ["a. red", "b. blue", "c. green"], ["a. one", "b. two", "c. six"]]
    write_dataset(
        root,
        "video-tasks/Video-MME",
        [
            {
                "id": i,
                "videoID": f"v{i}",
                "question": q,
                "options": options[i],
                "answer": "ab"[i % 2],
                "video": [png(200 + 10 * i + f) for f in range(10)],
            }
            for i, q in enumerate(["is it day?", "what color?", "how many?"])
        ],
        [{"id": 3 * i + j, "text": options[i][j]} for i in range(3) for j in range(3)],
        [
            {
                "query_id": i,
                "mode": "exhaustive",
                "candidate_ids": [3 * i, 3 * i + 1, 3 * i + 2],
                "candidate_scores": [1.0 * (j == i % 2) for j in range(3)],
            }
            for i in range(3)
        ],
        {"name": "Video-MME", "modality": "video", "task_type": "video_question_answer"},
    )
    write_dataset(
        root,
        "visdoc-tasks/ViDoRe_arxivqa",
        [{"id": f"q{i}", "query": q} for i, q in enumerate(["what is the loss?", "which model wins?", "how big?"])],
        [{"id": f"p{i}", "image": png(300 + i, 56, 42), "path": f"page{i}.png"} for i in range(5)],
        [
            _sparse("q0", ["p1", "p3"], [2.0, 1.0]),
            _sparse("q1", ["p0"], [1.0]),
            _sparse("q2", ["p2", "p4", "p0"], [1.0, 1.0, 0.0]),  # a judged but irrelevant page (score 0)
        ],
        {"name": "ViDoRe_arxivqa", "modality": "visdoc", "task_type": "visdoc_vidore_v1"},
    )
    return root
