"""Qwen2-VL and Qwen3-VL with images: the vision tower (non-causal, ``is_causal=False``) and
the text model both run under ``"btok_triton"`` and match ``"sdpa"``; the vision tower runs
on the kernel with bidirectional layouts, not on the SDPA fallback. Qwen3-VL adds interleaved
M-RoPE, learned vision positions and deepstack (vision block outputs added to the first text
layers' states at the image tokens), all checked through the same logits and gradients."""

import pytest
import torch

import btok_model  # noqa: F401  (registers "btok_triton")
from btok_kernels import CondensationLayout
from btok_model.backend import attention as attention_module
from tests.helpers.numerics import assert_close, assert_grads_close
from tests.helpers.tiny import (
    BACKEND_IMAGE_TOKEN,
    BACKEND_VISION_END,
    BACKEND_VISION_START,
    BACKEND_VL_MODELS,
    backend_model,
    dense_condensation_mask,
    forward_backward,
    model_backends,
    pad_batch,
    random_ids,
)

TOL = 2e-5
GRIDS = [(1, 4, 4), (1, 4, 6)]  # (t, h, w) patches per image; 2x2 merge -> 4 and 6 image tokens
PATCH_DIM = 3 * 2 * 2 * 2  # channels * temporal_patch_size * patch_size**2


def image_prompt(text_ids, grid):
    n = grid[0] * grid[1] * grid[2] // 4
    vision = [BACKEND_VISION_START] + [BACKEND_IMAGE_TOKEN] * n + [BACKEND_VISION_END]
    return torch.cat([text_ids[:2], torch.tensor(vision), text_ids[2:]])


def image_batch(side):
    seqs = [image_prompt(t, g) for t, g in zip(random_ids([5, 3], seed=11), GRIDS)]
    ids, mask = pad_batch(seqs, side)
    g = torch.Generator().manual_seed(12)
    pixels = torch.randn(sum(t * h * w for t, h, w in GRIDS), PATCH_DIM, generator=g)
    return ids, mask, pixels, torch.tensor(GRIDS)


def image_inputs(ids, mask, pixels, grid, device):
    """Model inputs; ``mm_token_type_ids`` (1 = image token) is what the processor returns."""
    return dict(
        input_ids=ids.to(device),
        attention_mask=mask.to(device),
        pixel_values=pixels.to(device),
        image_grid_thw=grid.to(device),
        mm_token_type_ids=(ids == BACKEND_IMAGE_TOKEN).long().to(device),
    )


class KernelCalls:
    """Counts the tokens the backend sends to the kernel with bidirectional layouts, and
    makes any call of the non-causal SDPA fallback fail."""

    def __init__(self, monkeypatch):
        self.bidirectional_tokens = 0
        real = attention_module.condensation_attention

        def counting(q, k, v, layout, **kwargs):
            if not layout.is_causal:
                self.bidirectional_tokens += layout.total_tokens
            return real(q, k, v, layout, **kwargs)

        monkeypatch.setattr(attention_module, "condensation_attention", counting)
        monkeypatch.setattr(attention_module, "bidirectional_attention", None)


def image_cases() -> list:
    """``(model, kernel backend, padding side)``: every case on the CPU default backend; the
    Triton kernels (interpreted, seconds each) on both sides for Qwen2-VL, one for Qwen3-VL."""
    cases = [pytest.param(n, "auto", s, id=f"{n}-auto-{s}") for n in BACKEND_VL_MODELS for s in ("left", "right")]
    triton = [("qwen2_vl", "left"), ("qwen2_vl", "right"), ("qwen3_vl", "left")]
    return cases + [pytest.param(n, "triton", s, id=f"{n}-triton-{s}", marks=pytest.mark.interpret) for n, s in triton]


@pytest.mark.parametrize("name,kernel_backend,side", image_cases(), indirect=["kernel_backend"])
def test_images_match_sdpa(name, side, kernel_backend, device, monkeypatch):
    model = backend_model(name).to(device)
    ids, mask, pixels, grid = image_batch(side)
    inputs = image_inputs(ids, mask, pixels, grid, device)
    ref_logits, ref_grads = forward_backward(model, "sdpa", **inputs)
    calls = KernelCalls(monkeypatch)
    logits, grads = forward_backward(model, "btok_triton", **inputs)
    # every patch of every vision block went through the kernel, none through SDPA
    assert calls.bidirectional_tokens == len(model.model.visual.blocks) * pixels.shape[0]
    assert any("visual" in n for n in grads), "the vision tower must get gradients"
    valid = mask.bool().to(device)
    assert_close(logits[valid], ref_logits[valid], TOL, "logits with images")
    assert_grads_close(grads, ref_grads, TOL)


