"""Lance tables: the format of the authors' training-data repack and of MMEB-V2 (``pip install btok[lance]``,
which installs ``pylance``). The one module that reads Lance.

:func:`open_lance` opens a table with errors that name it; :class:`LanceTable` reads a table
row block by row block (small columns whole, media columns only for the rows asked for, so
MMEB-V2's images are decoded a block at a time); :class:`LanceImageTable` is an image side
table (columns ``path`` and ``image``, the file's bytes) read by path: only the ``path``
column is held in memory, an image's bytes are read when it is asked for.
"""

from __future__ import annotations

import os

from .jsonl import DataError

__all__ = ["LanceImageTable", "LanceTable", "lance_rows_where", "open_lance"]


def open_lance(path: str | os.PathLike, columns: tuple[str, ...] = ()):
    """The Lance dataset at ``path`` (a ``*.lance`` folder), checked to hold ``columns``.

    Raises:
        ImportError: ``pylance`` is not installed (says how to install it).
        DataError: ``path`` is not a folder, is not a Lance table, or lacks a column.
    """
    try:
        import lance
    except ImportError as err:
        raise ImportError(
            f"{path}: reading Lance tables needs pylance: pip install 'btok[lance]' (or pip install pylance)"
        ) from err
    if not os.path.isdir(path):
        raise DataError(f"{path}: no such Lance table (a *.lance folder)")
    try:
        table = lance.dataset(path)
    except Exception as err:  # lance raises its own error types (OSError, ValueError, ...) for a bad folder
        raise DataError(f"{path}: not a readable Lance table ({err})") from err
    missing = [c for c in columns if c not in table.schema.names]
    if missing:
        raise DataError(f"{path}: no column(s) {missing}; the table has {table.schema.names}")
    return table


class LanceTable:
    """One Lance table, opened without reading it; columns and rows read on demand.

    Args:
        path: the ``*.lance`` folder.

    Raises:
        ImportError: ``pylance`` is not installed.
        DataError: ``path`` is not a folder or not a readable Lance table.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._table = open_lance(self.path)
        self.num_rows = self._table.count_rows()
        self.columns = tuple(self._table.schema.names)

    def require(self, columns: tuple[str, ...] | list[str], purpose: str) -> None:
        """Raise DataError naming the table and the columns it lacks for ``purpose``."""
        missing = [c for c in columns if c not in self.columns]
        if missing:
            raise DataError(
                f"{self.path}: no column(s) {', '.join(missing)} ({purpose}); its columns: {', '.join(self.columns)}"
            )

    def column(self, name: str) -> list:
        """Every value of one column, in row order."""
        self.require([name], "asked for")
        return self._table.to_table(columns=[name]).column(name).to_pylist()

    def rows(self, indices: list[int], columns: tuple[str, ...] | list[str]) -> list[dict]:
        """The rows at ``indices`` (in that order), with only ``columns``."""
        self.require(columns, "asked for")
        if not indices:
            return []
        return self._table.take(list(indices), columns=list(columns)).to_pylist()


def lance_rows_where(table, condition: str) -> list[int]:
    """The row numbers (0-based, in the table's order) of ``table``'s rows that satisfy the SQL
    ``condition`` (e.g. ``"image IS NULL"``), read without the other columns' data.

    A row address is (fragment id, offset in the fragment); the row number adds the rows of
    the fragments before it (deleted rows counted, as they were written).
    """
    starts, total = {}, 0
    for fragment in table.get_fragments():
        starts[fragment.fragment_id] = total
        total += fragment.physical_rows
    found = table.to_table(columns=[], filter=condition, with_row_address=True).column("_rowaddr").to_pylist()
    return sorted(starts[address >> 32] + (address & 0xFFFFFFFF) for address in found)


class LanceImageTable:
    """An image side table: ``path`` (string, the key rows refer to) and ``image`` (the file's bytes).

    Args:
        path: the ``*.lance`` folder.

    Raises:
        DataError: the table is missing, lacks a column, or holds a path twice.
    """

    def __init__(self, path: str):
        self.path = path
        self._table = open_lance(path, ("path", "image"))
        keys = self._table.to_table(columns=["path"]).column("path").to_pylist()
        self._offsets: dict[str, int] = {}
        for offset, key in enumerate(keys):
            if key in self._offsets:
                raise DataError(f"{path}: path {key!r} is in the table twice (rows {self._offsets[key]} and {offset})")
            self._offsets[key] = offset

    def __contains__(self, key: str) -> bool:
        return key in self._offsets

    def __len__(self) -> int:
        return len(self._offsets)

    def read(self, key: str) -> bytes:
        """The bytes stored for ``key``.

        Raises:
            KeyError: ``key`` is not in the table.
        """
        row = self._table.take([self._offsets[key]], columns=["image"]).column("image")[0].as_py()
        if not isinstance(row, (bytes, bytearray)):
            raise DataError(f"{self.path}: the image of path {key!r} is {type(row).__name__}, not bytes")
        return bytes(row)
