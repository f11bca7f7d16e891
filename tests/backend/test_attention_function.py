"""The attention function called directly, on every calling convention transformers uses,
against ``torch.nn.functional.scaled_dot_product_attention`` with an explicit dense mask."""

import logging
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from btok_model import btok_attention_forward
from btok_model.backend import attention as attention_module
from btok_model.backend import fallback
from tests.helpers.numerics import assert_close
from tests.helpers.tiny import backend_model, pad_batch, random_ids

B, HQ, HKV, D = 3, 4, 2, 16
TOL = 1e-5


def qkv(seq_len, q_len=None, seed=0, v_dim=D, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, HQ, q_len or seq_len, D, generator=g)
    k = torch.randn(B, HKV, seq_len, D, generator=g)
    v = torch.randn(B, HKV, seq_len, v_dim, generator=g)
    return q.to(device), k.to(device), v.to(device)


def module(is_causal=True):
    return SimpleNamespace(is_causal=is_causal, config=SimpleNamespace(model_type="tiny"))


def dense_reference(q, k, v, allowed):
    """SDPA with a bool mask ``[B or 1, 1, Sq, Sk]``; returns ``[B, Sq, Hq, Dv]``."""
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, enable_gqa=True)
    return out.transpose(1, 2)


def causal(sq, sk):
    return torch.arange(sk)[None, :] <= torch.arange(sq)[:, None] + (sk - sq)


def test_padding_with_holes_unpads(kernel_backend, device):
    """A mask with holes inside a row cannot be split into segments: unpad, scatter back."""
    q, k, v = qkv(10, device=device)
    mask = torch.ones(B, 10, dtype=torch.bool)
    mask[0, 3:5] = False
    mask[1, :2] = False
    mask[2, 8:] = False
    out, weights = btok_attention_forward(module(), q, k, v, mask.to(device))
    allowed = (causal(10, 10)[None] & mask[:, None, :])[:, None].to(device)
    ref = dense_reference(q, k, v, allowed)
    assert weights is None and out.shape == (B, 10, HQ, D)
    assert_close(out[mask.to(device)], ref[mask.to(device)], TOL, "real rows")
    assert (out[~mask.to(device)] == 0).all()


def test_packed_position_ids_batch_of_several_rows(kernel_backend, device):
    """Packing is found per row for any batch size, as "sdpa" does."""
    q, k, v = qkv(8, device=device)
    pos = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5, 6, 7], [0, 1, 0, 1, 2, 0, 1, 2]])
    out, _ = btok_attention_forward(module(), q, k, v, None, position_ids=pos.to(device))
    seq = (torch.diff(pos, dim=1, prepend=pos[:, :1] - 1) != 1).cumsum(1)
    allowed = (causal(8, 8)[None] & (seq[:, :, None] == seq[:, None, :]))[:, None].to(device)
    assert_close(out, dense_reference(q, k, v, allowed), TOL, "packed rows")


@pytest.mark.parametrize("mask_len", [12, 9], ids=["dynamic_cache", "static_cache"])
def test_decoding_is_bottom_right_causal(mask_len, device, caplog):
    """Two new queries on a cache; with a static cache the mask is shorter than the keys.
    The SDPA fallback logs (once per process) at DEBUG level."""
    fallback._log_once.cache_clear()
    q, k, v = qkv(12, q_len=2, device=device)
    mask = torch.ones(B, mask_len, dtype=torch.bool)
    mask[1, :3] = False
    with caplog.at_level(logging.DEBUG, logger="btok_model"):
        out, _ = btok_attention_forward(module(), q, k, v, mask.to(device))
    assert [r.levelno for r in caplog.records if "KV-cache decoding" in r.getMessage()] == [logging.DEBUG]
    k, v = k[:, :, :mask_len], v[:, :, :mask_len]
    allowed = (causal(2, mask_len)[None] & mask[:, None, :])[:, None].to(device)
    assert_close(out, dense_reference(q, k, v, allowed), TOL, "decoding")


@pytest.mark.parametrize("mode", ["segments", "unpad"])
def test_non_causal_with_cu_seqlens_and_padding(mode, kernel_backend, device, monkeypatch):
    """Vision-tower style calls: ``is_causal=False`` with ``cu_seq_lens`` or a padding mask,
    on the kernel with a bidirectional layout (the SDPA fallback must not run)."""
    monkeypatch.setattr(attention_module, "bidirectional_attention", None)  # any call would raise
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, HQ, 9, D, generator=g).to(device) for _ in range(3))
    cu = torch.tensor([0, 4, 9], dtype=torch.int32)
    out, _ = btok_attention_forward(
        module(False),
        q,
        k,
        v,
        None,
        cu_seq_lens_q=cu.to(device),
        cu_seq_lens_k=cu.to(device),
        max_length_q=5,
        max_length_k=5,
    )
    ref = torch.cat([dense_reference(q[:, :, a:b], k[:, :, a:b], v[:, :, a:b], None) for a, b in [(0, 4), (4, 9)]], 1)
    assert_close(out, ref, TOL, "block-diagonal bidirectional")

    q, k, v = qkv(7, device=device)
    mask = torch.ones(B, 7, dtype=torch.bool)
    mask[0, 5:] = False
    mask[2, :2] = False
    out, _ = btok_attention_forward(module(), q, k, v, mask.to(device), is_causal=False, btok_padding_mode=mode)
    ref = dense_reference(q, k, v, mask[:, None, None, :].to(device))
    assert_close(out[mask.to(device)], ref[mask.to(device)], TOL, f"bidirectional with padding ({mode})")

    q, k, v = qkv(6, device=device)  # no mask: each row is one sequence
    out, _ = btok_attention_forward(module(False), q, k, v, None)
    assert_close(out, dense_reference(q, k, v, None), TOL, "bidirectional rows")


