"""An ``embed`` output as the extra candidates of a pool (``mine`` / ``evaluate --corpus-index``).

A pool is the candidates a command makes itself -- its *head*: ``P`` inputs (the distinct
positives) embedded by the encode engine -- followed by the output's rows, ``M`` more, whose
stored vectors are read from the Lance dataset and never re-embedded. An output row whose text
(the kept text column, ``embed --keep-columns text``) is already in the pool, or was met in an
earlier row, is left out, as ``--corpus`` leaves out a repeated line; an output that did not
keep its text column adds every row (a row equal to a positive then ties with it).

**Exact** (the default): the pool is one candidate set of ``P + M`` rows cut into the same row
blocks as a ``--corpus`` pool, and each rank holds the blocks the engine would give it (head
rows embedded, output rows read, :meth:`IndexPool.shard`). The blocked scorer then counts and
ranks it as it does a ``--corpus`` pool of the same rows: the same results, one process or many.

**ANN** (``ann=True``): the head is scored exactly as before; the output adds each query's
``candidates`` best rows from its ANN index (:meth:`~btok_model.inference.index.Index.search`),
so counts and top lists over the output's rows are approximate, and reported so
(:meth:`IndexPool.describe`). Under ``torchrun`` each rank searches a contiguous slice of the
queries and the slices are combined (every rank gets every query's hits).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ..datasets.jsonl import DataError
from ..embedder.encode import EncodedShard, rank_and_world, row_blocks, shard_blocks
from . import distributed
from .index import Index
from .scoring import TopK

__all__ = ["IndexPool", "PoolOptions", "open_pool_index", "require_texts", "row_texts"]


@dataclass
class PoolOptions:
    """How to use an ``embed`` output as extra candidates.

    Attributes:
        path: the ``*.lance`` output.
        ann: search its ANN index instead of scoring every row.
        candidates: ANN: rows taken from the index per query (>= 1).
        nprobes, refine_factor: ANN: as :meth:`~btok_model.inference.index.Index.search`.
    """

    path: str
    ann: bool = False
    candidates: int = 100
    nprobes: int | None = 20
    refine_factor: int | None = 10

    def check(self, least: int = 1, name: str = "candidates") -> None:
        """Raise ``ValueError`` for a bad option; ``least``: the fewest ``candidates`` the caller
        can use (called ``name`` in the message: the flag)."""
        if isinstance(self.candidates, bool) or not isinstance(self.candidates, int) or self.candidates < least:
            raise ValueError(f"{name} must be an int >= {least}, got {self.candidates!r}")
        for key in ("nprobes", "refine_factor"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{key} must be an int >= 1 or None, got {value!r}")


def open_pool_index(options: PoolOptions) -> Index:
    """The output ``options.path`` names, opened and checked before a model loads.

    Raises:
        DataError: not an ``embed`` output, one that is not finished, a MaxSim-only layout, or
            ``ann`` asked of an output without an ANN index.
    """
    index = Index(options.path)
    if not index.summary:
        raise DataError(
            f"{options.path}: the embed run that writes it has not finished (no summary); rerun it to complete"
        )
    if options.ann and index.index_type is None:
        raise DataError(
            f"{options.path} has no ANN index for --ann: build one with python -m btok_model.embed ... --index "
            "(rerunning the finished command adds it), or leave out --ann to score every row exactly"
        )
    return index


def _text_column(index: Index) -> str | None:
    """The kept column holding the rows' texts, or None: not kept, or rows may carry media."""
    fields = index.settings.get("fields") or {}
    if index.settings.get("source_kind") == "images":
        return None
    if any(fields.get(k) in index.columns for k in ("image", "video")):
        return None
    name = fields.get("text", "text")
    return name if name in index.columns else None


def row_texts(index: Index) -> list | None:
    """The output's rows as text inputs, in dataset order (its kept text column), or None where
    they cannot be: the text column was not kept, or rows may carry an image or video."""
    name = _text_column(index)
    return None if name is None else index.column(name)


def require_texts(index: Index) -> None:
    """Refuse an output whose rows cannot be written back as texts (mining writes them).

    Raises:
        DataError: naming the output and the flag that keeps the text column.
    """
    if _text_column(index) is None:
        field = (index.settings.get("fields") or {}).get("text", "text")
        raise DataError(
            f"{index.path}: mined negatives are written as texts, and this output keeps no text column of "
            f"text-only rows; embed the corpus with --keep-columns {field}"
        )


