"""Read Lance tables row block by row block (``pylance``, the optional ``[lance]`` extra).

MMEB-V2 keeps images and video frames as bytes inside its tables; :class:`LanceTable` opens
a table without reading it, reads the small columns (ids, texts) whole and the media columns
only for the rows asked for, so a dataset's images are decoded a block at a time.
"""

from __future__ import annotations

import os

__all__ = ["LanceTable", "import_lance"]


def import_lance():
    """The ``lance`` module, or an ImportError saying how to install it."""
    try:
        import lance
    except ImportError as err:
        raise ImportError(
            "reading MMEB-V2 needs the Lance reader: pip install 'btok[lance]' (or pip install pylance)"
        ) from err
    return lance


class LanceTable:
    """One Lance table, opened lazily.

    Args:
        path: the ``*.lance`` folder.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: ``path`` is not a readable Lance table.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        if not os.path.isdir(self.path):
            raise FileNotFoundError(f"{self.path}: no such Lance table")
        lance = import_lance()
        try:
            self._dataset = lance.dataset(self.path)
            self.num_rows = self._dataset.count_rows()
        except Exception as err:  # lance raises its own error types for a damaged folder
            raise ValueError(f"{self.path}: not a readable Lance table ({err})") from err
        self.columns = tuple(self._dataset.schema.names)

    def require(self, columns: tuple[str, ...] | list[str], purpose: str) -> None:
        """Raise ValueError naming the table and the columns it lacks for ``purpose``."""
        missing = [c for c in columns if c not in self.columns]
        if missing:
            raise ValueError(
                f"{self.path}: no column(s) {', '.join(missing)} ({purpose}); its columns: {', '.join(self.columns)}"
            )

    def column(self, name: str) -> list:
        """Every value of one column, in row order."""
        self.require([name], "asked for")
        return self._dataset.to_table(columns=[name]).column(name).to_pylist()

    def rows(self, indices: list[int], columns: tuple[str, ...] | list[str]) -> list[dict]:
        """The rows at ``indices`` (in that order), with only ``columns``."""
        self.require(columns, "asked for")
        if not indices:
            return []
        return self._dataset.take(list(indices), columns=list(columns)).to_pylist()
