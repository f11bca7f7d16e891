"""The kernels compile for Hopper (sm_90) at their default GPU tiles, on a machine without a
GPU: catches what only the compiler sees (the interpreter runs the kernels as Python).

The compiler cannot run in a process whose triton was imported under TRITON_INTERPRET=1
(as the other kernel tests are), so the compilation runs in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

H100_SHARED = 227 * 1024
CASES = [("bf16", 128), ("fp16", 80)]

SCRIPT = """
import json, sys, torch
from btok_kernels.condensation.aot import KERNELS, kernel_resources
dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16}
out = []
for name, d in json.loads(sys.argv[1]):
    for kernel in KERNELS:
        r = kernel_resources(kernel, dtypes[name], d, group=6, arch=90)
        out.append([kernel, name, d, r.registers, r.shared_bytes])
r = kernel_resources("dkdv", torch.bfloat16, 128, group=6, arch=90, gqa_split=3, fused_dq=True)
out.append(["dkdv_fused_dq_split3", "bf16", 128, r.registers, r.shared_bytes])
for kernel in KERNELS:
    r = kernel_resources(kernel, torch.bfloat16, 128, group=6, arch=90, causal=False)
    out.append([kernel + "_bidirectional", "bf16", 128, r.registers, r.shared_bytes])
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def compiled():
    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_DEFAULT_FP_FUSION="1")
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(CASES)],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_every_kernel_compiles_for_sm90(compiled):
    assert {(k, name, d) for k, name, d, _, _ in compiled} == {
        (k, name, d) for k in ("fwd", "dkdv", "dq") for name, d in CASES
    } | {("dkdv_fused_dq_split3", "bf16", 128)} | {(k + "_bidirectional", "bf16", 128) for k in ("fwd", "dkdv", "dq")}
    for kernel, name, d, registers, shared in compiled:
        assert 0 < registers <= 255, (kernel, name, d, registers)
        assert 0 < shared <= H100_SHARED, (kernel, name, d, shared)
