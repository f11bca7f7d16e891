"""LLaVA-Hound's video training sources (``ShareGPTVideo/train_video_and_instruction``) read as
btok training examples.

The authors' three sources (:data:`SOURCES`, from the ``llavahound_train`` entries of their
``configs/datasets/mmeb_train.yaml``): ``video_caption_300k`` (video + instruction -> caption),
``video_caption_300k-video`` (caption -> video) and ``video_qa_240k`` (video + question -> answer).
Two layouts of the folder ``ShareGPTVideo_train_video_and_instruction``, read to the same examples
(docs/training.md): the authors' Lance repack (``ROOT/data/video_instruction/train/sft/<file>.lance``
and the frame table ``ROOT/data/train_300k.lance``; ``pip install btok[lance]``) and the public
files (``ROOT/video_instruction/train/sft/<file>.jsonl`` and ``ROOT/train_300k/<video>/<frames>``).

A video is 8 frames sampled as the authors' training samples them
(:func:`~btok_model.datasets.frames.sample_frames_train`, frames ordered by the last number in
their names), decoded to RGB ``PIL.Image`` when an example is taken. Rows are
rendered as the authors' transforms render them (``trailing_newline: preserve``): caption mode
gives ``{"query": {"text", "video", "trailing_newline"}, "positive": str}`` (the instruction before
the human turn, the video on a line of its own at the start), video mode ``{"query": str,
"positive": {"text", "video", "placement": "inline_end", "trailing_newline"}}``; no negatives.

Opening a source checks every row: a missing table, file or column, a video without frames,
``conversations`` without two turns of text, an empty caption or answer, a human turn without the
``<video>`` placeholder (caption mode) or a vision placeholder in a text side raise a
:class:`~btok_model.datasets.DataError` naming the file, row or line, and field.
"""

from __future__ import annotations

import functools
import io
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .frames import sample_frames_train
from .jsonl import DataError, read_jsonl
from .lance_tables import open_lance
from .rendering import (
    LEGACY_VIDEO_TOKENS,
    VIDEO_TOKEN,
    FieldError,
    blame,
    check_plain_text,
    join_instruction,
    normalize_whitespace,
    replace_legacy_tokens,
    strip_leading_placeholder,
    token_first,
)

__all__ = ["NUM_FRAMES", "ROOT_NAME", "SOURCES", "LlavaHoundSet", "LlavaHoundSource"]

# The folder the authors' README downloads the set into, under their data root.
ROOT_NAME = "ShareGPTVideo_train_video_and_instruction"
FRAME_TABLE = "train_300k"
NUM_FRAMES = 8  # `num_frames` of the three entries


@dataclass(frozen=True)
class LlavaHoundSource:
    """One of the authors' LLaVA-Hound sources.

    Attributes:
        file: the instruction file, under ``video_instruction/`` (no suffix).
        mode: ``"caption_retrieval"`` (video query, text positive) or ``"video_retrieval"``
            (text query, video positive).
        query_instruction: put before the query's text (``""``: none).
        query_separator: between instruction and text: ``"none"``, ``"space"`` or ``"newline"``.
        positive_instruction: the video positive's text (video mode).
        positive_placement: where the video positive's video goes (``"inline_end"`` or ``"own_line"``).
    """

    file: str
    mode: str
    query_instruction: str
    query_separator: str
    positive_instruction: str = ""
    positive_placement: str = "inline_end"


# From the `subset`, `data_mode` and `transform` of the three llavahound_train entries of the
# authors' configs/datasets/mmeb_train.yaml.
SOURCES = {
    "video_caption_300k": LlavaHoundSource("train/sft/video_caption_300k", "caption_retrieval", "", "newline"),
    "video_caption_300k-video": LlavaHoundSource(
        "train/sft/video_caption_300k",
        "video_retrieval",
        "Find a video that contains the following visual content:",
        "space",
        "Understand the content of the provided video:",
        "inline_end",
    ),
    "video_qa_240k": LlavaHoundSource(
        "train/sft/video_240k_caption_15k",
        "caption_retrieval",
        "Answer a question based on the content of a video.",
        "newline",
    ),
}


def _frame_number(name) -> int:
    """A frame's order key: an int as it is, else the last number in its name (none: 0)."""
    if isinstance(name, (int, np.integer)):
        return int(name)
    numbers = re.findall(r"\d+", str(name))
    return int(numbers[-1]) if numbers else 0


