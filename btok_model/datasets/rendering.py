"""The authors' text rendering rules, shared by the readers of their training sources.

The authors' loaders (``src/vlm2emb/data/datasets/{const,transforms}.py`` of
siryuson/BottleneckTokens) build every side of an example as one string that holds the vision
placeholder (``<|image_pad|>`` / ``<|video_pad|>``) where the image or video goes; their
processor then wraps it in ``<|vision_start|>`` ... ``<|vision_end|>``. btok's collator places
an input's vision block itself (``placement`` / ``trailing_newline`` of an input dict, see
:mod:`btok_model.embedder.multimodal`), so a reader renders the authors' string and then takes
the placeholder out again with :func:`vision_side`.

What each function reproduces:

* :func:`normalize_whitespace` -- ``normalize_text_whitespace``: ``\\r\\n`` and ``\\r`` become
  ``\\n``, spaces and tabs go from line ends and from the start and end of the text, newlines at
  its ends stay; blank text becomes ``""``.
* :func:`token_first` -- ``canonicalize_multimodal_text``: legacy placeholders become the
  standard one, and a single placeholder that stands on a line of its own, leads the first line
  or ends it is moved to a line of its own at the start (its line's other text, the rest after).
* :func:`join_instruction` -- ``join_instruction_body``: instruction and body joined by
  nothing, a space or a newline (either alone when the other is empty).
"""

from __future__ import annotations

import re
from contextlib import contextmanager

__all__ = [
    "IMAGE_TOKEN",
    "LEGACY_IMAGE_TOKENS",
    "LEGACY_VIDEO_TOKENS",
    "SEPARATORS",
    "VIDEO_TOKEN",
    "FieldError",
    "blame",
    "check_plain_text",
    "join_instruction",
    "normalize_whitespace",
    "token_first",
    "vision_side",
]

IMAGE_TOKEN = "<|image_pad|>"
VIDEO_TOKEN = "<|video_pad|>"
LEGACY_IMAGE_TOKENS = ("<|image_1|>", "<image>")
LEGACY_VIDEO_TOKENS = ("<video>",)
# Strings the authors' processor turns into vision tokens (in any text, with or without media).
VISION_STRINGS = (IMAGE_TOKEN, VIDEO_TOKEN, "<|vision_start|>", "<|vision_end|>", *LEGACY_IMAGE_TOKENS, "<video>")
SEPARATORS = {"none": "", "space": " ", "newline": "\n"}


class FieldError(ValueError):
    """A field of a row is unusable; the reader adds the file, row and field to the message.

    Attributes:
        field: the raw field at fault (None: the reader knows it).
    """

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


@contextmanager
def blame(field: str):
    """Give a :class:`FieldError` raised inside the block the ``field`` it lacks."""
    try:
        yield
    except FieldError as err:
        if err.field is None:
            err.field = field
        raise


def normalize_whitespace(text: str, final_newline: bool = False) -> str:
    """The authors' whitespace normalisation (module docstring); with ``final_newline`` the
    text ends in exactly one ``\\n`` (blank text stays ``""``)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = "\n".join(line.rstrip(" \t") for line in text.split("\n")).strip(" \t")
    if not text.strip("\n"):
        return ""
    return text.rstrip("\n") + "\n" if final_newline else text


def join_instruction(instruction: str, body: str, separator: str) -> str:
    """``instruction + SEPARATORS[separator] + body``; either alone when the other is empty."""
    if not instruction or not body:
        return instruction or body
    return instruction + SEPARATORS[separator] + body


def token_first(text: str, token: str, legacy: tuple[str, ...] = ()) -> str:
    """``text`` normalised with its one ``token`` moved to a line of its own at the start.

    Args:
        text: the side's text, holding ``token`` (or one of ``legacy``) once.
        token: the standard placeholder (:data:`IMAGE_TOKEN` or :data:`VIDEO_TOKEN`).
        legacy: placeholders replaced by ``token`` first.

    Returns:
        ``token + "\\n" + body`` (``token`` alone without a body), followed by the newlines
        the text ended with; the text unchanged (normalised) when it holds ``token`` zero or
        several times, or somewhere the authors do not move it from.
    """
    for old in legacy:
        text = text.replace(old, token)
    text = normalize_whitespace(text)
    core = text.rstrip("\n")
    tail = text[len(core) :]
    if not core or core.count(token) != 1:
        return text
    lines = [line.strip(" \t") for line in core.split("\n")]
    if token in lines:  # the token on a line of its own: that line goes, every line is stripped
        body = "\n".join(line for line in lines if line != token).strip(" \t\n")
    elif match := re.fullmatch(rf"{re.escape(token)}[ \t]+(.+)", core, re.DOTALL):  # leading the first line
        body = match.group(1).strip(" \t\n")
    elif match := re.fullmatch(rf"([^\n]*?)[ \t]+{re.escape(token)}[ \t]*(?:\n(.*))?", core, re.DOTALL):
        body = "\n".join(p for p in (match.group(1).strip(" \t\n"), (match.group(2) or "").strip(" \t\n")) if p)
    else:
        return text
    return normalize_whitespace((f"{token}\n{body}" if body else token) + tail)


def vision_side(rendered: str, token: str) -> str | None:
    """The text of a side the authors render as ``token\\n{text}`` (or ``token`` alone), without
    the token: what btok's collator places after the vision block on its own line.

    Raises:
        FieldError: ``rendered`` is not of that form (no token, several, or text before it).
    """
    if rendered == token:
        return None
    if rendered.startswith(token + "\n") and token not in rendered[len(token) :]:
        return rendered[len(token) + 1 :]
    if rendered.count(token) != 1:
        raise FieldError(f"must hold the placeholder {token} once (as the authors render it: {rendered[:80]!r})")
    raise FieldError(f"the placeholder {token} does not start a line of its own (rendered: {rendered[:80]!r})")


def check_plain_text(text: str) -> None:
    """Refuse a text that holds a vision placeholder beyond its side's own (the authors'
    processor would look for an image or video that the side does not have).

    Raises:
        FieldError: naming the placeholder.
    """
    for token in VISION_STRINGS:
        if token in text:
            raise FieldError(f"holds the vision placeholder {token!r} without an image or video for it")
