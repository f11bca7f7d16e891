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
from dataclasses import dataclass, field

import torch

from ..datasets.jsonl import DataError, Record, read_jsonl
from ..datasets.schema import FLAT_IMAGE_KEYS, POSITIVE, QUERY, make_input, record_input

__all__ = ["ON_BAD_ROW", "CandidateListTask", "PairTask", "input_key", "load_corpus", "load_task"]

ON_BAD_ROW = ("error", "skip")

# The training example's query / positive keys (:mod:`btok_model.datasets.schema`).
PAIR_KEYS = {QUERY, POSITIVE, *FLAT_IMAGE_KEYS.values()}
LIST_KEYS = {QUERY, "candidates", "label", FLAT_IMAGE_KEYS[QUERY]}
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
        query_where, candidate_where: where each query / candidate was read (``FILE:LINE``,
            for messages; empty when unknown).
        skipped: the bad rows left out (``--on-bad-row skip``), one message each.
    """

    queries: list
    candidates: list
    positive_index: torch.Tensor
    name: str
    query_where: list[str] = field(default_factory=list)
    candidate_where: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def without(self, queries: set[int], candidates: set[int], reasons: list[str]) -> PairTask:
        """The task without those queries and candidates (and the queries whose positive is
        one of them), ``reasons`` added to :attr:`skipped`."""
        keep_c = [c for c in range(len(self.candidates)) if c not in candidates]
        at = {c: i for i, c in enumerate(keep_c)}
        keep_q = [q for q in range(len(self.queries)) if q not in queries and int(self.positive_index[q]) in at]
        return PairTask(
            [self.queries[q] for q in keep_q],
            [self.candidates[c] for c in keep_c],
            torch.tensor([at[int(self.positive_index[q])] for q in keep_q], dtype=torch.long),
            self.name,
            [self.query_where[q] for q in keep_q] if self.query_where else [],
            [self.candidate_where[c] for c in keep_c] if self.candidate_where else [],
            self.skipped + reasons,
        )


@dataclass
class CandidateListTask:
    """Queries each ranked against their own candidates.

    Attributes:
        queries: one input per query.
        candidates: the distinct candidate inputs of all lists.
        lists: per query, int64 indices into ``candidates``.
        labels: int64 ``[len(queries)]``, the position of the relevant candidate in each list.
        name: where the task came from.
        query_where, candidate_where, skipped: as for :class:`PairTask`.
    """

    queries: list
    candidates: list
    lists: list[torch.Tensor]
    labels: torch.Tensor
    name: str
    query_where: list[str] = field(default_factory=list)
    candidate_where: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def without(self, queries: set[int], candidates: set[int], reasons: list[str]) -> CandidateListTask:
        """The task without those queries and candidates (taken out of every list; a query
        whose relevant candidate goes, goes too), ``reasons`` added to :attr:`skipped`."""
        keep_c = [c for c in range(len(self.candidates)) if c not in candidates]
        at = {c: i for i, c in enumerate(keep_c)}
        out_q, lists, labels = [], [], []
        for q, (members, label) in enumerate(zip(self.lists, self.labels.tolist())):
            if q in queries or int(members[label]) not in at:
                continue
            kept = [m for m in members.tolist() if m in at]
            out_q.append(q)
            lists.append(torch.tensor([at[m] for m in kept], dtype=torch.long))
            labels.append(kept.index(int(members[label])))
        return CandidateListTask(
            [self.queries[q] for q in out_q],
            [self.candidates[c] for c in keep_c],
            lists,
            torch.tensor(labels, dtype=torch.long),
            self.name,
            [self.query_where[q] for q in out_q] if self.query_where else [],
            [self.candidate_where[c] for c in keep_c] if self.candidate_where else [],
            self.skipped + reasons,
        )


def input_key(item) -> tuple:
    """A hashable identity of an input (text and image), used to deduplicate candidates."""
    if isinstance(item, str):
        return (item, None)
    return (item.get("text"), item.get("image"))


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
    return make_input(text, image)


class _Pool:
    """Distinct inputs in order of first appearance, with where each was first read."""

    def __init__(self):
        self.items, self.index, self.where = [], {}, []

    def add(self, item, where: str) -> int:
        key = input_key(item)
        if key not in self.index:
            self.index[key] = len(self.items)
            self.items.append(item)
            self.where.append(where)
        return self.index[key]


def _corpus_records(path: str | os.PathLike, on_bad_row: str, skipped: list[str]) -> list[tuple]:
    """``(input, FILE:LINE)`` of each usable corpus line (bad lines raise, or go to ``skipped``)."""
    items = []
    for record in read_jsonl(path):
        try:
            record.check_keys(CORPUS_KEYS)
            items.append((record_input(record, "text", "image"), record.where))
        except DataError as err:
            if on_bad_row != "skip":
                raise
            skipped.append(str(err))
    return items


def load_corpus(path: str | os.PathLike) -> list:
    """Extra candidates, one ``{"text": str, "image"?: path}`` per line."""
    return [item for item, _ in _corpus_records(path, "error", [])]


def _check_on_bad_row(on_bad_row: str) -> None:
    if on_bad_row not in ON_BAD_ROW:
        raise ValueError(f"on_bad_row must be one of {ON_BAD_ROW}, got {on_bad_row!r}")


def load_task(
    path: str | os.PathLike, corpus: str | os.PathLike | None = None, *, on_bad_row: str = "error"
) -> PairTask | CandidateListTask:
    """Read an evaluation file; its layout is told by the first line (pairs or candidate lists).

    Args:
        path: the JSONL file.
        corpus: an optional JSONL of extra candidates for a pairs file.
        on_bad_row: ``"error"``: a line with an empty text, a missing image or a malformed
            field raises; ``"skip"``: it is left out and its message kept in ``task.skipped``
            (a line that is not JSON, or a file mixing the layouts, still raises).

    Raises:
        DataError: a malformed line (the message starts with ``FILE:LINE:``), a file mixing
            both layouts, or an empty file.
    """
    _check_on_bad_row(on_bad_row)
    records = list(read_jsonl(path))
    if not records:
        raise ValueError(f"{os.fspath(path)}: no examples")
    is_list = "candidates" in records[0].data
    pool = _Pool()
    queries, query_where, skipped = [], [], []
    if is_list:
        if corpus is not None:
            raise ValueError(
                "--corpus applies to query/positive pairs; candidate-list files bring their own candidates"
            )
        lists, labels = [], []
        for record in records:
            try:
                line = _list_line(record)
            except DataError as err:
                if on_bad_row != "skip":
                    raise
                skipped.append(str(err))
                continue
            query, values, label = line
            queries.append(query)
            query_where.append(record.where)
            lists.append(torch.tensor([pool.add(v, f"{record.where} candidates[{j}]") for j, v in enumerate(values)]))
            labels.append(label)
        if not queries:
            raise ValueError(f"{os.fspath(path)}: every line was skipped ({skipped[0]} ...)")
        return CandidateListTask(
            queries, pool.items, lists, torch.tensor(labels), os.fspath(path), query_where, pool.where, skipped
        )
    positives = []
    for record in records:
        try:
            record.check_keys(PAIR_KEYS)
            query = record_input(record, QUERY)
            positive = record_input(record, POSITIVE)
        except DataError as err:
            if on_bad_row != "skip":
                raise
            skipped.append(str(err))
            continue
        queries.append(query)
        query_where.append(record.where)
        positives.append(pool.add(positive, f"{record.where} positive"))
    if corpus is not None:
        for item, where in _corpus_records(corpus, on_bad_row, skipped):
            pool.add(item, where)
    if not queries:
        raise ValueError(f"{os.fspath(path)}: every line was skipped ({skipped[0]} ...)")
    return PairTask(queries, pool.items, torch.tensor(positives), os.fspath(path), query_where, pool.where, skipped)


def _list_line(record: Record) -> tuple:
    """``(query, candidate inputs, label)`` of a candidate-list line, checked."""
    record.check_keys(LIST_KEYS)
    if "candidates" not in record.data:
        raise record.error("missing field 'candidates' (the first line of this file has candidate lists)")
    query = record_input(record, QUERY)
    values = record.data["candidates"]
    if not isinstance(values, list) or not values:
        raise record.error("field 'candidates' must be a non-empty list")
    label = record.data.get("label")
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(values):
        raise record.error(f"field 'label' must be an int in [0, {len(values)}), got {label!r}")
    return query, [_candidate(record, j, v) for j, v in enumerate(values)], label
