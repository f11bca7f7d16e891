"""The training example's keys, and the one way a query or positive becomes a model input.

A training example (what :class:`~btok_model.embedder.collate.BTokCollator` takes, what a line
of training JSONL holds, see :mod:`btok_model.training.mixed_dataset`)::

    {"query": input, "positive": input, "negatives": [input, ...]?, "target": str | None?,
     "target_side": "positive" | "query" | "both" | "none"?, "source": str?,
     "query_image": path?, "positive_image": path?}

An input is a str, or ``{"text": str | None, "image": ..., ...}``. The flat image keys
(:data:`FLAT_IMAGE_KEYS`, the JSONL format's) give the query's or positive's image beside its
text; :func:`example_input` folds one into its input, :func:`record_input` reads a JSONL
record's text and image as an input, :func:`make_input` is the rule both use.
"""

from __future__ import annotations

from collections.abc import Mapping

from .jsonl import Record

__all__ = [
    "EXAMPLE_KEYS",
    "FLAT_IMAGE_KEYS",
    "JSONL_KEYS",
    "NEGATIVES",
    "POSITIVE",
    "QUERY",
    "SOURCE",
    "TARGET",
    "TARGET_SIDE",
    "TARGET_SIDES",
    "example_input",
    "make_input",
    "read_side",
    "record_input",
]

QUERY, POSITIVE, NEGATIVES = "query", "positive", "negatives"
TARGET, TARGET_SIDE, SOURCE = "target", "target_side", "source"
# The keys of an example as the collator takes it (images inside the inputs).
EXAMPLE_KEYS = (QUERY, POSITIVE, NEGATIVES, TARGET, TARGET_SIDE, SOURCE)
# Input field -> its flat image key (the JSONL format: the image beside the text).
FLAT_IMAGE_KEYS = {QUERY: "query_image", POSITIVE: "positive_image"}
# The keys of a training JSONL line.
JSONL_KEYS = frozenset((*EXAMPLE_KEYS, *FLAT_IMAGE_KEYS.values()))
# Whose BToks generate a target (the authors' ``ntp_side``), see :mod:`btok_model.embedder.collate`.
TARGET_SIDES = ("positive", "query", "both", "none")


def make_input(text: str | None, image=None):
    """The model input of a text and an optional image: ``text``, or ``{"text", "image"}``."""
    return text if image is None else {"text": text, "image": image}


def example_input(example: Mapping, field: str):
    """The input of ``field`` (``"query"`` or ``"positive"``) of an example, its flat image key
    folded in: ``{"query": q, "query_image": p}`` -> ``{"text": q, "image": p}`` (an input dict
    gets the image added; a None image leaves the input as it is).

    Raises:
        ValueError: the flat key and the input dict both give an image (the message names both
            fields; callers add which example).
    """
    key = FLAT_IMAGE_KEYS[field]
    image, current = example.get(key), example.get(field)
    if image is None:
        return current
    if isinstance(current, dict):
        if current.get("image") is not None:
            raise ValueError(f"field {key!r} and field {field!r} both give an image")
        return {**current, "image": image}
    return make_input(current, image)


def read_side(record: Record, field: str, image_key: str | None = None) -> tuple[str | None, str | None]:
    """``(text, image path)`` of one input of a JSONL record, checked: the image (key
    ``image_key``, default the field's flat image key) must exist; the text must be a non-empty
    string, and may be absent only when the image is given.

    Raises:
        DataError: naming the file, line and field.
    """
    image = record.image(FLAT_IMAGE_KEYS[field] if image_key is None else image_key)
    return record.text(field, required=image is None), image


def record_input(record: Record, field: str, image_key: str | None = None):
    """The model input :func:`read_side` reads: the text, or ``{"text", "image"}``."""
    return make_input(*read_side(record, field, image_key))
