"""The single packed pass equals the authors' two-pass formulation: generative loss, every
parameter gradient and the query embeddings, on tiny random Llama (tied LM head) and Qwen2
(untied), fp32."""

import pytest
import torch
from btok_tiny import EXAMPLES, tiny_btok

from btok_model.embedder.twopass import two_pass_forward

TOL = 2e-5  # relative L2, fp32: the two formulations sum the same terms in another order

# Long enough that queries and targets span several key blocks of the kernels.
LONG_EXAMPLES = EXAMPLES + [
    {
        "query": "which river runs through the old town of prague and where does it end?",
        "positive": "the vltava",
        "target": "the vltava flows north through prague and joins the elbe at melnik.",
        "negatives": ["the danube"],
    },
    {"query": "x", "positive": "y", "target": "z"},
]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def probe(n: int, h: int, seed: int = 3) -> torch.Tensor:
    """Fixed random weights for a linear functional of the query embeddings."""
    return torch.randn(n, h, generator=torch.Generator().manual_seed(seed))


def grads(model) -> dict:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def single_pass(model, examples):
    model.zero_grad(set_to_none=True)
    query, _, generative, num_tokens = model.embed_batch(model.collate(examples))
    (generative + (query * probe(*query.shape)).sum()).backward()
    return query.detach(), generative.detach(), num_tokens, grads(model)


def two_pass(model, examples, attn):
    model.backbone.set_attn_implementation(attn)
    try:
        model.zero_grad(set_to_none=True)
        out = two_pass_forward(model, examples)
        query = out.query_embeddings
        (out.generative_loss + (query * probe(*query.shape)).sum()).backward()
        return query.detach(), out.generative_loss.detach(), out.num_target_tokens, grads(model)
    finally:
        model.backbone.set_attn_implementation("btok_triton")


def assert_same(single, double, what):
    (q1, g1, n1, grads1), (q2, g2, n2, grads2) = single, double
    assert n1 == n2 > 0
    assert rel_err(g1, g2) < TOL, f"{what}: generative loss {g1.item()} vs {g2.item()}"
    assert rel_err(q1, q2) < TOL, f"{what}: query embeddings"
    assert grads1.keys() == grads2.keys() and len(grads1) > 0
    for name in grads2:
        assert torch.isfinite(grads1[name]).all(), name
        assert rel_err(grads1[name], grads2[name]) < TOL, f"{what}: gradient of {name}"


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_single_pass_equals_two_pass(family, attn):
    model = tiny_btok(family)
    assert_same(single_pass(model, LONG_EXAMPLES), two_pass(model, LONG_EXAMPLES, attn), f"{family}/{attn}")


def test_single_pass_equals_two_pass_lora_last_pooling():
    """Through PEFT (LoRA + trainable BTok rows, tied head) and with last-BTok pooling."""
    model = tiny_btok("llama", lora=4, pooling="last")
    with torch.no_grad():  # LoRA B starts at 0: move it so the adapters take part
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.05)
    assert_same(single_pass(model, EXAMPLES), two_pass(model, EXAMPLES, "sdpa"), "lora")


@pytest.mark.interpret
def test_single_pass_equals_two_pass_triton_kernel(monkeypatch):
    """The real Triton kernels (under the interpreter on a CPU) in the single pass."""
    monkeypatch.setenv("BTOK_BACKEND", "triton")
    model = tiny_btok("qwen2")
    examples = [{"query": "odd one", "positive": "even", "target": "odd"}, {"query": "hi", "positive": "yo"}]
    assert_same(single_pass(model, examples), two_pass(model, examples, "sdpa"), "triton")


def test_two_pass_without_targets():
    model = tiny_btok()
    out = two_pass_forward(model, [{"query": "abc", "positive": "d", "target": None}])
    assert out.generative_loss is None and out.num_target_tokens == 0
    assert rel_err(out.query_embeddings.detach(), model.encode(["abc"])) < TOL
