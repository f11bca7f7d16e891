"""Training rows that cannot be decoded: found when an example is read, replaced, reported.

:class:`~btok_model.training.mixed_dataset.MixedDataset` decodes an example's images when it
reads the example (in a data-loader worker when there are workers). A row whose image cannot be
decoded is replaced by another draw from the same source (a batch stays single-source), and the
replacement example carries the rows it replaces under :data:`BAD_ROWS_KEY` as
:class:`BadRow` records. The batch builder takes them off and hands them to the trainer with
the batch, and the trainer either counts and names them (``on_bad_row="skip"``) or stops the
run (``"error"``, :class:`BadRowError`) after a checkpoint, every rank told first.

Each rank appends every replacement to ``bad_rows.rank<R>.jsonl`` in the output folder as it
meets it (one flushed line each), so a crash loses none; :func:`read_bad_rows` sums the files.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from dataclasses import asdict, dataclass

from ..datasets.jsonl import DataError
from ..datasets.schema import FLAT_IMAGE_KEYS, NEGATIVES

__all__ = [
    "BAD_ROWS_KEY",
    "ON_BAD_ROW",
    "BadRow",
    "BadRowError",
    "BadRowLog",
    "decode_images",
    "read_bad_rows",
]

logger = logging.getLogger(__name__)

ON_BAD_ROW = ("skip", "error")
BAD_ROWS_KEY = "bad_rows"  # on an example read by MixedDataset: the rows it replaces


@dataclass(frozen=True)
class BadRow:
    """A training row that could not be decoded.

    Attributes:
        source: the source's name (an MMEB-train subset, a JSONL file as given).
        where: ``FILE: row N`` (``FILE:LINE`` for a JSONL file).
        error: what could not be decoded, and why.
    """

    source: str
    where: str
    error: str

    def __str__(self) -> str:
        return f"{self.where}: {self.error} (source {self.source})"


class BadRowError(DataError):
    """A row that cannot be decoded stopped the run (``on_bad_row="error"``).

    Attributes:
        rows: every rank's bad rows of the step that stopped.
        checkpoint: the checkpoint saved before stopping.
    """

    def __init__(self, rows: list[BadRow], checkpoint: str):
        more = f" and {len(rows) - 1} more row(s)" if len(rows) > 1 else ""
        super().__init__(
            f"{rows[0]}{more}: the run stopped at a row that cannot be decoded (--on-bad-row error) after saving "
            f"{checkpoint}; fix or remove the row and resume, or train with --on-bad-row skip to replace such rows"
        )
        self.rows, self.checkpoint = rows, checkpoint


def decode_images(example: dict, where: str) -> dict:
    """``example`` with every image given as a path opened as an RGB ``PIL.Image``.

    Args:
        example: a training example (``query_image`` / ``positive_image`` paths, or inputs
            ``{"text", "image"}`` on ``query``, ``positive`` and ``negatives``).
        where: the row, for messages (``FILE: row N``).

    Raises:
        ExampleError: an image that does not exist or cannot be decoded, naming ``where``,
            the field and the file.
    """
    from ..embedder.multimodal import load_image

    def opened(value, field: str):
        if isinstance(value, (str, os.PathLike)):
            return load_image(value, f"{where}, field {field!r}")
        return value

    out = dict(example)
    for field in FLAT_IMAGE_KEYS.values():
        if field in out:
            out[field] = opened(out[field], field)
    for field in FLAT_IMAGE_KEYS:  # the inputs: query, positive
        if isinstance(out.get(field), dict) and "image" in out[field]:
            out[field] = {**out[field], "image": opened(out[field]["image"], field)}
    if isinstance(out.get(NEGATIVES), list):
        out[NEGATIVES] = [
            {**n, "image": opened(n["image"], f"negatives[{k}]")} if isinstance(n, dict) and "image" in n else n
            for k, n in enumerate(out[NEGATIVES])
        ]
    return out


class BadRowLog:
    """One rank's record of the rows replaced: each replacement appended to ``path`` (one
    flushed JSON line), each row named once in the log.

    Args:
        path: the rank's ``bad_rows.rank<R>.jsonl`` (None: kept in memory only).
        announce: name each row in the log (off when the run stops at it and says so itself).
    """

    def __init__(self, path: str | None, announce: bool = True):
        self.path, self.announce = path, announce
        self.replaced = 0
        self.rows: list[BadRow] = []  # distinct, in the order met
        self._named: set[tuple[str, str]] = set()

    def add(self, rows: list[BadRow]) -> None:
        """Record ``rows`` (each one replacement)."""
        if not rows:
            return
        self.replaced += len(rows)
        if self.path is not None:
            os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
            with open(self.path, "a") as f:
                f.writelines(json.dumps(asdict(row)) + "\n" for row in rows)
                f.flush()
                os.fsync(f.fileno())
        for row in rows:
            if (row.where, row.error) not in self._named:
                self._named.add((row.where, row.error))
                self.rows.append(row)
                if self.announce:
                    logger.warning("bad row replaced by another draw from its source: %s", row)


def bad_rows_path(output_dir: str, rank: int) -> str:
    """Rank ``rank``'s record of replaced rows in ``output_dir``."""
    return os.path.join(output_dir, f"bad_rows.rank{rank}.jsonl")


def read_bad_rows(output_dir: str) -> dict:
    """The replaced rows every rank recorded in ``output_dir``: ``{"replaced": draws replaced,
    "rows": [distinct rows, as dicts]}`` (for a run's summary)."""
    replaced, rows, seen = 0, [], set()
    for path in sorted(glob.glob(os.path.join(output_dir, "bad_rows.rank*.jsonl"))):
        with open(path) as f:
            for line in f:
                if not line.strip():
                    continue  # a line cut by a crash while it was written
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                replaced += 1
                key = (row["where"], row["error"])
                if key not in seen:
                    seen.add(key)
                    rows.append(row)
    return {"replaced": replaced, "rows": rows}
