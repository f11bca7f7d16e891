"""Row readers for ``python -m btok_model.embed``: a corpus read block by block, each row named.

A source is one of

* a **JSONL** file (``*.jsonl``, one object per line; a row is a non-blank line),
* a **parquet** file (``*.parquet``) or a **Lance** table (a ``*.lance`` folder),
* a **folder of images**: every image file under it (sorted by relative path) is a row whose id
  is that path.

A row of a file has a text field (default ``text``), and may have an image field (default
``image``: a path relative to the file's folder, the image's bytes, or a Hugging Face
``{"bytes", "path"}`` struct) and a video field (default ``video``: a list of frames, each a
path or bytes, already sampled; ``fps`` beside it when given). Its id is the id field (default
``id``; the row number when the source has no such field). An authors'-style text that holds
the vision placeholder (``"<|image_pad|>\\nRepresent the given image."``) is rendered through
:mod:`btok_model.datasets.rendering` (the placeholder comes out, the collator places the image).

A row the reader cannot use is a :class:`BadRow` naming its file and row (``FILE:LINE`` for
JSONL, ``FILE row N`` otherwise) and why: no text and no media, an empty text, a vision
placeholder in a text without media, a missing image file (found by :meth:`RowReader.scan`,
before a model loads), an image or video that does not decode (found when its block is read).
The caller stops on the first one or skips and counts them (``--on-bad-row``).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..datasets.jsonl import DataError
from ..datasets.rendering import (
    IMAGE_TOKEN,
    LEGACY_TOKENS,
    VIDEO_TOKEN,
    FieldError,
    check_plain_text,
    strip_leading_placeholder,
    token_first,
)

__all__ = ["IMAGE_EXTENSIONS", "BadRow", "Row", "RowReader", "open_rows"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
KINDS = ("jsonl", "parquet", "lance", "images")
_UNREAD = object()  # a media value :meth:`RowReader.scan` does not read (bytes in a table)


@dataclass(frozen=True)
class Row:
    """One row, ready for the model.

    Attributes:
        row: its 0-based row number in the source (JSONL: among the non-blank lines).
        id: its id as a string (the id field, the image's relative path, or the row number).
        input: what the encoder takes: the text (``str``), or ``{"text": str | None, "image":
            PIL.Image | None, "video": list[PIL.Image] | None[, "fps": float]}``.
        keep: the kept columns' values (``--keep-columns``).
        where: ``FILE:LINE`` or ``FILE row N``, for messages.
    """

    row: int
    id: str
    input: object
    keep: dict = field(default_factory=dict)
    where: str = ""


@dataclass(frozen=True)
class BadRow:
    """A row that cannot be embedded: its row number, where it is, and why."""

    row: int
    where: str
    reason: str

    def message(self) -> str:
        return f"{self.where}: {self.reason}"

    def to_dict(self) -> dict:
        return {"row": self.row, "where": self.where, "reason": self.reason}


class RowReader:
    """A corpus opened for reading (see the module docstring); use :func:`open_rows`.

    Attributes:
        path: the source as given.
        kind: ``"jsonl"``, ``"parquet"``, ``"lance"`` or ``"images"``.
        num_rows: rows in the source.
        columns: the source's field names (an image folder: ``("path",)``).
        has_media: whether rows may carry an image or video (an image folder, or an image /
            video field present).
    """

    def __init__(
        self,
        path: str,
        kind: str,
        *,
        text_field: str = "text",
        image_field: str = "image",
        video_field: str = "video",
        id_field: str = "id",
        keep_columns: tuple[str, ...] = (),
    ):
        self.path, self.kind = path, kind
        self.text_field, self.image_field, self.video_field = text_field, image_field, video_field
        self.id_field = id_field
        self.keep_columns = tuple(keep_columns)
        self._offsets: list[int] = []  # JSONL: byte offset of each row's line
        self._lines: list[int] = []  # JSONL: 1-based line number of each row
        self._files: list[str] = []  # image folder: relative paths
        self._table = None
        if kind == "jsonl":
            self._index_jsonl()
        elif kind == "images":
            self._files = _image_files(path)
            self.columns = ("path",)
        else:
            self._open_table()
        self.num_rows = len(self._files) if kind == "images" else self._num_rows
        self.has_media = kind == "images" or any(f in self.columns for f in (image_field, video_field))
        self.base_dir = path if kind == "images" else os.path.dirname(os.path.abspath(path))
        missing = [c for c in self.keep_columns if c not in self.columns]
        if missing:
            raise DataError(f"{path}: --keep-columns {missing} are not in the source; its fields: {list(self.columns)}")
        if kind != "images" and text_field not in self.columns and not self.has_media:
            raise DataError(
                f"{path}: no field {text_field!r} (the text to embed, --text-field) and no {image_field!r} / "
                f"{video_field!r} field; its fields: {list(self.columns)}"
            )

    # -- opening ----------------------------------------------------------------------------
    def _index_jsonl(self) -> None:
        """Byte offsets of the non-blank lines, and the union of their keys (one pass)."""
        keys: dict[str, None] = {}
        with open(self.path, "rb") as f:
            offset = 0
            for line_no, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        data = json.loads(line)
                    except json.JSONDecodeError as e:
                        where = f"{self.path}:{line_no}"
                        raise DataError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
                    if not isinstance(data, dict):
                        raise DataError(f"{self.path}:{line_no}: expected a JSON object, got {type(data).__name__}")
                    keys.update(dict.fromkeys(data))
                    self._offsets.append(offset)
                    self._lines.append(line_no)
                offset += len(line)
        self._num_rows = len(self._offsets)
        self.columns = tuple(keys)

    def _open_table(self) -> None:
        if self.kind == "lance":
            from ..datasets.lance_tables import open_lance

            self._table = open_lance(self.path)
            self._num_rows = self._table.count_rows()
        else:
            import pyarrow.dataset as pds

            try:
                self._table = pds.dataset(self.path, format="parquet")
                self._num_rows = self._table.count_rows()
            except Exception as err:  # pyarrow's own error types for an unreadable file
                raise DataError(f"{self.path}: not a readable parquet file ({err})") from err
        self.columns = tuple(self._table.schema.names)

    # -- reading ----------------------------------------------------------------------------
    def where(self, row: int) -> str:
        """How messages name row ``row``."""
        if self.kind == "jsonl":
            return f"{self.path}:{self._lines[row]}"
        if self.kind == "images":
            return os.path.join(self.path, self._files[row])
        return f"{self.path} row {row}"

    def keep_types(self):
        """The pyarrow types of the kept columns (JSONL: from their first non-null value).

        Returns:
            ``[(name, pyarrow.DataType)]`` in ``keep_columns`` order.
        """
        import pyarrow as pa

        if self.kind in ("parquet", "lance"):
            return [(c, self._table.schema.field(c).type) for c in self.keep_columns]
        kinds = {}
        for _, data in self._raw(range(self.num_rows), self.keep_columns):
            for c in self.keep_columns:
                value = data.get(c)
                if value is None or c in kinds:
                    continue
                kinds[c] = (
                    pa.bool_()
                    if isinstance(value, bool)
                    else pa.int64()
                    if isinstance(value, int)
                    else pa.float64()
                    if isinstance(value, float)
                    else pa.string()
                )
            if len(kinds) == len(self.keep_columns):
                break
        return [(c, kinds.get(c, pa.string())) for c in self.keep_columns]

    def _raw(self, rows: range, columns: tuple[str, ...] | None = None) -> Iterator[tuple[int, dict]]:
        """``(row, fields)`` for ``rows`` (contiguous), only ``columns`` for tables (None: all)."""
        if self.kind == "jsonl":
            if not len(rows):
                return
            with open(self.path, "rb") as f:
                f.seek(self._offsets[rows.start])
                row = rows.start
                while row < rows.stop:
                    line = f.readline()
                    if line.strip():
                        yield row, json.loads(line)
                        row += 1
        elif self.kind == "images":
            for row in rows:
                yield row, {"path": self._files[row]}
        else:
            cols = [c for c in (columns if columns is not None else self.columns) if c in self.columns]
            step = 4096
            for lo in range(rows.start, rows.stop, step):
                ids = list(range(lo, min(lo + step, rows.stop)))
                table = self._table.take(ids, columns=cols)
                for row, data in zip(ids, table.to_pylist()):
                    yield row, data

    def _light_columns(self) -> tuple[str, ...]:
        """The columns :meth:`scan` reads from a table: all but the media (their bytes are
        checked when a block is read)."""
        return tuple(c for c in self.columns if c not in (self.image_field, self.video_field)) + tuple(
            c for c in (self.image_field, self.video_field) if c in self.columns and self._is_path_column(c)
        )

    def _is_path_column(self, name: str) -> bool:
        import pyarrow as pa

        kind = self._table.schema.field(name).type
        return pa.types.is_string(kind) or pa.types.is_large_string(kind)

    def scan(self, rows: range | None = None) -> list[BadRow]:
        """The bad rows found without decoding media: no text and no media, an empty or
        placeholder-holding text, a missing image or frame file. Cheap: run it before a model loads.

        Args:
            rows: the rows to check (default all).
        """
        rows = range(self.num_rows) if rows is None else rows
        if self.kind == "images":
            return [
                BadRow(r, self.where(r), "the file is empty")
                for r in rows
                if os.path.getsize(os.path.join(self.path, self._files[r])) == 0
            ]
        columns = None if self.kind == "jsonl" else self._light_columns()
        unread = [c for c in (self.image_field, self.video_field) if columns is not None and c in self.columns]
        unread = [c for c in unread if c not in columns]
        bad = []
        for row, data in self._raw(rows, columns):
            for c in unread:  # media bytes: checked when the block is read
                data[c] = _UNREAD if c == self.image_field else [_UNREAD]
            try:
                self._check(data, decode=False)
            except FieldError as err:
                bad.append(BadRow(row, self.where(row), str(err)))
        return bad

    def read(self, rows: range) -> tuple[list[Row], list[BadRow]]:
        """Rows ``rows`` (contiguous) with their media decoded, and the bad ones apart.

        Returns:
            ``(good rows in row order, bad rows in row order)``.
        """
        good, bad = [], []
        for row, data in self._raw(rows):
            where = self.where(row)
            try:
                value = self._check(data, decode=True)
            except FieldError as err:
                bad.append(BadRow(row, where, str(err)))
                continue
            keep = {c: data.get(c) for c in self.keep_columns}
            good.append(Row(row, self._row_id(row, data), value, keep, where))
        return good, bad

    def _row_id(self, row: int, data: dict) -> str:
        if self.kind == "images":
            return data["path"]
        value = data.get(self.id_field)
        return str(row) if value is None else str(value)

    def _check(self, data: dict, decode: bool):
        """The model input of one row's fields (media decoded with ``decode``; else the
        media's presence and files only), or FieldError saying what is wrong."""
        if self.kind == "images":
            return {"text": None, "image": _decode_image(os.path.join(self.path, data["path"]), self.base_dir)}
        text = data.get(self.text_field)
        image = data.get(self.image_field)
        video = data.get(self.video_field)
        if text is not None and not isinstance(text, str):
            raise FieldError(f"field {self.text_field!r} must be a string, got {type(text).__name__}")
        if image is None and video is None:
            if text is None:
                raise FieldError(f"has no field {self.text_field!r} (and no image or video); fields: {sorted(data)}")
            if not text.strip():
                raise FieldError(f"field {self.text_field!r} is empty")
            check_plain_text(text)
            return text
        text = _media_text(text, IMAGE_TOKEN if image is not None else VIDEO_TOKEN)
        out = {"text": text, "image": None, "video": None}
        if image is not None:
            out["image"] = _decode_image(image, self.base_dir) if decode else _check_media(image, self.base_dir)
        if video is not None:
            if not isinstance(video, (list, tuple)) or not video:
                raise FieldError(f"field {self.video_field!r} must be a non-empty list of frames (paths or bytes)")
            if decode:
                out["video"] = [_decode_image(frame, self.base_dir) for frame in video]
            else:
                for frame in video:
                    _check_media(frame, self.base_dir)
            if data.get("fps") is not None:
                out["fps"] = float(data["fps"])
        return out if decode else text


def _media_text(text: str | None, token: str) -> str | None:
    """The text beside an image or video: the authors' placeholder, if the text holds one, taken
    out (:func:`~btok_model.datasets.rendering.strip_leading_placeholder`); blank text is None."""
    if text is None or not text.strip():
        return None
    legacy = LEGACY_TOKENS[token]
    if token in text or any(t in text for t in legacy):
        return strip_leading_placeholder(token_first(text, token, legacy), token)
    return text


def _media_path(value, base_dir: str) -> str | None:
    """The file a media value names (relative paths against ``base_dir``), or None for bytes."""
    if value is _UNREAD:
        return None
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return None
        value = value.get("path")
    if isinstance(value, str):
        if not value:
            raise FieldError("an image path is empty")
        return value if os.path.isabs(value) else os.path.join(base_dir, value)
    if isinstance(value, (bytes, bytearray)):
        return None
    raise FieldError(f"an image must be a path, bytes or a {{'bytes', 'path'}} struct, got {type(value).__name__}")


def _check_media(value, base_dir: str) -> None:
    path = _media_path(value, base_dir)
    if path is not None and not os.path.isfile(path):
        raise FieldError(f"image file {path!r} does not exist")


def _decode_image(value, base_dir: str):
    """A media value as an RGB ``PIL.Image``, or FieldError naming the file and why."""
    from PIL import Image, UnidentifiedImageError

    path = _media_path(value, base_dir)
    source = path if path is not None else io.BytesIO(value["bytes"] if isinstance(value, dict) else value)
    try:
        with Image.open(source) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise FieldError(f"image file {path!r} does not exist") from None
    except (UnidentifiedImageError, OSError, ValueError) as err:
        what = f"image file {path!r}" if path is not None else "the image bytes"
        raise FieldError(f"cannot decode {what} ({err})") from None


def _image_files(folder: str) -> list[str]:
    """Image files under ``folder`` (by extension, any depth), relative paths, sorted."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in files:
            if name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(os.path.relpath(os.path.join(root, name), folder))
    return sorted(found)


def source_kind(path: str) -> str:
    """``"jsonl"``, ``"parquet"``, ``"lance"`` or ``"images"`` from the path, or DataError."""
    if os.path.isdir(path):
        if path.rstrip("/").endswith(".lance") or os.path.isdir(os.path.join(path, "_versions")):
            return "lance"
        return "images"
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file or folder")
    if path.endswith(".jsonl"):
        return "jsonl"
    if path.endswith(".parquet"):
        return "parquet"
    raise DataError(f"{path}: not a .jsonl or .parquet file, a .lance folder or a folder of images")


def open_rows(path: str | os.PathLike, **fields) -> RowReader:
    """Open a source (module docstring); ``fields`` are :class:`RowReader`'s keyword arguments.

    Raises:
        DataError: naming the path: missing, of an unknown kind, not valid JSON (file and line),
            without the text field, or an image folder without images.
    """
    path = os.fspath(path)
    kind = source_kind(path)
    reader = RowReader(path, kind, **fields)
    if kind == "images" and reader.num_rows == 0:
        raise DataError(f"{path}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in this folder")
    return reader
