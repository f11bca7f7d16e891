"""ViDoRe's training set (``vidore/colpali_train_set``) read as btok training examples.

The layout is :mod:`.image_rows`' (the Hugging Face parquet, or the authors' Lance repack of the
same rows), in the folder the authors name ``vidore_colpali_train_set`` (docs/training.md). A row's
document page (``image``), question (``query``), answer (``answer``) and, for multiple-choice rows
(the ``arxiv_qa`` source), ``options`` (a stringified list) are read; its other columns are
metadata. Rows render as the authors' ``vidore_train`` loader (``src/vlm2emb/data/datasets/vidore.py``
of siryuson/BottleneckTokens) and the ``colpali_train_set`` transform of their
``configs/datasets/mmeb_train.yaml`` render them (:func:`render_vidore_query`,
:func:`render_vidore_answer`; image on its own line, ``trailing_newline: preserve``), no negatives::

    {"query": {"text": str | None, "image": PIL.Image, "trailing_newline": "preserve"}, "positive": str}

**Checks** (when opened, :class:`~btok_model.datasets.DataError` naming file, row and field): a
missing table or column, a row without image bytes, an empty answer, a question holding an
image placeholder of its own, an answer holding a vision placeholder.
"""

from __future__ import annotations

import ast

from .image_rows import ImageRowExamples
from .rendering import (
    IMAGE_TOKEN,
    LEGACY_IMAGE_TOKENS,
    FieldError,
    blame,
    check_plain_text,
    normalize_whitespace,
    strip_leading_placeholder,
    token_first,
)

__all__ = ["ROOT_NAME", "VidoreTrainSet", "render_vidore_answer", "render_vidore_query"]

# The folder the authors' README downloads the set into, under their data root.
ROOT_NAME = "vidore_colpali_train_set"
_LETTERS = {"A": 0, "B": 1, "C": 2, "D": 3, "E": 4}


def _options(value) -> list[str] | None:
    """The options of a multiple-choice row (a list, or a list's ``repr`` as stored), else None."""
    if isinstance(value, str) and value:
        try:
            value = ast.literal_eval(value)
        except (SyntaxError, ValueError):  # not a list literal: the authors treat it as no options
            return None
        except (TypeError, MemoryError, RecursionError) as err:  # literal_eval's other failures
            raise FieldError(f"options {value[:60]!r} cannot be read ({type(err).__name__})", "options") from None
    return [str(option) for option in value] if isinstance(value, list) else None


def render_vidore_query(query: str | None, options) -> str:
    """The authors' query: ``"<|image_pad|>\\n{question}[ Options: {options}]"`` (the options as
    stored), whitespace normalised, no final newline added. The example's query is then ``{"text":
    question, "image": page, "trailing_newline": "preserve"}``: btok's collator puts the image
    block on its own line before the text."""
    text = query or ""
    parsed = _options(options)
    if parsed:
        text = f"{text} Options: {options if isinstance(options, str) else parsed}"
    text = normalize_whitespace(text)
    return token_first(f"{IMAGE_TOKEN} {text}" if text else IMAGE_TOKEN, IMAGE_TOKEN, LEGACY_IMAGE_TOKENS)


def render_vidore_answer(answer: str | None, options) -> str:
    """The authors' positive: the answer, whitespace normalised, no final newline added; in a
    multiple-choice row a letter ``A``-``E`` becomes that option, and ``"{letter}. "`` /
    ``"{letter}) "`` are removed from it (``"D. The variance ..."`` -> ``"The variance ..."``).

    The yaml's ``final query`` / ``example positive`` comments (a trailing ``\\n``, the letter
    ``D`` as the answer) show an older rendering; the loader's code, which this follows, keeps
    the text's end and maps letters to options."""
    text = answer or ""
    parsed = _options(options)
    if not parsed:
        return normalize_whitespace(text)
    letter = text
    if text in _LETTERS and _LETTERS[text] < len(parsed):
        text = parsed[_LETTERS[text]]
    return normalize_whitespace(text.replace(f"{letter}. ", "").replace(f"{letter}) ", ""))


class VidoreTrainSet(ImageRowExamples):
    """The examples of ``vidore/colpali_train_set`` under ``root`` (see the module docstring).

    Args:
        root: the folder holding ``data/train.lance`` or the parquet files.

    Raises:
        DataError: a missing table or a bad row (naming file, row and field).
    """

    image_side = "query"
    text_columns = ("query", "answer")
    optional_columns = ("options",)

    def render(self, row: dict) -> tuple[str | None, str]:
        with blame("query"):
            query = strip_leading_placeholder(render_vidore_query(row["query"], row["options"]), IMAGE_TOKEN)
            check_plain_text(query or "")
        with blame("answer"):
            answer = render_vidore_answer(row["answer"], row["options"])
            check_plain_text(answer)
        if not answer.strip():
            raise FieldError("the positive (the answer) is empty", "answer")
        return query, answer
