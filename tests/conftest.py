import os

# Kernel tests run the real Triton kernels; on a machine without a GPU they go through the
# Triton interpreter, which must be chosen before triton is first imported. Set
# TRITON_INTERPRET=0 explicitly to run them compiled on a GPU.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

from tests.helpers.threads import one_torch_thread  # noqa: F401  (a fixture for every test directory)


def _device() -> str:
    if os.environ["TRITON_INTERPRET"] != "1" and torch.cuda.is_available():
        return "cuda"
    return "cpu"


DEVICE = _device()


@pytest.fixture
def device() -> str:
    return DEVICE


def _contents(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="session")
def saved_backbone(tmp_path_factory):
    """A backbone folder as a user has one (:func:`tests.helpers.tiny.save_backbone`: the tiny Llama,
    the character tokenizer), written once for the session: tests read it and never write into it
    (checked when the session ends)."""
    from tests.helpers.tiny import save_backbone

    folder = save_backbone(tmp_path_factory.mktemp("saved_backbone"))
    written = _contents(folder)
    yield folder
    assert _contents(folder) == written, f"a test wrote into the shared backbone folder {folder}"
