"""``"btok_triton"`` gives the same logits, gradients and generations as ``"sdpa"``.

Each model is one set of random weights run under both implementations; fp32 on both
sides, so the only differences are summation order (relative L2 error ~1e-7).
"""

import inspect

import pytest
import torch
from transformers import Qwen3ForCausalLM

import btok_model  # noqa: F401  (registers "btok_triton")
from tests.helpers.numerics import assert_close, assert_grads_close
from tests.helpers.tiny import backend_model, forward_backward, model_backends, pad_batch, random_ids

TEXT_MODELS = ["llama", "mistral", "qwen2", "qwen3", "qwen2_vl", "qwen3_vl"]
# transformers 5.24 renamed `past_key_values` to `cache` (the old name warns); 5.17 has only the old one.
CACHE = "cache" if "cache" in inspect.signature(Qwen3ForCausalLM.forward).parameters else "past_key_values"


def returned_cache(output):
    return getattr(output, CACHE)


TOL = 2e-5


@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize(
    "name,kernel_backend", model_backends(TEXT_MODELS, triton=["llama", "qwen2_vl"]), indirect=["kernel_backend"]
)
def test_padded_batch_matches_sdpa(name, side, kernel_backend, device):
    model = backend_model(name).to(device)
    ids, mask = pad_batch(random_ids([11, 4, 8]), side)
    inputs = dict(input_ids=ids.to(device), attention_mask=mask.to(device))
    ref_logits, ref_grads = forward_backward(model, "sdpa", **inputs)
    logits, grads = forward_backward(model, "btok_triton", **inputs)
    valid = mask.bool().to(device)
    assert_close(logits[valid], ref_logits[valid], TOL, "logits of real tokens")
    assert_grads_close(grads, ref_grads, TOL)


@pytest.mark.parametrize(
    "name,kernel_backend", model_backends(TEXT_MODELS, triton=["qwen3"]), indirect=["kernel_backend"]
)
def test_unpadded_batch_matches_sdpa(name, kernel_backend, device):
    model = backend_model(name).to(device)
    ids = torch.stack(random_ids([9, 9])).to(device)
    ref_logits, ref_grads = forward_backward(model, "sdpa", input_ids=ids)
    logits, grads = forward_backward(model, "btok_triton", input_ids=ids)
    assert_close(logits, ref_logits, TOL, "logits")
    assert_grads_close(grads, ref_grads, TOL)


GENERATE_CASES = [(name, "dynamic", "auto") for name in TEXT_MODELS] + [
    ("llama", "static", "auto"),
    ("qwen3", "static", "auto"),
    ("mistral", "dynamic", "triton"),
    ("qwen3", "static", "triton"),
]


@pytest.mark.parametrize(
    ("name", "cache", "kernel_backend"),
    [pytest.param(*case, marks=[pytest.mark.interpret] if case[2] == "triton" else []) for case in GENERATE_CASES],
    ids=[f"{n}-{c}-{b}" for n, c, b in GENERATE_CASES],
    indirect=["kernel_backend"],
)
def test_greedy_generate_matches_sdpa(name, cache, kernel_backend, device):
    """Left-padded prompts, KV cache: prefill through the kernel, decoding through the fallback.

    A static cache hands the attention the whole preallocated cache, longer than the mask.
    """
    model = backend_model(name).to(device)
    ids, mask = pad_batch(random_ids([7, 3, 5], seed=3), "left")
    tokens = {}
    for impl in ("sdpa", "btok_triton"):
        model.set_attn_implementation(impl)
        out = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            max_new_tokens=6,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=None,
            cache_implementation=cache,
        )
        tokens[impl] = out[:, ids.shape[1] :].tolist()
    assert tokens["btok_triton"] == tokens["sdpa"]


def test_cached_decoding_matches_full_forward(kernel_backend, device):
    """Logits of tokens decoded one by one with a cache equal one full forward."""
    model = backend_model("qwen3").to(device)
    model.set_attn_implementation("btok_triton")
    ids = random_ids([10], seed=4)[0][None].to(device)
    with torch.no_grad():
        full = model(input_ids=ids).logits
        out = model(input_ids=ids[:, :6], use_cache=True)
        steps = [out.logits]
        for t in range(6, 10):
            out = model(input_ids=ids[:, t : t + 1], use_cache=True, **{CACHE: returned_cache(out)})
            steps.append(out.logits)
    assert_close(torch.cat(steps, 1), full, TOL, "cached logits")
