"""MMEB-train (TIGER-Lab's 20 training subsets of the MMEB benchmark) read as btok training examples.

Two layouts, read to the same examples (docs/training.md lists them beside the other sources'):
the Hugging Face parquet files (``ROOT/<Subset>/<split>-*.parquet``, images under
``ROOT/images/`` or ``image_root``) and the authors' Lance repack (``ROOT/data/<Subset>/<split>.lance``,
images in ``ROOT/data/images/<Subset>.lance``; ``pip install btok[lance]``). A row holds the
strings ``qry``, ``qry_image_path``, ``pos_text``, ``pos_image_path`` and optionally ``neg_text``,
``neg_image_path`` (an empty path: no image); the split read is the authors' ``train`` unless told.

Rows are rendered as the authors' runtime transform renders them, per subset as :data:`SUBSETS`
lists it (:class:`SideRule`, :func:`render_side`); then the image token is taken out again, since
btok's collator places an input's image itself. An example is a dict as
:class:`~btok_model.embedder.collate.BTokCollator` takes it, ``{"query", "positive",
"negatives"?}``: a text side a ``str``, an image side ``{"text": str | None, "image": ...}`` with
the file's path (parquet) or the RGB ``PIL.Image`` (Lance, decoded when the example is taken).

Opening a subset reads and renders every row, so a bad row fails before training starts, as a
:class:`~btok_model.datasets.DataError` naming the file, the row (0-based) and the field. The one
exception is the authors': A-OKVQA's and OK-VQA's rows with an empty query or positive are dropped,
as their converter drops them (counted in :attr:`MmebTrainSubset.dropped`).
"""

from __future__ import annotations

import glob
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .jsonl import DataError
from .lance_tables import LanceImageTable, open_lance
from .rendering import IMAGE_TOKEN, FieldError, normalize_whitespace, replace_legacy_tokens, strip_leading_placeholder

__all__ = [
    "DEFAULT_SPLIT",
    "IMAGE_TOKEN",
    "SUBSETS",
    "MmebTrainSubset",
    "SideRule",
    "SubsetSpec",
    "find_layout",
    "render_side",
]

DEFAULT_SPLIT = "train"
ROW_FIELDS = ("qry", "qry_image_path", "pos_text", "pos_image_path", "neg_text", "neg_image_path")
REQUIRED_FIELDS = ROW_FIELDS[:4]
# (example side, text field, image-path field)
SIDES = (
    ("query", "qry", "qry_image_path"),
    ("positive", "pos_text", "pos_image_path"),
    ("negative", "neg_text", "neg_image_path"),
)
# Subsets whose upstream rows include empty queries or positives; the authors' converter drops
# those rows there (MMEB_TRAIN_EMPTY_SIDE_CLEANUP_SUBSETS) and fails on them anywhere else.
EMPTY_ROW_SUBSETS = frozenset({"A-OKVQA", "OK-VQA"})


@dataclass(frozen=True)
class SideRule:
    """How one side (query, positive or negative) of a subset's rows is rendered.

    Each flag is one of the authors' transform settings. An image side is always placed on
    its own line with one trailing newline (their ``visual_token_placement: own_line``, set on
    every image side of the 20 subsets).

    Attributes:
        drop: no such side (``empty: empty_multimodal_input``; negatives only).
        single_newline: one trailing newline (``trailing_newline: ensure_single`` /
            ``normalize_blank_tail``), spaces at line ends removed.
        strip_token_without_image: a text without an image loses its image token
            (``visual_token_alignment: strip_without_media``).
        token_if_empty: an image with an empty text keeps the image alone
            (``visual_token_alignment: restore_if_empty``).
        dialogue_break: ``"image retrieval: Q:"`` becomes ``"image retrieval:\\nQ:"``
            (``instruction_body_separator: newline``).
        strip_tail_spaces: trailing spaces and tabs removed
            (``whitespace_normalization: strip_trailing_horizontal``).
    """

    drop: bool = False
    single_newline: bool = False
    strip_token_without_image: bool = False
    token_if_empty: bool = False
    dialogue_break: bool = False
    strip_tail_spaces: bool = False


@dataclass(frozen=True)
class SubsetSpec:
    """The authors' settings of one MMEB-train subset.

    Attributes:
        weight: its sampling weight (a block of examples comes from it with probability
            weight / the sum of the mixture's weights).
        target_side: whose text the other side's BToks generate (their ``ntp_side``):
            ``positive``, ``query``, ``both`` or ``none``.
        query, positive, negative: how each side is rendered.
    """

    weight: float
    target_side: str
    query: SideRule
    positive: SideRule
    negative: SideRule


