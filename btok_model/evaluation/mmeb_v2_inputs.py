"""What each MMEB-V2 query and candidate is embedded as: its text, image or video frames.

The converted MMEB-V2 tables keep each dataset's raw fields; the instruction text and layout are
added when a row is read, per dataset family, as the authors' evaluation adds them in either of
its two modes (:data:`MODES`, ``dataset_inputs(name, mode=...)``): ``"canonical"`` (their
default) or ``"origin"``, the same builders with the differences held in one place
(:class:`_Surface`). :func:`to_model_input` turns a :class:`Prompt` into what an embedder's
``encode`` takes: a string, or ``{"text": ..., "image": PIL.Image}`` / ``{"text": ...,
"video": [frames]}`` with the placeholder and the newline after it removed (btok's collator puts
the vision block where the placeholder stood). The placeholders, legacy markers, whitespace rule
and placeholder strip are the training readers' (:mod:`btok_model.datasets.rendering`), with the
evaluation's looser strip (``own_line=False``: origin mode's inline placeholder). The two modes,
rule by rule: docs/mmeb-v2.md ("Inputs as the authors build them").
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass

from ..datasets.frames import sample_frames_eval
from ..datasets.rendering import (
    IMAGE_TOKEN,
    VIDEO_TOKEN,
    FieldError,
    normalize_whitespace,
    replace_legacy_tokens,
    strip_leading_placeholder,
)
from .mmeb_v2_index import dataset

__all__ = [
    "IMAGE_TOKEN",
    "MODES",
    "VIDEO_TOKEN",
    "DatasetInputs",
    "Prompt",
    "Side",
    "dataset_inputs",
    "to_model_input",
]

NUM_FRAMES = 8
MODES = ("canonical", "origin")


@dataclass
class Prompt:
    """One query or candidate as the authors' evaluation composes it.

    Attributes:
        text: the text, with :data:`IMAGE_TOKEN` / :data:`VIDEO_TOKEN` where the media goes.
        image: the image's encoded bytes, or None.
        frames: the sampled video frames' encoded bytes, or None.
    """

    text: str
    image: bytes | None = None
    frames: list[bytes] | None = None


@dataclass(frozen=True)
class Side:
    """How one side (queries or candidates) of a dataset is read.

    Attributes:
        columns: the table columns it needs besides ``id``.
        build: ``(row, num_frames) -> Prompt``; ``row`` holds those columns.
        media: whether rows carry media (their columns are then read a block at a time).
    """

    columns: tuple[str, ...]
    build: Callable[[dict, int], Prompt]
    media: bool


@dataclass(frozen=True)
class DatasetInputs:
    """The query side and the candidate side of one dataset."""

    query: Side
    candidate: Side


@dataclass(frozen=True)
class _Surface:
    """Where the authors' ``canonical`` and ``origin`` modes differ (nowhere else).

    Attributes:
        origin: the ``origin`` mode.
    """

    origin: bool

    @property
    def separator(self) -> str:
        """Between a video's (or a visual document's) placeholder and the instruction."""
        return " " if self.origin else "\n"

    @property
    def trailing_newline(self) -> bool:
        """Whether those prompts end with one newline."""
        return not self.origin

    @property
    def repairs(self) -> bool:
        """canonical's per-dataset surface repairs (VizWiz, VisDial, the cropped-object sentence)."""
        return not self.origin

    def clean(self, text: str) -> str:
        """A row's text: whitespace-normalised without a final newline (canonical), as stored (origin)."""
        return text if self.origin else normalize_whitespace(text).rstrip("\n")


def _surface(mode: str) -> _Surface:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    return _Surface(origin=mode == "origin")


# -- text helpers (the authors' canonical surface) ------------------------------------------------


def _scalar(value) -> str:
    """A text field: the first item of a list, ``""`` for None."""
    if isinstance(value, list):
        return _scalar(value[0]) if value else ""
    return "" if value is None else str(value)


def _first_text(value) -> str:
    """A caption field that may hold several captions: the first non-blank one."""
    if isinstance(value, list):
        return next((str(v) for v in value if isinstance(v, str) and v.strip()), "")
    return "" if value is None else str(value)


def _strip_legacy_tokens(text: str) -> str:
    return normalize_whitespace(replace_legacy_tokens(text, replacement="")).lstrip("\n")


