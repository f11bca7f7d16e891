"""Every ```python block of the README runs as written on a CPU, each in a fresh process."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", README.read_text(), flags=re.S | re.M)


def _first_line(code: str) -> str:
    return next(line for line in code.splitlines() if line.strip())[:60]


def test_the_readme_has_python_examples():
    assert len(BLOCKS) >= 4, f"expected the README's examples, found {len(BLOCKS)} python blocks"


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_block_runs(code, tmp_path):
    # A fresh interpreter: each example stands alone (its own imports, no state from another).
    # The working directory is a temporary one so that nothing an example writes lands in the repo.
    # The checkout under test comes first on the path (not whichever copy pip installed).
    path = os.pathsep.join(p for p in (str(README.parent), os.environ.get("PYTHONPATH")) if p)
    env = {
        **os.environ,
        "PYTHONPATH": path,
        "PYTHONWARNINGS": "error::DeprecationWarning:btok_kernels,error::DeprecationWarning:btok_model",
    }
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"README block starting {_first_line(code)!r} failed:\n{result.stderr[-3000:]}"
