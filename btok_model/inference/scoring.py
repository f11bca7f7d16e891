"""The one blocked scorer: exact rank counts (evaluation) and exact top-k (search, mining).

Queries are scored against candidates a block at a time: ``query_block`` queries against
``candidate_block`` candidates, a ``[query_block, candidate_block]`` score block, never the
whole ``[queries, candidates]`` matrix. Scores are the similarity of
:mod:`btok_model.embedder.similarity`: dot products of L2-normalised vectors (cosine) or MaxSim
of K vectors.

Candidates may be **sharded**: each rank holds rows ``[start, stop)`` of the candidates (an
:class:`~btok_model.embedder.encode.EncodedShard`) and every rank holds all the queries. Each
rank scores the queries against its own rows, and the per-shard results combine exactly:

* rank counts add (how many candidates beat or tie a relevant one is a sum over shards); the
  relevant candidate's own score comes from the rank that holds it (an all-reduce max);
* top-k lists merge (the k best of the union of every shard's k best), ties going to the
  lower candidate index, so the result is a function of the scores alone, whatever the shards.

Candidate blocks lie on the global grid of multiples of ``candidate_block`` (cut where a shard
starts or stops), so one process and several compute their scores from the same blocks but at
shard edges.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from ..embedder.encode import EncodedShard
from ..embedder.similarity import check_similarity, similarity_scores
from . import distributed

__all__ = [
    "RankCounts",
    "RunningTopK",
    "TopK",
    "count_ranks",
    "merge_topk",
    "rank_counts",
    "score_blocks",
    "tie_counts",
    "topk",
]


# -- counting primitives ----------------------------------------------------------------------------


def tie_counts(scores: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """How many scores of each row lie strictly above, and exactly at, each of the row's targets.

    Args:
        scores: float ``[Nq, Nc]``, one row of candidate scores per query (``-inf`` may pad a
            row: it is below every finite target). NaN is refused.
        targets: float ``[Nq, R]`` of the same dtype, e.g. the scores of each query's relevant
            candidates (``+inf`` may pad: it counts nothing).

    Returns:
        ``(greater, equal)``: long ``[Nq, R]``. ``equal`` counts every score equal to the target,
        so a target taken from ``scores`` counts itself once.
    """
    if scores.dim() != 2 or targets.dim() != 2 or scores.shape[0] != targets.shape[0]:
        raise ValueError(
            f"scores must be [num_queries, num_candidates] and targets [num_queries, R] with the same number of "
            f"queries, got {tuple(scores.shape)} and {tuple(targets.shape)}"
        )
    if torch.isnan(scores).any() or torch.isnan(targets).any():
        raise ValueError("scores contain NaN: the embeddings or the scorer produced invalid values")
    ordered = scores.sort(dim=1).values
    targets = targets.to(ordered.dtype).contiguous()
    above = torch.searchsorted(ordered, targets, right=True)  # scores <= target
    below = torch.searchsorted(ordered, targets, right=False)  # scores < target
    return scores.shape[1] - above, above - below


def rank_counts(scores: torch.Tensor, positive_index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """How many candidates beat and tie each query's positive (one dense score matrix).

    Args:
        scores: float ``[Nq, Nc]``, higher is better. NaN is refused.
        positive_index: long ``[Nq]``, the column of each query's single relevant candidate.

    Returns:
        ``(greater, equal)``: long ``[Nq]`` each -- candidates scoring strictly higher than the
        positive, and other candidates scoring exactly the same.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be [num_queries, num_candidates], got shape {tuple(scores.shape)}")
    positive_index = torch.as_tensor(positive_index, dtype=torch.long, device=scores.device)
    if positive_index.shape != (scores.shape[0],):
        raise ValueError(
            f"positive_index must have one entry per query ({scores.shape[0]}), got shape {tuple(positive_index.shape)}"
        )
    if scores.shape[0] and (positive_index.min() < 0 or positive_index.max() >= scores.shape[1]):
        raise ValueError(f"positive_index must lie in [0, {scores.shape[1]}), got {positive_index.tolist()[:8]}...")
    if torch.isnan(scores).any():
        raise ValueError("scores contain NaN: the embeddings or the scorer produced invalid values")
    positive = scores.gather(1, positive_index[:, None])
    greater = (scores > positive).sum(1)
    equal = (scores == positive).sum(1) - 1  # the positive ties with itself
    return greater, equal


# -- candidates, whole or sharded -------------------------------------------------------------------