def _instruction(raw: str, leading_newline: bool = False) -> str:
    cleaned = replace_legacy_tokens(raw, replacement="").strip()
    return "\n" + cleaned if cleaned and leading_newline else cleaned


def _compose(
    instruction: str,
    text: str = "",
    *,
    token: str | None = None,
    separator: str = " ",
    join_space_newline: bool = False,
    trailing_newline: bool = False,
) -> str:
    """``[token + separator] + instruction [+ " " + text]``, optionally ``" \\n"`` -> ``"\\n"``
    and a final newline."""
    prompt = instruction + (" " + text if text else "")
    if token:
        prompt = token + separator + prompt
    if join_space_newline:
        prompt = prompt.replace(" \n", "\n")
    return prompt + "\n" if trailing_newline else prompt


def _choices(question: str, options: list[str]) -> str:
    lines = [question, "Options:"] + [f"({chr(ord('A') + i)}) {option}" for i, option in enumerate(options)]
    return ("\n".join(lines) + "\n").rstrip()


def _required(row: dict, field: str, name: str) -> str:
    value = row.get(field)
    if isinstance(value, str) and value.strip():
        return value
    raise ValueError(f"{name}: row id {row.get('id')!r} has no {field!r} text")


def _image(row: dict) -> bytes | None:
    return row.get("image")


def _video(row: dict, num_frames: int, name: str) -> list[bytes]:
    frames = [f for f in row.get("video") or [] if f is not None]
    frames = [frames[i] for i in sample_frames_eval(len(frames), num_frames)]
    if not frames:
        raise ValueError(f"{name}: row id {row.get('id')!r} has no video frames")
    return frames


# -- the families ------------------------------------------------------------------------------------


def _text_candidates(normalize: _Surface | None = None) -> Side:
    def build(row: dict, num_frames: int) -> Prompt:
        text = _scalar(row.get("text"))
        return Prompt(normalize.clean(text) if normalize else text)

    return Side(("text",), build, media=False)


def _image_cls() -> DatasetInputs:
    def query(row: dict, num_frames: int) -> Prompt:
        text, image = _scalar(row.get("qry_text")), _image(row)
        return Prompt(replace_legacy_tokens(text) if image is not None else _strip_legacy_tokens(text), image)

    return DatasetInputs(Side(("qry_text", "image"), query, media=True), _text_candidates())


def _image_qa(name: str, s: _Surface) -> DatasetInputs:
    with_instruction = name in ("A-OKVQA", "OK-VQA")

    def query(row: dict, num_frames: int) -> Prompt:
        text, image = _scalar(row.get("qry_text")), _image(row)
        inst = _scalar(row.get("qry_inst")) if with_instruction else ""
        if image is None:
            return Prompt(_strip_legacy_tokens(text))
        if inst:
            text = _compose(
                _instruction(inst, leading_newline=True),
                text,
                token=IMAGE_TOKEN,
                join_space_newline=True,
                trailing_newline=True,
            )
        else:
            text = replace_legacy_tokens(text)
        if name == "VizWiz" and s.repairs:  # stray spaces before its final newline
            text = normalize_whitespace(text, final_newline=text.endswith("\n"))
        return Prompt(text, image)

    columns = ("qry_text", "image") + (("qry_inst",) if with_instruction else ())
    return DatasetInputs(Side(columns, query, media=True), _text_candidates())


def _image_i2t() -> DatasetInputs:
    return _image_cls()  # the same query and candidate rules


def _dialog_separator(text: str) -> str:
    prefix, separator, body = text.partition(": ")
    if separator and (body.startswith("Q:") or "\nQ:" in body or "\nA:" in body):
        return f"{prefix}:\n{body}"
    return text


def _image_block(text: str) -> str:
    """``"<|image_pad|> body"`` -> ``"<|image_pad|>\\nbody"`` (keeping a final newline)."""
    text = replace_legacy_tokens(text)
    if not text.startswith(IMAGE_TOKEN):
        return text
    body = text[len(IMAGE_TOKEN) :].lstrip(" \n")
    if not body:
        return IMAGE_TOKEN + "\n"
    return IMAGE_TOKEN + "\n" + body.rstrip("\n") + ("\n" if text.endswith("\n") else "")