@pytest.mark.parametrize("name", BACKEND_VL_MODELS)
def test_vision_tower_uses_the_backend(name, device):
    """The vision config is switched too, and its attention is not causal."""
    model = backend_model(name).to(device)
    model.set_attn_implementation("btok_triton")
    vision = model.model.visual
    assert vision.config._attn_implementation == "btok_triton"
    assert vision.blocks[0].attn.is_causal is False


@pytest.mark.parametrize(
    "name,kernel_backend", model_backends(BACKEND_VL_MODELS, triton=["qwen2_vl"]), indirect=["kernel_backend"]
)
def test_generate_with_images_matches_sdpa(name, kernel_backend, device):
    model = backend_model(name).to(device)
    ids, mask, pixels, grid = image_batch("left")
    tokens = {}
    for impl in ("sdpa", "btok_triton"):
        model.set_attn_implementation(impl)
        out = model.generate(
            **image_inputs(ids, mask, pixels, grid, device),
            max_new_tokens=4,
            do_sample=False,
            pad_token_id=0,
            eos_token_id=None,
        )
        tokens[impl] = out[:, ids.shape[1] :].tolist()
    assert tokens["btok_triton"] == tokens["sdpa"]


@pytest.mark.parametrize(
    "name,kernel_backend", model_backends(BACKEND_VL_MODELS, triton=["qwen2_vl"]), indirect=["kernel_backend"]
)
def test_condensation_with_images_equals_eager_dense_mask(name, kernel_backend, device):
    """BTok training on image queries: one packed pass with ``btok_layout`` (which also reaches
    the non-causal vision tower, where it does not apply) equals each sequence alone through
    ``"eager"`` with a dense condensation mask, with M-RoPE positions from the model."""
    model = backend_model(name).to(device)
    btoks, targets = torch.tensor([91, 92]), random_ids([3, 2], seed=13)
    queries = [image_prompt(t, g) for t, g in zip(random_ids([3, 4], seed=11), GRIDS)]
    seqs = [torch.cat([q, btoks, t]) for q, t in zip(queries, targets)]
    g = torch.Generator().manual_seed(12)
    pixels = [torch.randn(t * h * w, PATCH_DIM, generator=g) for t, h, w in GRIDS]
    singles = []
    for s, px, grid in zip(seqs, pixels, GRIDS):
        inputs = image_inputs(s[None], torch.ones(1, len(s), dtype=torch.long), px, torch.tensor([grid]), device)
        inputs["position_ids"] = model.model.get_rope_index(
            inputs["input_ids"], inputs["mm_token_type_ids"], inputs["image_grid_thw"]
        )[0]
        singles.append(inputs)

    layout = CondensationLayout.from_lengths([len(q) for q in queries], 2, [len(t) for t in targets], device=device)
    packed = {
        key: torch.cat([s[key] for s in singles], dim=0 if key in ("pixel_values", "image_grid_thw") else -1)
        for key in ("input_ids", "mm_token_type_ids", "pixel_values", "image_grid_thw", "position_ids")
    }
    logits, grads = forward_backward(model, "btok_triton", btok_layout=layout, **packed)

    weights = torch.randn(logits.shape, generator=torch.Generator().manual_seed(7)).to(device)
    model.set_attn_implementation("eager")
    model.zero_grad(set_to_none=True)
    ref, start = [], 0
    for s, q in zip(singles, queries):
        del s["attention_mask"]
        n = s["input_ids"].shape[1]
        out = model(**s, attention_mask=dense_condensation_mask(len(q), 2, n).to(device)).logits
        (out * weights[:, start : start + n]).sum().backward()
        ref.append(out.detach())
        start += n
    ref_grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    assert_close(logits, torch.cat(ref, 1), TOL, "packed image condensation vs eager")
    assert_grads_close(grads, ref_grads, TOL)
