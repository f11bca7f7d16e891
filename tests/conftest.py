import os

# Kernel tests run the real Triton kernels; on a machine without a GPU they go through the
# Triton interpreter, which must be chosen before triton is first imported. Set
# TRITON_INTERPRET=0 explicitly to run them compiled on a GPU.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from tests.helpers.threads import one_torch_thread  # noqa: E402, F401  (a fixture for every test directory)


def _device() -> str:
    if os.environ["TRITON_INTERPRET"] != "1" and torch.cuda.is_available():
        return "cuda"
    return "cpu"


DEVICE = _device()


@pytest.fixture
def device() -> str:
    return DEVICE
