import pytest

# The equality tests run twice: through the PyTorch reference backend and through the real
# Triton kernels (the interpreter on a CPU, TRITON_INTERPRET=1 from tests/conftest.py).
KERNEL_BACKENDS = [
    pytest.param("reference", id="reference"),
    pytest.param("triton", id="triton", marks=pytest.mark.interpret),
]


@pytest.fixture(params=KERNEL_BACKENDS)
def kernel_backend(request, monkeypatch):
    """Selects the btok_kernels backend that ``backend="auto"`` resolves to."""
    monkeypatch.setenv("BTOK_BACKEND", request.param)
    return request.param
