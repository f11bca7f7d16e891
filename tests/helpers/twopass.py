"""The packed single pass against the authors' two-pass formulation, on one batch of examples.

Both run the embeddings' fixed random linear functional plus the generative loss backward and
return what :func:`assert_same` compares.
"""

from __future__ import annotations

import torch

from btok_model.embedder.twopass import two_pass_forward
from tests.helpers.numerics import rel_err
from tests.helpers.training import grads

TOL = 2e-5  # relative L2, fp32: the two formulations sum the same terms in another order


def probe(n: int, h: int, seed: int = 3) -> torch.Tensor:
    """Fixed random weights for a linear functional of the embeddings."""
    return torch.randn(n, h, generator=torch.Generator().manual_seed(seed))


def _backward(embeddings, generative):
    """Backward of the generative loss (if any) + a fixed linear functional of the embeddings."""
    loss = (embeddings * probe(*embeddings.shape)).sum()
    (loss if generative is None else loss + generative).backward()


def single_pass(model, examples):
    """``(query and candidate embeddings, generative loss, scored tokens, gradients)`` of the packed pass."""
    model.zero_grad(set_to_none=True)
    out = model.embed_batch(model.collate(examples))
    embeddings = torch.cat([out.query_embeddings, out.candidate_embeddings])
    _backward(embeddings, out.generative_loss)
    return embeddings.detach(), out.generative_loss, out.num_target_tokens, grads(model)


def two_pass(model, examples, attn):
    """The same from :func:`two_pass_forward` under the attention implementation ``attn``."""
    model.backbone.set_attn_implementation(attn)
    try:
        model.zero_grad(set_to_none=True)
        out = two_pass_forward(model, examples)
        embeddings = torch.cat([out.query_embeddings, out.candidate_embeddings])
        _backward(embeddings, out.generative_loss)
        return embeddings.detach(), out.generative_loss, out.num_target_tokens, grads(model)
    finally:
        model.backbone.set_attn_implementation("btok_triton")


def assert_same(single, double, what: str) -> None:
    """:func:`single_pass` and :func:`two_pass` results agree within :data:`TOL` (tokens scored, every gradient)."""
    (q1, g1, n1, grads1), (q2, g2, n2, grads2) = single, double
    assert n1 == n2 > 0
    assert rel_err(g1.detach(), g2.detach()) < TOL, f"{what}: generative loss {g1.item()} vs {g2.item()}"
    assert rel_err(q1, q2) < TOL, f"{what}: embeddings"
    assert grads1.keys() == grads2.keys() and len(grads1) > 0
    for name in grads2:
        assert torch.isfinite(grads1[name]).all(), name
        assert rel_err(grads1[name], grads2[name]) < TOL, f"{what}: gradient of {name}"


def continuing_positions(batch: dict) -> torch.Tensor:
    """``position_ids`` with every target moved to start right after its ``[input | BToks]``'s
    largest M-RoPE position (btok's rule before it followed the authors' token count)."""
    layout, positions = batch["btok_layout"], batch["position_ids"].clone()
    cu = layout.host_cu_seqlens
    for s, t in enumerate(layout.host_target_start):
        a, b = cu[s], cu[s + 1]
        if t < b - a:
            positions[..., a + t : b] -= t - 1 - int(positions[..., a : a + t].max())
    return positions
