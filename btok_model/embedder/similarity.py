"""How embeddings are compared: cosine of single vectors, or MaxSim of a model's K BTok vectors.

A BTok model's K last-layer BTok states are K distinct vectors. Pooled (the method), their
mean is L2-normalised into one embedding and two inputs compare by cosine. Kept apart
(``encode(..., multi_vector=True)``, each state L2-normalised), two inputs compare by late
interaction, as ColBERT compares its per-token vectors::

    maxsim(q, c) = sum_i max_j q_i . c_j        (i over the query's vectors, j over the candidate's)

With K = 1 MaxSim is the cosine of the two vectors. :func:`truncate` gives the Matryoshka
embeddings of the leading dimensions (re-normalised), of single vectors and of every vector
of a multi-vector embedding alike.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "FULL",
    "SIMILARITIES",
    "check_dims",
    "check_similarity",
    "cosine_of_means",
    "maxsim",
    "maxsim_logit_scale",
    "similarity_scores",
    "truncate",
]

# The names of the similarities (every setting, argument and check reads them here).
SIMILARITIES = ("cosine", "maxsim")
FULL = "full"  # in a list of Matryoshka dimensions: the whole embedding


def check_similarity(name, allowed: tuple[str, ...] = SIMILARITIES, *, where: str = "", why: str = "") -> str:
    """``name`` checked against ``allowed`` (default: every similarity); returned unchanged.

    Raises:
        ValueError: ``similarity must be one of (...){where}, got ...{why}``.
    """
    if not isinstance(name, str) or name not in allowed:
        raise ValueError(f"similarity must be one of {allowed}{where}, got {name!r}{why}")
    return name


# Candidate rows scored at once by maxsim: its [Nq * Kq, block * Kc] intermediate stays a few
# times the size of a [Nq, block] cosine block.
_MAXSIM_BLOCK = 1024


def maxsim(query: torch.Tensor, candidates: torch.Tensor, block: int = _MAXSIM_BLOCK) -> torch.Tensor:
    """Late-interaction scores: for each query and candidate, the sum over the query's vectors
    of the largest dot product with any of the candidate's vectors.

    Args:
        query: ``[Nq, Kq, H]`` float (L2-normalised vectors: the dot products are cosines).
        candidates: ``[Nc, Kc, H]`` float.
        block: candidates scored per matrix product (bounds the ``[Nq, block * Kc]`` intermediate).

    Returns:
        fp32 ``[Nq, Nc]``, each in ``[-Kq, Kq]`` for normalised vectors; differentiable.
    """
    if query.dim() != 3 or candidates.dim() != 3 or query.shape[2] != candidates.shape[2]:
        raise ValueError(
            f"maxsim needs query [Nq, Kq, H] and candidates [Nc, Kc, H], got {tuple(query.shape)} and "
            f"{tuple(candidates.shape)}"
        )
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    q = query.float()
    nq, kq, _ = q.shape
    parts = []
    for lo in range(0, candidates.shape[0], block):
        c = candidates[lo : lo + block].float()
        # [Nq * Kq, n * Kc] dot products, the max over each candidate's Kc vectors, summed over Kq.
        dots = (q.flatten(0, 1) @ c.flatten(0, 1).T).view(nq, kq, c.shape[0], c.shape[1])
        parts.append(dots.amax(3).sum(1))
    if not parts:
        return q.new_zeros((nq, 0))
    return torch.cat(parts, 1)


def cosine_of_means(query: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Cosine of the mean vectors: each input's vectors averaged, L2-normalised, dotted.

    Note a BTok model's pooled embedding is the normalised mean of the raw BTok states, not of
    the normalised ones ``encode(multi_vector=True)`` returns; the two agree when the K states
    have equal norms.

    Args:
        query: ``[Nq, Kq, H]`` float.
        candidates: ``[Nc, Kc, H]`` float.

    Returns:
        fp32 ``[Nq, Nc]``.
    """
    q = F.normalize(query.float().mean(1), dim=-1)
    c = F.normalize(candidates.float().mean(1), dim=-1)
    return q @ c.T


