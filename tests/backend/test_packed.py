"""Packed batches: padding-free packing equals padding; ``btok_layout`` applies the
condensation mask exactly as an eager model with a dense 4D mask does."""

import pytest
import torch

import btok_model  # noqa: F401  (registers "btok_triton")
from btok_kernels import CondensationLayout
from tests.helpers.numerics import assert_close, assert_grads_close, rel_err
from tests.helpers.tiny import (
    BACKEND_VL_MODELS,
    backend_model,
    dense_condensation_mask,
    forward_backward,
    model_backends,
    pad_batch,
    random_ids,
)

MODELS = ["llama", "qwen2", "qwen3", "qwen2_vl", "qwen3_vl"]
TOL = 2e-5


def packed_positions(name, lengths, device):
    """Positions restarting at 0 for each sequence; Qwen2-VL / Qwen3-VL take [text; 3 M-RoPE rows]."""
    pos = torch.cat([torch.arange(n) for n in lengths])[None].to(device)
    return pos[None].expand(4, 1, -1) if name in BACKEND_VL_MODELS else pos


def single_positions(name, length, device):
    pos = torch.arange(length, device=device)[None]
    return pos[None].expand(3, 1, -1) if name in BACKEND_VL_MODELS else pos


@pytest.mark.parametrize(
    "name,kernel_backend", model_backends(MODELS, triton=["qwen2_vl"]), indirect=["kernel_backend"]
)
def test_packed_position_ids_equal_padded(name, kernel_backend, device):
    model = backend_model(name).to(device)
    lengths = [6, 9, 3]
    seqs = random_ids(lengths)
    ids, mask = pad_batch(seqs, "right")
    valid = mask.bool().to(device)
    weights = torch.randn(*ids.shape, model.config.get_text_config().vocab_size).to(device)
    padded, padded_grads = forward_backward(
        model, "btok_triton", weights=weights, input_ids=ids.to(device), attention_mask=mask.to(device)
    )
    packed_ids = torch.cat(seqs)[None].to(device)
    pos = packed_positions(name, lengths, device)
    for impl in ("btok_triton", "sdpa"):
        # "sdpa" looks for packed position_ids only without a cache (flash attention and
        # btok_triton always do), so the cache is turned off for the comparison.
        packed, packed_grads = forward_backward(
            model, impl, weights=weights[valid][None], input_ids=packed_ids, position_ids=pos, use_cache=False
        )
        assert_close(packed[0], padded[valid], TOL, f"packed ({impl}) vs padded logits")
        assert_grads_close(packed_grads, padded_grads, TOL)


def test_packed_cu_seq_lens_kwargs_equal_padded(kernel_backend, device):
    """transformers' padding-free kwargs (DataCollatorWithFlattening(return_flash_attn_kwargs=True))."""
    model = backend_model("llama").to(device)
    lengths = [5, 8, 2]
    seqs = random_ids(lengths, seed=5)
    ids, mask = pad_batch(seqs, "right")
    padded, _ = forward_backward(model, "sdpa", input_ids=ids.to(device), attention_mask=mask.to(device))
    cu = torch.tensor([0, 5, 13, 15], dtype=torch.int32, device=device)
    packed, _ = forward_backward(
        model,
        "btok_triton",
        input_ids=torch.cat(seqs)[None].to(device),
        position_ids=packed_positions("llama", lengths, device),
        cu_seq_lens_q=cu,
        cu_seq_lens_k=cu,
        max_length_q=8,
        max_length_k=8,
    )
    assert_close(packed[0], padded[mask.bool().to(device)], TOL, "packed (cu_seq_lens) vs padded logits")


# -- condensation -----------------------------------------------------------------------
QUERY_LENS, NUM_BTOKS, TARGET_LENS = [5, 3, 7], 2, [4, 3, 2]


def condensation_batch(seed=2):
    """Per-sequence ids ``[query | BToks | target]``; BToks are the same ids everywhere."""
    queries = random_ids(QUERY_LENS, seed=seed)
    targets = random_ids(TARGET_LENS, seed=seed + 100)
    btoks = torch.tensor([91, 92][:NUM_BTOKS])
    return [torch.cat([q, btoks, t]) for q, t in zip(queries, targets)]


