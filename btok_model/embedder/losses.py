"""The two training losses of a BTok embedder, how they add up, and the cross-rank gather of embeddings.

* :func:`info_nce` -- contrastive loss of query embeddings against candidate embeddings
  (in-batch negatives, hard negatives, and the candidates of other ranks), on cosine or
  MaxSim scores (:mod:`.similarity`).
* :func:`matryoshka_info_nce` -- its weighted sum over leading-dimension truncations.
* :func:`contrastive_loss` -- the configured one of the two, on the candidates of every rank.
* :func:`next_token_loss` -- the generative loss on target tokens (a token mean), and
  :func:`authors_next_token_loss` -- the authors' per-side, per-chunk weighting of it.
* :class:`LossWeights` -- the one place the two become the loss a step backpropagates
  (the generative weight, and each rank's share of a distributed batch).
* :func:`gather_with_grad` -- all-gather across ranks that sends gradients back to the
  rank that owns each row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .similarity import maxsim_logit_scale, similarity_scores, truncate

__all__ = [
    "GENERATIVE_NORMALIZATIONS",
    "LossWeights",
    "authors_next_token_loss",
    "contrastive_loss",
    "gather_sizes",
    "gather_with_grad",
    "info_nce",
    "is_distributed",
    "matryoshka_info_nce",
    "next_token_loss",
    "rank_offset",
]


# How the generative loss of a batch is normalised (see LossWeights and the two loss functions).
GENERATIVE_NORMALIZATIONS = ("token", "authors")


@dataclass(frozen=True)
class LossWeights:
    """How a step's contrastive and generative losses add up into the loss it backpropagates::

        contrastive part = query_share * contrastive
        generative part  = target_share * generative
        loss             = contrastive part + generative * generative part

    The generative term is left out when there is no generative loss or its weight is 0.

    Two normalisations of the generative loss (``normalization``):

    * ``"token"`` (btok's): the mean next-token loss over every scored target token of the
      global batch (:func:`next_token_loss`); each target token weighs the same, wherever it sits.
    * ``"authors"`` (vlm2emb's ``BToksTrainer``): per GradCache chunk and per side (targets the
      queries' BToks generate, targets the positives' BToks generate), the mean over that
      side's target tokens times (that side's generating examples in the chunk / the rank's
      examples), summed (:func:`authors_next_token_loss`); the ranks' values are averaged. A
      target then weighs by its example, not its length (a short target's tokens weigh more
      than a long one's), and an example whose both sides generate (WebQA) weighs twice.
      ``target_share`` is 1 in this mode (each rank's value is already per example).

    Attributes:
        generative: the generative loss's weight (a model's ``config.generative_weight``, or the
            trainer's schedule for the step).
        query_share: this rank's queries / the mean queries per rank (1 on one process). DDP and
            FSDP average gradients over ranks; a rank's mean InfoNCE weighted by its share makes
            that average the mean over the whole global batch.
        target_share: this rank's scored target tokens / their mean per rank (1 on one process),
            the same for the token-mean generative loss.
        normalization: ``"token"`` or ``"authors"`` (above).
    """

    generative: float
    query_share: float = 1.0
    target_share: float = 1.0
    normalization: str = "token"

    def __post_init__(self):
        if self.normalization not in GENERATIVE_NORMALIZATIONS:
            raise ValueError(
                f"generative normalization must be one of {GENERATIVE_NORMALIZATIONS}, got {self.normalization!r}"
            )

    def chunk_share(self, chunk_tokens: int, batch_tokens: int, chunk_queries: int, batch_queries: int) -> float:
        """What one GradCache chunk's generative loss (as the chunk alone would compute it)
        counts for in its batch's: its share of the scored target tokens (``"token"``), or of
        the examples (``"authors"``: the chunk's value divides by its own examples, the batch's
        by the rank's)."""
        if self.normalization == "authors":
            return chunk_queries / batch_queries
        return chunk_tokens / batch_tokens

    def contrastive_part(self, contrastive: torch.Tensor) -> torch.Tensor:
        """``query_share * contrastive``: this rank's share of the global batch's InfoNCE."""
        return contrastive * self.query_share

    def generative_part(self, generative: torch.Tensor | None) -> torch.Tensor | None:
        """``target_share * generative`` (None without a generative loss)."""
        return None if generative is None else generative * self.target_share

    def generative_term(self, generative_part: torch.Tensor | None) -> torch.Tensor | None:
        """What a generative part adds to the loss: ``generative * part`` (None when nothing)."""
        if generative_part is None or self.generative == 0:
            return None
        return self.generative * generative_part

    def total(self, contrastive_part: torch.Tensor, generative_part: torch.Tensor | None) -> torch.Tensor:
        """The loss from the two parts (see the class docstring)."""
        term = self.generative_term(generative_part)
        return contrastive_part if term is None else contrastive_part + term


def info_nce(
    query: torch.Tensor,
    candidates: torch.Tensor,
    positive_index: torch.Tensor,
    temperature: float,
    similarity: str = "cosine",
) -> torch.Tensor:
    """Mean InfoNCE loss: each query against every candidate, its positive as the class.

    ``loss = mean_i [ logsumexp_j(s_ij / T) - s_(i, p_i) / T ]``, computed in fp32, with
    ``s_ij = q_i . c_j`` (``"cosine"``: cosine similarities when the embeddings are
    L2-normalised) or ``s_ij = maxsim(q_i, c_j) / Kq`` (``"maxsim"``: the mean over the query's
    Kq vectors of the best cosine with the candidate's, so the temperature keeps its meaning,
    see :func:`~.similarity.maxsim_logit_scale`).

    Args:
        query: ``[Nq, H]`` (cosine) or ``[Nq, Kq, H]`` (maxsim) float query embeddings.
        candidates: ``[Nc, H]`` or ``[Nc, Kc, H]`` float candidate embeddings (positives and negatives).
        positive_index: int64 ``[Nq]``, index of each query's positive among the candidates.
        temperature: softmax temperature (> 0).
        similarity: ``"cosine"`` or ``"maxsim"``.

    Returns:
        fp32 scalar.
    """
    if positive_index.shape != (query.shape[0],):
        raise ValueError(f"positive_index must have shape [Nq] = [{query.shape[0]}], got {tuple(positive_index.shape)}")
    scores = similarity_scores(query, candidates, similarity)  # [Nq, Nc]
    if similarity == "maxsim":
        scores = scores / maxsim_logit_scale(query.shape[1])
    return F.cross_entropy(scores / temperature, positive_index.to(scores.device))


def matryoshka_info_nce(
    query: torch.Tensor,
    candidates: torch.Tensor,
    positive_index: torch.Tensor,
    temperature: float,
    dims: list[int],
    weights: list[float] | None = None,
    similarity: str = "cosine",
) -> torch.Tensor:
    """Matryoshka InfoNCE: ``sum_d w_d * info_nce(truncate(q, d), truncate(c, d))``.

    Each embedding (each vector of a multi-vector one) keeps its leading ``d`` components and
    is L2-normalised again (:func:`~.similarity.truncate`), so every prefix is an embedding
    of its own.

    Args:
        query, candidates, positive_index, temperature, similarity: as for :func:`info_nce`.
        dims: the leading dimensions, each in ``[1, H]``.
        weights: one weight per dimension (None: 1 each).

    Returns:
        fp32 scalar.
    """
    weights = [1.0] * len(dims) if weights is None else weights
    if not dims or len(weights) != len(dims):
        raise ValueError(f"need one weight per Matryoshka dimension, got dims {dims} and weights {weights}")
    losses = [
        w * info_nce(truncate(query, d), truncate(candidates, d), positive_index, temperature, similarity)
        for d, w in zip(dims, weights)
    ]
    return torch.stack(losses).sum()


def contrastive_loss(
    query: torch.Tensor,
    candidates: torch.Tensor,
    positive_index: torch.Tensor,
    temperature: float,
    similarity: str = "cosine",
    dims: list[int] | None = None,
    weights: list[float] | None = None,
    *,
    gather: bool = True,
) -> torch.Tensor:
    """The contrastive loss of an embedder's settings: :func:`info_nce`, or with ``dims``
    :func:`matryoshka_info_nce`. With ``gather`` and ``torch.distributed`` initialised, each
    rank's queries are scored against the candidates of every rank (gathered with gradients
    flowing back to their owner, at full size: Matryoshka truncates after), positives offset by
    the rank's position.

    Args:
        query, candidates, positive_index, temperature, similarity: as for :func:`info_nce`
            (this rank's rows).
        dims: the Matryoshka dimensions as ints (None or empty: off).
        weights: one weight per dimension (None or empty: 1 each).
        gather: gather the candidates across ranks.

    Returns:
        fp32 scalar.
    """
    if gather and is_distributed():
        sizes = gather_sizes(candidates.shape[0], candidates.device)
        candidates = gather_with_grad(candidates, sizes)
        positive_index = positive_index + rank_offset(sizes)
    if dims:
        return matryoshka_info_nce(query, candidates, positive_index, temperature, dims, weights or None, similarity)
    return info_nce(query, candidates, positive_index, temperature, similarity)


def next_token_loss(logits: torch.Tensor, labels: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Summed next-token cross-entropy over the labelled rows, divided by ``num_tokens``.

    Args:
        logits: ``[R, V]`` logits of R rows (any float dtype; computed in fp32).
        labels: int64 ``[R]``, the token each row predicts, -100 for rows without loss.
        num_tokens: how many labels are not -100 (known on the host, so the mean needs no
            device read-back); must be > 0.

    Returns:
        fp32 scalar, the mean loss per target token.
    """
    if num_tokens <= 0:
        raise ValueError(f"num_tokens must be > 0, got {num_tokens}")
    return F.cross_entropy(logits.float(), labels, ignore_index=-100, reduction="sum") / num_tokens


def authors_next_token_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    on_query: torch.Tensor,
    tokens: tuple[int, int],
    sequences: tuple[int, int],
    num_examples: int,
) -> torch.Tensor:
    """The authors' generative loss of one forward pass (one GradCache chunk)::

        sum over sides s of  (sum of the side's token losses / tokens[s]) * sequences[s] / num_examples

    Side 0: the targets after the queries' BToks (the positive generated); side 1: after the
    candidates' BToks (the query generated). A side without target tokens adds nothing.

    Args:
        logits: ``[R, V]`` logits of R rows (any float dtype; computed in fp32).
        labels: int64 ``[R]``, the token each row predicts, -100 for rows without loss.
        on_query: bool ``[R]``, whether the row's target sits after a query's BToks.
        tokens: scored target tokens on each side (host ints).
        sequences: sequences with a scored target on each side (host ints; the generating examples).
        num_examples: the examples of the pass (its queries), > 0.

    Returns:
        fp32 scalar.
    """
    if num_examples <= 0:
        raise ValueError(f"num_examples must be > 0, got {num_examples}")
    losses = F.cross_entropy(logits.float(), labels, ignore_index=-100, reduction="none")  # [R]
    total = losses.new_zeros(())
    for side, mask in enumerate((on_query, ~on_query)):
        if tokens[side]:
            side_sum = torch.where(mask, losses, torch.zeros_like(losses)).sum()
            total = total + side_sum / tokens[side] * (sequences[side] / num_examples)
    return total


def is_distributed() -> bool:
    """Whether ``torch.distributed`` is initialised with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_sizes(n: int, device: torch.device) -> list[int]:
    """The first-dimension size ``n`` of every rank (one small all-gather and a host read)."""
    if not is_distributed():
        return [n]
    local = torch.tensor([n], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, local)
    return [int(s) for s in torch.cat(sizes).tolist()]


def rank_offset(sizes: list[int]) -> int:
    """Where this rank's rows start in a gather with per-rank ``sizes``."""
    return sum(sizes[: dist.get_rank()]) if is_distributed() else 0


class _GatherWithGrad(torch.autograd.Function):
    """All-gather of rows of unequal count; backward sums every rank's gradient of the
    gathered tensor and hands each rank the slice of its own rows."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        ctx.sizes = sizes
        longest = max(sizes)
        padded = tensor.new_zeros((longest, *tensor.shape[1:]))
        padded[: tensor.shape[0]] = tensor
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous())
        return torch.cat([part[:n] for part, n in zip(parts, sizes)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous()
        # Every rank's loss reads every rank's rows: the gradient of a row is the sum over ranks.
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = rank_offset(ctx.sizes)
        return grad[start : start + ctx.sizes[dist.get_rank()]], None


def gather_with_grad(tensor: torch.Tensor, sizes: list[int] | None = None) -> torch.Tensor:
    """Concatenate ``tensor`` from every rank in rank order; gradients flow to the owner.

    Each rank's loss may read the rows of every rank; the backward sums the gradients that
    all ranks computed for a row and returns them to the rank owning it. With DDP's gradient
    averaging, a per-rank mean loss then gives the gradient of the mean over ranks. Identity
    when ``torch.distributed`` is not initialised or has one rank.

    Args:
        tensor: ``[n, ...]``; ``n`` may differ between ranks (rows are padded for the
            transfer and stripped again).
        sizes: every rank's ``n`` (from :func:`gather_sizes`), or None to gather them here.

    Returns:
        ``[sum(sizes), ...]``, this rank's rows at ``rank_offset(sizes)``.
    """
    if not is_distributed():
        return tensor
    if sizes is None:
        sizes = gather_sizes(tensor.shape[0], tensor.device)
    return _GatherWithGrad.apply(tensor, sizes)