class _FrameTable:
    """The Lance frame table, indexed once: each video's sampled frame rows (in frame order)."""

    def __init__(self, path: str):
        import pyarrow as pa
        import pyarrow.compute as pc

        self.path = path
        self.table = open_lance(path, ("video_id", "frame_idx", "image"))
        keys = self.table.to_table(columns=["video_id", "frame_idx"])
        videos = pc.dictionary_encode(keys.column("video_id").combine_chunks())
        codes = videos.indices.to_numpy(zero_copy_only=False)
        names = videos.dictionary.to_pylist()
        order_keys = keys.column("frame_idx").combine_chunks()
        if not pa.types.is_integer(order_keys.type):  # a name: its last number (none: 0), as _frame_number
            digits = pc.struct_field(pc.extract_regex(order_keys.cast(pa.large_string()), r"(?P<n>\d+)\D*$"), [0])
            try:
                order_keys = pc.fill_null(pc.cast(digits, pa.int64()), 0)
            except pa.ArrowInvalid as err:
                raise DataError(f"{path}: a frame_idx holds a number too large to order frames by ({err})") from None
        numbers = order_keys.to_numpy(zero_copy_only=False).astype(np.int64)
        rows = np.arange(len(codes))
        order = np.lexsort((rows, numbers, codes))  # by video, then frame number, then table order
        sorted_codes = codes[order]
        starts = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]]) if len(order) else np.zeros(0, int)
        counts = np.diff(np.r_[starts, len(order)])
        self._frames: dict[str, np.ndarray] = {}
        for start, count in zip(starts.tolist(), counts.tolist()):
            picked = order[start + np.asarray(sample_frames_train(count, NUM_FRAMES), dtype=np.int64)]
            self._frames[names[int(sorted_codes[start])]] = picked

    def __contains__(self, video: str) -> bool:
        return video in self._frames

    def frames(self, video: str, where: str) -> list:
        """The sampled frames of ``video``, decoded (``where`` names the example in errors)."""
        rows = self._frames[video].tolist()
        data = self.table.take(rows, columns=["image"]).column("image").to_pylist()
        return [_decode(value, f"{where}: frame row {row} of {self.path}") for row, value in zip(rows, data)]


@functools.lru_cache(maxsize=2)
def _frame_table(path: str, version: int) -> _FrameTable:
    """One index per table version: the three sources share the authors' frame table."""
    return _FrameTable(path)


class _FrameFolders:
    """The public layout's frames: ``ROOT/train_300k/<video>/<frame files>``."""

    def __init__(self, path: str):
        self.path = path

    def __contains__(self, video: str) -> bool:
        """Whether ``video`` has a frame (stops at the first file: no full listing)."""
        folder = os.path.join(self.path, video)
        if not os.path.isdir(folder):
            return False
        with os.scandir(folder) as entries:
            return any(e.is_file() and not e.name.startswith(".") for e in entries)

    def names(self, video: str) -> list[str]:
        """The frame files of ``video`` in frame order ([] when its folder is missing or empty)."""
        folder = os.path.join(self.path, video)
        if not os.path.isdir(folder):
            return []
        files = sorted(e.name for e in os.scandir(folder) if e.is_file() and not e.name.startswith("."))
        return sorted(files, key=_frame_number)

    def frames(self, video: str, where: str) -> list:
        names = self.names(video)
        picked = [os.path.join(self.path, video, names[i]) for i in sample_frames_train(len(names), NUM_FRAMES)]
        out = []
        for path in picked:
            with open(path, "rb") as f:
                out.append(_decode(f.read(), f"{where}: frame {path}"))
        return out


def _decode(data, where: str):
    """Frame bytes as an RGB ``PIL.Image``."""
    from PIL import Image, UnidentifiedImageError

    if not isinstance(data, (bytes, bytearray)) or not data:
        raise DataError(f"{where}: no image bytes")
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"{where}: the frame cannot be decoded ({err})") from None


def find_layout(root: str, file: str) -> str | None:
    """``"lance"`` or ``"jsonl"``: which layout holds instruction ``file`` under ``root`` (None: neither).

    Raises:
        DataError: both do.
    """
    lance, jsonl = _instruction_paths(root, file)
    if os.path.isdir(lance) and os.path.isfile(jsonl):
        raise DataError(f"{root}: holds {file} both as {lance} and as {jsonl}; keep one layout per root")
    return "lance" if os.path.isdir(lance) else "jsonl" if os.path.isfile(jsonl) else None


def _instruction_paths(root: str, file: str) -> tuple[str, str]:
    return (
        os.path.join(root, "data", "video_instruction", f"{file}.lance"),
        os.path.join(root, "video_instruction", f"{file}.jsonl"),
    )


def _turns(conversations) -> tuple[str, str]:
    """The human and assistant turns' texts (the first two turns, as the authors read them)."""
    if not isinstance(conversations, list) or len(conversations) < 2:
        raise FieldError(f"must be a list of at least two turns, got {str(conversations)[:80]!r}")
    values = []
    for k, turn in enumerate(conversations[:2]):
        value = turn.get("value") if isinstance(turn, dict) else None
        if not isinstance(value, str):
            raise FieldError(f"turn {k} has no text 'value' (got {str(turn)[:80]!r})")
        values.append(value)
    return values[0], values[1]


