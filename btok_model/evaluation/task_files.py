"""Evaluation files: query/positive pairs scored against one pool, or per-query candidate lists.

Two JSONL layouts (one per file; see :func:`load_task`):

* pairs -- ``{"query": str, "positive": str}`` per line. The candidate pool is every distinct
  positive, plus the lines of an optional corpus file (``{"text": str}`` per line); each
  query's relevant candidate is its positive.
* candidate lists (MMEB style) -- ``{"query": str, "candidates": [str, ...], "label": int}``:
  each query is ranked against its own list, ``label`` indexes the relevant candidate.

An input may also carry an image (``"query_image"``, ``"positive_image"``, a corpus
``"image"``, or a candidate given as ``{"text": ..., "image": ...}``), a path relative to the
file; such an input is passed on as ``{"text": ..., "image": path}`` and needs a multimodal
embedder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

from ..datasets.jsonl import Record, read_jsonl

__all__ = ["CandidateListTask", "PairTask", "input_key", "load_corpus", "load_task"]

PAIR_KEYS = {"query", "positive", "query_image", "positive_image"}
LIST_KEYS = {"query", "candidates", "label", "query_image"}
CORPUS_KEYS = {"text", "image"}


@dataclass
class PairTask:
    """Queries ranked against one shared candidate pool.

    Attributes:
        queries: one input per query (str, or ``{"text", "image"}``).
        candidates: the distinct candidates (positives first, in order of appearance, then
            the corpus entries not already present).
        positive_index: int64 ``[len(queries)]``, each query's candidate.
        name: where the task came from.
    """

    queries: list
    candidates: list
    positive_index: torch.Tensor
    name: str


@dataclass
class CandidateListTask:
    """Queries each ranked against their own candidates.

    Attributes:
        queries: one input per query.
        candidates: the distinct candidate inputs of all lists.
        lists: per query, int64 indices into ``candidates``.
        labels: int64 ``[len(queries)]``, the position of the relevant candidate in each list.
        name: where the task came from.
    """

    queries: list
    candidates: list
    lists: list[torch.Tensor]
    labels: torch.Tensor
    name: str


def input_key(item) -> tuple:
    """A hashable identity of an input (text and image), used to deduplicate candidates."""
    if isinstance(item, str):
        return (item, None)
    return (item.get("text"), item.get("image"))


def _make_input(text: str | None, image: str | None):
    return text if image is None else {"text": text, "image": image}


def _input(record: Record, text_key: str, image_key: str):
    image = record.image(image_key)
    text = record.text(text_key, required=image is None)
    return _make_input(text, image)


def _candidate(record: Record, j: int, value):
    name = f"candidates[{j}]"
    if isinstance(value, str):
        return record.check_text(value, name)
    if not isinstance(value, dict):
        raise record.error(f"{name} must be a string or an object with 'text'/'image', got {type(value).__name__}")
    unknown = sorted(set(value) - CORPUS_KEYS)
    if unknown:
        raise record.error(f"{name} has unknown field(s) {unknown}; allowed: {sorted(CORPUS_KEYS)}")
    image = None if value.get("image") is None else record.check_image(value["image"], f"{name}.image")
    if image is None and "text" not in value:
        raise record.error(f"{name} has neither 'text' nor 'image'")
    text = None if "text" not in value else record.check_text(value["text"], f"{name}.text")
    return _make_input(text, image)


class _Pool:
    """Distinct inputs in order of first appearance."""

    def __init__(self):
        self.items, self.index = [], {}

    def add(self, item) -> int:
        key = input_key(item)
        if key not in self.index:
            self.index[key] = len(self.items)
            self.items.append(item)
        return self.index[key]


def load_corpus(path: str | os.PathLike) -> list:
    """Extra candidates, one ``{"text": str, "image"?: path}`` per line."""
    items = []
    for record in read_jsonl(path):
        record.check_keys(CORPUS_KEYS)
        items.append(_input(record, "text", "image"))
    return items


def load_task(path: str | os.PathLike, corpus: str | os.PathLike | None = None) -> PairTask | CandidateListTask:
    """Read an evaluation file; its layout is told by the first line (pairs or candidate lists).

    Args:
        path: the JSONL file.
        corpus: an optional JSONL of extra candidates for a pairs file.

    Raises:
        DataError: a malformed line (the message starts with ``FILE:LINE:``), a file mixing
            both layouts, or an empty file.
    """
    records = list(read_jsonl(path))
    if not records:
        raise ValueError(f"{os.fspath(path)}: no examples")
    is_list = "candidates" in records[0].data
    pool = _Pool()
    queries = []
    if is_list:
        if corpus is not None:
            raise ValueError(
                "--corpus applies to query/positive pairs; candidate-list files bring their own candidates"
            )
        lists, labels = [], []
        for record in records:
            record.check_keys(LIST_KEYS)
            if "candidates" not in record.data:
                raise record.error("missing field 'candidates' (the first line of this file has candidate lists)")
            queries.append(_input(record, "query", "query_image"))
            values = record.data["candidates"]
            if not isinstance(values, list) or not values:
                raise record.error("field 'candidates' must be a non-empty list")
            label = record.data.get("label")
            if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(values):
                raise record.error(f"field 'label' must be an int in [0, {len(values)}), got {label!r}")
            lists.append(torch.tensor([pool.add(_candidate(record, j, v)) for j, v in enumerate(values)]))
            labels.append(label)
        return CandidateListTask(queries, pool.items, lists, torch.tensor(labels), os.fspath(path))
    positives = []
    for record in records:
        record.check_keys(PAIR_KEYS)
        queries.append(_input(record, "query", "query_image"))
        positives.append(pool.add(_input(record, "positive", "positive_image")))
    if corpus is not None:
        for item in load_corpus(corpus):
            pool.add(item)
    return PairTask(queries, pool.items, torch.tensor(positives), os.fspath(path))
