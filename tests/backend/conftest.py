import pytest

# The equality tests run on the backend a CPU user gets ("auto": btok_kernels' exact SDPA
# path) and through the real Triton kernels (the interpreter on a CPU, TRITON_INTERPRET=1
# from tests/conftest.py). Tests over many models take the Triton kernels on a few of them
# only (tests.helpers.tiny.model_backends): the kernels are checked against the fp64 oracle in
# tests/ops, here it is the routing of every calling convention that is checked.
KERNEL_BACKENDS = [
    pytest.param("auto", id="auto"),
    pytest.param("triton", id="triton", marks=pytest.mark.interpret),
]


@pytest.fixture(params=KERNEL_BACKENDS)
def kernel_backend(request, monkeypatch):
    """Selects the btok_kernels backend that ``backend="auto"`` resolves to."""
    if request.param == "auto":
        monkeypatch.delenv("BTOK_BACKEND", raising=False)
    else:
        monkeypatch.setenv("BTOK_BACKEND", request.param)
    return request.param
