"""A table whose rows carry their image: the layout of the authors' visual-document training sets.

``vidore/colpali_train_set`` and ``openbmb/VisRAG-Ret-Train-In-domain-data`` are Hugging Face
parquet datasets whose rows hold their page image in an ``image`` column
(``struct{bytes: binary, path: string}``, the ``datasets`` Image feature). The authors' Lance
repack (their ``convert_vidore_train_to_lance.py`` / ``convert_visrag_train_to_lance.py``)
copies those rows unchanged into one table. Both layouts read to the same rows::

    ROOT/data/train.lance                     the authors' repack (pip install btok[lance])
    ROOT/data/train-*.parquet                 the Hugging Face download (pip install btok[mmeb]);
      or ROOT/train-*.parquet, ROOT/train.parquet   as their converter looks for them, in this order

Opening a table reads its text columns and checks, without reading image bytes, that every
row has an image (parquet: the column statistics of each row group; Lance: a filtered scan):
a row without one fails before training, as a :class:`~btok_model.datasets.DataError` naming
the file, row and field. Images are decoded to RGB ``PIL.Image`` when a row is taken. The
parquet layout must read a whole row group's images to take one (the last group read is
kept): fine for small runs, slow for random access over a large set; the Lance layout reads
one row.
"""

from __future__ import annotations

import bisect
import glob
import io
import os
from collections.abc import Sequence

from .jsonl import DataError
from .lance_tables import lance_rows_where, open_lance
from .rendering import FieldError

__all__ = ["ImageRowExamples", "ImageRowTable", "find_image_rows", "table_columns"]

IMAGE_COLUMN = "image"


def _parquet_files(root: str) -> list[str]:
    for pattern in (os.path.join("data", "train-*.parquet"), "train-*.parquet"):
        files = sorted(glob.glob(os.path.join(glob.escape(root), pattern)))
        if files:
            return files
    single = os.path.join(root, "train.parquet")
    return [single] if os.path.isfile(single) else []


def _lance_path(root: str) -> str:
    return os.path.join(root, "data", "train.lance")


def find_image_rows(root: str) -> tuple[str, list[str]] | None:
    """``("parquet" | "lance", files)`` of the table under ``root``; None when neither layout is there.

    Raises:
        DataError: both layouts are there (one root, one layout).
    """
    parquet, lance = _parquet_files(root), _lance_path(root)
    if parquet and os.path.isdir(lance):
        raise DataError(f"{root}: holds both parquet files ({parquet[0]}, ...) and a Lance table ({lance}); keep one")
    if parquet:
        return "parquet", parquet
    return ("lance", [lance]) if os.path.isdir(lance) else None


def table_columns(root: str) -> list[str]:
    """The column names of the table under ``root`` (read from its schema only).

    Raises:
        DataError: no table, or one that cannot be read.
    """
    found = find_image_rows(root)
    if found is None:
        raise DataError(f"{root}: no table of rows with images: expected {layouts_read(root)}")
    layout, files = found
    if layout == "lance":
        return list(open_lance(files[0]).schema.names)
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return list(pq.read_schema(files[0]).names)
    except (OSError, pa.ArrowException) as err:
        raise DataError(f"{files[0]}: not a readable parquet file ({err})") from err


def layouts_read(root: str) -> str:
    """The paths :func:`find_image_rows` looks for under ``root`` (for messages)."""
    return f"{_lance_path(root)} or {os.path.join(root, 'data', 'train-*.parquet')}"