def _image_t2i(name: str, s: _Surface) -> DatasetInputs:
    def query(row: dict, num_frames: int) -> Prompt:
        text = _scalar(row.get("qry_text"))
        if name == "VisDial" and s.repairs:
            if text.endswith("\n\n"):
                text = text[:-1]
            text = _dialog_separator(text)
        if name in ("WebQA", "EDIS"):  # text-only queries holding a stray image marker
            return Prompt(_strip_legacy_tokens(text))
        return Prompt(replace_legacy_tokens(text))

    with_instruction = name in ("WebQA", "VisDial")

    def candidate(row: dict, num_frames: int) -> Prompt:
        text, image = _scalar(row.get("tgt_text")), _image(row)
        inst = _scalar(row.get("tgt_inst")) if with_instruction else ""
        if image is not None and inst:
            text = _compose(
                _instruction(inst),
                text if text.strip() else "",
                token=IMAGE_TOKEN,
                join_space_newline=True,
                trailing_newline=True,
            )
        elif image is not None:
            text = replace_legacy_tokens(text)
        if name == "VisDial" and s.repairs:
            text = _image_block(text)
        return Prompt(text, image)

    columns = ("tgt_text", "image") + (("tgt_inst",) if with_instruction else ())
    return DatasetInputs(Side(("qry_text",), query, media=False), Side(columns, candidate, media=True))


CROPPED_OBJECT = "Represent the given cropped image of the object"


def _image_i2i_vg(name: str, s: _Surface) -> DatasetInputs:
    with_instruction = name == "CIRR"
    cropped_object = s.repairs and name in ("Visual7W-Pointing", "MSCOCO", "RefCOCO")

    def query(row: dict, num_frames: int) -> Prompt:
        text, image = _scalar(row.get("qry_text")), _image(row)
        inst = _scalar(row.get("qry_inst")) if with_instruction else ""
        if image is not None and inst:
            text = _compose(
                _instruction(inst, leading_newline=True),
                text,
                token=IMAGE_TOKEN,
                join_space_newline=True,
                trailing_newline=True,
            )
        elif image is not None:
            text = replace_legacy_tokens(text)
        return Prompt(text, image)

    def candidate(row: dict, num_frames: int) -> Prompt:
        text, image = _scalar(row.get("tgt_text")), _image(row)
        if image is not None:
            text = replace_legacy_tokens(text)
        if cropped_object:  # "Represent the given cropped image of the object" as a full sentence
            head = IMAGE_TOKEN + "\n"
            stripped = replace_legacy_tokens(text).rstrip("\n")
            if stripped.startswith(head) and stripped[len(head) :].strip() in (CROPPED_OBJECT, CROPPED_OBJECT + "."):
                text = head + CROPPED_OBJECT + ".\n"
        return Prompt(text, image)

    query_columns = ("qry_text", "image") + (("qry_inst",) if with_instruction else ())
    return DatasetInputs(Side(query_columns, query, media=True), Side(("tgt_text", "image"), candidate, media=True))


VIDEO_CLASSIFICATION = {
    "K700": "Recognize the category of the video content.",
    "UCF101": "What activities or sports are being performed by the person in the video?",
    "HMDB51": "What actions or objects interactions are the person in the video doing?",
    "SmthSmthV2": "What actions or object interactions are being performed by the person in the video?",
    "Breakfast": "Recognize the breakfast type that the person is cooking in the video. ",  # canonical strips the space
}
VIDEO_CANDIDATE = "Understand the content of the provided video."


def _video_cls(name: str, s: _Surface) -> DatasetInputs:
    instruction = VIDEO_CLASSIFICATION[name] if s.origin else VIDEO_CLASSIFICATION[name].rstrip()
    text = _compose(instruction, token=VIDEO_TOKEN, separator=s.separator, trailing_newline=s.trailing_newline)

    def query(row: dict, num_frames: int) -> Prompt:
        return Prompt(text, frames=_video(row, num_frames, name))

    return DatasetInputs(Side(("video",), query, media=True), _text_candidates())


def _video_candidates(name: str, s: _Surface, instruction: str = VIDEO_CANDIDATE) -> Side:
    text = _compose(instruction, token=VIDEO_TOKEN, separator=s.separator, trailing_newline=s.trailing_newline)

    def build(row: dict, num_frames: int) -> Prompt:
        return Prompt(text, frames=_video(row, num_frames, name))

    return Side(("video",), build, media=True)


