"""The losses: InfoNCE against a float64 formula, the total loss's gradient, the generative
loss, and the cross-rank gather with gradients (two gloo processes)."""

import os
import subprocess
import sys

import pytest
import torch

from btok_model.embedder.losses import gather_with_grad, info_nce, next_token_loss
from tests.embedder.gather_ranks import CANDIDATES, TEMPERATURE, WORLD, rank_data
from tests.helpers.tiny import EXAMPLES, tiny_btok


def info_nce_float64(query, candidates, positive_index, temperature):
    """``mean_i [log sum_j exp(q_i . c_j / T) - q_i . c_(p_i) / T]``, in float64, written out."""
    q, c = query.double(), candidates.double()
    total = 0.0
    for i in range(q.shape[0]):
        scores = [float(q[i] @ c[j]) / temperature for j in range(c.shape[0])]
        top = max(scores)
        log_sum = top + torch.tensor([s - top for s in scores], dtype=torch.float64).exp().sum().log().item()
        total += log_sum - scores[int(positive_index[i])]
    return total / q.shape[0]


def test_info_nce_matches_float64_formula():
    g = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(5, 16, generator=g), dim=-1)
    c = torch.nn.functional.normalize(torch.randn(9, 16, generator=g), dim=-1)
    positive = torch.tensor([0, 3, 2, 8, 4])
    for temperature in (0.02, 0.5):
        got = info_nce(q, c, positive, temperature)
        assert got.dtype == torch.float32
        assert got.item() == pytest.approx(info_nce_float64(q, c, positive, temperature), rel=2e-6)


def test_model_losses_match_direct_computation():
    model = tiny_btok()
    batch = model.collate(EXAMPLES)
    out = model(**batch)
    q, c = out.query_embeddings.detach(), out.candidate_embeddings.detach()
    assert q.shape == (4, 64) and c.shape == (7, 64)
    assert torch.allclose(q.norm(dim=-1), torch.ones(4)) and torch.allclose(c.norm(dim=-1), torch.ones(7))
    expected = info_nce_float64(q, c, batch["positive_index"], model.config.temperature)
    assert out.contrastive_loss.item() == pytest.approx(expected, rel=2e-6)
    assert out.loss.item() == pytest.approx(out.contrastive_loss.item() + 5.0 * out.generative_loss.item(), rel=1e-6)


def test_total_gradient_is_the_sum_of_the_parts():
    model = tiny_btok("qwen2")
    batch = model.collate(EXAMPLES)

    def grads_of(pick):
        model.zero_grad(set_to_none=True)
        pick(model(**batch)).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    total = grads_of(lambda o: o.loss)
    contrastive = grads_of(lambda o: o.contrastive_loss)
    generative = grads_of(lambda o: o.generative_loss)
    assert total.keys() == generative.keys() and set(contrastive) == set(total) - {"backbone.lm_head.weight"}
    for name, grad in total.items():
        expected = contrastive.get(name, torch.zeros_like(grad)) + model.config.generative_weight * generative[name]
        err = ((grad - expected).norm() / expected.norm()).item()
        assert err < 1e-5, f"{name}: {err:.2e}"


def test_next_token_loss_is_the_mean_over_scored_tokens():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 11, generator=g, dtype=torch.bfloat16)
    labels = torch.tensor([3, -100, 0, 10, -100, 7])
    got = next_token_loss(logits, labels, 4)
    keep = labels != -100
    expected = torch.nn.functional.cross_entropy(logits.double()[keep], labels[keep])
    assert got.dtype == torch.float32 and got.item() == pytest.approx(expected.item(), rel=1e-6)
    with pytest.raises(ValueError, match="num_tokens must be > 0"):
        next_token_loss(logits, labels, 0)


def test_gather_with_grad_is_identity_without_distributed():
    x = torch.randn(3, 4, requires_grad=True)
    assert gather_with_grad(x) is x


def test_gather_with_grad_two_ranks(tmp_path):
    """Each rank's InfoNCE over the gathered candidates: the gradients each rank keeps equal,
    after DDP's averaging (/ world), the float64 gradient of the mean of the ranks' losses."""
    script = os.path.join(os.path.dirname(__file__), "gather_ranks.py")
    subprocess.run([sys.executable, script, str(tmp_path)], check=True, timeout=120)
    world = WORLD
    results = [torch.load(os.path.join(tmp_path, f"{r}.pt")) for r in range(world)]
    assert results[0]["sizes"] == results[1]["sizes"] == list(CANDIDATES)

    data = [rank_data(r) for r in range(world)]
    qs = [d[0].clone().requires_grad_(True) for d in data]
    cs = [d[1].clone().requires_grad_(True) for d in data]
    all_c = torch.cat(cs)
    losses = [info_nce(qs[r], all_c, data[r][2] + sum(CANDIDATES[:r]), TEMPERATURE) for r in range(world)]
    (sum(losses) / world).backward()
    for r in range(world):
        assert torch.equal(results[r]["gathered"], all_c.detach())
        assert results[r]["loss"].item() == pytest.approx(losses[r].item(), rel=1e-12)
        assert torch.allclose(results[r]["q"] / world, qs[r].grad, rtol=1e-10, atol=0)
        assert torch.allclose(results[r]["c"] / world, cs[r].grad, rtol=1e-10, atol=0)