def _as_shard(candidates: torch.Tensor | EncodedShard) -> EncodedShard:
    """A whole candidate tensor as the one shard holding every row."""
    if isinstance(candidates, EncodedShard):
        return candidates
    n = candidates.shape[0]
    return EncodedShard(candidates, 0, n, n, max(n, 1))


def _check_similarity(similarity) -> None:
    if not callable(similarity):
        check_similarity(similarity, where=" or a function")


def _scores(queries: torch.Tensor, candidates: torch.Tensor, similarity) -> torch.Tensor:
    """fp32 ``[nq, nc]``: :func:`~btok_model.embedder.similarity.similarity_scores` by name, or
    ``similarity(queries, candidates)`` (e.g. TF-IDF's sparse dot products)."""
    if callable(similarity):
        return similarity(queries, candidates).float()
    return similarity_scores(queries, candidates, similarity)


def _rows(tensor: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Rows ``lo .. hi - 1`` (a slice of a dense tensor, ``index_select`` of a sparse one)."""
    if tensor.is_sparse:
        return tensor.index_select(0, torch.arange(lo, hi, device=tensor.device))
    return tensor[lo:hi]


def _check_block(value: int, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def _spans(start: int, stop: int, block: int) -> list[tuple[int, int]]:
    """``[start, stop)`` cut at the global multiples of ``block``."""
    spans, lo = [], start
    while lo < stop:
        hi = min((lo // block + 1) * block, stop)
        spans.append((lo, hi))
        lo = hi
    return spans


def score_blocks(
    queries: torch.Tensor,
    candidates: torch.Tensor | EncodedShard,
    *,
    similarity: str = "cosine",
    query_block: int = 1024,
    candidate_block: int = 16384,
    device: torch.device | str | None = None,
) -> Iterator[tuple[slice, int, torch.Tensor]]:
    """Every score block of the queries against this process's candidates (no communication).

    Args:
        queries: fp32 ``[Q, H]`` (cosine) or ``[Q, Kq, H]`` (maxsim), L2-normalised.
        candidates: fp32 ``[C, H]`` / ``[C, Kc, H]``, or this rank's :class:`EncodedShard`.
        similarity: ``"cosine"`` or ``"maxsim"``.
        query_block, candidate_block: the block shape.
        device: where scores are computed (default: the queries' device).

    Yields:
        ``(query rows, global index of the block's first candidate, fp32 [rows, cols] scores
        on device)``; for each query block, candidate blocks in index order.
    """
    _check_similarity(similarity)
    _check_block(query_block, "query_block")
    _check_block(candidate_block, "candidate_block")
    shard = _as_shard(candidates)
    device = torch.device(device) if device is not None else queries.device
    spans = _spans(shard.start, shard.stop, candidate_block)
    local = shard.embeddings.to(device)  # once: every query block reads all of it
    for qlo in range(0, queries.shape[0], query_block):
        rows = slice(qlo, min(qlo + query_block, queries.shape[0]))
        q = _rows(queries, rows.start, rows.stop).to(device)
        for lo, hi in spans:
            yield rows, lo, _scores(q, _rows(local, lo - shard.start, hi - shard.start), similarity)


# -- rank counts ------------------------------------------------------------------------------------


@dataclass
class RankCounts:
    """Where each query's relevant candidates rank among its candidates.

    Attributes:
        targets: fp32 ``[Q, R]``, the relevant candidates' scores (``+inf`` at padding).
        greater: long ``[Q, R]``, candidates scoring strictly higher.
        equal: long ``[Q, R]``, candidates scoring exactly the same, the relevant one itself
            included (0 at padding).
    """

    targets: torch.Tensor
    greater: torch.Tensor
    equal: torch.Tensor


def _pair_scores(query: torch.Tensor, candidates: torch.Tensor, similarity) -> torch.Tensor:
    """fp32 ``[L]`` scores of one query (``[1, H]`` / ``[1, Kq, H]``) against ``[L, H]`` / ``[L,
    Kc, H]`` candidates, each computed on its own (a row's score does not depend on the other
    rows); a similarity function scores them as ``similarity(query, candidates)[0]``."""
    if callable(similarity):
        return similarity(query, candidates).float()[0]
    q, c = query[0].float(), candidates.float()
    if similarity == "cosine":
        return (c * q).sum(-1)
    return (c[:, None, :, :] * q[None, :, None, :]).sum(-1).amax(-1).sum(-1)  # [L, Kq, Kc] -> [L]


def count_ranks(
    queries: torch.Tensor,
    candidates: torch.Tensor | EncodedShard,
    relevant: torch.Tensor,
    *,
    lists: Sequence[Sequence[int] | None] | None = None,
    similarity: str = "cosine",
    query_block: int = 1024,
    candidate_block: int = 16384,
    device: torch.device | str | None = None,
    combine: bool = True,
    cache_bytes: int = 1 << 28,
) -> RankCounts:
    """Exact rank counts of each query's relevant candidates, over a sharded candidate set.

    A query is ranked against every candidate (``lists`` None or its entry None) or against its
    own list of candidates. Two passes: the relevant candidates' scores (from the rank holding
    each, combined by an all-reduce max), then the counts against them (added up over ranks).
    A relevant candidate's score comes from the same score block (or list) it is counted in,
    so it ties with itself exactly.

    Args:
        queries: fp32 ``[Q, H]`` / ``[Q, Kq, H]``, every query (on every rank).
        candidates: fp32 ``[C, H]`` / ``[C, Kc, H]``, or this rank's :class:`EncodedShard`.
        relevant: long ``[Q, R]``, each query's relevant candidates (global indices; ``-1`` pads).
        lists: per query, the global candidate indices it is ranked against (its relevant ones
            among them), or None for all; None: every query against all.
        similarity, query_block, candidate_block, device: as :func:`score_blocks`; ``similarity``
            may also be a function ``(queries, candidates) -> fp32 [nq, nc]`` (sparse rows are
            fine: TF-IDF).
        combine: with ``torch.distributed`` initialised and a sharded ``candidates``, combine
            every rank's results (collectives: every rank calls, with the same queries);
            False: this shard's alone (targets it does not hold are ``-inf``).
        cache_bytes: a query block's scores up to this size are kept between the two passes
            instead of being computed twice.

    Returns:
        :class:`RankCounts` on the CPU (whole on every rank when combined).
    """
    shard = _as_shard(candidates)
    relevant = torch.as_tensor(relevant, dtype=torch.long).cpu()
    if relevant.dim() != 2 or relevant.shape[0] != queries.shape[0]:
        raise ValueError(f"relevant must be [num_queries={queries.shape[0]}, R], got shape {tuple(relevant.shape)}")
    if relevant.numel() and int(relevant.max()) >= shard.num_rows:
        raise ValueError(f"relevant holds candidate {int(relevant.max())}, but there are {shard.num_rows} candidates")
    if lists is not None and len(lists) != queries.shape[0]:
        raise ValueError(f"lists must hold one entry per query ({queries.shape[0]}), got {len(lists)}")
    _check_similarity(similarity)
    _check_block(query_block, "query_block")
    _check_block(candidate_block, "candidate_block")
    device = torch.device(device) if device is not None else queries.device
    queries = queries.coalesce() if queries.is_sparse else queries
    combine = combine and isinstance(candidates, EncodedShard) and distributed.is_distributed()
    reduce_max = (lambda t: distributed.all_reduce(t, "max")) if combine else (lambda t: t)
    shape = tuple(relevant.shape)
    targets = torch.full(shape, math.inf, dtype=torch.float32)
    greater = torch.zeros(shape, dtype=torch.long)
    equal = torch.zeros(shape, dtype=torch.long)
    everything = [q for q in range(shape[0]) if lists is None or lists[q] is None]
    own = [q for q in range(shape[0]) if lists is not None and lists[q] is not None]
    if everything:
        pick = torch.tensor(everything, dtype=torch.long)
        t, g, e = _count_against_all(
            queries.index_select(0, pick),
            shard,
            relevant[pick],
            similarity,
            query_block,
            candidate_block,
            device,
            reduce_max,
            cache_bytes,
        )
        targets[pick], greater[pick], equal[pick] = t, g, e
    if own:
        pick = torch.tensor(own, dtype=torch.long)
        t, g, e = _count_against_lists(
            queries.index_select(0, pick),
            shard,
            relevant[pick],
            [lists[q] for q in own],
            similarity,
            device,
            reduce_max,
        )
        targets[pick], greater[pick], equal[pick] = t, g, e
    if combine:
        greater = distributed.all_reduce(greater, "sum")
        equal = distributed.all_reduce(equal, "sum")
    return RankCounts(targets, greater, equal)


def _held_targets(scores: torch.Tensor, relevant: torch.Tensor, lo: int) -> torch.Tensor:
    """fp32 ``[r, R]``: the scores of each row's relevant candidates among columns ``lo ..``
    of ``scores`` (``[r, C]``), ``-inf`` where a relevant candidate lies outside them."""
    width = scores.shape[1]
    inside = (relevant >= lo) & (relevant < lo + width)
    picked = (
        scores.gather(1, (relevant - lo).clamp(0, max(width - 1, 0))) if width else scores.new_zeros(relevant.shape)
    )
    return torch.where(inside, picked, torch.full_like(picked, -math.inf))


def _count_against_all(
    queries, shard, relevant, similarity, query_block, candidate_block, device, reduce_max, cache_bytes
):
    """:func:`count_ranks` of queries ranked against every candidate, a query block at a time
    (the targets of a block are combined across ranks before its counting pass)."""
    spans = _spans(shard.start, shard.stop, candidate_block)
    local = shard.embeddings.to(device)
    shape = tuple(relevant.shape)
    targets = torch.full(shape, math.inf, dtype=torch.float32)
    greater = torch.zeros(shape, dtype=torch.long)
    equal = torch.zeros(shape, dtype=torch.long)
    for qlo in range(0, shape[0], query_block):
        rows = slice(qlo, min(qlo + query_block, shape[0]))
        q, idx = _rows(queries, rows.start, rows.stop).to(device), relevant[rows].to(device)
        keep = (rows.stop - rows.start) * (shard.stop - shard.start) * 4 <= cache_bytes
        cached, held = [], torch.full(idx.shape, -math.inf, dtype=torch.float32, device=device)
        for lo, hi in spans:  # pass 1: the relevant candidates' scores this shard holds
            scores = _scores(q, _rows(local, lo - shard.start, hi - shard.start), similarity)
            held = torch.maximum(held, _held_targets(scores, idx, lo))
            if keep:
                cached.append(scores)
        block_targets = reduce_max(held.cpu()).to(device)
        block_targets = torch.where(idx >= 0, block_targets, torch.full_like(block_targets, math.inf))
        g = torch.zeros(idx.shape, dtype=torch.long, device=device)
        e = torch.zeros(idx.shape, dtype=torch.long, device=device)
        for i, (lo, hi) in enumerate(spans):  # pass 2: count against the combined targets
            scores = cached[i] if keep else _scores(q, _rows(local, lo - shard.start, hi - shard.start), similarity)
            dg, de = tie_counts(scores, block_targets)
            g, e = g + dg, e + de
        targets[rows], greater[rows], equal[rows] = block_targets.cpu(), g.cpu(), e.cpu()
    return targets, greater, equal


def _count_against_lists(queries, shard, relevant, lists, similarity, device, reduce_max):
    """:func:`count_ranks` of queries each ranked against its own list (the members this
    shard holds, scored one by one: a score does not depend on which other members are here)."""
    shape = tuple(relevant.shape)
    held = torch.full(shape, -math.inf, dtype=torch.float32)
    scored = []
    for q, members in enumerate(lists):
        members = torch.as_tensor(list(members), dtype=torch.long)
        if members.numel() == 0:
            raise ValueError(f"query {q}: an empty candidate list")
        missing = set(relevant[q][relevant[q] >= 0].tolist()) - set(members.tolist())
        if missing:
            raise ValueError(f"query {q}: relevant candidate(s) {sorted(missing)[:5]} are not in its list")
        mine = members[(members >= shard.start) & (members < shard.stop)]
        rows = shard.embeddings.index_select(0, mine - shard.start).to(device)
        scores = _pair_scores(_rows(queries, q, q + 1).to(device), rows, similarity).cpu()
        scored.append(scores)
        at = {int(c): i for i, c in enumerate(mine)}
        for j, c in enumerate(relevant[q].tolist()):
            if c in at:
                held[q, j] = scores[at[c]]
    targets = reduce_max(held)
    targets = torch.where(relevant >= 0, targets, torch.full_like(targets, math.inf))
    greater = torch.zeros(shape, dtype=torch.long)
    equal = torch.zeros(shape, dtype=torch.long)
    for q, scores in enumerate(scored):
        g, e = tie_counts(scores[None], targets[q : q + 1])
        greater[q], equal[q] = g[0], e[0]
    return targets, greater, equal


# -- top-k ------------------------------------------------------------------------------------------


@dataclass
class TopK:
    """The k best candidates of each query, best first.

    Attributes:
        values: fp32 ``[Q, k]``, scores in descending order; ``-inf`` where fewer than ``k``
            candidates with a finite score exist.
        indices: long ``[Q, k]``, their global candidate indices (equal scores: ascending
            index); ``-1`` where ``values`` is ``-inf``.
    """

    values: torch.Tensor
    indices: torch.Tensor


def merge_topk(parts: Sequence[TopK], k: int) -> TopK:
    """The k best of several top lists of the same queries (e.g. one per shard): the top ``k``
    of the union, equal scores ordered by ascending candidate index, ``-inf`` / ``-1`` padding.

    Args:
        parts: lists over disjoint candidate sets, each ``[Q, k_i]``.
        k: entries kept per query.

    Returns:
        :class:`TopK` ``[Q, k]``, on the device of the first part.
    """
    if not parts:
        raise ValueError("merge_topk needs at least one part")
    values = torch.cat([p.values.to(parts[0].values.device) for p in parts], 1)
    indices = torch.cat([p.indices.to(parts[0].values.device) for p in parts], 1)
    if values.shape[1] < k:
        pad = k - values.shape[1]
        values = torch.cat([values, values.new_full((values.shape[0], pad), -math.inf)], 1)
        indices = torch.cat([indices, indices.new_full((indices.shape[0], pad), -1)], 1)
    # Padding entries (-1) sort after every real index of the same (-inf) score.
    key_index = torch.where(indices < 0, torch.full_like(indices, torch.iinfo(torch.long).max), indices)
    by_index = key_index.argsort(dim=1, stable=True)
    values, indices = values.gather(1, by_index), indices.gather(1, by_index)
    by_value = values.argsort(dim=1, descending=True, stable=True)[:, :k]
    values, indices = values.gather(1, by_value), indices.gather(1, by_value)
    return TopK(values, torch.where(values == -math.inf, torch.full_like(indices, -1), indices))


class RunningTopK:
    """The ``k`` best candidates of every query row, accumulated over candidate blocks.

    Candidate blocks are fed in index order (a query row never sees an index lower than one it
    already holds), so the result is the top ``k`` of the whole score row whatever the block
    sizes: equal scores go to the lower candidate index. Only the ``[rows, k]`` state and one
    score block exist at a time.

    Args:
        num_rows: query rows.
        k: candidates kept per row (0: nothing is kept, updates only check their input).
        device: where the state lives (the device the score blocks are computed on).

    Attributes:
        values: fp32 ``[num_rows, k]``, see :class:`TopK`.
        indices: long ``[num_rows, k]``, see :class:`TopK`.
    """

    def __init__(self, num_rows: int, k: int, device: torch.device | str | None = None):
        if num_rows < 0 or k < 0:
            raise ValueError(f"num_rows and k must be >= 0, got {num_rows} and {k}")
        self.k = k
        self.values = torch.full((num_rows, k), -math.inf, dtype=torch.float32, device=device)
        self.indices = torch.full((num_rows, k), -1, dtype=torch.long, device=device)

    def result(self) -> TopK:
        return TopK(self.values, self.indices)

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


def topk(
    queries: torch.Tensor,
    candidates: torch.Tensor | EncodedShard,
    k: int,
    *,
    similarity: str = "cosine",
    query_block: int = 1024,
    candidate_block: int = 16384,
    device: torch.device | str | None = None,
    combine: bool = True,
) -> TopK:
    """Exact top-k: each query's ``k`` best candidates by score, ties to the lower index.

    Args:
        queries: fp32 ``[Q, H]`` / ``[Q, Kq, H]``, L2-normalised.
        candidates: fp32 ``[C, H]`` / ``[C, Kc, H]``, or this rank's :class:`EncodedShard`.
        k: results per query (>= 1; fewer than ``k`` candidates: ``-inf`` / ``-1`` padding).
        similarity, query_block, candidate_block, device: as :func:`score_blocks`.
        combine: with ``torch.distributed`` initialised and a sharded ``candidates``, merge every
            rank's lists (a collective: every rank calls); False: this shard's list.

    Returns:
        :class:`TopK` ``[Q, k]`` on the CPU with global candidate indices.
    """
    _check_block(k, "k")
    device = torch.device(device) if device is not None else queries.device
    running = RunningTopK(queries.shape[0], k, device)
    kwargs = {
        "similarity": similarity,
        "query_block": query_block,
        "candidate_block": candidate_block,
        "device": device,
    }
    for rows, lo, scores in score_blocks(queries, candidates, **kwargs):
        running.update(rows, scores, lo)
    local = TopK(running.values.cpu(), running.indices.cpu())
    if combine and isinstance(candidates, EncodedShard) and distributed.is_distributed():
        return merge_topk(distributed.all_gather_topk(local), k)
    return local
