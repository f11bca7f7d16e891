"""The authors' text rendering rules: the one home of the vision placeholders, MMEB's legacy
markers, the whitespace rule and the leading-placeholder strip, shared by the readers of their
training sources, btok's corpus readers and the MMEB-V2 evaluation
(:mod:`btok_model.evaluation.mmeb_v2_inputs`).

The authors' loaders (``src/vlm2emb/data/datasets/{const,transforms}.py`` of
siryuson/BottleneckTokens) build every side of an example as one string that holds the vision
placeholder (``<|image_pad|>`` / ``<|video_pad|>``) where the image or video goes; their
processor then wraps it in ``<|vision_start|>`` ... ``<|vision_end|>``. btok's collator places
an input's vision block itself (``placement`` / ``trailing_newline`` of an input dict, see
:mod:`btok_model.embedder.multimodal`), so a reader renders the authors' string and then takes
the placeholder out again with :func:`strip_leading_placeholder`.

What each function reproduces:

* :func:`normalize_whitespace` -- ``normalize_text_whitespace`` (training and evaluation alike):
  ``\\r\\n`` and ``\\r`` become ``\\n``, spaces and tabs go from line ends and from the start
  and end of the text, newlines at its ends stay; blank text becomes ``""``.
* :func:`replace_legacy_tokens` -- MMEB's old image markers (``<|image_1|>``, ``<image>``;
  LLaVA-Hound's ``<video>``) read as the standard placeholder, or dropped.
* :func:`token_first` -- ``canonicalize_multimodal_text``: legacy placeholders become the
  standard one, and a single placeholder that stands on a line of its own, leads the first line
  or ends it is moved to a line of its own at the start (its line's other text, the rest after).
* :func:`join_instruction` -- ``join_instruction_body``: instruction and body joined by
  nothing, a space or a newline (either alone when the other is empty).
* :func:`strip_leading_placeholder` -- btok's own step: the text after the placeholder that
  starts a side, in the form the training transforms render (``own_line=True``) or the looser
  one the MMEB-V2 evaluation's prompts take (``own_line=False``).
"""

from __future__ import annotations

import re
from contextlib import contextmanager

__all__ = [
    "IMAGE_TOKEN",
    "LEGACY_IMAGE_TOKENS",
    "LEGACY_TOKENS",
    "LEGACY_VIDEO_TOKENS",
    "SEPARATORS",
    "VIDEO_TOKEN",
    "FieldError",
    "blame",
    "check_plain_text",
    "join_instruction",
    "normalize_whitespace",
    "replace_legacy_tokens",
    "strip_leading_placeholder",
    "token_first",
]

IMAGE_TOKEN = "<|image_pad|>"
VIDEO_TOKEN = "<|video_pad|>"
LEGACY_IMAGE_TOKENS = ("<|image_1|>", "<image>")
LEGACY_VIDEO_TOKENS = ("<video>",)
# Each placeholder's legacy markers (read as it).
LEGACY_TOKENS = {IMAGE_TOKEN: LEGACY_IMAGE_TOKENS, VIDEO_TOKEN: LEGACY_VIDEO_TOKENS}
# Strings the authors' processor turns into vision tokens (in any text, with or without media).
VISION_STRINGS = (
    IMAGE_TOKEN,
    VIDEO_TOKEN,
    "<|vision_start|>",
    "<|vision_end|>",
    *LEGACY_IMAGE_TOKENS,
    *LEGACY_VIDEO_TOKENS,
)
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


def normalize_whitespace(text: str | None, final_newline: bool = False) -> str:
    """The authors' whitespace normalisation (module docstring); with ``final_newline`` the
    text ends in exactly one ``\\n`` (blank text stays ``""``); None reads as ``""``."""
    if text is None:
        return ""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = "\n".join(line.rstrip(" \t") for line in text.split("\n")).strip(" \t")
    if not text.strip("\n"):
        return ""
    return text.rstrip("\n") + "\n" if final_newline else text


def replace_legacy_tokens(text: str, token: str = IMAGE_TOKEN, replacement: str | None = None) -> str:
    """``text`` with the legacy markers of ``token`` (:data:`LEGACY_TOKENS`) replaced by
    ``replacement`` (default: ``token`` itself; ``""`` drops them)."""
    for old in LEGACY_TOKENS[token]:
        text = text.replace(old, token if replacement is None else replacement)
    return text


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


def strip_leading_placeholder(text: str, token: str, *, own_line: bool = True) -> str | None:
    """The text of a side after the placeholder ``token`` that starts it: what btok's collator
    places after the vision block (the block is placed by the collator, not by the text).

    The two sides of the authors' code render that start differently, so the form is a parameter:

    * ``own_line=True`` -- the training readers (and btok's corpus readers, which render through
      :func:`token_first` as they do): the authors' training transforms
      (``canonicalize_multimodal_text``) put the placeholder on a line of its own, so the text
      must be ``token\\n{text}`` or ``token`` alone, ``token`` once;
    * ``own_line=False`` -- the MMEB-V2 evaluation (:func:`~btok_model.evaluation.mmeb_v2_inputs.to_model_input`):
      their evaluation's ``origin`` mode writes the placeholder inline before the instruction
      (``"<|video_pad|> Recognize ..."``), so the text must start with ``token`` and one space or
      newline after it goes with it; no further image or video placeholder may follow.

    Returns:
        The text after the placeholder (and its separator), ``""`` when nothing but a separator
        follows; None when the text is ``token`` alone.

    Raises:
        FieldError: ``text`` is not of that form (the placeholder missing, not first, not on a
            line of its own, or repeated).
    """
    if text == token:
        return None
    if not own_line:
        if not text.startswith(token):
            raise FieldError(f"the text must start with {token} (where the media goes): {text!r}")
        body = text[len(token) :]
        if body[:1] in ("\n", " "):
            body = body[1:]
        if IMAGE_TOKEN in body or VIDEO_TOKEN in body:
            raise FieldError(f"more than one image/video placeholder: {text!r}")
        return body
    if text.startswith(token + "\n") and token not in text[len(token) :]:
        return text[len(token) + 1 :]
    if text.count(token) != 1:
        raise FieldError(f"must hold the placeholder {token} once (as the authors render it: {text[:80]!r})")
    raise FieldError(f"the placeholder {token} does not start a line of its own (rendered: {text[:80]!r})")


def check_plain_text(text: str) -> None:
    """Refuse a text that holds a vision placeholder beyond its side's own (the authors'
    processor would look for an image or video that the side does not have).

    Raises:
        FieldError: naming the placeholder.
    """
    for token in VISION_STRINGS:
        if token in text:
            raise FieldError(f"holds the vision placeholder {token!r} without an image or video for it")
