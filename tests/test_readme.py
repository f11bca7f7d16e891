"""Every ```python block of the README, of `docs/*.md` and of `examples/README.md` runs as written on
a CPU, each in a fresh process.

A block that cannot run here (it downloads data, or needs a real checkpoint or hours) is fenced
```py instead: shown, not run. Keep such blocks few; everything a page can show on a tiny model
is a ```python block.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "examples" / "README.md"]


def _python_blocks(page: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", page.read_text(), flags=re.S | re.M)


BLOCKS = [
    (f"{page.relative_to(ROOT).as_posix()}:{i}", code) for page in PAGES for i, code in enumerate(_python_blocks(page))
]


def _first_line(code: str) -> str:
    return next(line for line in code.splitlines() if line.strip())[:60]


def test_the_pages_have_python_examples():
    pages = {name.rsplit(":", 1)[0] for name, _ in BLOCKS}
    # The README's quick start, and the examples moved to docs/ (the model API, images and video,
    # the kernel and the transformers backend) stay runnable blocks, not text.
    for page in ("README.md", "docs/api.md", "docs/multimodal.md", "docs/kernel.md"):
        assert page in pages, f"expected runnable ```python examples in {page}; pages with some: {sorted(pages)}"
    assert len(BLOCKS) >= 5, f"expected the pages' examples, found {len(BLOCKS)} python blocks"


@pytest.mark.parametrize("code", [code for _, code in BLOCKS], ids=[name for name, _ in BLOCKS])
def test_page_block_runs(code, tmp_path):
    # A fresh interpreter: each example stands alone (its own imports, no state from another).
    # The working directory is a temporary one so that nothing an example writes lands in the repo.
    # The checkout under test comes first on the path (not whichever copy pip installed).
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = {
        **os.environ,
        "PYTHONPATH": path,
        "PYTHONWARNINGS": "error::DeprecationWarning:btok_kernels,error::DeprecationWarning:btok_model",
    }
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"block starting {_first_line(code)!r} failed:\n{result.stderr[-3000:]}"
