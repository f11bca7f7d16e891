import sys
from pathlib import Path

import pytest
import torch

# The tiny offline fixtures of the model layer (tests/embedder/btok_tiny.py) are shared.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "embedder"))


@pytest.fixture
def float32_cpu(monkeypatch):
    """The dtype decision pinned to a CPU without native bfloat16, so command-line outputs are
    float32 ones on any machine."""
    from btok_model.embedder import precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(precision, "native_cpu_bf16", lambda: (False, "mocked: no bf16 flags"))