_IMAGE = SideRule(single_newline=True)  # own_line + ensure_single
_RAW = SideRule()
_NONE = SideRule(drop=True)
_ANSWER = SideRule(strip_tail_spaces=True)

# Weights from the authors' configs/datasets/mmeb_train.yaml (`weight`), target sides from
# configs/datasets/btoks_mmeb_train.yaml (`metadata.ntp_side`), side rules from the `transform`
# entries of mmeb_train.yaml, which match DEFAULT_TRANSFORM_BY_SUBSET in their
# src/vlm2emb/data/datasets/mmeb_train.py (siryuson/BottleneckTokens).
SUBSETS: dict[str, SubsetSpec] = {
    "ImageNet_1K": SubsetSpec(1.0, "positive", _IMAGE, _RAW, _NONE),
    "N24News": SubsetSpec(1.0, "positive", _IMAGE, _RAW, _RAW),
    "HatefulMemes": SubsetSpec(0.5, "positive", _IMAGE, _RAW, _RAW),
    "VOC2007": SubsetSpec(0.5, "positive", _IMAGE, _RAW, _NONE),
    "SUN397": SubsetSpec(0.5, "positive", _IMAGE, _RAW, _NONE),
    "OK-VQA": SubsetSpec(0.5, "positive", _IMAGE, _RAW, _RAW),
    "A-OKVQA": SubsetSpec(0.5, "positive", _IMAGE, _RAW, _RAW),
    "DocVQA": SubsetSpec(1.0, "positive", _IMAGE, _RAW, _RAW),
    "InfographicsVQA": SubsetSpec(0.5, "positive", _IMAGE, _RAW, _RAW),
    "ChartQA": SubsetSpec(0.5, "positive", _IMAGE, _ANSWER, _ANSWER),
    "Visual7W": SubsetSpec(1.0, "positive", _IMAGE, _RAW, _RAW),
    "VisDial": SubsetSpec(
        1.0,
        "query",
        SideRule(single_newline=True, dialogue_break=True),
        _IMAGE,
        SideRule(single_newline=True, token_if_empty=True),
    ),
    "CIRR": SubsetSpec(0.5, "none", _IMAGE, _IMAGE, _NONE),
    "VisualNews_t2i": SubsetSpec(1.0, "query", _RAW, _IMAGE, _NONE),
    "VisualNews_i2t": SubsetSpec(1.0, "positive", _IMAGE, _RAW, _NONE),
    "MSCOCO_t2i": SubsetSpec(1.0, "query", _RAW, _IMAGE, _NONE),
    "MSCOCO_i2t": SubsetSpec(1.0, "positive", _IMAGE, _RAW, _NONE),
    "NIGHTS": SubsetSpec(0.5, "none", _IMAGE, _IMAGE, _NONE),
    "WebQA": SubsetSpec(0.5, "both", SideRule(single_newline=True, strip_token_without_image=True), _IMAGE, _NONE),
    "MSCOCO": SubsetSpec(1.0, "query", _IMAGE, _IMAGE, _NONE),
}


def render_side(text: str, has_image: bool, rule: SideRule) -> str | None:
    """The text of one side as the authors render it, without the image token.

    Args:
        text: the row's raw text ("" when absent).
        has_image: whether the side has an image (the collator places it before the text).
        rule: the subset's rule for this side (not ``drop``).

    Returns:
        The text; None for an image side with no text besides its image.

    Raises:
        ValueError: an image token without an image (and no rule removing it), or an image
            whose text does not start with the image token, or holds it twice.
    """
    text = replace_legacy_tokens(text, IMAGE_TOKEN)
    if rule.strip_token_without_image and not has_image:
        text = normalize_whitespace(text.replace(IMAGE_TOKEN, "").strip("\n"), final_newline=False)
    elif rule.token_if_empty and has_image and not text.strip():
        text = IMAGE_TOKEN
    if has_image:
        if not text.startswith(IMAGE_TOKEN):
            raise FieldError(f"has an image but its text does not start with the image token: {text[:60]!r}")
        body = text[len(IMAGE_TOKEN) :].lstrip(" \t\n")
        if IMAGE_TOKEN in body:
            raise FieldError("holds more than one image token (one image per side)")
        text = normalize_whitespace(f"{IMAGE_TOKEN}\n{body}" if body else IMAGE_TOKEN, final_newline=True)
    elif IMAGE_TOKEN in text:
        raise FieldError(f"holds an image token but the row gives no image for it: {text[:60]!r}")
    if rule.dialogue_break:
        text = text.replace("image retrieval: Q:", "image retrieval:\nQ:", 1)
    if rule.strip_tail_spaces:
        text = text.rstrip(" \t")
    if rule.single_newline:
        text = normalize_whitespace(text, final_newline=True)
    if has_image:
        return strip_leading_placeholder(text, IMAGE_TOKEN) or None  # drop the token and the newline after it
    return text