def run_packed(model, name, seqs, device, with_layout=True):
    lengths = [len(s) for s in seqs]
    layout = CondensationLayout.from_lengths(QUERY_LENS, NUM_BTOKS, TARGET_LENS, device=device)
    extra = dict(btok_layout=layout) if with_layout else {}
    return forward_backward(
        model,
        "btok_triton",
        input_ids=torch.cat(seqs)[None].to(device),
        position_ids=packed_positions(name, lengths, device),
        **extra,
    )


@pytest.mark.parametrize(
    "name,kernel_backend", model_backends(MODELS, triton=["llama", "qwen3"]), indirect=["kernel_backend"]
)
def test_condensation_equals_eager_dense_mask(name, kernel_backend, device):
    model = backend_model(name).to(device)
    seqs = condensation_batch()
    packed, packed_grads = run_packed(model, name, seqs, device)

    # Reference: each sequence alone through "eager" with the dense condensation mask. The
    # packed loss weights are the per-sequence weights laid end to end.
    g = torch.Generator().manual_seed(7)
    weights = torch.randn(packed.shape, generator=g).to(device)
    model.set_attn_implementation("eager")
    model.zero_grad(set_to_none=True)
    logits, start = [], 0
    for q_len, s in zip(QUERY_LENS, seqs):
        n = len(s)
        out = model(
            input_ids=s[None].to(device),
            position_ids=single_positions(name, n, device),
            attention_mask=dense_condensation_mask(q_len, NUM_BTOKS, n).to(device),
        ).logits
        (out * weights[:, start : start + n]).sum().backward()
        logits.append(out.detach())
        start += n
    ref_grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    assert_close(packed, torch.cat(logits, 1), TOL, "packed condensation vs eager dense-mask logits")
    assert_grads_close(packed_grads, ref_grads, TOL)


def _target_rows():
    rows, start = [], 0
    for q, t in zip(QUERY_LENS, TARGET_LENS):
        rows += range(start + q + NUM_BTOKS, start + q + NUM_BTOKS + t)
        start += q + NUM_BTOKS + t
    return torch.tensor(rows)


@pytest.mark.parametrize(
    "name,kernel_backend", model_backends(["llama", "qwen2_vl", "qwen3_vl"], triton=[]), indirect=["kernel_backend"]
)
def test_condensation_mask_is_applied(name, kernel_backend, device):
    """Target rows differ from plain causal packing, and see the query only through the BToks."""
    model = backend_model(name).to(device)
    seqs = condensation_batch()
    rows = _target_rows().to(device)
    condensed, _ = run_packed(model, name, seqs, device)
    causal, _ = run_packed(model, name, seqs, device, with_layout=False)
    assert rel_err(condensed[0, rows], causal[0, rows]) > 1e-2, "target rows ignore the condensation cut"
    assert_close(condensed[0, :3], causal[0, :3], TOL, "query rows are plain causal")

    # Change every query token: with two layers the target rows still change, because the
    # second layer's BTok keys carry the query (the one-layer test below shows the cut).
    other = condensation_batch(seed=9)
    swapped = [torch.cat([o[:q], s[q:]]) for o, s, q in zip(other, seqs, QUERY_LENS)]
    changed, _ = run_packed(model, name, swapped, device)
    assert rel_err(changed[0, rows], condensed[0, rows]) > 1e-3, "target rows must depend on the query via BToks"


def test_one_layer_target_rows_see_the_query_only_through_btoks(kernel_backend, device):
    """With one decoder layer the BTok keys/values are embeddings of the BTok ids, which do not
    depend on the query: changing every query token leaves the target logits unchanged."""
    model = backend_model("llama").to(device)
    model.model.layers = model.model.layers[:1]
    model.config.num_hidden_layers = 1
    seqs = condensation_batch()
    other = condensation_batch(seed=9)
    swapped = [torch.cat([o[:q], s[q:]]) for o, s, q in zip(other, seqs, QUERY_LENS)]
    rows = _target_rows().to(device)
    a, _ = run_packed(model, "llama", seqs, device)
    b, _ = run_packed(model, "llama", swapped, device)
    assert rel_err(b[0, rows], a[0, rows]) < 1e-6, "target rows must not see query tokens"
    assert rel_err(b[0, : QUERY_LENS[0]], a[0, : QUERY_LENS[0]]) > 1e-2, "query rows must change"
