"""The single packed pass equals the authors' two-pass formulation: generative loss, every
parameter gradient and the query and candidate embeddings, on tiny random Llama (tied LM head)
and Qwen2 (untied), fp32, for every generation side (targets after the queries' BToks, after
the positives', both, none)."""

import pytest
import torch

from btok_model.embedder.twopass import two_pass_forward
from tests.helpers.numerics import rel_err
from tests.helpers.tiny import EXAMPLES, tiny_btok
from tests.helpers.twopass import TOL, assert_same, single_pass, two_pass

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


def with_side(examples, side):
    """The examples with ``target_side`` set ("mixed": each example another side), an explicit
    ``"target"`` kept only where the side lets the query's BToks generate."""
    sides = ["positive", "query", "both", "none"]
    out = []
    for i, ex in enumerate(examples):
        s = sides[i % 4] if side == "mixed" else side
        ex = dict(ex, target_side=s)
        if s in ("query", "none") or (s == "both" and not ex.get("target", "x")):
            ex.pop("target", None)
        out.append(ex)
    return out


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_single_pass_equals_two_pass(family, attn):
    model = tiny_btok(family)
    assert_same(single_pass(model, LONG_EXAMPLES), two_pass(model, LONG_EXAMPLES, attn), f"{family}/{attn}")


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("side", ["query", "both", "mixed"])
def test_each_generation_side_equals_two_pass(family, side):
    """Targets after the positives' BToks (the positive generates the query) too."""
    model = tiny_btok(family)
    examples = with_side(LONG_EXAMPLES, side)
    single, double = single_pass(model, examples), two_pass(model, examples, "sdpa")
    assert_same(single, double, f"{family}/{side}")
    batch = model.collate(examples)
    layout, n = batch["btok_layout"], len(examples)
    on_positives = [t < len_ for t, len_ in zip(layout.host_target_start[n : 2 * n], layout.seqlens[n : 2 * n])]
    assert any(on_positives) and not any(
        t < len_ for t, len_ in zip(layout.host_target_start[2 * n :], layout.seqlens[2 * n :])
    )


def test_side_none_leaves_no_target_and_targets_change_no_embedding():
    """``none``: no target, no label, 0 target tokens, nothing generated in the two passes; the
    embeddings of every query and candidate are the same whichever side generates."""
    model = tiny_btok("qwen2")
    batch = model.collate(with_side(LONG_EXAMPLES, "none"))
    layout = batch["btok_layout"]
    assert layout.host_target_start == layout.seqlens and batch["num_target_tokens"] == 0
    assert (batch["labels"] == -100).all()
    out = two_pass_forward(model, with_side(LONG_EXAMPLES, "none"))
    assert out.generative_loss is None and out.num_target_tokens == 0
    ref = model.embed_batch(batch)
    assert ref.generative_loss is None and ref.num_target_tokens == 0
    for side in ("positive", "query", "both", "mixed"):
        got = model.embed_batch(model.collate(with_side(LONG_EXAMPLES, side)))
        assert got.generative_loss is not None
        # A packing with other lengths may round differently (fp32 ulps: the CPU kernel batches
        # sequences by length); a target reaching an embedding would move it by ~1e-2.
        assert rel_err(got.query_embeddings.detach(), ref.query_embeddings.detach()) < 1e-6, side
        assert rel_err(got.candidate_embeddings.detach(), ref.candidate_embeddings.detach()) < 1e-6, side


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
    assert rel_err(out.candidate_embeddings.detach(), model.encode(["d"])) < TOL
