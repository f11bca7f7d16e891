import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The embedder tests run tiny models: with a second intra-op thread, every small matmul
    waits for a core on a busy 2-core machine (measured 30x slower). Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