def find_layout(root: str, subset: str, split: str = DEFAULT_SPLIT) -> str | None:
    """``"parquet"`` or ``"lance"``: which layout holds ``subset`` under ``root`` (None: neither).

    Raises:
        DataError: both layouts hold it (one root, one layout).
    """
    parquet = bool(_parquet_files(root, subset, split))
    lance = os.path.isdir(_lance_rows(root, subset, split))
    if parquet and lance:
        raise DataError(
            f"{root}: holds {subset} in both the parquet layout ({os.path.join(root, subset)}) and the Lance layout "
            f"({_lance_rows(root, subset, split)}); keep one layout per root"
        )
    return "parquet" if parquet else "lance" if lance else None


def _parquet_files(root: str, subset: str, split: str) -> list[str]:
    return sorted(glob.glob(os.path.join(glob.escape(os.path.join(root, subset)), f"{split}-*.parquet")))


def _lance_rows(root: str, subset: str, split: str) -> str:
    return os.path.join(root, "data", subset, f"{split}.lance")


def _lance_images(root: str, subset: str) -> str:
    return os.path.join(root, "data", "images", f"{subset}.lance")


class _ParquetImages:
    """Image files on disk, row paths relative to ``image_root``."""

    def __init__(self, image_root: str):
        self.image_root = image_root
        self._seen: set[str] = set()

    def check(self, key: str) -> None:
        if key in self._seen:
            return
        path = os.path.join(self.image_root, key)
        if not os.path.isfile(path):
            raise FieldError(
                f"image file {key!r} does not exist (looked for {path}; MMEB-train's row paths are relative to the "
                "root its images were unpacked in)"
            )
        self._seen.add(key)

    def value(self, key: str, where: str):
        return os.path.join(self.image_root, key)


class _LanceImages:
    """An image side table; images decoded to RGB when taken."""

    def __init__(self, path: str):
        self.table = LanceImageTable(path)

    def check(self, key: str) -> None:
        if key not in self.table:
            raise FieldError(f"image {key!r} is not in the image table {self.table.path}")

    def value(self, key: str, where: str):
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(self.table.read(key))) as image:
                return image.convert("RGB")
        except (UnidentifiedImageError, OSError) as err:
            raise DataError(f"{where}: image {key!r} of {self.table.path} cannot be decoded ({err})") from None