class IndexPool:
    """A pool's head followed by an ``embed`` output's rows (module docstring).

    Args:
        index: from :func:`open_pool_index`.
        options: the same :class:`PoolOptions`.
        head_keys: ``{input_key: pool index}`` of the head's ``P`` inputs
            (:func:`~btok_model.evaluation.task_files.input_key`; indices ``0 .. P - 1``).
        need_texts: the caller writes the candidates out (mining): refuse an output whose rows
            are not texts.

    Attributes:
        head: P.
        positions: the dataset positions of the output rows in the pool (pool index
            ``head + j`` is ``positions[j]``).
        num_rows: ``P + M``.
        keys: ``head_keys`` with the output rows' keys added (when their texts are known).
        texts: the output rows' texts in pool order, or None.

    Raises:
        DataError: ``need_texts`` and the output kept no text column (or holds media rows).
    """

    def __init__(self, index: Index, options: PoolOptions, head_keys: dict, *, need_texts: bool = False):
        self.index, self.options = index, options
        self.head = len(head_keys)
        if need_texts:
            require_texts(index)
        texts = row_texts(index)
        self.keys = dict(head_keys)
        if texts is None:
            self.positions = np.arange(index.num_rows, dtype=np.int64)
            self.texts = None
        else:
            kept = []
            for position, text in enumerate(texts):
                key = (text, None)
                if key not in self.keys:
                    self.keys[key] = self.head + len(kept)
                    kept.append(position)
            self.positions = np.asarray(kept, dtype=np.int64)
            self.texts = [texts[p] for p in kept]
        self.num_rows = self.head + len(self.positions)
        # source row number -> pool index, for the ANN hits (which name source rows)
        source_rows = np.asarray(index.column("row"), dtype=np.int64)[self.positions]
        self._order = np.argsort(source_rows, kind="stable")
        self._sorted_rows = source_rows[self._order]

    def check_model(self, model) -> None:
        """:meth:`~btok_model.inference.index.Index.check_embedder` (a ``DataError`` naming both)."""
        self.index.check_embedder(model)

    def describe(self) -> dict:
        """What the pool took from the output, for the outputs' JSON: path, rows, how searched."""
        out = {
            "path": self.index.path,
            "rows": len(self.positions),
            "output_rows": self.index.num_rows,
            "search": self.index.index_type if self.options.ann else "exact",
            "approximate": self.options.ann,
        }
        if self.options.ann:
            out.update(
                candidates=self.options.candidates,
                nprobes=self.options.nprobes,
                refine_factor=self.options.refine_factor,
            )
        return out

    def shard(self, encode_head: Callable[[int, int], torch.Tensor], block_size: int, *, shard: bool) -> EncodedShard:
        """This rank's rows of the whole pool (exact search), on the ``block_size`` grid.

        Args:
            encode_head: ``(lo, hi) -> fp32 [hi - lo, H]``, the head's rows ``lo .. hi - 1``
                embedded (no collective; ``lo`` is a multiple of ``block_size``).
            block_size: rows per block, the unit each rank takes (as the engine cuts them).
            shard: take this rank's blocks under ``torch.distributed``; False: every block.
        """
        rank, world = rank_and_world() if shard else (0, 1)
        blocks = row_blocks(self.num_rows, block_size)
        run = shard_blocks(len(blocks), rank, world)
        start = blocks[run.start].start if len(run) else self.num_rows
        stop = blocks[run.stop - 1].stop if len(run) else self.num_rows
        parts = []
        if start < min(stop, self.head):
            parts.append(encode_head(start, min(stop, self.head)))
        if stop > max(start, self.head):
            parts.append(self.index.take_vectors(self.positions[max(start, self.head) - self.head : stop - self.head]))
        local = torch.cat(parts) if parts else torch.empty(0, self.index.dim, dtype=torch.float32)
        return EncodedShard(local, start, stop, self.num_rows, block_size)

    def ann(self, queries: torch.Tensor, *, shard: bool) -> TopK:
        """Each query's ``options.candidates`` best output rows by the ANN index, as pool indices.

        Args:
            queries: fp32 ``[Q, H]`` L2-normalised, every query (on every rank).
            shard: each rank searches a contiguous slice of the queries, then every rank gets
                all (a collective); False: this process searches them all.

        Returns:
            :class:`~btok_model.inference.scoring.TopK` ``[Q, candidates]`` on the CPU, best
            first by the index's (re-ranked) cosine; a hit left out of the pool (its text already
            in it) is ``-inf`` / ``-1``.
        """
        rank, world = rank_and_world() if shard else (0, 1)
        q, k = queries.shape[0], self.options.candidates
        lo, hi = q * rank // world, q * (rank + 1) // world
        values = torch.full((q, k), -math.inf)
        indices = torch.full((q, k), -1, dtype=torch.long)
        if hi > lo:
            hits = self.index.search(
                queries[lo:hi].float().cpu(),
                k,
                nprobes=self.options.nprobes,
                refine_factor=self.options.refine_factor,
            )
            pool = self._pool_indices(hits.rows)
            values[lo:hi] = torch.where(pool >= 0, hits.scores, torch.full_like(hits.scores, -math.inf))
            indices[lo:hi] = pool
        if shard and distributed.is_distributed():  # disjoint slices: -inf / -1 elsewhere
            values, indices = distributed.all_reduce(values, "max"), distributed.all_reduce(indices, "max")
        return TopK(values, indices)

    def _pool_indices(self, rows: torch.Tensor) -> torch.Tensor:
        """long like ``rows`` (source row numbers, ``-1`` none): their pool indices, ``-1`` for
        a row not in the pool."""
        flat = rows.reshape(-1).numpy()
        at = np.searchsorted(self._sorted_rows, flat).clip(0, max(len(self._sorted_rows) - 1, 0))
        found = (flat >= 0) & (len(self._sorted_rows) > 0)
        if len(self._sorted_rows):
            found &= self._sorted_rows[at] == flat
        pool = np.where(found, self.head + self._order[at] if len(self._order) else -1, -1)
        return torch.from_numpy(pool.astype(np.int64)).reshape(rows.shape)
