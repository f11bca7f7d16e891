"""Torch's intra-op thread count, pinned for tests of small tensors.

The suite runs tiny models and small kernels: with a second intra-op thread every small
matmul waits for a core on a busy 2-core machine (measured 30x slower in the embedder tests).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """``torch.set_num_threads(n)`` inside the block, the previous count restored after it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """One intra-op thread for the test (made available to every test by tests/conftest.py)."""
    with torch_threads(1):
        yield
