"""GradCache chunks give the full batch's loss and gradients."""

import pytest
import torch

from btok_model.embedder import BatchEmbeddings, BTokBatch, LossWeights
from btok_model.training.collator import ChunkedBatch, TrainingCollator
from btok_model.training.gradcache import grad_cache_step
from tests.helpers.numerics import assert_tensors_close
from tests.helpers.training import examples, grads, tiny_model, tiny_recipe

TOL = 2e-5  # fp32, a different summation order only


def _full_step(model, batch):
    model.zero_grad(set_to_none=True)
    out = model(**batch)
    out.loss.backward()
    return out, grads(model)


def _chunked_step(model, batch, weights: LossWeights, **kwargs):
    model.zero_grad(set_to_none=True)
    parts = grad_cache_step(model, batch, lambda loss: loss.backward(), weights, **kwargs)
    return parts, grads(model)


@pytest.mark.parametrize(
    "family, chunk_size, max_tokens",
    [("llama", 1, None), ("qwen2", 3, None), ("llama", 2, 150)],
    ids=["llama-1-per-chunk", "qwen2-3-per-chunk", "llama-both-limits"],
)
def test_chunked_equals_full_batch(family, chunk_size, max_tokens):
    model = tiny_model(tiny_recipe(generative_weight=2.0), family=family).train()
    batch_examples = examples(8)
    full_batch = model.collate(batch_examples)
    chunker = TrainingCollator(model.collator, True, chunk_size=chunk_size, max_tokens=max_tokens)
    chunked = chunker(batch_examples)
    assert isinstance(chunked, ChunkedBatch) and len(chunked.chunks) > 1
    if max_tokens is not None:
        assert all(c.batch.input_ids.shape[1] <= max_tokens for c in chunked.chunks)
    full, expected = _full_step(model, full_batch)
    parts, actual = _chunked_step(model, chunked, LossWeights(2.0))
    assert full.generative_loss is not None
    torch.testing.assert_close(parts.contrastive_loss, full.contrastive_loss.detach(), rtol=1e-5, atol=0)
    torch.testing.assert_close(parts.generative_loss, full.generative_loss.detach(), rtol=1e-5, atol=0)
    torch.testing.assert_close(parts.loss, full.loss.detach(), rtol=1e-5, atol=0)
    assert_tensors_close(actual, expected, TOL, "grad")


def sided(batch_examples: list[dict]) -> list[dict]:
    """The examples generating on every side in turn: targets after the positives' BToks too."""
    out = []
    for i, ex in enumerate(batch_examples):
        side = ("query", "both", "positive", "none")[i % 4]
        ex = dict(ex, target_side=side, source=f"source-{i % 2}")
        if side in ("query", "none") or (side == "both" and not ex.get("target", "x")):
            ex.pop("target", None)
        out.append(ex)
    return out


def test_chunked_with_positive_side_targets_equals_full_batch():
    """Targets after the positives' BToks (target_side query / both): the chunks' embedding
    passes carry no target at all, and the chunked step equals the full batch."""
    model = tiny_model(tiny_recipe(generative_weight=2.0), family="qwen2").train()
    batch_examples = sided(examples(8))
    full_batch = model.collate(batch_examples)
    chunked = TrainingCollator(model.collator, True, chunk_size=3)(batch_examples)
    assert len(chunked.chunks) == 3
    for chunk in chunked.chunks:
        layout, embed_layout = chunk.batch.btok_layout, chunk.embed_batch.btok_layout
        assert embed_layout.host_target_start == embed_layout.seqlens and chunk.embed_batch.num_target_tokens == 0
        assert embed_layout.host_btok_start == layout.host_btok_start
    n = len(batch_examples)
    on_positives = full_batch["btok_layout"].host_target_start[n : 2 * n]
    assert any(t < length for t, length in zip(on_positives, full_batch["btok_layout"].seqlens[n : 2 * n]))
    assert chunked.num_target_tokens == full_batch.num_target_tokens
    full, expected = _full_step(model, full_batch)
    parts, actual = _chunked_step(model, chunked, LossWeights(2.0))
    torch.testing.assert_close(parts.contrastive_loss, full.contrastive_loss.detach(), rtol=1e-5, atol=0)
    torch.testing.assert_close(parts.generative_loss, full.generative_loss.detach(), rtol=1e-5, atol=0)
    assert_tensors_close(actual, expected, TOL, "grad")