def test_non_square_non_causal_falls_back_and_logs_once(device, caplog):
    """Fewer queries than keys is outside the kernel: SDPA, logged once at DEBUG level."""
    fallback._log_once.cache_clear()
    q, k, v = qkv(7, q_len=3, device=device)
    mask = torch.ones(B, 7, dtype=torch.bool)
    mask[1, :2] = False
    with caplog.at_level(logging.DEBUG, logger="btok_model"):
        for _ in range(2):
            out, _ = btok_attention_forward(module(False), q, k, v, mask.to(device))
    assert_close(out, dense_reference(q, k, v, mask[:, None, None, :].to(device)), TOL, "non-square")
    logged = [r for r in caplog.records if r.name == "btok_model" and "SDPA fallback" in r.getMessage()]
    assert len(logged) == 1 and logged[0].levelno == logging.DEBUG
    assert "non-causal call with fewer queries than keys" in logged[0].getMessage()


def test_smaller_value_head_dim(kernel_backend, device):
    """MLA-style value heads narrower than query heads are padded, and the output cropped."""
    q, k, v = qkv(6, v_dim=8, device=device)
    out, _ = btok_attention_forward(module(), q, k, v, None, scaling=0.3)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=0.3, enable_gqa=True).transpose(1, 2)
    assert out.shape == (B, 6, HQ, 8)
    assert_close(out, ref, TOL, "narrow value heads")


def test_sliding_window_longer_than_every_sequence_is_exact(device):
    q, k, v = qkv(6, device=device)
    out, _ = btok_attention_forward(module(), q, k, v, None, sliding_window=6)
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True).transpose(1, 2)
    assert_close(out, ref, TOL, "window >= length")


@pytest.mark.parametrize("mode", ["segments", "unpad", "auto"])
def test_padding_modes_agree(mode, kernel_backend, device):
    """Left, right and both-sided padding, in either padding mode (``btok_padding_mode=``)."""
    q, k, v = qkv(9, device=device)
    mask = torch.ones(B, 9, dtype=torch.bool)
    mask[0, :4] = False
    mask[1, 6:] = False
    mask[2, :1] = mask[2, 7:] = False
    out, _ = btok_attention_forward(module(), q, k, v, mask.to(device), btok_padding_mode=mode)
    allowed = (causal(9, 9)[None] & mask[:, None, :])[:, None].to(device)
    valid = mask.to(device)
    assert_close(out[valid], dense_reference(q, k, v, allowed)[valid], TOL, f"{mode} mode")


def test_padding_mode_argument_and_environment(monkeypatch, device):
    """The forward kwarg wins; the environment variable is only its default; both are checked."""
    q, k, v = qkv(5, device=device)
    mask = torch.ones(B, 5, dtype=torch.bool, device=device)
    mask[0, :2] = False
    monkeypatch.setenv("BTOK_PADDING_MODE", "bogus")
    btok_attention_forward(module(), q, k, v, mask, btok_padding_mode="unpad")
    with pytest.raises(ValueError, match="environment variable BTOK_PADDING_MODE must be one of"):
        btok_attention_forward(module(), q, k, v, mask.clone())
    expected = r"btok_padding_mode must be one of \('auto', 'segments', 'unpad'\), got 'pad'"
    with pytest.raises(ValueError, match=expected):
        btok_attention_forward(module(), q, k, v, mask.clone(), btok_padding_mode="pad")


def test_padding_mode_reaches_attention_through_the_model(device):
    """``btok_padding_mode=`` is a forward kwarg of the model, like ``btok_layout=``."""
    model = backend_model("llama").to(device)
    model.set_attn_implementation("btok_triton")
    ids, mask = pad_batch(random_ids([7, 3]), "left")
    inputs = dict(input_ids=ids.to(device), attention_mask=mask.to(device))
    with pytest.raises(ValueError, match="btok_padding_mode must be one of"):
        model(**inputs, btok_padding_mode="pad")
    with torch.no_grad():
        segments = model(**inputs, btok_padding_mode="segments").logits
        unpad = model(**inputs, btok_padding_mode="unpad").logits
    valid = mask.bool().to(device)
    assert_close(unpad[valid], segments[valid], TOL, "unpad vs segments")


def test_layout_cache_sees_in_place_edits(device):
    """Layouts are reused across layers for the same mask tensor, never after it changes."""
    q, k, v = qkv(6, device=device)
    mask = torch.ones(B, 6, dtype=torch.bool, device=device)
    mask[0, :2] = False
    first, _ = btok_attention_forward(module(), q, k, v, mask)
    mask[0, :2] = True
    mask[1, :3] = False
    second, _ = btok_attention_forward(module(), q, k, v, mask)
    allowed = (causal(6, 6).to(device)[None] & mask[:, None, :])[:, None]
    assert_close(second[mask], dense_reference(q, k, v, allowed)[mask], TOL, "after the edit")
    assert not torch.allclose(first[0], second[0])