class ImageRowTable:
    """The rows of one table with an ``image`` column (see the module docstring).

    Args:
        root: the dataset's folder (either layout).
        text: columns every row must have as strings (null is read as ``""``).
        optional: columns read when the table has them (any type; None when absent).

    Attributes:
        layout (``"parquet"`` or ``"lance"``), files, columns (``{name: list of values}``).

    Raises:
        DataError: no table under ``root``, a missing column, a text column that does not hold
            strings, or a row without image bytes (naming file, row and field).
    """

    def __init__(self, root: str, text: Sequence[str], optional: Sequence[str] = ()):
        found = find_image_rows(root)
        if found is None:
            raise DataError(f"{root}: no table of rows with images: expected {layouts_read(root)}")
        self.layout, self.files = found
        self.columns: dict[str, list] = {name: [] for name in (*text, *optional)}
        self._starts = [0]  # each file's first row in the table
        self._groups: list[list[int]] = []  # parquet: each file's row group starts
        self._lance = None  # the Lance table, opened once
        for path in self.files:
            n = self._read_file(path, list(text), list(optional))
            self._starts.append(self._starts[-1] + n)
        if not self._starts[-1]:
            raise DataError(f"{', '.join(self.files)}: no rows")
        self._cached: tuple[tuple[int, int], list] | None = None

    def _read_file(self, path: str, text: list[str], optional: list[str]) -> int:
        """Read one file's columns into :attr:`columns` and check its images; returns its row count."""
        import pyarrow as pa

        if self.layout == "parquet":
            import pyarrow.parquet as pq

            try:
                file = pq.ParquetFile(path)
            except (OSError, pa.ArrowException) as err:
                raise DataError(f"{path}: not a readable parquet file ({err})") from err
            schema = file.schema_arrow
        else:
            table = self._lance = open_lance(path)
            schema = table.schema
        names = set(schema.names)
        missing = [c for c in (*text, IMAGE_COLUMN) if c not in names]
        if missing:
            raise DataError(f"{path}: missing field(s) {missing} (fields present: {schema.names})")
        kind = schema.field(IMAGE_COLUMN).type
        if not (pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0):
            raise DataError(f"{path}: field {IMAGE_COLUMN!r} must be a struct with 'bytes' (and 'path'), it is {kind}")
        for name in text:
            kind = schema.field(name).type
            if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)):
                raise DataError(f"{path}: field {name!r} must hold strings, it holds {kind}")
        read = [c for c in (*text, *optional) if c in names]
        if self.layout == "parquet":
            rows = file.read(columns=read)
            self._groups.append(self._check_parquet_images(file, path))
        else:
            rows = table.to_table(columns=read)
            bad = lance_rows_where(table, f"{IMAGE_COLUMN} IS NULL OR {IMAGE_COLUMN}.bytes IS NULL")
            if bad:
                raise DataError(f"{path}: row {bad[0]}, field {IMAGE_COLUMN!r}: no image bytes")
        for name in text:
            self.columns[name] += [v if v is not None else "" for v in rows.column(name).to_pylist()]
        for name in optional:
            values = rows.column(name).to_pylist() if name in names else [None] * rows.num_rows
            self.columns[name] += values
        return rows.num_rows

    @staticmethod
    def _check_parquet_images(file, path: str) -> list[int]:
        """Each row group's first row; raises for a row without image bytes (found from the
        column statistics, so only a row group holding one is read)."""
        meta = file.metadata
        leaf = next(
            j for j in range(meta.num_columns) if meta.schema.column(j).path == f"{IMAGE_COLUMN}.bytes"
        )  # the struct's null rows are null here too
        starts, start = [], 0
        for g in range(meta.num_row_groups):
            starts.append(start)
            stats = meta.row_group(g).column(leaf).statistics
            if stats is None or not stats.has_null_count or stats.null_count:
                column = file.read_row_group(g, columns=[IMAGE_COLUMN]).column(IMAGE_COLUMN)
                for row, value in enumerate(column.to_pylist()):
                    if value is None or value.get("bytes") is None:
                        raise DataError(f"{path}: row {start + row}, field {IMAGE_COLUMN!r}: no image bytes")
            start += meta.row_group(g).num_rows
        return starts

    def __len__(self) -> int:
        return self._starts[-1]

    def _locate(self, i: int) -> tuple[int, int]:
        f = bisect.bisect_right(self._starts, i) - 1
        return f, i - self._starts[f]

    def where(self, i: int) -> str:
        """``FILE: row N`` of row ``i`` (for messages)."""
        f, row = self._locate(i)
        return f"{self.files[f]}: row {row}"

    def image_bytes(self, i: int) -> bytes:
        """The stored bytes of row ``i``'s image."""
        f, row = self._locate(i)
        if self.layout == "lance":
            return self._lance.take([row], columns=[IMAGE_COLUMN]).column(IMAGE_COLUMN)[0].as_py()["bytes"]
        import pyarrow.parquet as pq

        group = bisect.bisect_right(self._groups[f], row) - 1
        if self._cached is None or self._cached[0] != (f, group):
            column = pq.ParquetFile(self.files[f]).read_row_group(group, columns=[IMAGE_COLUMN]).column(IMAGE_COLUMN)
            self._cached = ((f, group), column)
        return self._cached[1][row - self._groups[f][group]].as_py()["bytes"]

    def image(self, i: int):
        """Row ``i``'s image as an RGB ``PIL.Image``.

        Raises:
            DataError: the bytes are not an image (naming file, row and field).
        """
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(io.BytesIO(self.image_bytes(i))) as image:
                return image.convert("RGB")
        except (UnidentifiedImageError, OSError) as err:
            raise DataError(f"{self.where(i)}, field {IMAGE_COLUMN!r}: the image cannot be decoded ({err})") from None


