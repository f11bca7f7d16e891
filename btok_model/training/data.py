"""Training data: JSONL files of examples, validated line by line, mixed with weights.

One example per line::

    {"query": str, "positive": str, "negatives": [str, ...]?, "target": str | null?,
     "target_side": "positive" | "query" | "both" | "none"?, "source": str?,
     "query_image": path?, "positive_image": path?}

``query`` and ``positive`` may be left out only when the matching image is given. Image
paths are relative to the file and must exist (the images themselves are read by a
multimodal collator; a text-only model refuses them). ``target`` follows
:class:`~btok_model.embedder.collate.BTokCollator`: absent means the positive's text, null
or ``""`` means no generative target for that example; ``target_side`` (whose BToks
generate whose text) and ``source`` (the data source's name) follow it too. Anything else --
a line that is not JSON, a missing or empty field, an unknown field, an image that does not
exist, a ``target_side`` that is not one of the four or contradicts ``target`` -- raises a
:class:`~btok_model.datasets.DataError` naming the file and line.

Several files mix with weights (``a.jsonl:0.7 b.jsonl:0.3``): an epoch holds as many
examples as the files together, file ``i`` contributing ``weight_i`` of them (drawn
without replacement from a seeded permutation of the file, cycled when it must repeat).
The mixture is a fixed list for a given seed, so every rank and a resumed run see the same
examples.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

import torch

from ..datasets.jsonl import DataError, Record, read_jsonl
from ..embedder.collate import check_generation

__all__ = ["DataSource", "MixedDataset", "load_examples", "parse_data_spec"]

TRAIN_KEYS = {"query", "positive", "negatives", "target", "target_side", "source", "query_image", "positive_image"}


def _example(record: Record) -> dict:
    record.check_keys(TRAIN_KEYS)
    example = {}
    for text_key, image_key in (("query", "query_image"), ("positive", "positive_image")):
        image = record.image(image_key)
        text = record.text(text_key, required=image is None)
        if text is not None:
            example[text_key] = text
        if image is not None:
            example[image_key] = image
    negatives = record.text_list("negatives")
    if negatives:
        example["negatives"] = negatives
    if "target" in record.data:
        target = record.data["target"]
        if target is not None and not isinstance(target, str):
            raise record.error(f"field 'target' must be a string or null, got {type(target).__name__}")
        example["target"] = target
    example.update({key: record.data[key] for key in ("target_side", "source") if key in record.data})
    try:  # the collator's rules, checked here so that a bad line fails before training starts
        check_generation(example)
    except ValueError as err:
        raise record.error(str(err)) from None
    return example


def load_examples(path: str | os.PathLike) -> list[dict]:
    """Every example of a JSONL file, validated (see the module docstring).

    Raises:
        DataError: the first bad line, as ``FILE:LINE: what is wrong``; or an empty file.
    """
    examples = [_example(record) for record in read_jsonl(path)]
    if not examples:
        raise DataError(f"{os.fspath(path)}: no examples")
    return examples


@dataclass(frozen=True)
class DataSource:
    """A training file and its mixing weight (``None``: proportional to its size)."""

    path: str
    weight: float | None = None


def parse_data_spec(spec: str) -> DataSource:
    """``"path"`` or ``"path:weight"`` (the weight a number > 0) -> :class:`DataSource`."""
    path, sep, weight = spec.rpartition(":")
    if sep:
        try:
            value = float(weight)
        except ValueError:
            return DataSource(spec)  # a colon inside the path, no weight
        if not value > 0:
            raise ValueError(f"{spec!r}: the mixing weight must be a number > 0, got {weight!r}")
        return DataSource(path, value)
    return DataSource(spec)


class MixedDataset(torch.utils.data.Dataset):
    """Examples of one or more files, mixed by weight into a fixed list (see the module docstring).

    Args:
        sources: the files; either all with weights or none (then each file counts once).
        seed: seeds which examples fill each file's share.
        size: examples per epoch (default: the files' total size).
    """

    def __init__(self, sources: list[DataSource], seed: int = 0, size: int | None = None):
        if not sources:
            raise ValueError("no training data given")
        weighted = [s.weight is not None for s in sources]
        if any(weighted) and not all(weighted):
            raise ValueError(
                "give a weight to every training file or to none: "
                + ", ".join(f"{s.path}:{s.weight}" if s.weight else s.path for s in sources)
            )
        self.files = [load_examples(s.path) for s in sources]
        total = sum(len(f) for f in self.files) if size is None else size
        if total < 1:
            raise ValueError(f"size must be at least 1, got {size}")
        weights = [s.weight if s.weight is not None else len(f) for s, f in zip(sources, self.files, strict=True)]
        self.counts = _shares(weights, total)
        rng = random.Random(seed)
        self.index: list[tuple[int, int]] = []
        for file_id, (examples, count) in enumerate(zip(self.files, self.counts, strict=True)):
            order = list(range(len(examples)))
            rng.shuffle(order)
            self.index += [(file_id, order[i % len(order)]) for i in range(count)]
        self.sources = sources

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        file_id, j = self.index[i]
        return self.files[file_id][j]


def _shares(weights: list[float], total: int) -> list[int]:
    """Split ``total`` in proportion to ``weights`` (largest remainders; the counts sum to ``total``)."""
    norm = sum(weights)
    exact = [w / norm * total for w in weights]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(weights)), key=lambda i: exact[i] - counts[i], reverse=True)
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts
