"""Each query's best candidates over a corpus scored block by block, ties to the lower index.

:class:`RunningTopK` keeps, per query row, the ``k`` best ``(score, candidate index)`` pairs
seen so far. Candidate blocks are fed in index order (a query row never sees an index lower
than one it has already seen), so the result is the top ``k`` of the whole score row whatever
the block sizes: equal scores go to the lower candidate index, so the order is a function of
the scores alone. Only the ``[rows, k]`` state and one ``[rows, block]`` score block exist at a
time; the full ``[queries, candidates]`` matrix never does.
"""

from __future__ import annotations

import math

import torch

__all__ = ["RunningTopK"]


class RunningTopK:
    """The ``k`` best candidates of every query row, accumulated over candidate blocks.

    Args:
        num_rows: query rows.
        k: candidates kept per row (0: nothing is kept, updates only check their input).
        device: where the state lives (the device the score blocks are computed on).

    Attributes:
        values: fp32 ``[num_rows, k]``, scores in descending order; ``-inf`` where fewer than
            ``k`` candidates with a finite score were seen.
        indices: long ``[num_rows, k]``, their candidate indices (equal scores: ascending
            index); ``-1`` where ``values`` is ``-inf``.
    """

    def __init__(self, num_rows: int, k: int, device: torch.device | str | None = None):
        if num_rows < 0 or k < 0:
            raise ValueError(f"num_rows and k must be >= 0, got {num_rows} and {k}")
        self.k = k
        self.values = torch.full((num_rows, k), -math.inf, dtype=torch.float32, device=device)
        self.indices = torch.full((num_rows, k), -1, dtype=torch.long, device=device)

    def update(self, rows: slice, scores: torch.Tensor, offset: int) -> None:
        """Merge one block of scores into rows ``rows``.

        Args:
            rows: the query rows the block belongs to (a slice of ``range(num_rows)``).
            scores: fp32 ``[len(rows), C]``, the rows' scores against candidates ``offset`` ..
                ``offset + C - 1``; ``-inf`` marks a candidate that may not be kept. NaN is
                refused.
            offset: the index of the block's first candidate; it must be above every index the
                rows already hold (blocks come in index order).
        """
        values, indices = self.values[rows], self.indices[rows]
        if scores.dim() != 2 or scores.shape[0] != values.shape[0]:
            raise ValueError(f"scores must be [{values.shape[0]} rows, candidates], got shape {tuple(scores.shape)}")
        if torch.isnan(scores).any():
            raise ValueError("scores contain NaN: the embeddings produced invalid values")
        if self.k == 0 or scores.shape[1] == 0:
            return
        if indices.numel() and int(indices.max()) >= offset:
            raise ValueError(f"candidate blocks must come in index order: offset {offset} after {int(indices.max())}")
        block = torch.arange(offset, offset + scores.shape[1], device=indices.device).expand(scores.shape[0], -1)
        # Columns: the held entries (score descending, ties by ascending index, all below the
        # block's indices), then the block's in index order; so among equal scores the column
        # order is the index order, and taking tied columns left to right breaks ties by index.
        merged = torch.cat([values, scores.to(values.dtype)], dim=1)
        merged_index = torch.cat([indices, block], dim=1)
        kth = merged.topk(self.k, dim=1).values[:, -1:]  # [rows, 1]
        above = merged > kth
        tied = merged == kth
        take = above | (tied & (tied.cumsum(1) <= self.k - above.sum(1, keepdim=True)))  # exactly k per row
        columns = take.nonzero()[:, 1].view(-1, self.k)  # ascending within each row
        picked, picked_index = merged.gather(1, columns), merged_index.gather(1, columns)
        order = picked.sort(dim=1, descending=True, stable=True).indices
        picked, picked_index = picked.gather(1, order), picked_index.gather(1, order)
        self.values[rows] = picked
        self.indices[rows] = torch.where(picked == -math.inf, torch.full_like(picked_index, -1), picked_index)
