"""Compiling csrc/ sources for the host (the CUDA tile plan and the CUDA kernels' CPU emulator)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository
CSRC = ROOT / "csrc"
CXX = shutil.which("g++") or shutil.which("c++")


def host_build(name: str, sources: list[str], flags: list[str], shared: bool) -> Path:
    """Compiles csrc sources for the host into build/csrc_host/, reusing an earlier build of
    the same sources, headers and flags."""
    assert CXX is not None, "no host C++ compiler (g++) on PATH: the csrc host tests need one"
    digest = hashlib.sha256(" ".join([CXX, *flags, str(shared)]).encode())
    for path in sorted(CSRC.rglob("*")):
        if path.suffix in (".h", ".cuh", ".cpp", ".cu"):
            digest.update(path.read_bytes())
    out_dir = ROOT / "build" / "csrc_host" / digest.hexdigest()[:16]
    out = out_dir / (f"lib{name}.so" if shared else name)
    if not out.exists():
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = out.with_suffix(".tmp")
        cmd = [
            CXX,
            *flags,
            *(["-shared", "-fPIC"] if shared else []),
            "-o",
            str(tmp),
            *(str(CSRC / s) for s in sources),
        ]
        run = subprocess.run(cmd, capture_output=True, text=True)
        assert run.returncode == 0, f"host build failed: {' '.join(cmd)}\n{run.stderr[-4000:]}"
        tmp.rename(out)  # atomic: a concurrent run sees the whole file or none
    return out