VIDEO_RETRIEVAL = {  # dataset: (query field, instruction)
    "MSR-VTT": ("caption", "Find a video that contains the following visual content:"),
    "MSVD": ("caption", "Find the video snippet that corresponds to the given summary:"),
    "DiDeMo": ("caption", "Find a video that includes the following described scenes:"),
    "VATEX": ("enCap", "Select a video that fits the description provided:"),
    "YouCook2": ("sentence", "Find a video that demonstrates the following action while making a recipe:"),
}


def _video_retrieval(name: str, s: _Surface) -> DatasetInputs:
    field, instruction = VIDEO_RETRIEVAL[name]

    def query(row: dict, num_frames: int) -> Prompt:
        caption = s.clean(_first_text(row.get(field)))
        return Prompt(_compose(instruction, caption, trailing_newline=s.trailing_newline))

    return DatasetInputs(Side((field,), query, media=False), _video_candidates(name, s))


MOMENT_QUERY = "Find the clip that corresponds to the described scene in the given video:"


def _moment_retrieval(name: str, s: _Surface) -> DatasetInputs:
    def query(row: dict, num_frames: int) -> Prompt:
        text = s.clean(_required(row, "query", name))
        return Prompt(
            _compose(MOMENT_QUERY, text, token=VIDEO_TOKEN, separator=s.separator, trailing_newline=s.trailing_newline),
            frames=_video(row, num_frames, name),
        )

    return DatasetInputs(Side(("query", "video"), query, media=True), _video_candidates(name, s))


def _momentseeker(name: str, s: _Surface) -> DatasetInputs:
    layout = {"separator": s.separator, "trailing_newline": s.trailing_newline}

    def query(row: dict, num_frames: int) -> Prompt:
        text = s.clean(_required(row, "query", name))
        image, video = row.get("image"), row.get("video")
        if image is not None and not video:
            instruction = "Select the video clip that aligns with the given text and image:"
            return Prompt(_compose(instruction, text, token=IMAGE_TOKEN, **layout), image)
        if video:
            instruction = "Find the clip that corresponds to the given sentence and video segment:"
            return Prompt(
                _compose(instruction, text, token=VIDEO_TOKEN, **layout),
                frames=_video(row, num_frames, name),
            )
        instruction = "Find the clip that corresponds to the given text:"
        return Prompt(_compose(instruction, text, trailing_newline=s.trailing_newline))

    candidates = _video_candidates(name, s, "Understand the content of the provided video clip.")
    return DatasetInputs(Side(("query", "image", "video"), query, media=True), candidates)


VIDEO_QA = (
    "Given a video and a question, select the most accurate answer from the provided candidates. "
    "Return only the exact text of your chosen answer. Question: "
)


def _video_qa(name: str, s: _Surface) -> DatasetInputs:
    def question_text(row: dict) -> str:
        question = s.clean(_required(row, "question", name))
        if name == "Video-MME":
            options = [str(v) for v in row.get("options") or [] if v is not None]
            return question + "\n" + "\n".join(options)
        if name == "NExTQA":
            options = [s.clean(_required(row, f"a{i}", name)) for i in range(5)]
            return _choices(question, options)
        if name == "MVBench":
            options = [s.clean(str(v)) for v in row.get("candidates") or [] if v is not None]
            return _choices(question, options)
        if name == "EgoSchema":
            options = row.get("option") or []
            joined = " ".join(str(v) for v in options if v is not None) if isinstance(options, list) else str(options)
            return question + joined
        return question + "? (A) yes; (B) no."  # ActivityNetQA

    def query(row: dict, num_frames: int) -> Prompt:
        text = _compose(
            VIDEO_QA, question_text(row), token=VIDEO_TOKEN, separator=s.separator, trailing_newline=s.trailing_newline
        )
        return Prompt(text, frames=_video(row, num_frames, name))

    fields = {
        "Video-MME": ("options",),
        "NExTQA": ("a0", "a1", "a2", "a3", "a4"),
        "MVBench": ("candidates",),
        "EgoSchema": ("option",),
        "ActivityNetQA": (),
    }[name]
    candidates = _text_candidates(normalize=s if name in ("NExTQA", "MVBench") else None)
    return DatasetInputs(Side(("question", *fields, "video"), query, media=True), candidates)


DOCUMENT_QUERY = "Find a document image that matches the given query:"
DOCUMENT_CANDIDATE = "Understand the content of the provided document image."


