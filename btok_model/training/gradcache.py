"""GradCache: a contrastive batch larger than memory, with the full batch's loss and gradients.

InfoNCE couples every query with every candidate, so the batch cannot simply be split into
independent micro-batches. Following Gao et al. ("Scaling Deep Contrastive Learning Batch
Size under Memory Limited Setup", 2021), one step runs in three phases:

1. embed every chunk without autograd (``torch.no_grad``), recording the RNG state first;
2. compute the contrastive loss on all the embeddings at once and its gradient with
   respect to the embeddings only (this is where ranks exchange candidates);
3. re-run every chunk with autograd, the RNG state restored so dropout draws the same
   masks, and backpropagate ``sum(embeddings * their gradient)``; the chunk's generative
   loss joins this backward weighted by its share of the batch's target tokens, so the
   sum over chunks is the full batch's token mean (or, with the authors' normalization, by
   its share of the batch's examples: the sum over chunks of each chunk's per-side token means
   times its generating examples / the batch's examples). Both parts are weighted by the
   step's :class:`~btok_model.embedder.losses.LossWeights`, as the model's own loss weighs them.

Phase 3 recomputes the chunk exactly as phase 1 did (same inputs, weights and random
draws), so the parameter gradients equal those of one backward through the whole batch,
up to floating-point summation order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.distributed as dist

from ..embedder.base import BatchEmbeddings, BTokOutput
from ..embedder.losses import LossWeights
from .collator import ChunkedBatch

__all__ = ["RandomState", "average_gradients", "grad_cache_step"]


class RandomState:
    """The CPU and (if used) CUDA generator states at construction; :meth:`replay` runs a
    block from those states and leaves the outer generators as they were."""

    def __init__(self, device: torch.device):
        self.cpu = torch.get_rng_state()
        self.device = device if device.type == "cuda" else None
        self.cuda = torch.cuda.get_rng_state(device) if self.device is not None else None

    @contextlib.contextmanager
    def replay(self):
        devices = [self.device] if self.device is not None else []
        with torch.random.fork_rng(devices=devices, device_type="cuda"):
            torch.set_rng_state(self.cpu)
            if self.device is not None:
                torch.cuda.set_rng_state(self.cuda, self.device)
            yield


def grad_cache_step(
    model,
    batch: ChunkedBatch,
    backward: Callable[[torch.Tensor], None],
    weights: LossWeights,
    *,
    scale: float = 1.0,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> BTokOutput:
    """Forward and backward of one chunked batch; gradients accumulate in ``.grad``.

    What is backpropagated is ``scale`` x the loss of :class:`~btok_model.embedder.losses.LossWeights`
    on the whole batch: the contrastive part from the model's own ``compute_loss`` on all the
    embeddings, the generative part the sum over chunks ``c`` of ``gen_c * n_c / N`` (``gen_c``
    the mean generative loss of chunk ``c`` over its ``n_c`` target tokens, ``N`` the batch's),
    i.e. the batch's token mean; with ``weights.normalization == "authors"`` the sum of
    ``gen_c * q_c / Q`` (``gen_c`` the chunk's authors' loss over its ``q_c`` examples, ``Q``
    the batch's, :func:`~btok_model.embedder.losses.authors_next_token_loss`).

    Args:
        model: a BTok model or any :class:`~btok_model.embedder.base.Embedder` (not a DDP wrapper:
            chunks call ``embed_batch`` directly, so the caller synchronises gradients across ranks).
        batch: a chunked batch from :class:`~btok_model.training.collator.TrainingCollator`.
        backward: runs the backward of a scalar (``loss.backward`` or ``accelerator.backward``).
        weights: the step's generative weight and this rank's shares.
        scale: multiplies everything backpropagated (1 / gradient-accumulation steps).
        autocast: a context manager factory for the forward passes (mixed precision).

    Returns:
        the batch's :class:`~btok_model.embedder.base.BTokOutput`, detached: ``loss``,
        ``contrastive_loss`` and ``generative_loss`` (None when no chunk has a target) as
        ``weights`` weigh them, unscaled by ``scale``; no embeddings.
    """
    device = model.device
    states, queries, candidates = [], [], []
    with torch.no_grad():
        for chunk in batch.chunks:
            states.append(RandomState(device))
            with autocast():
                embedded = model.embed_batch(chunk.embed_batch, generative=False)
            queries.append(embedded.query_embeddings)
            candidates.append(embedded.candidate_embeddings)
    cache = BatchEmbeddings(
        torch.cat(queries).detach().requires_grad_(), torch.cat(candidates).detach().requires_grad_()
    )
    contrastive = model.compute_loss(cache, batch.positive_index, weights).loss
    query_grad, candidate_grad = torch.autograd.grad(
        contrastive * scale, [cache.query_embeddings, cache.candidate_embeddings]
    )

    generative_sum = None
    q_start = c_start = 0
    for chunk, state in zip(batch.chunks, states, strict=True):
        with state.replay(), autocast():
            embedded = model.embed_batch(
                chunk.batch, generative=weights.generative != 0, normalization=weights.normalization
            )
        q, c = embedded.query_embeddings, embedded.candidate_embeddings
        q_end, c_end = q_start + q.shape[0], c_start + c.shape[0]
        surrogate = (q * query_grad[q_start:q_end]).sum() + (c * candidate_grad[c_start:c_end]).sum()
        part = None
        if embedded.generative_loss is not None:
            share = weights.chunk_share(
                embedded.num_target_tokens, batch.num_target_tokens, chunk.batch.num_queries, batch.num_queries
            )
            part = weights.generative_part(embedded.generative_loss * share)
        term = weights.generative_term(part)
        if term is not None:
            surrogate = surrogate + scale * term
        if part is not None:
            generative_sum = part.detach() if generative_sum is None else generative_sum + part.detach()
        backward(surrogate)
        q_start, c_start = q_end, c_end
    contrastive = contrastive.detach()
    return BTokOutput(
        loss=weights.total(contrastive, generative_sum), contrastive_loss=contrastive, generative_loss=generative_sum
    )


def average_gradients(model: torch.nn.Module, world_size: int, bucket_numel: int = 1 << 25) -> None:
    """Mean of every trainable gradient of ``model`` across the ``world_size`` ranks (what DDP's
    backward does for a step that ran outside DDP's forward, as a GradCache step does), in
    flat buckets of at most about ``bucket_numel`` elements. A parameter without a gradient on
    this rank joins with zeros: every rank must take part in the same reductions."""
    if world_size == 1:
        return
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    bucket, size = [], 0
    for p in params + [None]:
        if p is not None:
            bucket.append(p)
            size += p.numel()
        if bucket and (p is None or size >= bucket_numel):
            flat = torch.cat([q.grad.reshape(-1) for q in bucket])
            dist.all_reduce(flat)
            flat /= world_size
            offset = 0
            for q in bucket:
                q.grad.copy_(flat[offset : offset + q.numel()].view_as(q.grad))
                offset += q.numel()
            bucket, size = [], 0
