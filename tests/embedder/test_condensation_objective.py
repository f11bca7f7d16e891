"""The condensation objective as the method defines it: embeddings never see targets, and the
target sees its query only through the BToks."""

import pytest
import torch

from btok_kernels import CondensationLayout
from btok_model.embedder.backbone import transformers_model
from btok_model.embedder.losses import next_token_loss
from tests.helpers.numerics import rel_err
from tests.helpers.tiny import EXAMPLES, tiny_btok

TOL = 2e-6


def target_rows(layout) -> torch.Tensor:
    """Every target row that predicts a next target token: all target rows but each sequence's last."""
    cu, rows = layout.host_cu_seqlens, []
    for s, t in enumerate(layout.host_target_start):
        rows += range(cu[s] + t, cu[s + 1] - 1)
    return torch.tensor(rows, dtype=torch.long)


def texts(examples):
    queries = [ex["query"] for ex in examples]
    candidates = [ex["positive"] for ex in examples] + [n for ex in examples for n in ex.get("negatives", [])]
    return queries, candidates


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_training_embeddings_equal_encode(family):
    model = tiny_btok(family)
    batch = model.collate(EXAMPLES)
    assert batch["num_target_tokens"] > 0
    embedded = model.embed_batch(batch)
    query, candidates = embedded.query_embeddings, embedded.candidate_embeddings
    queries, cands = texts(EXAMPLES)
    for packed in (True, False):
        assert rel_err(model.encode(queries, batch_size=3, packed=packed), query.detach()) < TOL
        assert rel_err(model.encode(cands, batch_size=2, packed=packed), candidates.detach()) < TOL


def test_targets_change_no_embedding():
    model = tiny_btok()
    base = [dict(ex, target=f"target {i}") for i, ex in enumerate(EXAMPLES)]
    same_length = [dict(ex, target=f"tarxet {i}") for i, ex in enumerate(EXAMPLES)]
    other_length = [dict(ex, target="a much longer target " * (i + 1)) for i, ex in enumerate(EXAMPLES)]
    with torch.no_grad():
        ref = model.embed_batch(model.collate(base))
        got = model.embed_batch(model.collate(same_length))
        assert torch.equal(got.query_embeddings, ref.query_embeddings), "same-length target changed an embedding"
        assert torch.equal(got.candidate_embeddings, ref.candidate_embeddings), "same-length target changed one"
        assert not torch.equal(got.generative_loss, ref.generative_loss), "the target must change the generative loss"
        got = model.embed_batch(model.collate(other_length))
        assert rel_err(got.query_embeddings, ref.query_embeddings) < TOL
        assert rel_err(got.candidate_embeddings, ref.candidate_embeddings) < TOL


def _query_embedding_grad(model, batch, attention_layout, cut_btoks: bool) -> torch.Tensor:
    """Gradient of the generative loss w.r.t. the input embeddings ``[T, H]``.

    ``attention_layout`` is what attention sees; the target rows and labels are those of the
    batch. With ``cut_btoks`` every decoder layer gets the BTok rows' input states detached,
    which cuts every path from the query to the target that runs through a BTok.
    """
    layout = batch["btok_layout"]
    starts = torch.tensor(layout.host_cu_seqlens[:-1])
    btok_rows = (starts + torch.tensor(layout.host_btok_start))[:, None] + torch.arange(model.config.num_btoks)
    is_btok = torch.zeros(layout.total_tokens, dtype=torch.bool)
    is_btok[btok_rows.flatten()] = True

    def cut(module, args, kwargs):
        hidden = args[0]
        return (torch.where(is_btok[None, :, None], hidden.detach(), hidden), *args[1:]), kwargs

    captured = {}

    def keep(module, args, output):
        output.retain_grad()
        captured["embeds"] = output

    lm = transformers_model(model.backbone)
    hooks = [lm.get_input_embeddings().register_forward_hook(keep)]
    if cut_btoks:
        hooks += [layer.register_forward_pre_hook(cut, with_kwargs=True) for layer in model.decoder.layers]
    try:
        hidden = model._last_hidden_states(batch["input_ids"], batch["position_ids"], layout=attention_layout)
        rows = target_rows(layout)
        logits = lm.get_output_embeddings()(hidden[rows])
        loss = next_token_loss(logits, batch["labels"][0, rows + 1], batch["num_target_tokens"])
        loss.backward()
    finally:
        for hook in hooks:
            hook.remove()
    return captured["embeds"].grad[0]


def _query_rows(batch, with_target):
    layout = batch["btok_layout"]
    rows = []
    for s in with_target:
        start = layout.host_cu_seqlens[s]
        rows += range(start, start + layout.host_btok_start[s])
    return torch.tensor(rows)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_target_sees_the_query_only_through_btoks(family):
    model = tiny_btok(family)
    batch = model.collate(EXAMPLES)
    layout = batch["btok_layout"]
    with_target = [s for s in range(len(EXAMPLES)) if layout.host_target_start[s] < layout.seqlens[s]]
    assert len(with_target) == 3
    query_rows = _query_rows(batch, with_target)

    # Through the BToks the target depends on every query token...
    grad = _query_embedding_grad(model, batch, layout, cut_btoks=False)
    assert (grad[query_rows].abs().sum(1) > 0).all()
    # ... and with the BTok paths cut, on none: exactly zero, not just small.
    grad = _query_embedding_grad(model, batch, layout, cut_btoks=True)
    assert torch.count_nonzero(grad[query_rows]) == 0
    assert (grad[target_rows(layout)].abs().sum(1) > 0).all(), "target rows must still get gradients"

    # Control: a mask that lets target rows see the query (plain causal) fails this check.
    leaky = CondensationLayout.causal(layout.host_cu_seqlens)
    grad = _query_embedding_grad(model, batch, leaky, cut_btoks=True)
    assert (grad[query_rows].abs().sum(1) > 0).all()