def _visdoc(name: str, s: _Surface) -> DatasetInputs:
    def query(row: dict, num_frames: int) -> Prompt:
        text = f"{DOCUMENT_QUERY} {_required(row, 'query', name)}"
        return Prompt(text if s.origin else normalize_whitespace(text + "\n", final_newline=True))

    candidate_text = _compose(
        DOCUMENT_CANDIDATE, token=IMAGE_TOKEN, separator=s.separator, trailing_newline=s.trailing_newline
    )

    def candidate(row: dict, num_frames: int) -> Prompt:
        image = _image(row)
        if image is None:
            raise ValueError(f"{name}: candidate row id {row.get('id')!r} has no image")
        return Prompt(candidate_text, image)

    return DatasetInputs(Side(("query",), query, media=False), Side(("image",), candidate, media=True))


_FAMILY = {
    "image_classification": lambda name, s: _image_cls(),
    "image_question_answer": _image_qa,
    "video_classification": _video_cls,
    "video_question_answer": _video_qa,
    "video_retrieval": _video_retrieval,
    "visdoc_vidore_v1": _visdoc,
    "visdoc_vidore_v2": _visdoc,
    "visdoc_visrag": _visdoc,
    "visdoc_ood": _visdoc,
}
_RETRIEVAL = {
    **dict.fromkeys(("MSCOCO_i2t", "VisualNews_i2t"), lambda name, s: _image_i2t()),
    **dict.fromkeys(("VisualNews_t2i", "Wiki-SS-NQ", "EDIS", "WebQA", "MSCOCO_t2i", "VisDial"), _image_t2i),
    **dict.fromkeys(("NIGHTS", "OVEN", "FashionIQ", "CIRR"), _image_i2i_vg),
}


def dataset_inputs(name: str, mode: str = "canonical") -> DatasetInputs:
    """How the queries and candidates of the MMEB-V2 dataset ``name`` are read and composed.

    Args:
        name: the dataset (as in :data:`~btok_model.evaluation.mmeb_v2_index.DATASETS`).
        mode: the authors' prompt mode, ``"canonical"`` (their default) or ``"origin"``
            (see the module's description).

    Raises:
        ValueError: an unknown ``mode``.
    """
    s = _surface(mode)
    meta_task = dataset(name).meta_task
    if meta_task == "image_retrieval":
        return _RETRIEVAL[name](name, s)
    if meta_task == "image_visual_grounding":
        return _image_i2i_vg(name, s)
    if meta_task == "video_moment_retrieval":
        return _momentseeker(name, s) if name == "MomentSeeker" else _moment_retrieval(name, s)
    return _FAMILY[meta_task](name, s)


def _decode_image(data: bytes, where: str):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"{where}: cannot decode the image ({err})") from None


def to_model_input(prompt: Prompt, where: str):
    """What an embedder's ``encode`` takes for ``prompt``: the text, or ``{"text", "image"}`` /
    ``{"text", "video"}`` with decoded RGB images and the leading placeholder removed.

    Args:
        prompt: from a dataset's :class:`Side`.
        where: names the row in error messages (``"<dataset> query id 7"``).

    Raises:
        ValueError: text and media disagree (a placeholder without media, media without a
            leading placeholder, two placeholders), blank text, or undecodable media.
    """
    text = replace_legacy_tokens(prompt.text)  # MMEB's old markers count as placeholders too
    if prompt.image is not None and prompt.frames is not None:
        raise ValueError(f"{where}: a row gives both an image and a video")
    token = IMAGE_TOKEN if prompt.image is not None else VIDEO_TOKEN if prompt.frames is not None else None
    if token is None:
        if IMAGE_TOKEN in text or VIDEO_TOKEN in text:
            raise ValueError(f"{where}: the text holds an image/video placeholder but the row has no media: {text!r}")
        if not text.strip():
            raise ValueError(f"{where}: empty text and no image or video")
        return text
    try:
        body = strip_leading_placeholder(text, token, own_line=False)
    except FieldError as err:
        raise ValueError(f"{where}: {err}") from None
    if prompt.image is not None:
        return {"text": body or None, "image": _decode_image(prompt.image, where)}
    frames = [_decode_image(frame, f"{where}, frame {i}") for i, frame in enumerate(prompt.frames)]
    return {"text": body or None, "video": frames}