class MmebTrainSubset(Sequence):
    """The examples of one MMEB-train subset (see the module docstring), checked when opened.

    Args:
        root: the MMEB-train root (either layout).
        subset: one of :data:`SUBSETS`.
        split: ``train`` (the authors'), ``original`` or ``diverse_instruction``.
        image_root: where the parquet rows' image paths are relative to (default ``root``);
            the Lance layout holds its images itself.

    Attributes:
        name, split, layout (``"parquet"`` or ``"lance"``), files (the row files read),
        dropped (rows without a query or positive skipped, as the authors do, in A-OKVQA and OK-VQA).

    Raises:
        DataError: the subset is missing or a row is bad (naming file, row and field).
    """

    def __init__(self, root: str, subset: str, *, split: str = DEFAULT_SPLIT, image_root: str | None = None):
        if subset not in SUBSETS:
            raise DataError(f"{subset!r} is not an MMEB-train subset; the 20 are {sorted(SUBSETS)}")
        root = os.fspath(root)
        self.name, self.split, self.spec = subset, split, SUBSETS[subset]
        self.layout = find_layout(root, subset, split)
        if self.layout == "parquet":
            self.files = _parquet_files(root, subset, split)
            self._images = _ParquetImages(os.fspath(image_root) if image_root is not None else root)
        elif self.layout == "lance":
            if image_root is not None:
                raise DataError(f"{root}: image_root applies to the parquet layout; the Lance layout holds its images")
            self.files = [_lance_rows(root, subset, split)]
            self._images = _LanceImages(_lance_images(root, subset))
        else:
            raise DataError(
                f"{root}: no MMEB-train subset {subset} (split {split!r}): expected "
                f"{os.path.join(root, subset, split + '-*.parquet')} or {_lance_rows(root, subset, split)}"
            )
        self.dropped = 0
        self._columns = self._render_all()

    # -- reading and checking -----------------------------------------------------------------
    def _read(self, path: str):
        """The row table of one file: string columns, known fields only."""
        try:
            import pyarrow as pa
        except ImportError as err:
            raise ImportError(f"{path}: reading MMEB-train needs pyarrow: pip install 'btok[mmeb]'") from err

        if self.layout == "parquet":
            import pyarrow.parquet as pq

            try:
                table = pq.read_table(path)
            except (OSError, pa.ArrowException) as err:
                raise DataError(f"{path}: not a readable parquet file ({err})") from err
        else:
            table = open_lance(path).to_table()
        unknown = sorted(set(table.column_names) - set(ROW_FIELDS))
        if unknown:
            raise DataError(f"{path}: unknown field(s) {unknown}; MMEB-train rows have {list(ROW_FIELDS)}")
        missing = [f for f in REQUIRED_FIELDS if f not in table.column_names]
        if missing:
            raise DataError(f"{path}: missing field(s) {missing} (fields present: {table.column_names})")
        for name in table.column_names:
            kind = table.schema.field(name).type
            if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)):
                raise DataError(f"{path}: field {name!r} must hold strings, it holds {kind}")
        return table

    def _render_all(self) -> dict:
        """Every row rendered into Arrow columns (texts, image keys, where each row came from)."""
        import pyarrow as pa

        out: dict[str, list] = {k: [] for k in ("q", "q_image", "p", "p_image", "n", "n_image", "file", "row")}
        for file_id, path in enumerate(self.files):
            table = self._read(path)
            columns = {f: table.column(f).to_pylist() if f in table.column_names else None for f in ROW_FIELDS}
            for row in range(table.num_rows):
                values = {f: (col[row] or "") if col is not None else "" for f, col in columns.items()}
                rendered = self._render_row(values, path, row)
                if rendered is None:
                    self.dropped += 1
                    continue
                for key, value in zip(("q", "q_image", "p", "p_image", "n", "n_image"), rendered):
                    out[key].append(value)
                out["file"].append(file_id)
                out["row"].append(row)
        if not out["row"]:
            raise DataError(f"{', '.join(self.files)}: no rows")
        text = pa.large_string()
        return {k: pa.array(v, type=pa.int64() if k in ("file", "row") else text) for k, v in out.items()}

    def _render_row(self, values: dict[str, str], path: str, row: int) -> tuple | None:
        """``(query, query image, positive, positive image, negative, negative image)`` of a
        raw row (texts rendered, image keys stripped; None: absent), or None for a row dropped."""
        empty = [side for side, text, image in SIDES[:2] if not values[text] and not values[image].strip()]
        if empty and self.name in EMPTY_ROW_SUBSETS:
            return None
        out = []
        for side, text_field, image_field in SIDES:
            rule = getattr(self.spec, side)
            image = values[image_field].strip() or None
            if rule.drop:
                out += [None, None]
                continue
            field = image_field
            try:
                if image is not None:
                    self._images.check(image)
                field = text_field
                text = render_side(values[text_field], image is not None, rule)
            except FieldError as err:
                raise DataError(f"{path}: row {row}, field {field!r}: {err}") from None
            if image is None and not (text or "").strip():
                if side == "negative":  # the authors' "no negative"
                    out += [None, None]
                    continue
                raise DataError(f"{path}: row {row}, field {text_field!r}: the {side} is empty (no text, no image)")
            out += [text, image]
        return tuple(out)

    # -- examples ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._columns["row"])

    def where(self, i: int) -> str:
        """``FILE: row N`` of example ``i`` (for messages)."""
        return f"{self.files[self._columns['file'][i].as_py()]}: row {self._columns['row'][i].as_py()}"

    def __getitem__(self, i: int) -> dict[str, Any]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(f"example {i} of {self.name}, which has {len(self)}")
        i %= len(self)
        c = self._columns
        query = self._input(c["q"][i].as_py(), c["q_image"][i].as_py(), i)
        positive = self._input(c["p"][i].as_py(), c["p_image"][i].as_py(), i)
        example = {"query": query, "positive": positive}
        negative_text, negative_image = c["n"][i].as_py(), c["n_image"][i].as_py()
        if negative_text is not None or negative_image is not None:
            example["negatives"] = [self._input(negative_text, negative_image, i)]
        return example

    def _input(self, text: str | None, image: str | None, i: int):
        if image is None:
            return text
        return {"text": text, "image": self._images.value(image, self.where(i))}
