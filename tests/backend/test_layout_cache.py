"""A layout cached while embedding under ``torch.inference_mode`` still serves a training step."""

import pytest
import torch

from btok_kernels import condensation_attention
from btok_model.backend.boundaries import rows_layout


@pytest.mark.interpret
@pytest.mark.parametrize("backend", ["triton", "sdpa"])
def test_rows_layout_cached_in_inference_mode_serves_autograd(backend, device):
    rows_layout.cache_clear()
    with torch.inference_mode():
        first = rows_layout(1, 11, torch.device(device), False)
    layout = rows_layout(1, 11, torch.device(device), False)
    assert layout is first and not layout.cu_seqlens.is_inference()
    q, k, v = (torch.randn(11, 2, 16, device=device, requires_grad=True) for _ in range(3))
    condensation_attention(q, k, v, layout, backend=backend).sum().backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in (q, k, v))