class ImageRowExamples(Sequence):
    """Training examples of an :class:`ImageRowTable`: one side has the row's image, the
    other is text, there is no negative. Every row is rendered (and checked) when opened.

    Subclasses set :attr:`image_side` (``"query"`` or ``"positive"``), :attr:`text_columns`,
    :attr:`optional_columns` and :meth:`render`.

    Args:
        root: the dataset's folder (either layout).

    Attributes:
        root, table (the :class:`ImageRowTable`), layout, files.

    Raises:
        DataError: a missing table or a bad row (naming file, row and field).
    """

    image_side = "query"
    text_columns: tuple[str, ...] = ()
    optional_columns: tuple[str, ...] = ()

    def __init__(self, root: str | os.PathLike):
        import pyarrow as pa

        self.root = os.fspath(root)
        self.table = ImageRowTable(self.root, self.text_columns, self.optional_columns)
        self.layout, self.files = self.table.layout, self.table.files
        columns = self.table.columns
        names = list(columns)
        rendered = ([], [])
        for i, values in enumerate(zip(*columns.values())):
            row = dict(zip(names, values))
            try:
                pair = self.render(row)
            except FieldError as err:
                raise DataError(f"{self.table.where(i)}, field {err.field!r}: {err}") from None
            for out, text in zip(rendered, pair):
                out.append(text)
        self._texts = tuple(pa.array(out, type=pa.large_string()) for out in rendered)
        self.table.columns = {}  # rendered; the raw texts are not needed again

    def render(self, row: dict) -> tuple[str | None, str]:
        """``(text of the image side or None, text of the text side)`` of a raw row (the
        authors' rendering, the image placeholder taken out).

        Raises:
            FieldError: with ``field`` set to the raw column at fault.
        """
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.table)

    def where(self, i: int) -> str:
        """``FILE: row N`` of example ``i`` (for messages)."""
        return self.table.where(i)

    def __getitem__(self, i: int) -> dict:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if not -len(self) <= i < len(self):
            raise IndexError(f"example {i} of {self.root}, which has {len(self)}")
        i %= len(self)
        image_text, text = (column[i].as_py() for column in self._texts)
        # The authors keep these sides' ends as rendered (trailing_newline: preserve).
        image_input = {"text": image_text, "image": self.table.image(i), "trailing_newline": "preserve"}
        if self.image_side == "query":
            return {"query": image_input, "positive": text}
        return {"query": text, "positive": image_input}
