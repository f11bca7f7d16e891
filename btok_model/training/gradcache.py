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
   sum over chunks is the full batch's token mean.

Phase 3 recomputes the chunk exactly as phase 1 did (same inputs, weights and random
draws), so the parameter gradients equal those of one backward through the whole batch,
up to floating-point summation order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

__all__ = ["RandomState", "grad_cache_step"]


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
    batch: dict,
    backward: Callable[[torch.Tensor], None],
    *,
    scale: float = 1.0,
    contrastive_weight: float = 1.0,
    target_normalizer: float | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> dict[str, torch.Tensor | None]:
    """Forward and backward of one chunked batch; gradients accumulate in ``.grad``.

    The loss backpropagated is ``scale * (contrastive_weight * InfoNCE + w * sum_c(gen_c * n_c) /
    target_normalizer)`` with ``gen_c`` the mean generative loss of chunk ``c`` over its
    ``n_c`` target tokens and ``w`` the model's generative weight.

    Args:
        model: a :class:`~btok_model.BTokModel` (not a DDP wrapper: chunks call
            ``embed_batch`` directly, so the caller synchronises gradients across ranks).
        batch: a chunked batch from :class:`~btok_model.training.batch_builder.TrainingCollator`.
        backward: runs the backward of a scalar (``loss.backward`` or ``accelerator.backward``).
        scale: multiplies everything backpropagated (1 / gradient-accumulation steps).
        contrastive_weight: multiplies the contrastive loss (a rank's share of the queries).
        target_normalizer: the token count the generative sum is divided by (default: the
            batch's own ``num_target_tokens``, i.e. the batch's token mean).
        autocast: a context manager factory for the forward passes (mixed precision).

    Returns:
        ``{"contrastive_loss", "generative_loss"}``: detached fp32 scalars, weighted as above
        (generative None when no chunk has a target).
    """
    chunks = batch["chunks"]
    device = model.device
    states, queries, candidates = [], [], []
    with torch.no_grad():
        for chunk in chunks:
            states.append(RandomState(device))
            with autocast():
                q, c, _, _ = model.embed_batch(chunk["embed_batch"])
            queries.append(q)
            candidates.append(c)
    query_cache = torch.cat(queries).detach().requires_grad_()
    candidate_cache = torch.cat(candidates).detach().requires_grad_()
    contrastive = model.compute_loss(query_cache, candidate_cache, batch["positive_index"], None).contrastive_loss
    contrastive = contrastive * contrastive_weight
    query_grad, candidate_grad = torch.autograd.grad(contrastive * scale, [query_cache, candidate_cache])

    normalizer = batch["num_target_tokens"] if target_normalizer is None else target_normalizer
    weight = model.generative_weight
    generative_sum = None
    q_start = c_start = 0
    for chunk, state in zip(chunks, states, strict=True):
        with state.replay(), autocast():
            q, c, generative, num_targets = model.embed_batch(chunk["batch"])
        q_end, c_end = q_start + q.shape[0], c_start + c.shape[0]
        surrogate = (q * query_grad[q_start:q_end]).sum() + (c * candidate_grad[c_start:c_end]).sum()
        if generative is not None:
            share = num_targets / normalizer
            surrogate = surrogate + (weight * scale * share) * generative
            part = generative.detach() * share
            generative_sum = part if generative_sum is None else generative_sum + part
        backward(surrogate)
        q_start, c_start = q_end, c_end
    return {"contrastive_loss": contrastive.detach(), "generative_loss": generative_sum}
