"""Tiny random-weight models built from real transformers config classes, and comparisons.

Nothing is downloaded. Models are fp32, 2 layers, hidden 64, head dim 16, GQA (4 query
heads, 2 KV heads), so that the Triton interpreter stays fast.
"""

from __future__ import annotations

import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
)

from tests.helpers.oracle import dense_mask
from tests.helpers.tiny_models import TINY_TEXT_CONFIG, widened

VOCAB = 96
IMAGE_TOKEN, VISION_START, VISION_END = 93, 94, 95  # Qwen2-VL / Qwen3-VL special tokens, outside the text ids
# The vision-language models: they take [text; 3 M-RoPE rows] packed positions.
VL_MODELS = ("qwen2_vl", "qwen3_vl")

TEXT_CONFIG = dict(TINY_TEXT_CONFIG, vocab_size=VOCAB)
VISION_COMMON = dict(in_channels=3, patch_size=2, temporal_patch_size=2, spatial_merge_size=2)
VL_TOKEN_IDS = dict(image_token_id=IMAGE_TOKEN, vision_start_token_id=VISION_START, vision_end_token_id=VISION_END)


def _llama():
    return LlamaForCausalLM(LlamaConfig(**TEXT_CONFIG, head_dim=16))


def _mistral():
    # A sliding window longer than every test sequence: exact, so the backend accepts it.
    return MistralForCausalLM(MistralConfig(**TEXT_CONFIG, head_dim=16, sliding_window=64))


def _qwen2():
    return Qwen2ForCausalLM(Qwen2Config(**TEXT_CONFIG))


def _qwen3():
    return Qwen3ForCausalLM(Qwen3Config(**TEXT_CONFIG, head_dim=16))


def _qwen2_vl():
    text = dict(TEXT_CONFIG, rope_parameters=dict(rope_type="default", rope_theta=10000.0, mrope_section=[2, 3, 3]))
    vision = dict(VISION_COMMON, depth=2, embed_dim=32, hidden_size=64, num_heads=2, mlp_ratio=2)
    return Qwen2VLForConditionalGeneration(Qwen2VLConfig(text_config=text, vision_config=vision, **VL_TOKEN_IDS))


def _qwen3_vl():
    # Interleaved M-RoPE over 8 frequencies, q/k norms; both vision blocks feed both text layers (deepstack).
    rope = dict(rope_type="default", rope_theta=10000.0, mrope_section=[4, 2, 2], mrope_interleaved=True)
    vision = dict(
        VISION_COMMON,
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        out_hidden_size=64,
        num_position_embeddings=16,
        deepstack_visual_indexes=[0, 1],
    )
    text = dict(TEXT_CONFIG, head_dim=16, rope_parameters=rope)
    return Qwen3VLForConditionalGeneration(Qwen3VLConfig(text_config=text, vision_config=vision, **VL_TOKEN_IDS))


BUILDERS = {
    "llama": _llama,
    "mistral": _mistral,
    "qwen2": _qwen2,
    "qwen3": _qwen3,
    "qwen2_vl": _qwen2_vl,
    "qwen3_vl": _qwen3_vl,
}


def tiny_model(name: str, seed: int = 0) -> torch.nn.Module:
    """A tiny random model of family ``name`` in eval mode, fp32, on the CPU."""
    torch.manual_seed(seed)
    # wider random weights than the default init: a wrong mask cannot hide under the tolerance
    return widened(BUILDERS[name]()).eval()


def random_ids(lengths: list[int], seed: int = 1) -> list[torch.Tensor]:
    """One random token-id sequence per length (ids 1..89: no pad id, no special tokens)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, 90, (n,), generator=g) for n in lengths]


def pad_batch(seqs: list[torch.Tensor], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids [B, S], attention_mask [B, S])`` padded with id 0 on ``side``."""
    width = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for r, s in enumerate(seqs):
        sl = slice(width - len(s), width) if side == "left" else slice(0, len(s))
        ids[r, sl], mask[r, sl] = s, 1
    return ids, mask


def forward_backward(model, impl: str, weight_seed: int = 7, weights: torch.Tensor | None = None, **inputs):
    """Logits and parameter gradients of a fixed random linear loss on the valid logits.

    The loss weighs each logit of a real token by a fixed random number (``weights``, by
    default drawn from ``weight_seed``), so every logit row and every parameter gradient is
    checked. Returns ``(logits, {name: grad})``.
    """
    model.set_attn_implementation(impl)
    model.zero_grad(set_to_none=True)
    logits = model(**inputs).logits
    if weights is None:
        weights = torch.randn(logits.shape, generator=torch.Generator().manual_seed(weight_seed))
    weights = weights.to(logits.device)
    valid = inputs.get("attention_mask")
    if valid is not None:
        weights = weights * valid[..., None]
    (logits * weights).sum().backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), grads


def dense_condensation_mask(query_len: int, num_btoks: int, length: int, dtype=torch.float32) -> torch.Tensor:
    """Additive ``[1, 1, L, L]`` mask of one ``[query | BToks | target]`` sequence, for "eager"."""
    allowed = dense_mask(length, query_len, query_len + num_btoks)
    return torch.where(allowed, 0.0, torch.finfo(dtype).min).to(dtype)[None, None]


def model_backends(models: list[str], triton: list[str]) -> list:
    """``(model name, kernel backend)`` cases for ``@pytest.mark.parametrize("name,kernel_backend",
    ..., indirect=["kernel_backend"])``: every model on the CPU default backend, the models
    in ``triton`` also through the Triton kernels (interpreted: seconds per model)."""
    cases = [pytest.param(name, "auto", id=f"{name}-auto") for name in models]
    return cases + [pytest.param(name, "triton", id=f"{name}-triton", marks=pytest.mark.interpret) for name in triton]