def test_chunked_with_scales_equals_scaled_full_batch():
    """The rank-share weights scale the two parts separately, exactly as a weighted full loss."""
    model = tiny_model(tiny_recipe(generative_weight=3.0)).train()
    batch_examples = examples(6)
    full_batch = model.collate(batch_examples)
    model.zero_grad(set_to_none=True)
    out = model(**full_batch)
    n = full_batch["num_target_tokens"]
    (0.5 * (0.7 * out.contrastive_loss + 3.0 * out.generative_loss * n / 11.0)).backward()
    expected = grads(model)
    chunked = TrainingCollator(model.collator, True, chunk_size=2)(batch_examples)
    _, actual = _chunked_step(model, chunked, LossWeights(3.0, query_share=0.7, target_share=n / 11.0), scale=0.5)
    assert_tensors_close(actual, expected, TOL, "grad")


def test_dropout_masks_replayed():
    """With LoRA dropout, the re-run must draw the masks of the no-grad pass.

    Reference: the same chunks run forward WITH autograd from the same generator states,
    their embeddings concatenated and one backward through the whole loss -- the gradient
    GradCache has to reproduce. Without the replay the masks differ and so do the gradients.
    """
    model = tiny_model(tiny_recipe(lora_r=4, lora_dropout=0.3, generative_weight=1.0)).train()
    batch_examples = examples(6)
    chunked = TrainingCollator(model.collator, True, chunk_size=2)(batch_examples)

    torch.manual_seed(123)
    parts, actual = _chunked_step(model, chunked, LossWeights(1.0))

    torch.manual_seed(123)
    model.zero_grad(set_to_none=True)
    queries, candidates, states = [], [], []
    for chunk in chunked.chunks:  # pass 1 draws from these generator states, one per chunk
        states.append(torch.get_rng_state())
        with torch.no_grad():
            model.embed_batch(chunk.embed_batch)
    generative = 0.0
    for chunk, state in zip(chunked.chunks, states, strict=True):
        torch.set_rng_state(state)
        got = model.embed_batch(chunk.batch)
        queries.append(got.query_embeddings)
        candidates.append(got.candidate_embeddings)
        generative = generative + got.generative_loss * got.num_target_tokens / chunked.num_target_tokens
    embedded = BatchEmbeddings(torch.cat(queries), torch.cat(candidates), generative, chunked.num_target_tokens)
    out = model.compute_loss(embedded, chunked.positive_index)
    out.loss.backward()
    expected = grads(model)
    assert_tensors_close(actual, expected, TOL, "grad")
    torch.testing.assert_close(parts.contrastive_loss, out.contrastive_loss.detach(), rtol=1e-5, atol=0)


def test_single_chunk_is_a_plain_batch():
    model = tiny_model()
    batch = TrainingCollator(model.collator, True, chunk_size=8)(examples(4))
    assert isinstance(batch, BTokBatch)
    assert torch.equal(batch["input_ids"], model.collate(examples(4))["input_ids"])


def test_token_budget_too_small_names_the_example():
    model = tiny_model()
    with pytest.raises(ValueError, match=r"example 0 packs into .* tokens.*max_tokens=10"):
        TrainingCollator(model.collator, True, max_tokens=10)(examples(2))


def test_collator_without_targets_leaves_them_out():
    """A run without generative loss collates no target, the positives' included."""
    model = tiny_model()
    with_targets = TrainingCollator(model.collator, True)(sided(examples(4)))
    assert with_targets["num_target_tokens"] > 0
    layout = TrainingCollator(model.collator, False)(sided(examples(4)))["btok_layout"]
    assert layout.host_target_start == layout.seqlens
