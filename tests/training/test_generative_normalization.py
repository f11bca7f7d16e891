"""The authors' generative-loss weighting (``generative_normalization="authors"``), computed by hand.

vlm2emb's BToksTrainer sorts a rank's batch by query length, cuts it into GradCache chunks and,
for the query group (the positive generated after the query's BToks) and the positive group
(the query generated after the positive's BToks) apart, adds each chunk's mean token loss times
(generating examples in the chunk / examples on the rank). Here every example's token losses
come from a pass of that example alone, and the authors' sum is formed from them directly.
"""

import pytest
import torch

from btok_model.embedder import LossWeights
from btok_model.training.collator import TrainingCollator
from btok_model.training.gradcache import grad_cache_step
from tests.helpers.numerics import assert_tensors_close
from tests.helpers.training import grads, sided_examples, tiny_model, tiny_recipe

WEIGHT = 2.0


def _side_sum(model, ex: dict, side: str) -> tuple[torch.Tensor, int]:
    """``(sum of the token losses, token count)`` of ``ex``'s target on ``side`` alone, with autograd."""
    alone = dict(ex, target_side=side)
    if side == "query":
        alone.pop("target", None)
    batch = model.collate([alone])
    out = model.embed_batch(batch)
    return out.generative_loss * batch.num_target_tokens, batch.num_target_tokens


def _authors_by_hand(model, batch: list[dict], chunk_size: int | None) -> torch.Tensor:
    """sum over chunks c and sides s of mean_tokens(c, s) * generating(c, s) / len(batch)."""
    order = sorted(range(len(batch)), key=lambda i: (len(batch[i]["query"]), i))  # char tokenizer: 1 token a char
    size = chunk_size or len(batch)
    total = torch.zeros(())
    for start in range(0, len(order), size):
        chunk = order[start : start + size]
        for side, generates in (("positive", ("positive", "both")), ("query", ("query", "both"))):
            members = [i for i in chunk if batch[i]["target_side"] in generates]
            if not members:
                continue
            sums, counts = zip(*(_side_sum(model, batch[i], side) for i in members))
            total = total + torch.stack(sums).sum() / sum(counts) * (len(members) / len(batch))
    return total


@pytest.mark.parametrize("chunk_size", [3, None], ids=["chunks-of-3", "one-pass"])
def test_authors_weighting_equals_the_hand_computation(chunk_size):
    model = tiny_model(tiny_recipe(generative_weight=WEIGHT), family="qwen2").train()
    batch = sided_examples()
    assert sorted(range(8), key=lambda i: (len(batch[i]["query"]), i)) != list(range(8)), "the sort must matter"
    weights = LossWeights(WEIGHT, normalization="authors")

    model.zero_grad(set_to_none=True)
    contrastive = model(model.collate(batch), loss_weights=LossWeights(0.0)).loss
    expected_loss = _authors_by_hand(model, batch, chunk_size)
    (contrastive + WEIGHT * expected_loss).backward()
    expected_grads = grads(model)

    model.zero_grad(set_to_none=True)
    if chunk_size is None:
        out = model(model.collate(batch), loss_weights=weights)
        out.loss.backward()
    else:
        chunker = TrainingCollator(model.collator, True, chunk_size=chunk_size, sort_by_query_length=True)
        chunked = chunker(batch)
        assert len(chunked.chunks) == 3
        out = grad_cache_step(model, chunked, lambda loss: loss.backward(), weights)
    torch.testing.assert_close(out.generative_loss.detach(), expected_loss.detach(), rtol=1e-5, atol=0)
    torch.testing.assert_close(out.loss.detach(), (contrastive + WEIGHT * expected_loss).detach(), rtol=1e-5, atol=0)
    assert_tensors_close(grads(model), expected_grads, 2e-5, "grad")

    # btok's token mean is another number on the same batch.
    token = model(model.collate(batch), loss_weights=LossWeights(WEIGHT)).generative_loss
    assert not torch.isclose(token.detach(), expected_loss.detach(), rtol=1e-3)


def test_unsorted_chunks_give_another_authors_number():
    """The weighting depends on which examples share a chunk: the sort is part of it."""
    model = tiny_model(tiny_recipe(generative_weight=WEIGHT), family="qwen2").eval()
    batch = sided_examples()
    weights = LossWeights(WEIGHT, normalization="authors")
    values = []
    for sort in (True, False):
        chunker = TrainingCollator(model.collator, True, chunk_size=3, sort_by_query_length=sort)
        values.append(grad_cache_step(model, chunker(batch), lambda loss: loss.backward(), weights).generative_loss)
    assert not torch.isclose(values[0], values[1], rtol=1e-4)


def test_unknown_normalization_is_refused():
    with pytest.raises(ValueError, match="generative normalization must be one of"):
        LossWeights(1.0, normalization="sample")
