import pytest


@pytest.fixture(autouse=True)
def embedder_tests_on_one_thread(one_torch_thread):
    """The embedder tests run tiny models: with a second intra-op thread, every small matmul
    waits for a core on a busy 2-core machine (measured 30x slower)."""
