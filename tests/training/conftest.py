import pytest
import torch


@pytest.fixture
def float32_cpu(monkeypatch):
    """The dtype decision pinned to a CPU without native bfloat16, so command-line outputs are
    float32 ones on any machine."""
    from btok_model.embedder import precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(precision, "native_cpu_bf16", lambda: (False, "mocked: no bf16 flags"))