class LlavaHoundSet(Sequence):
    """The examples of one of the authors' LLaVA-Hound sources under ``root`` (module docstring).

    Args:
        root: the ShareGPTVideo folder (either layout).
        name: one of :data:`SOURCES`.

    Attributes:
        name, spec (its :class:`LlavaHoundSource`), layout (``"lance"`` or ``"jsonl"``), files
        (the instruction file read).

    Raises:
        DataError: a missing file or table, or a bad row (naming file, row or line, and field).
    """

    def __init__(self, root: str | os.PathLike, name: str):
        import pyarrow as pa

        if name not in SOURCES:
            raise DataError(f"{name!r} is not a LLaVA-Hound source; the three are {list(SOURCES)}")
        self.root, self.name, self.spec = os.fspath(root), name, SOURCES[name]
        self.layout = find_layout(self.root, self.spec.file)
        lance, jsonl = _instruction_paths(self.root, self.spec.file)
        if self.layout is None:
            raise DataError(f"{self.root}: no LLaVA-Hound instructions {self.spec.file}: expected {lance} or {jsonl}")
        if self.layout == "lance":
            self.files = [lance]
            frames_path = os.path.join(self.root, "data", f"{FRAME_TABLE}.lance")
            version = open_lance(frames_path).version
            self._frames = _frame_table(frames_path, version)
            rows = self._lance_rows(lance)
        else:
            self.files = [jsonl]
            self._frames = _FrameFolders(os.path.join(self.root, FRAME_TABLE))
            rows = self._jsonl_rows(jsonl)
        rendered = {"video": [], "text": [], "other": [], "where": []}
        for where, video, conversations in rows:
            for key, value in zip(rendered, (*self._render(where, video, conversations), where)):
                rendered[key].append(value)
        if not rendered["video"]:
            raise DataError(f"{self.files[0]}: no rows")
        self._columns = {k: pa.array(v, type=pa.large_string()) for k, v in rendered.items()}

    def _lance_rows(self, path: str):
        import pyarrow as pa

        table = open_lance(path, ("video", "conversations"))
        kind = table.schema.field("video").type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
            raise DataError(f"{path}: field 'video' must hold strings, it holds {kind}")
        data = table.to_table(columns=["video", "conversations"])
        videos, conversations = (data.column(c).to_pylist() for c in ("video", "conversations"))
        return ((f"{path}: row {row}", v, c) for row, (v, c) in enumerate(zip(videos, conversations)))

    def _jsonl_rows(self, path: str):
        for record in read_jsonl(path):
            missing = [k for k in ("video", "conversations") if k not in record.data]
            if missing:
                raise record.error(f"missing field(s) {missing} (fields present: {sorted(record.data)})")
            yield record.where, record.data["video"], record.data["conversations"]

    def _render(self, where: str, video, conversations) -> tuple[str, str, str]:
        """``(video, text beside the video, the other side's text)`` of one row, checked."""
        spec, sep = self.spec, ", " if self.layout == "lance" else ": "  # "FILE: row N, field" / "FILE:LINE: field"
        field = "video"
        try:
            if not isinstance(video, str) or not video:
                raise FieldError(f"must be a video id, got {video!r}")
            if not self._has_frames(video):
                raise FieldError(f"no frames for video {video!r} in {self._frames.path}")
            field = "conversations"
            human, assistant = _turns(conversations)
            if spec.mode == "caption_retrieval":
                with blame("conversations"):
                    query = join_instruction(
                        spec.query_instruction, replace_legacy_tokens(human, VIDEO_TOKEN), spec.query_separator
                    )
                    text = strip_leading_placeholder(
                        token_first(query or VIDEO_TOKEN, VIDEO_TOKEN, LEGACY_VIDEO_TOKENS), VIDEO_TOKEN
                    )
                    check_plain_text(text or "")
                    other = normalize_whitespace(assistant)
                    check_plain_text(other)
            else:
                text = normalize_whitespace(spec.positive_instruction.strip())
                check_plain_text(assistant)
                other = normalize_whitespace(join_instruction(spec.query_instruction, assistant, spec.query_separator))
            if not normalize_whitespace(assistant):
                raise FieldError("the assistant turn (the caption or answer) is empty")
        except FieldError as err:
            raise DataError(f"{where}{sep}field {err.field or field!r}: {err}") from None
        return video, text or "", other

    def _has_frames(self, video: str) -> bool:
        return video in self._frames

    def __len__(self) -> int:
        return len(self._columns["video"])

    def where(self, i: int) -> str:
        """``FILE: row N`` or ``FILE:LINE`` of example ``i`` (for messages)."""
        return self._columns["where"][i].as_py()

    def __getitem__(self, i: int) -> dict:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(f"example {i} of {self.name}, which has {len(self)}")
        i %= len(self)
        video, text, other = (self._columns[k][i].as_py() for k in ("video", "text", "other"))
        frames = self._frames.frames(video, self.where(i))
        video_input = {"text": text or None, "video": frames, "trailing_newline": "preserve"}
        if self.spec.mode == "caption_retrieval":
            return {"query": video_input, "positive": other}
        video_input["placement"] = self.spec.positive_placement
        return {"query": other, "positive": video_input}
