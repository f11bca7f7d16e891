"""JSONL records with errors that point at the file and line.

Every data file btok reads (training pairs, evaluation pairs and candidate lists, extra
corpora) is JSONL: one JSON object per line, blank lines ignored. A problem is reported as a
:class:`DataError` whose message starts with ``FILE:LINE:`` and says what is wrong, so a bad
line in a million-line file is found at once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["DataError", "Record", "read_jsonl", "write_jsonl"]


class DataError(ValueError):
    """A data file is malformed. The message starts with ``FILE:LINE:``."""


@dataclass(frozen=True)
class Record:
    """One JSON object of a JSONL file, with where it came from (for error messages)."""

    data: dict
    path: str
    line: int

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"

    @property
    def base_dir(self) -> str:
        """The directory relative paths in this record (images) are resolved against."""
        return os.path.dirname(os.path.abspath(self.path))

    def error(self, message: str) -> DataError:
        return DataError(f"{self.where}: {message}")

    def check_keys(self, allowed: set[str]) -> None:
        unknown = sorted(set(self.data) - allowed)
        if unknown:
            raise self.error(f"unknown field(s) {unknown}; allowed fields are {sorted(allowed)}")

    def text(self, key: str, required: bool = True) -> str | None:
        """Field ``key`` as a non-empty string (``None`` if absent and not required)."""
        if key not in self.data:
            if required:
                raise self.error(f"missing field {key!r} (fields present: {sorted(self.data)})")
            return None
        return self.check_text(self.data[key], f"field {key!r}")

    def check_text(self, value, name: str) -> str:
        """``value`` if it is a non-empty string; ``name`` says what it is in the error."""
        if not isinstance(value, str):
            raise self.error(f"{name} must be a string, got {type(value).__name__}")
        if not value.strip():
            raise self.error(f"{name} is empty")
        return value

    def text_list(self, key: str, required: bool = False) -> list[str] | None:
        """Field ``key`` as a list of non-empty strings (``None`` if absent and not required)."""
        if key not in self.data:
            if required:
                raise self.error(f"missing field {key!r} (fields present: {sorted(self.data)})")
            return None
        value = self.data[key]
        if not isinstance(value, list):
            raise self.error(f"field {key!r} must be a list of strings, got {type(value).__name__}")
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise self.error(f"{key}[{i}] must be a string, got {type(item).__name__}")
            if not item.strip():
                raise self.error(f"{key}[{i}] is empty")
        return value

    def image(self, key: str) -> str | None:
        """Field ``key`` as an image path resolved against the file's directory; it must exist."""
        if self.data.get(key) is None:
            return None
        return self.check_image(self.data[key], f"field {key!r}")

    def check_image(self, value, name: str) -> str:
        """``value`` as an existing image path (relative ones resolved against the file's directory)."""
        if not isinstance(value, str) or not value:
            raise self.error(f"{name} must be a non-empty path string, got {value!r}")
        path = value if os.path.isabs(value) else os.path.join(self.base_dir, value)
        if not os.path.isfile(path):
            raise self.error(f"{name}: image file {value!r} does not exist (looked for {path})")
        return path


def read_jsonl(path: str | os.PathLike) -> Iterator[Record]:
    """Yield one :class:`Record` per non-blank line of ``path``.

    Raises:
        DataError: the file is missing, a line is not valid JSON, or a line is not an object.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such file")
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{line_no}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(data, dict):
                raise DataError(f"{path}:{line_no}: expected a JSON object, got {type(data).__name__}")
            yield Record(data, path, line_no)


def write_jsonl(path: str | os.PathLike, rows) -> None:
    """Write ``rows`` (JSON-serialisable dicts) to ``path``, one per line."""
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