def maxsim_logit_scale(num_query_vectors: int) -> float:
    """What MaxSim scores are divided by to act as cosines in a softmax: ``Kq``.

    MaxSim sums Kq cosines (range ``[-Kq, Kq]``); dividing by Kq brings it to the cosine's
    range, so a temperature means what it means for pooled embeddings (0.02 stays the
    authors' value whatever K) and K = 1 MaxSim InfoNCE is cosine InfoNCE exactly. The
    ranking of a query's candidates is the same either way.
    """
    return float(num_query_vectors)


def similarity_scores(query: torch.Tensor, candidates: torch.Tensor, similarity: str = "cosine") -> torch.Tensor:
    """Scores of every query against every candidate.

    Args:
        query: ``[Nq, H]`` (cosine) or ``[Nq, Kq, H]`` (maxsim) float, L2-normalised rows.
        candidates: ``[Nc, H]`` or ``[Nc, Kc, H]`` float.
        similarity: ``"cosine"`` (dot products of single vectors) or ``"maxsim"`` (:func:`maxsim`).

    Returns:
        fp32 ``[Nq, Nc]``.
    """
    if check_similarity(similarity) == "maxsim":
        return maxsim(query, candidates)
    if query.dim() != 2 or candidates.dim() != 2 or query.shape[1] != candidates.shape[1]:
        raise ValueError(
            f"cosine scores need query [Nq, H] and candidates [Nc, H], got {tuple(query.shape)} and "
            f"{tuple(candidates.shape)}"
        )
    return query.float() @ candidates.float().T


def truncate(embeddings: torch.Tensor, dims: int) -> torch.Tensor:
    """Matryoshka embeddings: the leading ``dims`` components of every vector, L2-normalised.

    Args:
        embeddings: ``[..., H]`` float (single vectors ``[N, H]`` or multi-vector ``[N, K, H]``).
        dims: ``1 <= dims <= H``; ``dims == H`` only re-normalises.

    Returns:
        fp32 ``[..., dims]``.
    """
    size = embeddings.shape[-1]
    if isinstance(dims, bool) or not isinstance(dims, int) or not 1 <= dims <= size:
        raise ValueError(f"dims must be an int in [1, {size}] (the embedding size), got {dims!r}")
    return F.normalize(embeddings[..., :dims].float(), dim=-1)


def check_dims(dims, size: int | None = None, name: str = "matryoshka_dims") -> list:
    """A checked list of Matryoshka dimensions: ints >= 1, strictly increasing, ``"full"``
    (the whole embedding) allowed as the last.

    Args:
        dims: a list of ints and ``"full"`` (strings of digits are read as ints).
        size: the embedding size H, or None (not known yet).
        name: what to call the list in errors (a setting or a flag).

    Returns:
        the dims as given (``"full"`` kept) when ``size`` is None; else ints, ``"full"`` as
        ``size``.

    Raises:
        ValueError: an empty list, a dim that is not an int >= 1 or ``"full"``, dims not
            strictly increasing (a duplicate), ``"full"`` not last, or a dim above ``size``
            (or equal to it beside ``"full"``).
    """
    if not isinstance(dims, (list, tuple)) or not dims:
        raise ValueError(f"{name} must be a non-empty list of ints >= 1 and {FULL!r}, got {dims!r}")
    out = []
    for i, d in enumerate(dims):
        if isinstance(d, str) and d.isdigit():
            d = int(d)
        if d == FULL:
            if i != len(dims) - 1:
                raise ValueError(f"{name}: {FULL!r} must come last (it is the largest), got {list(dims)}")
        elif isinstance(d, bool) or not isinstance(d, int) or d < 1:
            raise ValueError(f"{name}: each dim must be an int >= 1 or {FULL!r}, got {d!r} in {list(dims)}")
        out.append(d)
    ints = [d for d in out if d != FULL]
    if any(b <= a for a, b in zip(ints, ints[1:])):
        raise ValueError(f"{name} must be strictly increasing (no duplicates), got {list(dims)}")
    if size is None:
        return out
    if ints and ints[-1] > size:
        raise ValueError(f"{name}: {ints[-1]} is larger than the embedding size {size}")
    if out[-1] == FULL and ints and ints[-1] == size:
        raise ValueError(f"{name}: {size} is the embedding size, the same as {FULL!r}: give one of them")
    return [size if d == FULL else d for d in out]
